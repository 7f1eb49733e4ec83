/**
 * TLS toward clients with REAL clients and a REAL Dovecot 2.3 behind the
 * proxy (the proxy's upstream link stays plain): imapflow over implicit TLS
 * and over STARTTLS, Python's imaplib both ways, `openssl s_client
 * -starttls imap`, the STARTTLS plaintext-injection case (CVE-2011-0411)
 * against the real server, and certificate rotation through the built CLI
 * (SIGHUP, a broken file, the file watcher) under an open session.
 *
 * The Dovecot here has TLS of its own (ssl = yes, STARTTLS advertised), so
 * "the proxy never does STARTTLS upstream" is observable: Dovecot writes
 * `TLS` into its Login line for a session that used TLS (checked on a direct
 * STARTTLS login as a control).
 */

import { ensureBuilt } from '../harness/build.js';
import { startCli as startCliProcess } from '../harness/cli-process.js';
import t, { type Test } from 'tap';
import tls from 'node:tls';
import { spawn, type ChildProcess } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { copyFileSync, mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { ImapFlow } from 'imapflow';
import { makeTestCa, type IssuedCertificate, type TestCa } from '../harness/pki.js';
import {
  JMAP_URL,
  JMAP_URL_QUOTED,
  capabilityLists,
  countAtom,
  dovecotFor,
  imapflowFor,
  makeMessage,
  proxyFor,
  rawClient,
  runImaplib,
  sha256,
  sleep,
  waitFor,
  type Dovecot,
  type ImaplibResult,
  type ProxyOptions,
  type RawClient,
} from './helpers.js';

const MB = 1024 * 1024;

/** What imaplib_client.py adds to its JSON with --tls / --starttls. */
interface ImaplibTlsResult extends ImaplibResult {
  tls_version?: string;
  starttls?: string;
  caps_after_starttls?: string[];
}

let ca: TestCa;
/** The proxy's certificate: CN=localhost, SAN localhost and 127.0.0.1. */
let proxyCert: IssuedCertificate;
let dovecot: Dovecot;

t.before(async () => {
  ensureBuilt();
  ca = makeTestCa();
  proxyCert = ca.issue('proxy', ['localhost', '127.0.0.1']);
  const dovecotCert = ca.issue('dovecot', ['localhost', '127.0.0.1']);
  dovecot = await dovecotFor(t, {
    extraConfig: `ssl = yes\nssl_cert = <${dovecotCert.certFile}\nssl_key = <${dovecotCert.keyFile}\n`,
  });
});
t.teardown(() => ca?.remove());

/** A proxy with the test certificate, implicit TLS on tlsPort, STARTTLS on port. */
function tlsProxy(t: Test, options: ProxyOptions = {}) {
  return proxyFor(t, dovecot.port, {
    objectId: 'assume',
    tlsCert: [proxyCert.certFile],
    tlsKey: [proxyCert.keyFile],
    listenTls: '127.0.0.1:0',
    ...options,
  });
}

const tlsOptions = () => ({ ca: [ca.ca.toString('latin1')], servername: 'localhost' });

function capabilityNames(client: ImapFlow): string[] {
  return [...client.capabilities.keys()].map((c) => c.toUpperCase());
}

/** Dovecot's Login lines for `user` (`imap-login: Login: user=<user>, ...`). */
async function dovecotLogins(user: string): Promise<string[]> {
  return (await dovecot.readLog()).split('\n').filter((l) => /imap-login: (Info: )?Login: /.test(l) && l.includes(`user=<${user}>`));
}

/** Waits until Dovecot has logged more than `known` Login lines for `user`; returns the new ones. */
async function newDovecotLogins(user: string, known: number): Promise<string[]> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const found = await dovecotLogins(user);
    if (found.length > known) return found.slice(known);
    if (Date.now() > deadline) throw new Error(`no new Dovecot Login line for ${user}; have ${JSON.stringify(found)}`);
    await sleep(50);
  }
}

/** Completes a client-side TLS handshake on an already connected plain socket (after STARTTLS). */
function upgrade(client: RawClient, servername = 'localhost'): Promise<tls.TLSSocket> {
  client.socket.removeAllListeners('data');
  return new Promise((resolve, reject) => {
    const secure = tls.connect({ socket: client.socket, ca: ca.ca, servername }, () => resolve(secure));
    secure.once('error', reject);
  });
}

