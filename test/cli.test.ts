/**
 * The built command-line program, run as a real process: flags, environment
 * fallbacks, exit statuses, and a start/stop cycle against the SCRIPTED FAKE
 * SERVER in test/harness/scripted-upstream.ts.
 */

import t, { type Test } from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { makeTestCa } from './harness/pki.js';
import { RawClient } from './harness/raw-client.js';
import { CLI, ROOT, ensureBuilt } from './harness/build.js';
import { cleanEnv, logLines, startCli } from './harness/cli-process.js';
import { startScriptedUpstream } from './harness/scripted-upstream.js';

const JMAP = 'https://jmap.example.test/.well-known/jmap';
const PKG = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };

interface Result {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs the CLI to completion (it must exit by itself within `timeoutMs`). */
function run(args: string[], extraEnv: Record<string, string> = {}, timeoutMs = 10_000): Promise<Result> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { cwd: ROOT, env: cleanEnv(extraEnv), stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString('utf8')));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`CLI did not exit within ${timeoutMs} ms; stdout ${JSON.stringify(stdout)} stderr ${JSON.stringify(stderr)}`));
    }, timeoutMs);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/** A port nothing listens on right now. */
async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** Parsed JSON log lines. */
t.before(() => ensureBuilt());

const escapeRegExp = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

const REQUIRED = ['--upstream', 'imap://127.0.0.1:143', '--jmap-url', JMAP];

t.test('--help lists every flag and exits 0', async (t) => {
  const r = await run(['--help']);
  t.equal(r.code, 0);
  t.equal(r.stderr, '');
  for (const flag of [
    '--listen',
    '--upstream',
    '--jmap-url',
    '--jmap-mechanisms',
    '--objectid',
    '--allow-insecure-jmap-url',
    '--max-line-length',
    '--upstream-connect-timeout',
    '--log-level',
    '--tls-cert',
    '--tls-key',
    '--listen-tls',
    '--require-tls',
    '--tls-min-version',
    '--jmap-url-map',
    '--jmap-users-allow',
    '--jmap-users-deny',
    '--jmap-verify',
    '--jmap-verify-timeout',
    '--jmap-verify-ttl',
    '--jmap-verify-ca',
    '--version',
    '--help',
  ]) {
    t.match(r.stdout, new RegExp(`(^|\\s)${flag}\\s`), flag);
  }
  t.match(r.stdout, /RFC 9698/);
  const short = await run(['-h']);
  t.equal(short.code, 0);
  t.equal(short.stdout, r.stdout, '-h is --help');
});

t.test('--version prints the package version', async (t) => {
  const r = await run(['--version']);
  t.equal(r.code, 0);
  t.equal(r.stdout.trim(), PKG.version);
  t.equal(r.stderr, '');
});

