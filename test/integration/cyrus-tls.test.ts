/**
 * The proxy in front of "Cyrus over TLS": a real Cyrus IMAP 3.6 with a
 * certificate from the test CA, reached with implicit TLS (imaps://) and
 * with STARTTLS run by the proxy, under the default --objectid require and
 * --jmap-url set to Cyrus's own JMAP session URL. JMAPACCESS must come out
 * exactly as over plain TCP, big literals must pass through the TLS link
 * unchanged, and a certificate that does not verify must fail cleanly.
 */

import t, { type Test } from 'tap';
import { ensureCyrusInstalled, startCyrus, type Cyrus } from '../harness/cyrus.js';
import { makeTestCa } from '../harness/pki.js';
import {
  RawClient,
  capabilityLists,
  countAtom,
  literalAfter,
  makeMessage,
  proxyFor,
  rawClient,
  rawLogin,
  sha256,
  waitFor,
  type ProxyOptions,
  type RunningProxy,
} from './helpers.js';

await ensureCyrusInstalled();
const ca = makeTestCa();
t.teardown(() => ca.remove());
const otherCa = makeTestCa();
t.teardown(() => otherCa.remove());
const cyrus: Cyrus = await startCyrus({ tls: ca.issue('cyrus', ['imap.example.test', '127.0.0.1']) });
t.teardown(() => cyrus.stop());

const JMAPACCESS_LINE = `* JMAPACCESS "${cyrus.jmapSessionUrl}"\r\n`;
const tlsPort = cyrus.tlsPort as number;
const IMAPS = `imaps://127.0.0.1:${tlsPort}`;
const STARTTLS = `imap://127.0.0.1:${cyrus.port}?starttls`;

/** The proxy as an operator would run it in front of this Cyrus, plus the given upstream settings. */
function tlsProxy(t: Test, options: ProxyOptions): Promise<RunningProxy> {
  return proxyFor(t, cyrus.port, { jmapUrl: cyrus.jmapSessionUrl, allowInsecureJmapUrl: true, ...options });
}

/** The one capability list in a response text (fails the test if there is not exactly one). */
function onlyList(t: Test, text: string, what: string): string[] {
  const lists = capabilityLists(text);
  t.equal(lists.length, 1, `${what}: one capability list`);
  return lists[0] ?? [];
}

/** A greeting a client may log in after: mechanisms offered, nothing about TLS or JMAP. Returns its list. */
function assertTlsGreeting(t: Test, greeting: string): string[] {
  t.match(greeting, /^\* OK \[CAPABILITY [^\]]*\] .*Cyrus IMAP .* server ready\r\n$/, 'a Cyrus greeting with its text');
  const list = onlyList(t, greeting, 'greeting');
  t.equal(countAtom(list, 'AUTH=PLAIN'), 1, 'greeting: AUTH=PLAIN (the upstream link is TLS)');
  t.equal(countAtom(list, 'STARTTLS'), 0, 'greeting: no STARTTLS');
  t.equal(countAtom(list, 'LOGINDISABLED'), 0, 'greeting: no LOGINDISABLED');
  t.equal(countAtom(list, 'JMAPACCESS'), 0, 'greeting: no JMAPACCESS');
  return list;
}

/** LOGIN alice: a tagged OK whose list has OBJECTID and JMAPACCESS once; then GETJMAPACCESS gives the Cyrus URL. */
async function assertLoginAndJmapAccess(t: Test, client: RawClient): Promise<void> {
  const login = await rawLogin(client, 'alice', cyrus.users.alice as string);
  t.match(login, /^a OK \[CAPABILITY [^\]]*\] User logged in/m, `LOGIN: tagged OK with the list: ${JSON.stringify(login)}`);
  const list = onlyList(t, login, 'LOGIN');
  t.equal(countAtom(list, 'OBJECTID'), 1, "LOGIN: OBJECTID (Cyrus's post-login list)");
  t.equal(countAtom(list, 'JMAPACCESS'), 1, 'LOGIN: JMAPACCESS exactly once');
  t.equal(countAtom(list, 'STARTTLS'), 0, 'LOGIN: no STARTTLS');
  client.send('b GETJMAPACCESS\r\n');
  t.equal(await client.response('b'), `${JMAPACCESS_LINE}b OK GETJMAPACCESS completed\r\n`, 'GETJMAPACCESS: the Cyrus session URL');
}

t.test('the harness: imaps on its own port, STARTTLS on the plain one', async (t) => {
  t.type(cyrus.tlsPort, 'number');
  t.not(cyrus.tlsPort, cyrus.port);
  t.not(cyrus.tlsPort, cyrus.httpPort);
});

