/**
 * --jmap-verify at the byte level: the login's tagged OK and everything
 * after it wait for the JMAP server's answer. Upstream: the SCRIPTED FAKE
 * SERVER (test/harness/scripted-upstream.ts), for exact response timing;
 * JMAP: the scripted fake endpoint (test/harness/jmap-endpoint.ts). The same
 * behaviour against a real Dovecot and Cyrus is in test/integration/.
 */

import t, { type Test } from 'tap';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startProxy, type RunningProxy } from './harness/proxy.js';
import { RawClient } from './harness/raw-client.js';
import { startScriptedUpstream, type ScriptedConnection } from './harness/scripted-upstream.js';
import { startFakeJmapEndpoint, type FakeJmapEndpoint } from './harness/jmap-endpoint.js';
import type { RawConfig } from '../src/config.js';

const POST = 'IMAP4rev1 LITERAL+ IDLE OBJECTID';

interface Rig {
  proxy: RunningProxy;
  jmap: FakeJmapEndpoint;
  client: RawClient;
  server: ScriptedConnection;
}

async function rig(t: Test, config: Partial<RawConfig> = {}): Promise<Rig> {
  const jmap = await startFakeJmapEndpoint();
  const upstream = await startScriptedUpstream();
  const dir = mkdtempSync(join(tmpdir(), 'verify-hold-'));
  writeFileSync(join(dir, 'ca.pem'), jmap.ca);
  const proxy = await startProxy({
    upstreamPort: upstream.port,
    compress: false,
    jmapUrl: jmap.sessionUrl,
    jmapVerify: true,
    jmapVerifyCa: join(dir, 'ca.pem'),
    ...config,
  });
  const client = await RawClient.connect(proxy.port);
  const server = await upstream.accept();
  server.send('* OK [CAPABILITY IMAP4rev1 LITERAL+ AUTH=PLAIN] fake ready\r\n');
  await client.readUntil('\n');
  t.teardown(async () => {
    client.close();
    await proxy.close();
    await upstream.close();
    await jmap.close();
  });
  return { proxy, jmap, client, server };
}

t.test('responses after the tagged OK wait with it, and come out in order once the JMAP server answered', async (t) => {
  const r = await rig(t);
  r.jmap.setMode('alice', 'hang');
  r.client.send('a LOGIN alice alice-secret-pw\r\nb NOOP\r\n');
  t.equal(await r.server.line(), 'a LOGIN alice alice-secret-pw');
  t.equal(await r.server.line(), 'b NOOP');
  r.server.send(`a OK [CAPABILITY ${POST}] Logged in\r\n* 3 EXISTS\r\nb OK NOOP done\r\n`);
  await new Promise((resolve) => setTimeout(resolve, 300));
  t.equal(r.client.unread(), '', 'nothing yet: the JMAP server has not answered');
  // The endpoint never answers: --jmap-verify-timeout (2 s by default) ends the wait.
  const text = await r.client.response('b', 5000);
  t.equal(
    text,
    `a OK [CAPABILITY ${POST}] Logged in\r\n* 3 EXISTS\r\nb OK NOOP done\r\n`,
    'after the 2 s timeout: the same bytes, in order, without JMAPACCESS',
  );
  r.client.send('c GETJMAPACCESS\r\n');
  t.equal(await r.client.response('c'), 'c BAD JMAP access is not available for this account\r\n');
  t.match(r.proxy.logs().find((l) => l.msg === 'login succeeded'), { jmapaccess: 'refused', reason: 'jmap-not-verified', detail: 'timeout' });
});

t.test('granted: the held tagged OK gains JMAPACCESS', async (t) => {
  const r = await rig(t);
  r.client.send('a LOGIN alice alice-secret-pw\r\n');
  t.equal(await r.server.line(), 'a LOGIN alice alice-secret-pw');
  r.server.send(`a OK [CAPABILITY ${POST}] Logged in\r\n`);
  t.equal(await r.client.response('a'), `a OK [CAPABILITY ${POST} JMAPACCESS] Logged in\r\n`);
  t.equal(r.jmap.requests[0]?.authorization, `Basic ${Buffer.from('alice:alice-secret-pw').toString('base64')}`);
});

t.test('a LOGIN too long to read is never granted under --jmap-verify, even when the upstream accepts it', async (t) => {
  const r = await rig(t);
  const password = 'p'.repeat(20_000);
  r.client.send(`a LOGIN alice {${password.length}+}\r\n${password}\r\n`);
  t.equal(await r.server.line(), `a LOGIN alice {${password.length}+}`);
  await r.server.bytes(password.length + 2);
  r.server.send(`a OK [CAPABILITY ${POST}] Logged in\r\n`);
  t.equal(await r.client.response('a'), `a OK [CAPABILITY ${POST}] Logged in\r\n`, 'no JMAPACCESS');
  t.equal(r.jmap.count(), 0, 'no probe without credentials');
  t.match(r.proxy.logs().find((l) => l.msg === 'login succeeded'), { reason: 'jmap-not-verified', detail: 'no-credentials' });
});

t.test('the client leaves while the JMAP server is being asked: the session ends, nothing breaks', async (t) => {
  const r = await rig(t);
  r.jmap.setMode('alice', 'hang');
  r.client.send('a LOGIN alice alice-secret-pw\r\n');
  await r.server.line();
  r.server.send(`a OK [CAPABILITY ${POST}] Logged in\r\n`);
  await new Promise((resolve) => setTimeout(resolve, 100));
  r.client.close();
  const deadline = Date.now() + 5000;
  while (r.proxy.server.connectionCount > 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
  t.equal(r.proxy.server.connectionCount, 0, 'the session is gone');
  // The proxy still serves.
  const again = await RawClient.connect(r.proxy.port);
  t.teardown(() => again.close());
  t.match(await again.readUntil('\n'), /^\* OK /);
});