t.test('usage errors: exit status 2 and a message naming the problem', async (t) => {
  const cases: Array<{ name: string; args: string[]; env?: Record<string, string>; stderr: RegExp }> = [
    { name: 'missing --upstream', args: ['--jmap-url', JMAP], stderr: /--upstream is required/ },
    { name: 'missing --jmap-url', args: ['--upstream', 'imap://127.0.0.1:143'], stderr: /--jmap-url is required/ },
    {
      name: 'http JMAP URL without the override',
      args: ['--upstream', 'imap://127.0.0.1:143', '--jmap-url', 'http://jmap.example.test/jmap'],
      stderr: /--jmap-url: must be an https:\/\/ URL, got "http:\/\/" \(use --allow-insecure-jmap-url/,
    },
    {
      name: 'a JMAP URL with a raw newline, from the environment',
      args: ['--upstream', 'imap://127.0.0.1:143'],
      env: { JMAPACCESS_PROXY_JMAP_URL: 'https://jmap.example.test/a\nb' },
      stderr: /--jmap-url: "\\n" is not allowed in a URL/,
    },
    { name: 'unknown flag', args: [...REQUIRED, '--bogus-flag'], stderr: /Unknown arguments?: bogus-flag/ },
    { name: '--objectid maybe', args: [...REQUIRED, '--objectid', 'maybe'], stderr: /objectid.*maybe/s },
    { name: '--max-line-length 10', args: [...REQUIRED, '--max-line-length', '10'], stderr: /--max-line-length: must be an integer from 1024/ },
    { name: '--max-line-length junk', args: [...REQUIRED, '--max-line-length', 'lots'], stderr: /--max-line-length/ },
    { name: '--log-level loud', args: [...REQUIRED, '--log-level', 'loud'], stderr: /log-level.*loud/s },
    { name: 'upstream URL with a query', args: ['--upstream', 'imap://127.0.0.1:143?tls', '--jmap-url', JMAP], stderr: /--upstream: expected imap:\/\/HOST:PORT/ },
    { name: 'bad --listen', args: [...REQUIRED, '--listen', 'nowhere'], stderr: /--listen: expected HOST:PORT/ },
    { name: 'bad --upstream-connect-timeout', args: [...REQUIRED, '--upstream-connect-timeout', 'soon'], stderr: /--upstream-connect-timeout/ },
    { name: 'bad --jmap-mechanisms', args: [...REQUIRED, '--jmap-mechanisms', 'PLAIN,A B'], stderr: /--jmap-mechanisms: "A B"/ },
    { name: '--listen twice', args: [...REQUIRED, '--listen', '127.0.0.1:1', '--listen', '127.0.0.1:2'], stderr: /--listen: given more than once/ },
    { name: '--upstream-connect sometimes', args: [...REQUIRED, '--upstream-connect', 'sometimes'], stderr: /upstream-connect.*sometimes/s },
  ];
  await Promise.all(
    cases.map(async (c) => {
      const r = await run(c.args, c.env);
      t.equal(r.code, 2, `${c.name}: exit status`);
      t.match(r.stderr, /^jmapaccess-proxy: /, `${c.name}: stderr names the program`);
      t.match(r.stderr, c.stderr, `${c.name}: stderr explains`);
      t.match(r.stderr, /Try --help/, `${c.name}: stderr points at --help`);
      t.equal(r.stdout, '', `${c.name}: nothing on stdout`);
    }),
  );
});

t.test('TLS flag refusals: exit status 2 and a message naming the problem', async (t) => {
  const ca = makeTestCa();
  t.teardown(() => ca.remove());
  const cert = ca.issue('cli-flags', ['localhost']);
  const other = ca.issue('cli-flags-other', ['localhost']);
  const missing = `${ca.dir}/does-not-exist.crt`;
  const missingKey = `${ca.dir}/does-not-exist.key`;
  const cases: Array<{ name: string; args: string[]; stderr: RegExp }> = [
    { name: '--tls-cert without --tls-key', args: [...REQUIRED, '--tls-cert', cert.certFile], stderr: /--tls-cert and --tls-key come in pairs/ },
    { name: '--tls-key without --tls-cert', args: [...REQUIRED, '--tls-key', cert.keyFile], stderr: /--tls-cert and --tls-key come in pairs/ },
    {
      name: 'two certificates, one key',
      args: [...REQUIRED, '--tls-cert', cert.certFile, '--tls-cert', other.certFile, '--tls-key', cert.keyFile],
      stderr: /--tls-cert and --tls-key come in pairs: got 2 certificate\(s\) and 1 key\(s\)/,
    },
    {
      name: 'a nonexistent certificate file',
      args: [...REQUIRED, '--tls-cert', missing, '--tls-key', cert.keyFile],
      stderr: new RegExp(`--tls-cert/--tls-key: cannot read ${escapeRegExp(missing)}`),
    },
    {
      name: 'a nonexistent key file',
      args: [...REQUIRED, '--tls-cert', cert.certFile, '--tls-key', missingKey],
      stderr: new RegExp(`--tls-cert/--tls-key: cannot read ${escapeRegExp(missingKey)}`),
    },
    {
      name: 'a key that does not match the certificate',
      args: [...REQUIRED, '--tls-cert', cert.certFile, '--tls-key', other.keyFile],
      stderr: /--tls-cert\/--tls-key: .*cli-flags\.crt .*cli-flags-other\.key/,
    },
    { name: '--listen-tls without a certificate', args: [...REQUIRED, '--listen-tls', '127.0.0.1:0'], stderr: /--listen-tls needs a certificate/ },
    { name: '--require-tls without a certificate', args: [...REQUIRED, '--require-tls'], stderr: /--require-tls needs a certificate/ },
    {
      name: '--tls-min-version TLSv1.1',
      args: [...REQUIRED, '--tls-cert', cert.certFile, '--tls-key', cert.keyFile, '--tls-min-version', 'TLSv1.1'],
      stderr: /tls-min-version.*TLSv1\.1/s,
    },
  ];
  await Promise.all(
    cases.map(async (c) => {
      const r = await run(c.args);
      t.equal(r.code, 2, `${c.name}: exit status`);
      t.match(r.stderr, /^jmapaccess-proxy: /, `${c.name}: stderr names the program`);
      t.match(r.stderr, c.stderr, `${c.name}: stderr explains`);
      t.match(r.stderr, /Try --help/, `${c.name}: stderr points at --help`);
      t.equal(r.stdout, '', `${c.name}: nothing on stdout`);
    }),
  );
});

t.test('an address already in use: exit status 1 and a fatal log line', async (t) => {
  const blocker = net.createServer();
  await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => blocker.close(() => resolve())));
  const { port } = blocker.address() as AddressInfo;
  const r = await run([...REQUIRED, '--listen', `127.0.0.1:${port}`]);
  t.equal(r.code, 1);
  t.ok(
    logLines(r.stdout).some((l) => l.level === 60 && l.msg === 'cannot listen' && /EADDRINUSE/.test(String(l.err))),
    'a fatal "cannot listen" line with the reason',
  );
});