/** Reads a TLS socket as text: until(re) waits for `re` in what has not been returned yet. */
function reader(socket: tls.TLSSocket) {
  let text = '';
  let closed = false;
  const waiters: Array<() => void> = [];
  socket.setEncoding('latin1');
  socket.on('data', (d: string) => {
    text += d;
    waiters.splice(0).forEach((w) => w());
  });
  socket.on('close', () => {
    closed = true;
    waiters.splice(0).forEach((w) => w());
  });
  return {
    async until(re: RegExp, timeoutMs = 10_000): Promise<string> {
      const deadline = Date.now() + timeoutMs;
      while (!re.test(text)) {
        if (closed) throw new Error(`closed while waiting for ${re}; have ${JSON.stringify(text)}`);
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${re}; have ${JSON.stringify(text)}`);
        await new Promise<void>((r) => {
          waiters.push(r);
          setTimeout(r, 100);
        });
      }
      const out = text;
      text = '';
      return out;
    },
    pending: () => text,
  };
}

async function imaplib(port: number, args: string[]): Promise<ImaplibTlsResult> {
  const run = await runImaplib(['127.0.0.1', String(port), ...args]);
  if (run.code !== 0) throw new Error(`imaplib_client.py exited ${run.code}: ${run.stderr}`);
  return JSON.parse(run.stdout) as ImaplibTlsResult;
}

// ---------------------------------------------------------------------------

t.test('imapflow over implicit TLS: JMAPACCESS, no STARTTLS/LOGINDISABLED, 20 MB byte-identical', async (t) => {
  const proxy = await tlsProxy(t);
  const client = await imapflowFor(t, proxy.tlsPort as number, 'alice', 'alicepw', { secure: true, tls: tlsOptions() });
  t.ok(client.tls && client.tls.authorized, 'the proxy certificate verified against the test CA');
  const caps = capabilityNames(client);
  t.equal(countAtom(caps, 'JMAPACCESS'), 1, 'JMAPACCESS after login');
  t.equal(countAtom(caps, 'STARTTLS'), 0, 'no STARTTLS inside TLS');
  t.equal(countAtom(caps, 'LOGINDISABLED'), 0, 'no LOGINDISABLED inside TLS');
  t.match(proxy.logs().find((l) => l.msg === 'connection opened'), { tls: true });
  t.match(proxy.logs().find((l) => l.msg === 'login succeeded'), { user: 'alice', jmapaccess: 'granted' });

  const message = makeMessage(20 * MB, 'twenty megabytes through TLS');
  const appended = await client.append('INBOX', message);
  t.ok(appended && appended.uid, 'APPEND completed with a UID');
  const lock = await client.getMailboxLock('INBOX');
  try {
    const fetched = await client.fetchOne(String(appended ? appended.uid : '*'), { source: true }, { uid: true });
    t.ok(fetched, 'FETCH found the message');
    t.equal(fetched ? fetched.source?.length : -1, message.length, 'same length');
    t.equal(sha256(fetched ? (fetched.source ?? Buffer.alloc(0)) : Buffer.alloc(0)), sha256(message), 'same sha256');
  } finally {
    lock.release();
  }
  const [session] = proxy.server.snapshot();
  t.ok(session && session.bytesFromClient > 20 * MB && session.bytesFromUpstream > 20 * MB, 'the 20 MB went through the proxy both ways');
});

t.test('imapflow over STARTTLS: STARTTLS + LOGINDISABLED before, JMAPACCESS after, Dovecot link stays plain', async (t) => {
  // Control: Dovecot offers STARTTLS itself, and logs TLS for a session that used it.
  const { greeting: direct } = await rawClient(t, dovecot.port);
  t.equal(countAtom(capabilityLists(direct)[0] ?? [], 'STARTTLS'), 1, `Dovecot offers STARTTLS: ${direct.trim()}`);
  const bobBefore = (await dovecotLogins('bob')).length;
  await imapflowFor(t, dovecot.port, 'bob', 'bobpw', { secure: false, doSTARTTLS: true, tls: tlsOptions() });
  const [control] = await newDovecotLogins('bob', bobBefore);
  t.match(control, /\bTLS\b/, `a direct STARTTLS login is logged with TLS: ${control}`);

  const proxy = await tlsProxy(t);
  const { greeting } = await rawClient(t, proxy.port);
  const before = capabilityLists(greeting)[0] ?? [];
  t.ok(before.length > 0, `greeting carries capabilities: ${greeting.trim()}`);
  t.equal(countAtom(before, 'STARTTLS'), 1, 'STARTTLS before TLS');
  t.equal(countAtom(before, 'LOGINDISABLED'), 1, 'LOGINDISABLED before TLS');
  t.same(before.filter((c) => c.startsWith('AUTH=')), [], 'no AUTH= before TLS');

  const aliceBefore = (await dovecotLogins('alice')).length;
  const client = await imapflowFor(t, proxy.port, 'alice', 'alicepw', { secure: false, doSTARTTLS: true, tls: tlsOptions() });
  t.ok(client.secureConnection, 'imapflow upgraded the connection');
  t.ok(client.tls && client.tls.authorized, 'the proxy certificate verified');
  const caps = capabilityNames(client);
  t.equal(countAtom(caps, 'JMAPACCESS'), 1, 'JMAPACCESS after login');
  t.equal(countAtom(caps, 'STARTTLS'), 0);
  t.equal(countAtom(caps, 'LOGINDISABLED'), 0);
  t.ok(proxy.logs().some((l) => l.msg === 'STARTTLS done'), 'the proxy did the STARTTLS');
  const list = await client.list();
  t.ok(list.some((m) => m.path === 'INBOX'), 'the session works');

  const [login] = await newDovecotLogins('alice', aliceBefore);
  t.notMatch(login, /\bTLS\b/, `the proxy's link to Dovecot is plain: ${login}`);
  t.notMatch(await dovecot.readLog(), /STARTTLS/, 'Dovecot never logged a STARTTLS');
});

t.test('Python imaplib: --tls and --starttls log in with JMAPACCESS; plaintext login is NO [PRIVACYREQUIRED]', async (t) => {
  const proxy = await tlsProxy(t);
  const implicit = await imaplib(proxy.tlsPort as number, ['alice', 'alicepw', '--getjmapaccess', '--tls', '--cafile', ca.caFile]);
  t.match(implicit.tls_version, /^TLSv1\.[23]$/, 'implicit TLS negotiated');
  t.equal(countAtom(implicit.greeting_caps, 'STARTTLS'), 0, 'implicit TLS: no STARTTLS');
  t.equal(countAtom(implicit.greeting_caps, 'LOGINDISABLED'), 0, 'implicit TLS: no LOGINDISABLED');
  t.equal(implicit.login, 'OK', 'implicit TLS: login OK');
  t.equal(countAtom(implicit.caps_after, 'JMAPACCESS'), 1, 'implicit TLS: JMAPACCESS in caps_after');
  t.same(implicit.getjmapaccess, { typ: 'OK', data: [JMAP_URL_QUOTED] }, 'implicit TLS: GETJMAPACCESS OK');
  t.equal(implicit.fetched_equal, true, 'implicit TLS: fetched bytes equal');

  const upgraded = await imaplib(proxy.port, ['alice', 'alicepw', '--getjmapaccess', '--starttls', '--cafile', ca.caFile]);
  t.equal(countAtom(upgraded.greeting_caps, 'STARTTLS'), 1, 'STARTTLS: offered in plaintext');
  t.equal(countAtom(upgraded.greeting_caps, 'LOGINDISABLED'), 1, 'STARTTLS: LOGINDISABLED in plaintext');
  t.equal(upgraded.starttls, 'OK');
  t.match(upgraded.tls_version, /^TLSv1\.[23]$/);
  t.equal(countAtom(upgraded.caps_after_starttls ?? [], 'STARTTLS'), 0, 'STARTTLS: not offered again inside TLS');
  t.equal(countAtom(upgraded.caps_after_starttls ?? [], 'LOGINDISABLED'), 0, 'STARTTLS: logins enabled inside TLS');
  t.equal(upgraded.login, 'OK', 'STARTTLS: login OK');
  t.equal(countAtom(upgraded.caps_after, 'JMAPACCESS'), 1, 'STARTTLS: JMAPACCESS in caps_after');
  t.same(upgraded.getjmapaccess, { typ: 'OK', data: [JMAP_URL_QUOTED] }, 'STARTTLS: GETJMAPACCESS OK');
  t.equal(upgraded.fetched_equal, true, 'STARTTLS: fetched bytes equal');

  const plain = await imaplib(proxy.port, ['alice', 'alicepw', '--getjmapaccess']);
  t.equal(plain.login, 'NO', 'plaintext login refused');
  t.match(plain.login_error, /PRIVACYREQUIRED/);
  t.same(plain.caps_after, []);
  t.equal(plain.getjmapaccess, null);
  t.equal(proxy.logs().filter((l) => l.msg === 'login refused before STARTTLS').length, 1);
});

t.test('openssl s_client -starttls imap: the proxy certificate, verified', async (t) => {
  const proxy = await tlsProxy(t);
  const child = spawn(
    'openssl',
    ['s_client', '-starttls', 'imap', '-connect', `127.0.0.1:${proxy.port}`, '-CAfile', ca.caFile, '-servername', 'localhost', '-verify_return_error'],
    { stdio: ['pipe', 'pipe', 'pipe'] },
  );
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('latin1').on('data', (d: string) => (stdout += d));
  child.stderr.setEncoding('latin1').on('data', (d: string) => (stderr += d));
  const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  await waitFor(() => /Verify return code: \d+/.test(stdout) || child.exitCode !== null, 's_client handshake', 10_000);
  child.stdin.write('a LOGOUT\r\n');
  const code = await Promise.race([exited, sleep(10_000).then(() => 'timeout' as const)]);
  t.equal(code, 0, `s_client exit status (stderr: ${stderr.trim()})`);
  t.match(stdout, /subject=\s*CN\s*=\s*localhost/, 'the proxy certificate subject');
  t.match(stdout, /Verify return code: 0 \(ok\)/);
  t.match(stdout, /\* BYE /, 'LOGOUT answered inside TLS');
  t.ok(proxy.logs().some((l) => l.msg === 'STARTTLS done'));
});

t.test('STARTTLS injection against the real Dovecot: the pipelined plaintext LOGIN never runs', async (t) => {
  const proxy = await tlsProxy(t);
  const { client } = await rawClient(t, proxy.port);
  client.send('a STARTTLS\r\nb LOGIN alice alicepw\r\n'); // one write
  t.equal(await client.readUntil('a OK'), 'a OK Begin TLS negotiation now\r\n', 'only the STARTTLS answer, in plaintext');
  const secure = await upgrade(client);
  t.teardown(() => secure.destroy());
  t.equal(secure.getPeerCertificate().subject.CN, 'localhost');
  const r = reader(secure);
  secure.write('c NOOP\r\n');
  const noop = await r.until(/(^|\n)c (OK|NO|BAD)[^\n]*\n/);
  t.match(noop, /(^|\n)c OK /, 'c answers');
  t.notMatch(noop, /(^|\n)b /, 'no response for b');
  secure.write('d GETJMAPACCESS\r\n');
  const d = await r.until(/(^|\n)d (OK|NO|BAD)[^\n]*\n/);
  t.equal(d, 'd BAD GETJMAPACCESS is valid only after authentication\r\n', 'still not authenticated');
  t.notMatch(noop + d + r.pending(), /(^|\n)b /, 'never a b response');
  t.match(proxy.server.snapshot(), [{ state: 'not-authenticated' }]);
  t.notOk(
    proxy.logs().some((l) => /^login /.test(String(l.msg))),
    'the proxy neither forwarded nor refused the injected LOGIN (it was dropped unread)',
  );
});

t.test('STARTTLS injection behind a command still in flight at Dovecot: dropped too', async (t) => {
  const proxy = await tlsProxy(t);
  const { client } = await rawClient(t, proxy.port);
  // The STARTTLS waits for the NOOP's answer from Dovecot; the LOGIN behind it must still be dropped.
  client.send('x NOOP\r\na STARTTLS\r\nb LOGIN alice alicepw\r\n');
  t.match(await client.readUntil('a OK'), /^x OK [^\r\n]*\r\na OK Begin TLS negotiation now\r\n$/);
  const secure = await upgrade(client);
  t.teardown(() => secure.destroy());
  const r = reader(secure);
  secure.write('c NOOP\r\nd GETJMAPACCESS\r\n');
  const answers = await r.until(/(^|\n)d (OK|NO|BAD)[^\n]*\n/);
  t.match(answers, /^c OK [^\r\n]*\r\nd BAD GETJMAPACCESS is valid only after authentication\r\n$/, 'no b response, still not authenticated');
  t.notOk(proxy.logs().some((l) => /^login /.test(String(l.msg))), 'the injected LOGIN was dropped unread');
});

t.test('--tls-min-version TLSv1.3: a TLS 1.2 client is refused on both ports', async (t) => {
  const proxy = await tlsProxy(t, { tlsMinVersion: 'TLSv1.3' });
  const handshake = (options: tls.ConnectionOptions) =>
    new Promise<string>((resolve) => {
      const socket = tls.connect({ ca: ca.ca, servername: 'localhost', maxVersion: 'TLSv1.2', ...options }, () => {
        resolve(`connected with ${socket.getProtocol()}`);
        socket.destroy();
      });
      socket.once('error', (err) => resolve(`error: ${err.message}`));
    });
  t.match(await handshake({ host: '127.0.0.1', port: proxy.tlsPort as number }), /^error: .*protocol version/, 'implicit TLS');
  const { client } = await rawClient(t, proxy.port);
  client.send('a STARTTLS\r\n');
  await client.readUntil('a OK');
  client.socket.removeAllListeners('data');
  t.match(await handshake({ socket: client.socket }), /^error: .*protocol version/, 'STARTTLS');
  await waitFor(() => proxy.server.connectionCount === 0, 'the failed sessions to end', 5000);
  t.match(await handshake({ host: '127.0.0.1', port: proxy.tlsPort as number, maxVersion: 'TLSv1.3' }), /^connected with TLSv1\.3$/, 'TLS 1.3 is fine');
});

// ---------------------------------------------------------------------------
// Certificate rotation through the CLI process.

interface CliProcess {
  child: ChildProcess;
  plainPort: number;
  tlsPort: number;
  /** Parsed log lines (stdout) so far. */
  logs(): Array<Record<string, unknown>>;
}

async function startCli(t: Test, args: string[]): Promise<CliProcess> {
  const { child, logs, waitLog } = startCliProcess(t, args);
  await waitLog((l) => l.msg === 'listening', 'the CLI to listen');
  const listening = logs().find((l) => l.msg === 'listening') as { listen: string; listenTls: string };
  const port = (hostPort: string) => Number(hostPort.slice(hostPort.lastIndexOf(':') + 1));
  return { child, plainPort: port(listening.listen), tlsPort: port(listening.listenTls), logs };
}

/** The serial number of the certificate a new implicit-TLS handshake gets (with SNI localhost, or none). */
function servedSerial(port: number, servername: string | null): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: '127.0.0.1', port, ca: ca.ca, ...(servername ? { servername } : {}) }, () => {
      const serial = socket.getPeerCertificate().serialNumber;
      socket.destroy();
      resolve(serial);
    });
    socket.once('error', reject);
  });
}

