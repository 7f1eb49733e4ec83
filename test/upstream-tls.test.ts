/**
 * TLS toward the upstream, against a real Dovecot with `ssl = required`
 * and a certificate from the test CA: imaps://, STARTTLS run by the proxy,
 * verification on by default, and a clear failure when it does not verify.
 */

import t, { type Test } from 'tap';
import { freePort, startDovecot, type Dovecot } from './harness/dovecot.js';
import { makeTestCa, type TestCa } from './harness/pki.js';
import { startProxy } from './harness/proxy.js';
import { RawClient } from './harness/raw-client.js';
import type { RawConfig } from '../src/config.js';

let ca: TestCa;
let otherCa: TestCa;
let dovecot: Dovecot;
let imapsPort: number;

t.before(async () => {
  ca = makeTestCa();
  otherCa = makeTestCa();
  const server = ca.issue('dovecot', ['imap.example.test', '127.0.0.1']);
  imapsPort = await freePort();
  dovecot = await startDovecot({
    extraConfig: [
      'ssl = required',
      `ssl_cert = <${server.certFile}`,
      `ssl_key = <${server.keyFile}`,
      'disable_plaintext_auth = yes',
      'service imap-login {',
      `  inet_listener imaps {`,
      `    address = 127.0.0.1`,
      `    port = ${imapsPort}`,
      `    ssl = yes`,
      '  }',
      '}',
    ].join('\n'),
  });
});
t.teardown(async () => {
  await dovecot?.stop();
  ca?.remove();
  otherCa?.remove();
});

async function session(t: Test, config: Partial<RawConfig>) {
  const proxy = await startProxy({ upstreamPort: 0, objectId: 'assume', ...config });
  const client = await RawClient.connect(proxy.port);
  t.teardown(async () => {
    client.close();
    await proxy.close();
  });
  return { proxy, client };
}

t.test('imaps:// with the test CA: relayed, logged in, JMAPACCESS', async (t) => {
  const { proxy, client } = await session(t, { upstream: `imaps://127.0.0.1:${imapsPort}`, upstreamCa: ca.caFile });
  const greeting = await client.readUntil('\n');
  t.match(greeting, /^\* OK \[CAPABILITY [^\]]*AUTH=PLAIN/, 'a greeting with mechanisms: the upstream link is TLS');
  t.notMatch(greeting, /STARTTLS|LOGINDISABLED/);
  client.send('a LOGIN alice alicepw\r\nb GETJMAPACCESS\r\n');
  t.match(await client.response('b'), /a OK \[CAPABILITY [^\]]*JMAPACCESS\][^\n]*\n\* JMAPACCESS "/);
  t.match(proxy.logs().find((l) => l.msg === 'upstream connected'), { tls: /^TLSv1\.[23]$/ });
});

t.test('STARTTLS toward the upstream: the client only ever sees the post-TLS capabilities', async (t) => {
  const { proxy, client } = await session(t, {
    upstream: `imap://127.0.0.1:${dovecot.port}?starttls`,
    upstreamCa: ca.caFile,
    upstreamServername: 'imap.example.test',
  });
  const greeting = await client.readUntil('\n');
  t.match(greeting, /^\* OK \[CAPABILITY IMAP4rev1 [^\]]*AUTH=PLAIN[^\]]*\] Dovecot/, 'post-TLS list and the original text');
  t.notMatch(greeting, /LOGINDISABLED|STARTTLS/, 'the pre-TLS LOGINDISABLED never reaches the client');
  client.send('a LOGIN alice alicepw\r\n');
  t.match(await client.response('a'), /^(\* CAPABILITY[^\n]*\n)?a OK/);
  t.ok(proxy.logs().some((l) => l.msg === 'login succeeded'));
  const log = await dovecot.readLog();
  t.match(log, /imap-login: (Info: )?Login: user=<alice>, .*TLS/, 'Dovecot saw the login inside TLS');
});

t.test('--upstream-starttls flag is the same as ?starttls', async (t) => {
  const { client, proxy } = await session(t, {
    upstream: `imap://127.0.0.1:${dovecot.port}`,
    upstreamStarttls: true,
    upstreamCa: ca.caFile,
  });
  t.match(await client.readUntil('\n'), /^\* OK \[CAPABILITY [^\]]*AUTH=PLAIN/);
  t.notOk(proxy.logs().some((l) => l.msg === 'upstream connect failed'), 'verified against the IP address in the certificate');
});

for (const [name, config, code] of [
  ['imaps:// against an untrusted CA', () => ({ upstream: `imaps://127.0.0.1:${imapsPort}`, upstreamCa: otherCa.caFile }), /UNABLE_TO_VERIFY|SELF_SIGNED|unable to verify/i],
  ['imaps:// with the wrong name', () => ({ upstream: `imaps://127.0.0.1:${imapsPort}`, upstreamCa: ca.caFile, upstreamServername: 'other.example.test' }), /ALTNAME|does not match/i],
  ['STARTTLS against an untrusted CA', () => ({ upstream: `imap://127.0.0.1:${dovecot.port}?starttls`, upstreamCa: otherCa.caFile }), /UNABLE_TO_VERIFY|SELF_SIGNED|unable to verify/i],
] as const) {
  t.test(`${name}: the client gets BYE [UNAVAILABLE], the log says why`, async (t) => {
    const { proxy, client } = await session(t, config());
    await client.readUntil('* BYE [UNAVAILABLE]');
    await client.waitClosed();
    const failure = proxy.logs().find((l) => l.msg === 'upstream connect failed');
    t.ok(failure, 'logged');
    t.match(`${failure?.code} ${failure?.err}`, code);
  });
}

t.test('--upstream-tls-insecure accepts an unverifiable certificate', async (t) => {
  const { client } = await session(t, { upstream: `imaps://127.0.0.1:${imapsPort}`, upstreamTlsInsecure: true });
  t.match(await client.readUntil('\n'), /^\* OK \[CAPABILITY /);
});