t.test('environment fallbacks, a real connection, and SIGTERM', async (t) => {
  const upstream = await startScriptedUpstream();
  const port = await freePort();
  let child: ChildProcess | null = spawn(process.execPath, [CLI], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: cleanEnv({
      JMAPACCESS_PROXY_UPSTREAM: `imap://127.0.0.1:${upstream.port}`,
      JMAPACCESS_PROXY_JMAP_URL: JMAP,
      JMAPACCESS_PROXY_LISTEN: `127.0.0.1:${port}`,
      JMAPACCESS_PROXY_JMAP_MECHANISMS: 'plain',
      // The open session may go on for 1 s after SIGTERM, then it is told BYE.
      JMAPACCESS_PROXY_SHUTDOWN_GRACE: '1s',
    }),
  });
  let client: RawClient | null = null;
  t.teardown(async () => {
    client?.close();
    child?.kill('SIGKILL');
    await upstream.close();
  });

  let stdout = '';
  let stderr = '';
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child?.on('close', (code, signal) => resolve({ code, signal })),
  );
  const listening = new Promise<Record<string, unknown>>((resolve, reject) => {
    child?.stdout?.on('data', (c: Buffer) => {
      stdout += c.toString('utf8');
      const line = logLines(stdout).find((l) => l.msg === 'listening');
      if (line) resolve(line);
    });
    child?.stderr?.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
    void exited.then((e) => reject(new Error(`exited before listening: ${JSON.stringify(e)} ${stdout} ${stderr}`)));
    setTimeout(() => reject(new Error(`not listening after 10 s: ${stdout} ${stderr}`)), 10_000).unref();
  });

  const line = await listening;
  t.match(line, {
    level: 30,
    name: 'jmapaccess-proxy',
    listen: `127.0.0.1:${port}`,
    upstream: `127.0.0.1:${upstream.port}`,
    jmapUrl: JMAP,
    jmapMechanisms: ['PLAIN'],
    objectid: 'require',
  });

  client = await RawClient.connect(port);
  const server = await upstream.accept();
  server.send('* OK [CAPABILITY IMAP4rev1 STARTTLS COMPRESS=DEFLATE JMAPACCESS AUTH=PLAIN] fake ready\r\n');
  t.equal(await client.readUntil('\n'), '* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] fake ready\r\n', 'greeting rewritten');
  client.send('a GETJMAPACCESS\r\n');
  t.equal(await client.response('a'), 'a BAD GETJMAPACCESS is valid only after authentication\r\n');

  const started = Date.now();
  child.kill('SIGTERM');
  const exit = await Promise.race([
    exited,
    new Promise<never>((_, reject) => setTimeout(() => reject(new Error('no exit within 4 s of SIGTERM')), 4000).unref()),
  ]);
  t.same(exit, { code: 0, signal: null }, 'exit status 0');
  t.ok(Date.now() - started < 4000, 'promptly');
  child = null;
  t.match(await client.readUntil('* BYE'), /\* BYE \[UNAVAILABLE\] Server shutting down/, 'the client is told');
  await client.waitClosed(2000);
  t.equal(stderr, '', 'nothing on stderr');
  const logs = logLines(stdout);
  t.ok(logs.some((l) => String(l.msg).startsWith('stopping') && l.signal === 'SIGTERM' && l.graceSeconds === 1), 'stopping is logged');
});

function tempDir(t: Test): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'cli-jmap-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