t.test('imaps:// with the test CA: Cyrus greeting, LOGIN, JMAPACCESS, 1 MB byte-identical', async (t) => {
  const proxy = await tlsProxy(t, { upstream: IMAPS, upstreamCa: ca.caFile });
  const { client, greeting } = await rawClient(t, proxy.port);
  assertTlsGreeting(t, greeting);
  await assertLoginAndJmapAccess(t, client);
  t.match(
    proxy.logs().find((l) => l.msg === 'upstream connected'),
    { upstream: `127.0.0.1:${tlsPort}`, tls: /^TLSv1\.[23]$/ },
    'the proxy logged the TLS version of the upstream link',
  );

  const message = makeMessage(1024 * 1024, 'over imaps');
  client.send(`c APPEND INBOX {${message.length}}\r\n`);
  t.match(await client.readUntil('\n'), /^\+ /, "Cyrus's go-ahead reaches the client");
  client.send(message);
  client.send('\r\n');
  const appended = await client.response('c');
  const uid = /\[APPENDUID \d+ (\d+)\]/.exec(appended)?.[1];
  t.ok(uid, `APPEND OK with APPENDUID: ${JSON.stringify(appended)}`);
  client.send('d SELECT INBOX\r\n');
  t.match(await client.response('d'), /\r\nd OK /);
  const before = client.all.length;
  client.send(`e UID FETCH ${uid} BODY.PEEK[]\r\n`);
  await waitFor(() => client.all.indexOf('\r\ne OK ', before, 'latin1') !== -1, 'e OK');
  const literal = literalAfter(client.all.subarray(before), 'BODY[] {');
  t.equal(literal?.bytes.length, message.length, 'FETCH: same length');
  t.equal(sha256(literal?.bytes ?? Buffer.alloc(0)), sha256(message), 'FETCH: same bytes');
  t.match(literal?.rest.toString('latin1'), /^\)\r\ne OK [^\r\n]*\r\n$/, 'the FETCH completes right after the literal');

  const log = await cyrus.readLog();
  t.match(log, /\/imaps\[\d+\]: starttls: TLSv1\.[23] with cipher/, 'Cyrus: a TLS session on the imaps service');
});

t.test('STARTTLS toward Cyrus: the client only sees the post-TLS list; LOGIN and JMAPACCESS as usual', async (t) => {
  const proxy = await tlsProxy(t, { upstream: STARTTLS, upstreamCa: ca.caFile, upstreamServername: 'imap.example.test' });
  const { client, greeting } = await rawClient(t, proxy.port);
  // Cyrus's answer to CAPABILITY inside TLS: its whole pre-login list (OBJECTID too, but no JMAPACCESS before login).
  const list = assertTlsGreeting(t, greeting);
  t.equal(countAtom(list, 'AUTH=LOGIN'), 1, "greeting: Cyrus's post-TLS mechanisms");
  await assertLoginAndJmapAccess(t, client);
  t.notOk(proxy.logs().some((l) => l.msg === 'upstream connect failed'), 'no connect failure logged');

  const log = await cyrus.readLog();
  t.match(log, /\/imap\[\d+\]: starttls: TLSv1\.[23] with cipher/, 'Cyrus: STARTTLS on the plain imap service');
  t.match(log, /login: localhost \[127\.0\.0\.1\] alice plaintext\+TLS User logged in/, 'Cyrus saw the login inside TLS');
});

for (const [name, upstream] of [
  ['imaps://', IMAPS],
  ['STARTTLS', STARTTLS],
] as const) {
  t.test(`${name} with a CA that did not sign Cyrus's certificate: BYE [UNAVAILABLE], the log says why`, async (t) => {
    const proxy = await tlsProxy(t, { upstream, upstreamCa: otherCa.caFile });
    const { client, greeting } = await rawClient(t, proxy.port);
    t.match(greeting, /^\* BYE \[UNAVAILABLE\] /, `the client is told: ${JSON.stringify(greeting)}`);
    await client.waitClosed();
    const failure = proxy.logs().find((l) => l.msg === 'upstream connect failed');
    t.ok(failure, 'logged');
    t.match(
      String(failure?.code),
      /^(UNABLE_TO_VERIFY_LEAF_SIGNATURE|UNABLE_TO_GET_ISSUER_CERT_LOCALLY|SELF_SIGNED_CERT_IN_CHAIN)$/,
      `a verification error code: ${String(failure?.code)}`,
    );
    t.notOk(proxy.logs().some((l) => l.msg === 'upstream connected'), 'never connected');
  });
}
