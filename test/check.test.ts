/** `--check` against the SCRIPTED FAKE SERVER, and its exit status through the real CLI. */

import t from 'tap';
import { spawnSync } from 'node:child_process';
import { checkUpstream } from '../src/check.js';
import { validateConfig } from '../src/config.js';
import { startScriptedUpstream } from './harness/scripted-upstream.js';
import { freePort } from './harness/dovecot.js';
import { CLI, ensureBuilt } from './harness/build.js';

const JMAP = 'https://jmap.example.test/.well-known/jmap';

t.test('a reachable upstream: greeting, capabilities, what it means for JMAPACCESS', async (t) => {
  const upstream = await startScriptedUpstream();
  t.teardown(() => upstream.close());
  const config = validateConfig({ listen: '127.0.0.1:0', upstream: `imap://127.0.0.1:${upstream.port}`, jmapUrl: JMAP });
  const checking = checkUpstream(config);
  const server = await upstream.accept();
  server.send('* OK [CAPABILITY IMAP4rev1] hello\r\n');
  t.equal(await server.line(), 'check CAPABILITY');
  server.send('* CAPABILITY IMAP4rev1 OBJECTID AUTH=PLAIN\r\ncheck OK done\r\n');
  const report = await checking;
  t.match(report, {
    ok: true,
    greeting: '* OK [CAPABILITY IMAP4rev1] hello',
    capabilities: ['IMAP4rev1', 'OBJECTID', 'AUTH=PLAIN'],
    jmapaccess: /OBJECTID offered/,
  });
});

t.test('an upstream that greets with BYE is not ok', async (t) => {
  const upstream = await startScriptedUpstream();
  t.teardown(() => upstream.close());
  const config = validateConfig({ listen: '127.0.0.1:0', upstream: `imap://127.0.0.1:${upstream.port}`, jmapUrl: JMAP });
  const checking = checkUpstream(config);
  (await upstream.accept()).send('* BYE too busy\r\n');
  const report = await checking;
  t.equal(report.ok, false);
  t.match(report.error, /greeted with: \* BYE too busy/);
});

t.test('the CLI prints the report and exits 1 for an unreachable upstream', async (t) => {
  ensureBuilt();
  const port = await freePort();
  const down = spawnSync(process.execPath, [CLI, '--check', '--upstream', `imap://127.0.0.1:${port}`, '--jmap-url', JMAP], { encoding: 'utf8' });
  t.equal(down.status, 1);
  t.match(JSON.parse(down.stdout), { ok: false, error: /ECONNREFUSED/ });
});