t.test('JMAP URL, users and verification flags: usage errors exit 2', async (t) => {
  const dir = tempDir(t);
  const badMap = path.join(dir, 'bad-map.txt');
  writeFileSync(badMap, '# map\nexample.com https://jmap.example.com/jmap\nexample.org https://jmap.example.org/{oops}\n');
  const map = path.join(dir, 'map.txt');
  writeFileSync(map, 'example.com https://jmap.example.com/jmap\n');
  const notPem = path.join(dir, 'ca.txt');
  writeFileSync(notPem, 'hello\n');
  const UP = ['--upstream', 'imap://127.0.0.1:143'];
  const cases: Array<{ name: string; args: string[]; env?: Record<string, string>; stderr: RegExp }> = [
    { name: 'no --jmap-url and no map', args: UP, stderr: /--jmap-url is required .*unless --jmap-url-map is given/ },
    { name: 'unknown placeholder', args: [...UP, '--jmap-url', 'https://jmap.{host}/'], stderr: /--jmap-url: unknown placeholder \{host\}/ },
    { name: 'unbalanced brace', args: [...UP, '--jmap-url', 'https://jmap.{domain/'], stderr: /--jmap-url: "\{" without "\}"/ },
    {
      name: 'http template without the override',
      args: [...UP, '--jmap-url', 'http://jmap.{domain}/'],
      stderr: /--jmap-url: must be an https:\/\/ URL, got "http:\/\/"/,
    },
    {
      name: 'template with {user} in the host',
      args: [...UP, '--jmap-url', 'https://{user}.example.test/'],
      stderr: /--jmap-url: the template gives no valid URL for the identity alice@example\.com/,
    },
    {
      name: 'a map with an error, line number given',
      args: [...UP, '--jmap-url-map', badMap],
      stderr: new RegExp(`--jmap-url-map: ${escapeRegExp(badMap)}:3: unknown placeholder \\{oops\\}`),
    },
    { name: 'a missing map file', args: [...UP, '--jmap-url-map', path.join(dir, 'nope.txt')], stderr: /--jmap-url-map: .*nope\.txt: cannot read/ },
    { name: '--jmap-url-map twice', args: [...UP, '--jmap-url-map', map, '--jmap-url-map', map], stderr: /--jmap-url-map: given more than once/ },
    { name: 'bad regex in --jmap-users-allow', args: [...REQUIRED, '--jmap-users-allow', '/(/'], stderr: /--jmap-users-allow: "\/\(\/" is not a valid regular expression/ },
    {
      name: 'bad regex in the deny list, from the environment',
      args: REQUIRED,
      env: { JMAPACCESS_PROXY_JMAP_USERS_DENY: 'ok.test,/(a|b/' },
      stderr: /--jmap-users-deny: "\/\(a\|b\/" is not a valid regular expression/,
    },
    { name: 'not a domain in the allow list', args: [...REQUIRED, '--jmap-users-allow', 'a b'], stderr: /--jmap-users-allow: "a b" is not a domain/ },
    { name: 'bad --jmap-verify-timeout', args: [...REQUIRED, '--jmap-verify-timeout', 'soon'], stderr: /--jmap-verify-timeout: expected seconds/ },
    { name: 'zero --jmap-verify-timeout', args: [...REQUIRED, '--jmap-verify-timeout', '0ms'], stderr: /--jmap-verify-timeout: must be above zero/ },
    { name: 'bad --jmap-verify-ttl from the environment', args: REQUIRED, env: { JMAPACCESS_PROXY_JMAP_VERIFY_TTL: 'long' }, stderr: /--jmap-verify-ttl: expected seconds/ },
    { name: '--jmap-verify-ttl twice', args: [...REQUIRED, '--jmap-verify-ttl', '1m', '--jmap-verify-ttl', '2m'], stderr: /--jmap-verify-ttl: given more than once/ },
    { name: '--jmap-verify-ca without --jmap-verify', args: [...REQUIRED, '--jmap-verify-ca', notPem], stderr: /--jmap-verify-ca needs --jmap-verify/ },
    { name: 'a missing --jmap-verify-ca', args: [...REQUIRED, '--jmap-verify', '--jmap-verify-ca', path.join(dir, 'ca.pem')], stderr: /--jmap-verify-ca: cannot read .*ca\.pem/ },
    { name: 'a --jmap-verify-ca that is not PEM', args: [...REQUIRED, '--jmap-verify', '--jmap-verify-ca', notPem], stderr: /--jmap-verify-ca: .*ca\.txt holds no PEM certificate/ },
  ];
  await Promise.all(
    cases.map(async (c) => {
      const r = await run(c.args, c.env);
      t.equal(r.code, 2, `${c.name}: exit status`);
      t.match(r.stderr, /^jmapaccess-proxy: /, `${c.name}: stderr names the program`);
      t.match(r.stderr, c.stderr, `${c.name}: stderr explains`);
      t.equal(r.stdout, '', `${c.name}: nothing on stdout`);
    }),
  );
});

