/**
 * TLS toward clients: implicit TLS, STARTTLS done by the proxy itself,
 * LOGINDISABLED until then, SNI, certificate reload. The upstream is the
 * SCRIPTED FAKE SERVER (test/harness/scripted-upstream.ts) so that the test
 * sees exactly what reaches it; test/integration/tls.test.ts runs real
 * clients through the proxy to a real Dovecot.
 */

import t, { type Test } from 'tap';
import tls from 'node:tls';
import { copyFileSync } from 'node:fs';
import { X509Certificate } from 'node:crypto';
import { startProxy, type RunningProxy } from './harness/proxy.js';
import { RawClient } from './harness/raw-client.js';
import { startScriptedUpstream, type ScriptedConnection, type ScriptedUpstream } from './harness/scripted-upstream.js';
import { makeTestCa, type TestCa } from './harness/pki.js';
import type { RawConfig } from '../src/config.js';

const GREETING = '* OK [CAPABILITY IMAP4rev1 LITERAL+ SASL-IR STARTTLS AUTH=PLAIN AUTH=LOGIN] fake ready\r\n';

let ca: TestCa;
t.before(() => {
  ca = makeTestCa();
});
t.teardown(() => ca.remove());

async function rig(t: Test, config: Partial<RawConfig> = {}) {
  const main = ca.issue('main', ['localhost', '127.0.0.1']);
  const upstream: ScriptedUpstream = await startScriptedUpstream();
  const proxy: RunningProxy = await startProxy({
    upstreamPort: upstream.port,
    tlsCert: [main.certFile],
    tlsKey: [main.keyFile],
    listenTls: '127.0.0.1:0',
    ...config,
  });
  t.teardown(async () => {
    await proxy.close();
    await upstream.close();
  });
  return { proxy, upstream, main };
}

/** Connects over implicit TLS and returns a RawClient-like reader over the TLS socket. */
function tlsConnect(port: number, servername = 'localhost'): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: '127.0.0.1', port, ca: ca.ca, servername }, () => resolve(socket));
    socket.once('error', reject);
  });
}

