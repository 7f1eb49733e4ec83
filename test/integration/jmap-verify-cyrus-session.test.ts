/**
 * --jmap-verify through the proxy against a REAL Cyrus 3.6 and its own JMAP
 * server (plain http on loopback, hence --allow-insecure-jmap-url):
 *
 * - a user whose password works for both gets JMAPACCESS (LOGIN, LOGIN with
 *   literals, AUTHENTICATE PLAIN with and without SASL-IR, imapflow) and
 *   GETJMAPACCESS answers Cyrus's session URL;
 * - users whose JMAP access is broken log in over IMAP but get no
 *   JMAPACCESS and a BAD for GETJMAPACCESS (RFC 9698 section 6, example 3),
 *   for real: a --jmap-url at a wrong path on Cyrus's httpd (404), a user
 *   whose JMAP password differs from the IMAP one (Cyrus's httpd reads its
 *   own sasldb: the service-specific `http_sasl_sasldb_path`), and the
 *   Cyrus admin, whose JMAP session has no mail account.
 */

import { spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import t, { type Test } from 'tap';
import { ensureCyrusInstalled, startCyrus, type Cyrus } from '../harness/cyrus.js';
import { isRoot } from '../harness/util.js';
import {
  capabilityLists,
  countAtom,
  imapflowFor,
  imapflowGetJmapAccess,
  lines,
  proxyFor,
  rawClient,
  type ProxyOptions,
  type RunningProxy,
} from './helpers.js';
import {
  DECISIONS_METRIC,
  NOT_FOR_THIS_ACCOUNT,
  VERIFY_METRIC,
  assertJmapAccess,
  lastLogin,
  metricValue,
  plainResponse,
} from './jmap-helpers.js';

const USERS = { alice: 'alice-cy-pw', bob: 'bob-cy-pw', carol: 'carol-cy-pw', dave: 'dave-cy-pw' };
const ADMIN = { user: 'admin', password: 'adminpw' }; // the harness's Cyrus admin
const CAROL_JMAP_PASSWORD = 'carol-jmap-only-pw';

// httpd's own password database: the same passwords at first (the harness
// waits for every user's JMAP session), then carol's JMAP password changes.
const httpDir = mkdtempSync('/tmp/cyrus-httpdb-');
chmodSync(httpDir, 0o755);
t.teardown(() => rmSync(httpDir, { recursive: true, force: true }));
const HTTP_SASLDB = `${httpDir}/sasldb2`;
function saslpasswd(user: string, password: string): void {
  const r = spawnSync('/usr/sbin/saslpasswd2', ['-p', '-c', '-f', HTTP_SASLDB, '-u', 'localhost', user], { input: password });
  if (r.status !== 0) throw new Error(`saslpasswd2 ${user}: ${r.stderr.toString()}`);
  if (isRoot()) spawnSync('chown', ['mail:mail', HTTP_SASLDB]);
}
for (const [user, password] of [[ADMIN.user, ADMIN.password], ...Object.entries(USERS)] as Array<[string, string]>) saslpasswd(user, password);

await ensureCyrusInstalled();
const cyrus: Cyrus = await startCyrus({ users: USERS, extraConfig: { http_sasl_sasldb_path: HTTP_SASLDB } });
t.teardown(() => cyrus.stop());
saslpasswd('carol', CAROL_JMAP_PASSWORD);

const JMAP_URL = cyrus.jmapSessionUrl;
const ORIGIN = new URL(JMAP_URL).origin;

async function sessionStatus(url: string, user: string, password: string): Promise<number> {
  const response = await fetch(url, { headers: { Authorization: `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}` } });
  await response.arrayBuffer();
  return response.status;
}

function cyrusProxy(t: Test, options: ProxyOptions = {}): Promise<RunningProxy> {
  return proxyFor(t, cyrus.port, {
    jmapUrl: JMAP_URL,
    allowInsecureJmapUrl: true,
    jmapVerify: true,
    // Cyrus's httpd forks per connection on a busy 2-core machine.
    jmapVerifyTimeout: '10s',
    ...options,
  });
}

/** The login's answer: a tagged OK with one capability list (Cyrus's, with OBJECTID), JMAPACCESS in it or not. */
function assertLogin(t: Test, text: string, tag: string, granted: boolean): void {
  t.match(lines(text).pop() ?? '', new RegExp(`^${tag} OK `), 'logged in over IMAP');
  const lists = capabilityLists(text);
  t.equal(lists.length, 1, 'one capability list with the login');
  t.equal(countAtom(lists[0] ?? [], 'OBJECTID'), 1, 'Cyrus offers OBJECTID after login');
  t.equal(countAtom(lists[0] ?? [], 'JMAPACCESS'), granted ? 1 : 0, `JMAPACCESS ${granted ? 'once' : 'absent'} in the login's list`);
}

async function assertGreetingClean(t: Test, greeting: string): Promise<void> {
  t.equal(countAtom(capabilityLists(greeting).flat(), 'JMAPACCESS'), 0, 'no JMAPACCESS before login');
}

t.test('premises: the real Cyrus JMAP server accepts and refuses as the tests need', async (t) => {
  t.equal(await sessionStatus(JMAP_URL, 'alice', USERS.alice), 200, 'alice: the IMAP password works for JMAP');
  t.equal(await sessionStatus(JMAP_URL, 'carol', USERS.carol), 401, 'carol: the IMAP password does not work for JMAP');
  t.equal(await sessionStatus(JMAP_URL, 'carol', CAROL_JMAP_PASSWORD), 200, 'carol: her JMAP password does');
  t.equal(await sessionStatus(`${ORIGIN}/jmap/nope/`, 'alice', USERS.alice), 404, 'no session resource at /jmap/nope/');
  const admin = await fetch(`${ORIGIN}/jmap/`, { headers: { Authorization: `Basic ${Buffer.from('admin:adminpw').toString('base64')}` } });
  const session = (await admin.json()) as { accounts: Record<string, { accountCapabilities: unknown }> };
  t.equal(admin.status, 200, 'the admin gets a JMAP session');
  t.equal(session.accounts.admin?.accountCapabilities, null, '... with no mail capability for its account');
});

t.test('a password that works for both: JMAPACCESS and the Cyrus URL', async (t) => {
  await t.test('LOGIN', async (t) => {
    const proxy = await cyrusProxy(t);
    const { client, greeting } = await rawClient(t, proxy.port);
    await assertGreetingClean(t, greeting);
    client.send(`a LOGIN alice "${USERS.alice}"\r\n`);
    assertLogin(t, await client.response('a'), 'a', true);
    await assertJmapAccess(t, client, { url: JMAP_URL });
    t.match(lastLogin(proxy), { user: 'alice', mechanism: 'LOGIN', result: 'OK', jmapaccess: 'granted', reason: 'eligible' });
    t.equal(await metricValue(proxy, VERIFY_METRIC, { result: 'verified', reason: 'ok', cache: 'miss' }), 1, 'metrics: one real probe, verified');

    // The same credentials again: from the cache, Cyrus is not asked.
    const { client: again } = await rawClient(t, proxy.port);
    again.send(`b LOGIN alice "${USERS.alice}"\r\n`);
    assertLogin(t, await again.response('b'), 'b', true);
    t.equal(await metricValue(proxy, VERIFY_METRIC, { cache: 'miss' }), 1, 'still one probe');
    t.equal(await metricValue(proxy, VERIFY_METRIC, { result: 'verified', cache: 'hit' }), 1, 'metrics: a cache hit');
  });

  await t.test('LOGIN with synchronizing literals for the user and the password', async (t) => {
    const proxy = await cyrusProxy(t);
    const { client } = await rawClient(t, proxy.port);
    client.send('a LOGIN {5}\r\n');
    t.match(await client.readUntil('\n'), /^\+ /);
    client.send(`alice {${USERS.alice.length}}\r\n`);
    t.match(await client.readUntil('\n'), /^\+ /);
    client.send(`${USERS.alice}\r\n`);
    assertLogin(t, await client.response('a'), 'a', true);
    await assertJmapAccess(t, client, { url: JMAP_URL });
    t.match(lastLogin(proxy), { user: 'alice', jmapaccess: 'granted' });
    t.equal(await metricValue(proxy, VERIFY_METRIC, { result: 'verified', cache: 'miss' }), 1);
  });

  await t.test('AUTHENTICATE PLAIN with SASL-IR', async (t) => {
    const proxy = await cyrusProxy(t);
    const { client } = await rawClient(t, proxy.port);
    client.send(`a AUTHENTICATE PLAIN ${plainResponse('bob', USERS.bob)}\r\n`);
    assertLogin(t, await client.response('a'), 'a', true);
    await assertJmapAccess(t, client, { url: JMAP_URL });
    t.match(lastLogin(proxy), { user: 'bob', mechanism: 'PLAIN', jmapaccess: 'granted' });
    t.equal(await metricValue(proxy, VERIFY_METRIC, { result: 'verified', cache: 'miss' }), 1);
  });

  await t.test('AUTHENTICATE PLAIN without SASL-IR', async (t) => {
    const proxy = await cyrusProxy(t);
    const { client } = await rawClient(t, proxy.port);
    client.send('a AUTHENTICATE PLAIN\r\n');
    t.match(await client.readUntil('\n'), /^\+/);
    client.send(`${plainResponse('dave', USERS.dave)}\r\n`);
    assertLogin(t, await client.response('a'), 'a', true);
    await assertJmapAccess(t, client, { url: JMAP_URL });
    t.match(lastLogin(proxy), { user: 'dave', mechanism: 'PLAIN', jmapaccess: 'granted' });
    t.equal(await metricValue(proxy, VERIFY_METRIC, { result: 'verified', cache: 'miss' }), 1);
  });

  await t.test('imapflow', async (t) => {
    const proxy = await cyrusProxy(t);
    const flow = await imapflowFor(t, proxy.port, 'bob', USERS.bob);
    t.ok(flow.capabilities.has('JMAPACCESS'), 'JMAPACCESS in what imapflow saw after login');
    t.same(await imapflowGetJmapAccess(flow), { status: 'OK', urls: [JMAP_URL] }, 'GETJMAPACCESS through imapflow');
  });
});

t.test('JMAP access broken: logged in over IMAP, no JMAPACCESS anywhere, GETJMAPACCESS gets BAD (RFC 9698 example 3)', async (t) => {
  await t.test('--jmap-url at a wrong path on Cyrus’s httpd (404)', async (t) => {
    const proxy = await cyrusProxy(t, { jmapUrl: `${ORIGIN}/jmap/nope/` });
    const { client, greeting } = await rawClient(t, proxy.port);
    await assertGreetingClean(t, greeting);
    // RFC 9698 example 3's exchange: the login, then GETJMAPACCESS, pipelined here.
    client.send(`a LOGIN alice "${USERS.alice}"\r\nb GETJMAPACCESS\r\n`);
    const text = await client.response('b');
    const [login, refusal] = [text.slice(0, text.indexOf('\r\nb ') + 2), text.slice(text.indexOf('\r\nb ') + 2)];
    assertLogin(t, login, 'a', false);
    t.equal(refusal, NOT_FOR_THIS_ACCOUNT('b'), 'GETJMAPACCESS: tagged BAD');
    await assertJmapAccess(t, client, 'refused');
    t.match(lastLogin(proxy), { user: 'alice', result: 'OK', jmapaccess: 'refused', reason: 'jmap-not-verified', detail: 'http-status' });
    t.match(
      proxy.logs().find((l) => l.component === 'jmap-verify'),
      { result: 'refused', reason: 'http-status', detail: '404', url: `${ORIGIN}/jmap/nope/`, user: 'alice' },
      'the probe logged with the HTTP status',
    );
    t.equal(await metricValue(proxy, VERIFY_METRIC, { result: 'refused', reason: 'http-status', cache: 'miss' }), 1);
    t.equal(await metricValue(proxy, DECISIONS_METRIC, { decision: 'refused', reason: 'jmap-not-verified' }), 1);
    t.equal(await metricValue(proxy, 'jmapaccess_proxy_getjmapaccess_total', { answer: 'BAD' }), 2);
  });

  await t.test('a user whose JMAP password is not the IMAP one (401 from Cyrus)', async (t) => {
    const proxy = await cyrusProxy(t);
    const { client } = await rawClient(t, proxy.port);
    client.send(`a AUTHENTICATE PLAIN ${plainResponse('carol', USERS.carol)}\r\n`);
    assertLogin(t, await client.response('a'), 'a', false);
    await assertJmapAccess(t, client, 'refused');
    t.match(lastLogin(proxy), { user: 'carol', result: 'OK', jmapaccess: 'refused', reason: 'jmap-not-verified', detail: 'unauthorized' });
    t.equal(await metricValue(proxy, VERIFY_METRIC, { result: 'refused', reason: 'unauthorized' }), 1);

    // Same proxy, a user whose password works for both: granted (the refusal is per user).
    const { client: other } = await rawClient(t, proxy.port);
    other.send(`b LOGIN bob "${USERS.bob}"\r\n`);
    assertLogin(t, await other.response('b'), 'b', true);
  });

  await t.test('JMAP without mail for the user: the Cyrus admin', async (t) => {
    const proxy = await cyrusProxy(t);
    const { client } = await rawClient(t, proxy.port);
    client.send(`a LOGIN ${ADMIN.user} "${ADMIN.password}"\r\n`);
    assertLogin(t, await client.response('a'), 'a', false);
    await assertJmapAccess(t, client, 'refused');
    t.match(lastLogin(proxy), { user: 'admin', result: 'OK', jmapaccess: 'refused', reason: 'jmap-not-verified', detail: 'no-mail-account' });
    t.equal(await metricValue(proxy, VERIFY_METRIC, { result: 'refused', reason: 'no-mail-account' }), 1);
  });

  await t.test('imapflow sees no JMAPACCESS and gets BAD', async (t) => {
    const proxy = await cyrusProxy(t, { jmapUrl: `${ORIGIN}/jmap/nope/` });
    const flow = await imapflowFor(t, proxy.port, 'bob', USERS.bob);
    t.notOk(flow.capabilities.has('JMAPACCESS'));
    t.same(await imapflowGetJmapAccess(flow), { status: 'BAD', urls: [] });
  });
});