t.test('--jmap-url-map from the environment, reloaded on SIGHUP; a broken map keeps the previous one', async (t) => {
  const dir = tempDir(t);
  const map = path.join(dir, 'map.txt');
  writeFileSync(map, 'example.com https://jmap.example.com/.well-known/jmap\n');
  const cli = startCli(t, ['--listen', '127.0.0.1:0', '--upstream', `imap://127.0.0.1:${await freePort()}`, '--jmap-users-allow', 'example.com', '--jmap-users-allow', '/beta-.*/'], {
    JMAPACCESS_PROXY_JMAP_URL_MAP: map,
    JMAPACCESS_PROXY_JMAP_URL: 'https://jmap.{domain}/.well-known/jmap',
    JMAPACCESS_PROXY_JMAP_VERIFY: 'true',
    JMAPACCESS_PROXY_JMAP_VERIFY_TIMEOUT: '750ms',
    JMAPACCESS_PROXY_JMAP_VERIFY_TTL: '30',
  });
  const listening = await cli.waitLog((l) => l.msg === 'listening', 'listening line');
  t.match(listening, {
    jmapUrl: 'https://jmap.{domain}/.well-known/jmap',
    jmapUrlMap: map,
    mapEntries: 1,
    jmapUsers: { allow: ['example.com', '/beta-.*/'], deny: [] },
    jmapVerify: true,
  });

  // A good new map.
  writeFileSync(map, '# two domains now\nexample.com https://jmap.example.com/.well-known/jmap\n*.example.org https://{localpart}.example.org/jmap\n* https://default.example.net/jmap\n');
  cli.child.kill('SIGHUP');
  const reloaded = await cli.waitLog((l) => l.msg === 'JMAP URL map reloaded', 'reload line');
  t.match(reloaded, { level: 30, jmapUrlMap: map, entries: 3 });
  const effective = await cli.waitLog((l) => l.msg === 'SIGHUP: effective configuration', 'configuration line');
  t.match(effective.config, {
    jmapUrl: 'https://jmap.{domain}/.well-known/jmap',
    jmapUrlQuoted: '',
    jmapUrls: { jmapUrl: 'https://jmap.{domain}/.well-known/jmap', jmapUrlMap: map, mapEntries: 3 },
    jmapUsers: { allow: ['example.com', '/beta-.*/'], deny: [] },
    jmapVerify: true,
    jmapVerifyTimeoutMs: 750,
    jmapVerifyTtlMs: 30_000,
    jmapVerifyCa: 'system',
  });

  // A broken map: logged with line numbers, the previous map stays.
  writeFileSync(map, 'example.com https://jmap.example.com/.well-known/jmap\nexample.com https://again.example.com/\nfoo.test ftp://x.test/\n');
  cli.child.kill('SIGHUP');
  const failed = await cli.waitLog((l) => l.msg === 'JMAP URL map reload failed; previous map kept', 'failed reload line');
  t.match(failed, {
    level: 50,
    jmapUrlMap: map,
    entries: 3,
    errors: [`${map}:2: duplicate entry for example.com (first on line 1)`, new RegExp(`^${escapeRegExp(map)}:3: must be an https:// URL`)],
  });
  const after = await cli.waitLog((l) => l.msg === 'SIGHUP: effective configuration', 'second configuration line', 2);
  t.match(after.config, { jmapUrls: { mapEntries: 3 } }, 'still the previous map');
  t.equal(cli.child.exitCode, null, 'still running');
  t.equal(cli.stderr(), '');
});

t.test('--workers 2: each worker reloads --jmap-url-map on SIGHUP', async (t) => {
  const dir = tempDir(t);
  const map = path.join(dir, 'map.txt');
  writeFileSync(map, '* https://jmap.{domain}/jmap\n');
  const cli = startCli(t, ['--listen', '127.0.0.1:0', '--upstream', `imap://127.0.0.1:${await freePort()}`, '--jmap-url-map', map, '--workers', '2']);
  await cli.waitLog((l) => l.msg === 'all workers listening', 'workers listening');
  writeFileSync(map, '* https://jmap.{domain}/jmap\nexample.com https://jmap.example.com/jmap\n');
  cli.child.kill('SIGHUP');
  await cli.waitLog((l) => l.msg === 'JMAP URL map reloaded', 'two reload lines', 2);
  const lines = cli.logs().filter((l) => l.msg === 'JMAP URL map reloaded');
  t.same(lines.map((l) => l.worker).sort(), [1, 2], 'one line per worker');
  t.ok(lines.every((l) => l.entries === 2));
});