function reader(socket: tls.TLSSocket) {
  let text = '';
  const waiters: Array<() => void> = [];
  socket.setEncoding('latin1');
  socket.on('data', (d: string) => {
    text += d;
    waiters.splice(0).forEach((w) => w());
  });
  return {
    async until(re: RegExp): Promise<string> {
      const deadline = Date.now() + 5000;
      while (!re.test(text)) {
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
  };
}

async function greet(server: ScriptedConnection) {
  server.send(GREETING);
}

t.test('plain link with a certificate: STARTTLS offered, logins disabled, AUTH= hidden', async (t) => {
  const { proxy, upstream } = await rig(t);
  const client = await RawClient.connect(proxy.port);
  t.teardown(() => client.close());
  const server = await upstream.accept();
  await greet(server);
  t.equal(await client.readUntil('\n'), '* OK [CAPABILITY IMAP4rev1 LITERAL+ SASL-IR STARTTLS LOGINDISABLED] fake ready\r\n');
  client.send('a LOGIN alice secret\r\nb AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==\r\n');
  t.match(await client.response('b'), /^a NO \[PRIVACYREQUIRED\][^\n]*\nb NO \[PRIVACYREQUIRED\]/);
  t.equal(server.pending(), '', 'no credentials reached the upstream');
});

t.test('STARTTLS: done by the proxy, injected plaintext dropped, capabilities recomputed', async (t) => {
  const { proxy, upstream } = await rig(t);
  const client = await RawClient.connect(proxy.port);
  t.teardown(() => client.close());
  const server = await upstream.accept();
  await greet(server);
  await client.readUntil('\n');
  // CVE-2011-0411: a command pipelined in plaintext after STARTTLS must never run.
  client.socket.pause();
  client.send('a STARTTLS\r\nb LOGIN alice injected\r\n');
  client.socket.resume();
  t.equal(await client.readUntil('a OK'), 'a OK Begin TLS negotiation now\r\n');
  client.socket.removeAllListeners('data');
  const secure = await new Promise<tls.TLSSocket>((resolve, reject) => {
    const s = tls.connect({ socket: client.socket, ca: ca.ca, servername: 'localhost' }, () => resolve(s));
    s.once('error', reject);
  });
  t.equal(secure.getPeerCertificate().subject.CN, 'localhost', 'the proxy\'s certificate');
  const r = reader(secure);
  secure.write('c CAPABILITY\r\n');
  t.equal(await server.line(), 'c CAPABILITY', 'the upstream never saw STARTTLS or the injected LOGIN');
  server.send('* CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN SASL-IR\r\nc OK done\r\n');
  t.equal(await r.until(/c OK/), '* CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR\r\nc OK done\r\n', 'no STARTTLS, no LOGINDISABLED inside TLS');
  secure.write('d LOGIN alice secret\r\n');
  t.equal(await server.line(), 'd LOGIN alice secret', 'logins pass inside TLS');
  server.send('d OK [CAPABILITY IMAP4rev1 OBJECTID] in\r\n');
  t.match(await r.until(/d OK/), /^d OK \[CAPABILITY IMAP4rev1 OBJECTID COMPRESS=DEFLATE JMAPACCESS\] in/, 'after login: the proxy offers its own COMPRESS');
  secure.write('e STARTTLS\r\n');
  t.match(await r.until(/e (OK|NO|BAD)/), /^e BAD/);
  secure.destroy();
});

t.test('implicit TLS: no STARTTLS, no LOGINDISABLED, logins pass', async (t) => {
  const { proxy, upstream } = await rig(t);
  const secure = await tlsConnect(proxy.tlsPort as number);
  t.teardown(() => secure.destroy());
  const server = await upstream.accept();
  const r = reader(secure);
  await greet(server);
  t.equal(await r.until(/\n/), '* OK [CAPABILITY IMAP4rev1 LITERAL+ SASL-IR AUTH=PLAIN AUTH=LOGIN] fake ready\r\n');
  secure.write('a LOGIN alice secret\r\n');
  t.equal(await server.line(), 'a LOGIN alice secret');
  t.match(proxy.logs().find((l) => l.msg === 'connection opened'), { tls: true });
});

t.test('SNI picks the certificate whose names match; the first is the default', async (t) => {
  const main = ca.issue('sni-main', ['localhost']);
  const other = ca.issue('sni-other', ['mail.example.test']);
  const { proxy, upstream } = await rig(t, { tlsCert: [main.certFile, other.certFile], tlsKey: [main.keyFile, other.keyFile] });
  for (const [name, cn] of [['mail.example.test', 'mail.example.test'], ['localhost', 'localhost'], ['unknown.example', 'localhost']] as const) {
    const s = await new Promise<tls.TLSSocket>((resolve, reject) => {
      const socket = tls.connect({ host: '127.0.0.1', port: proxy.tlsPort as number, ca: ca.ca, servername: name, rejectUnauthorized: false }, () =>
        resolve(socket),
      );
      socket.once('error', reject);
    });
    t.equal(s.getPeerCertificate().subject.CN, cn, `SNI ${name}`);
    s.destroy();
  }
  t.ok(upstream, 'the upstream is only needed for sessions that complete their handshake');
});

t.test('certificate reload: new handshakes get the new certificate, open connections live on, a bad file keeps the old one', async (t) => {
  const first = ca.issue('rot-1', ['localhost']);
  const live = ca.issue('rot-live', ['localhost']);
  copyFileSync(first.certFile, live.certFile);
  copyFileSync(first.keyFile, live.keyFile);
  const { proxy, upstream } = await rig(t, { tlsCert: [live.certFile], tlsKey: [live.keyFile] });
  const open = await tlsConnect(proxy.tlsPort as number);
  t.teardown(() => open.destroy());
  const server = await upstream.accept();
  const r = reader(open);
  await greet(server);
  await r.until(/\n/);
  const serialBefore = open.getPeerCertificate().serialNumber;

  const second = ca.issue('rot-2', ['localhost']);
  copyFileSync(second.certFile, live.certFile);
  copyFileSync(second.keyFile, live.keyFile);
  t.ok(proxy.server.reloadCertificates('test'), 'reload succeeded');
  const after = await tlsConnect(proxy.tlsPort as number);
  t.equal(after.getPeerCertificate().serialNumber, new X509Certificate(second.cert).serialNumber, 'new handshake, new certificate');
  t.not(after.getPeerCertificate().serialNumber, serialBefore);
  after.destroy();

  open.write('a NOOP\r\n');
  t.equal(await server.line(), 'a NOOP', 'the connection opened before the reload still relays');
  server.send('a OK\r\n');
  await r.until(/a OK/);

  copyFileSync(first.keyFile, live.keyFile); // key no longer matches the certificate
  t.notOk(proxy.server.reloadCertificates('test'), 'a mismatched key is refused');
  t.ok(proxy.logs().some((l) => l.msg === 'certificate reload failed; keeping the previous certificates'));
  const still = await tlsConnect(proxy.tlsPort as number);
  t.equal(still.getPeerCertificate().serialNumber, new X509Certificate(second.cert).serialNumber, 'the previous certificate stays');
  still.destroy();
});

t.test('--require-tls false: a certificate, STARTTLS offered, plaintext logins still allowed', async (t) => {
  const { proxy, upstream } = await rig(t, { requireTls: false });
  const client = await RawClient.connect(proxy.port);
  t.teardown(() => client.close());
  const server = await upstream.accept();
  await greet(server);
  t.equal(await client.readUntil('\n'), '* OK [CAPABILITY IMAP4rev1 LITERAL+ SASL-IR AUTH=PLAIN AUTH=LOGIN STARTTLS] fake ready\r\n');
  client.send('a LOGIN alice secret\r\n');
  t.equal(await server.line(), 'a LOGIN alice secret');
});