/** The serial number of the certificate the plain port's STARTTLS hands out. */
async function starttlsSerial(t: Test, port: number): Promise<string> {
  const { client } = await rawClient(t, port);
  client.send('s STARTTLS\r\n');
  await client.readUntil('s OK');
  const secure = await upgrade(client);
  const serial = secure.getPeerCertificate().serialNumber;
  secure.destroy();
  return serial;
}

const serialOf = (cert: IssuedCertificate) => new X509Certificate(cert.cert).serialNumber;

/** Overwrites the live files in place. */
function install(cert: IssuedCertificate, live: { certFile: string; keyFile: string }): void {
  copyFileSync(cert.keyFile, live.keyFile);
  copyFileSync(cert.certFile, live.certFile);
}

/** Replaces the live files by renaming new ones over them (new inodes), as deployment tools do. */
function installByRename(cert: IssuedCertificate, live: { certFile: string; keyFile: string }): void {
  copyFileSync(cert.keyFile, `${live.keyFile}.new`);
  copyFileSync(cert.certFile, `${live.certFile}.new`);
  renameSync(`${live.keyFile}.new`, live.keyFile);
  renameSync(`${live.certFile}.new`, live.certFile);
}

t.test('CLI: certificate rotation by SIGHUP and by file change under an open TLS session; a broken file keeps the old one', async (t) => {
  const dir = mkdtempSync(path.join(tmpdir(), 'jap-rot-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const live = { certFile: path.join(dir, 'live.crt'), keyFile: path.join(dir, 'live.key') };
  const first = ca.issue('cli-rot-1', ['localhost', '127.0.0.1']);
  install(first, live);
  const cli = await startCli(t, [
    '--listen', '127.0.0.1:0',
    '--listen-tls', '127.0.0.1:0',
    '--upstream', `imap://127.0.0.1:${dovecot.port}`,
    '--jmap-url', JMAP_URL,
    '--objectid', 'assume',
    '--tls-cert', live.certFile,
    '--tls-key', live.keyFile,
  ]);
  const logsSince = (mark: number) => cli.logs().slice(mark);

  const session = await imapflowFor(t, cli.tlsPort, 'alice', 'alicepw', { secure: true, tls: tlsOptions() });
  t.equal(countAtom(capabilityNames(session), 'JMAPACCESS'), 1, 'the open session logged in with JMAPACCESS');
  t.equal(await servedSerial(cli.tlsPort, 'localhost'), serialOf(first), 'first certificate served');

  // 1. New files + SIGHUP.
  const second = ca.issue('cli-rot-2', ['localhost', '127.0.0.1']);
  let mark = cli.logs().length;
  install(second, live);
  cli.child.kill('SIGHUP');
  await waitFor(
    () => logsSince(mark).some((l) => l.msg === 'certificates reloaded' && l.reason === 'SIGHUP'),
    'a SIGHUP reload',
    5000,
  );
  t.ok(logsSince(mark).some((l) => l.msg === 'SIGHUP: effective configuration'), 'SIGHUP logged');
  t.equal(await servedSerial(cli.tlsPort, 'localhost'), serialOf(second), 'after SIGHUP: new certificate (SNI localhost)');
  t.equal(await servedSerial(cli.tlsPort, null), serialOf(second), 'after SIGHUP: new certificate (no SNI)');
  t.equal(await starttlsSerial(t, cli.plainPort), serialOf(second), 'after SIGHUP: new certificate through STARTTLS');
  await session.noop();
  t.ok((await session.list()).some((m) => m.path === 'INBOX'), 'the session opened before the reload still works');

  // 2. A broken certificate file + SIGHUP: logged, the previous certificate stays.
  mark = cli.logs().length;
  writeFileSync(live.certFile, '-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n');
  cli.child.kill('SIGHUP');
  await waitFor(
    () => logsSince(mark).some((l) => /certificate reload failed/.test(String(l.msg)) && l.reason === 'SIGHUP'),
    'a failed SIGHUP reload to be logged',
    5000,
  );
  t.match(logsSince(mark).find((l) => /certificate reload failed/.test(String(l.msg))), { level: 50, err: /live\.crt/ });
  t.equal(await servedSerial(cli.tlsPort, 'localhost'), serialOf(second), 'broken file: the previous certificate stays (SNI)');
  t.equal(await servedSerial(cli.tlsPort, null), serialOf(second), 'broken file: the previous certificate stays (no SNI)');
  t.equal(await starttlsSerial(t, cli.plainPort), serialOf(second), 'broken file: the previous certificate stays (STARTTLS)');
  t.equal(cli.child.exitCode, null, 'the process lives on');

  // 3. New files renamed into place, no signal: the watcher (2 s poll) picks them up.
  const third = ca.issue('cli-rot-3', ['localhost', '127.0.0.1']);
  mark = cli.logs().length;
  installByRename(third, live);
  const deadline = Date.now() + 8000;
  let served = '';
  while (Date.now() < deadline) {
    served = await servedSerial(cli.tlsPort, 'localhost');
    if (served === serialOf(third)) break;
    await sleep(250);
  }
  t.equal(served, serialOf(third), 'after the file change: new certificate without a signal');
  t.equal(await servedSerial(cli.tlsPort, null), serialOf(third), 'file change: no SNI too');
  t.ok(
    logsSince(mark).some((l) => l.msg === 'certificates reloaded' && /live\.(crt|key) changed/.test(String(l.reason))),
    'the reload came from the file watcher',
  );
  await session.noop();
  t.ok((await session.list()).some((m) => m.path === 'INBOX'), 'the session opened before every reload still works');
  t.equal(cli.child.exitCode, null);
});
