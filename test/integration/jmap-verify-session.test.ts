/**
 * --jmap-verify through the proxy, with a real Dovecot (its local OAuth:
 * `oauth: true`, HS256 tokens from dovecot.mintToken) for IMAP and the
 * scripted fake JMAP endpoint over HTTPS (test/harness/jmap-endpoint.ts)
 * for the JMAP side, configured with the same users, passwords and tokens,
 * so that each answer a JMAP server can give is produced on demand.
 *
 * Dovecot 2.3 has no OBJECTID, so the proxies here run with
 * --objectid assume: the only thing between a login and JMAPACCESS is then
 * the verification under test.
 */

import t, { type Test } from 'tap';
import type { FakeJmapMode } from '../harness/jmap-endpoint.js';
import { capabilityLists, countAtom, dovecotFor, imapflowFor, lines, proxyFor, rawClient, sleep, type ProxyOptions, type RawClient } from './helpers.js';
import {
  DECISIONS_METRIC,
  NOT_FOR_THIS_ACCOUNT,
  VERIFY_METRIC,
  assertJmapAccess,
  b64,
  basicHeader,
  fakeJmapFor,
  jmapAccessCount,
  lastLogin,
  loginLogs,
  metricValue,
  oauthBearerResponse,
  plainResponse,
  xoauth2Response,
} from './jmap-helpers.js';

// Every IMAP user, with the password Dovecot and the fake JMAP endpoint share.
const NAMES = ['alice', 'bob', 'carol', 'dave', 'erin', 'frank@example.org', 'gina', 'hank', 'ivan', 'jack', 'u401', 'u403', 'u500', 'ujson', 'usession', 'unomail'];
const PASSWORDS: Record<string, string> = Object.fromEntries(NAMES.map((n) => [n, `${n.replace(/@.*/, '')}-Secret-pw`]));

const dovecot = await dovecotFor(t, { users: PASSWORDS, oauth: true });
const TOKENS: Record<string, string> = Object.fromEntries(NAMES.map((n) => [n, dovecot.mintToken(n)]));
const { jmap, caFile } = await fakeJmapFor(
  t,
  Object.fromEntries(NAMES.map((n) => [n, { password: PASSWORDS[n] as string, tokens: [TOKENS[n] as string] }])),
);
// gina's JMAP password is not her IMAP password (a JMAP server with its own password database).
jmap.setUser('gina', { password: 'gina-jmap-only-pw', tokens: [] });
const MODES: Record<string, FakeJmapMode> = {
  hank: 'hang',
  u401: 'unauthorized',
  u403: 'forbidden',
  u500: 'server-error',
  ujson: 'invalid-json',
  usession: 'not-a-session',
  unomail: 'no-mail-account',
  ivan: 'unauthorized',
};
for (const [name, mode] of Object.entries(MODES)) jmap.setMode(name, mode);

/** {user} in the query: the probe's target and the GETJMAPACCESS answer both show the identity. */
const TEMPLATE = `${jmap.origin}/jmap/?account={user}`;
const urlFor = (user: string): string => `${jmap.origin}/jmap/?account=${encodeURIComponent(user).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`)}`;

function verifyingProxy(t: Test, options: ProxyOptions = {}) {
  return proxyFor(t, dovecot.port, {
    objectId: 'assume',
    jmapUrl: TEMPLATE,
    jmapVerify: true,
    jmapVerifyCa: caFile,
    // Generous: two test files run at once on two cores.
    jmapVerifyTimeout: '5s',
    ...options,
  });
}

/** Requests the endpoint received since `before`. */
const since = (before: number) => jmap.requests.slice(before);

/** The login's whole response: tagged OK with exactly one capability list, and whether it has JMAPACCESS. */
function assertLoginOk(t: Test, text: string, tag: string, granted: boolean): void {
  const tagged = lines(text).pop() ?? '';
  t.match(tagged, new RegExp(`^${tag} OK `), `${tag}: login OK`);
  const { lists, withJmapAccess } = jmapAccessCount(text);
  t.equal(lists, 1, `${tag}: one capability list in the login's answer`);
  t.equal(withJmapAccess, granted ? 1 : 0, `${tag}: JMAPACCESS ${granted ? 'in' : 'not in'} the login's capability list`);
}

t.test('password logins: probed with Basic and the authentication identity, then granted', async (t) => {
  const proxy = await verifyingProxy(t);

  await t.test('LOGIN (quoted password)', async (t) => {
    const before = jmap.requests.length;
    const { client } = await rawClient(t, proxy.port);
    client.send(`a LOGIN alice "${PASSWORDS.alice}"\r\n`);
    assertLoginOk(t, await client.response('a'), 'a', true);
    t.match(since(before), [{ method: 'GET', target: '/jmap/?account=alice', authorization: basicHeader('alice', PASSWORDS.alice as string), user: 'alice' }]);
    t.equal(since(before).length, 1, 'one probe');
    await assertJmapAccess(t, client, { url: urlFor('alice') });
    t.match(lastLogin(proxy), { user: 'alice', mechanism: 'LOGIN', result: 'OK', jmapaccess: 'granted', reason: 'objectid-assumed' });
  });

  await t.test('LOGIN with two synchronizing literals', async (t) => {
    const before = jmap.requests.length;
    const { client } = await rawClient(t, proxy.port);
    const pass = PASSWORDS.erin as string;
    client.send('a LOGIN {4}\r\n');
    t.match(await client.readUntil('\n'), /^\+ /, 'go-ahead for the user');
    client.send(`erin {${pass.length}}\r\n`);
    t.match(await client.readUntil('\n'), /^\+ /, 'go-ahead for the password');
    client.send(`${pass}\r\n`);
    assertLoginOk(t, await client.response('a'), 'a', true);
    t.same(since(before).map((r) => [r.target, r.authorization]), [['/jmap/?account=erin', basicHeader('erin', pass)]], 'user and password read from the literals');
    await assertJmapAccess(t, client, { url: urlFor('erin') });
  });

  await t.test('AUTHENTICATE PLAIN with SASL-IR and an authorization identity', async (t) => {
    const before = jmap.requests.length;
    const { client } = await rawClient(t, proxy.port);
    client.send(`a AUTHENTICATE PLAIN ${plainResponse('bob', PASSWORDS.bob as string, 'bob')}\r\n`);
    assertLoginOk(t, await client.response('a'), 'a', true);
    t.same(since(before).map((r) => [r.target, r.authorization]), [['/jmap/?account=bob', basicHeader('bob', PASSWORDS.bob as string)]]);
    await assertJmapAccess(t, client, { url: urlFor('bob') });
  });

  await t.test('AUTHENTICATE PLAIN answering a continuation', async (t) => {
    const before = jmap.requests.length;
    const { client } = await rawClient(t, proxy.port);
    client.send('a AUTHENTICATE PLAIN\r\n');
    t.match(await client.readUntil('\n'), /^\+/);
    client.send(`${plainResponse('carol', PASSWORDS.carol as string)}\r\n`);
    assertLoginOk(t, await client.response('a'), 'a', true);
    t.same(since(before).map((r) => [r.target, r.authorization]), [['/jmap/?account=carol', basicHeader('carol', PASSWORDS.carol as string)]]);
    await assertJmapAccess(t, client, { url: urlFor('carol') });
    t.match(lastLogin(proxy), { user: 'carol', mechanism: 'PLAIN', jmapaccess: 'granted' });
  });

  await t.test('AUTHENTICATE LOGIN (SASL): user and password in two responses', async (t) => {
    const before = jmap.requests.length;
    const { client } = await rawClient(t, proxy.port);
    client.send('a AUTHENTICATE LOGIN\r\n');
    t.match(await client.readUntil('\n'), /^\+/);
    client.send(`${b64('dave')}\r\n`);
    t.match(await client.readUntil('\n'), /^\+/);
    t.equal(since(before).length, 0, 'no probe before the password');
    client.send(`${b64(PASSWORDS.dave as string)}\r\n`);
    assertLoginOk(t, await client.response('a'), 'a', true);
    t.same(since(before).map((r) => [r.target, r.authorization]), [['/jmap/?account=dave', basicHeader('dave', PASSWORDS.dave as string)]]);
    await assertJmapAccess(t, client, { url: urlFor('dave') });
    t.match(lastLogin(proxy), { user: 'dave', mechanism: 'LOGIN', jmapaccess: 'granted' });
  });

  await t.test('imapflow: JMAPACCESS among the capabilities after login', async (t) => {
    const flow = await imapflowFor(t, proxy.port, 'jack', PASSWORDS.jack as string);
    t.ok(flow.capabilities.has('JMAPACCESS'), 'imapflow sees JMAPACCESS');
  });
});

t.test('OAUTHBEARER and XOAUTH2: a Bearer probe with the token Dovecot accepted; the identity from a= and user=', async (t) => {
  const proxy = await verifyingProxy(t);
  const cases: Array<{ name: string; user: string; mechanism: string; first: string | null; response: string }> = [
    { name: 'OAUTHBEARER with SASL-IR', user: 'alice', mechanism: 'OAUTHBEARER', first: oauthBearerResponse('alice', TOKENS.alice as string), response: '' },
    { name: 'OAUTHBEARER as a continuation', user: 'bob', mechanism: 'OAUTHBEARER', first: null, response: oauthBearerResponse('bob', TOKENS.bob as string) },
    { name: 'XOAUTH2 with SASL-IR', user: 'carol', mechanism: 'XOAUTH2', first: xoauth2Response('carol', TOKENS.carol as string), response: '' },
    { name: 'XOAUTH2 as a continuation', user: 'dave', mechanism: 'XOAUTH2', first: null, response: xoauth2Response('dave', TOKENS.dave as string) },
    {
      name: 'OAUTHBEARER, an identity with "@" (percent-encoded in {user})',
      user: 'frank@example.org',
      mechanism: 'OAUTHBEARER',
      first: oauthBearerResponse('frank@example.org', TOKENS['frank@example.org'] as string),
      response: '',
    },
  ];
  for (const c of cases) {
    await t.test(c.name, async (t) => {
      const before = jmap.requests.length;
      const { client } = await rawClient(t, proxy.port);
      if (c.first !== null) {
        client.send(`a AUTHENTICATE ${c.mechanism} ${c.first}\r\n`);
      } else {
        client.send(`a AUTHENTICATE ${c.mechanism}\r\n`);
        t.match(await client.readUntil('\n'), /^\+/);
        client.send(`${c.response}\r\n`);
      }
      assertLoginOk(t, await client.response('a'), 'a', true);
      const probes = since(before);
      t.equal(probes.length, 1, 'one probe');
      t.equal(probes[0]?.authorization, `Bearer ${TOKENS[c.user]}`, 'Authorization: Bearer <exactly the token>');
      t.equal(probes[0]?.target, `/jmap/?account=${encodeURIComponent(c.user)}`, 'the probe went to the identity’s URL');
      t.equal(probes[0]?.user, c.user, 'the endpoint took the token as this user’s');
      await assertJmapAccess(t, client, { url: urlFor(c.user) });
      t.match(lastLogin(proxy), { user: c.user, mechanism: c.mechanism, result: 'OK', jmapaccess: 'granted' });
    });
  }
  t.equal(urlFor('frank@example.org'), `${jmap.origin}/jmap/?account=frank%40example.org`, 'premise: "@" is percent-encoded');
});

t.test('cache: same credentials again ask the endpoint nothing; a short --jmap-verify-ttl expires', async (t) => {
  await t.test('default ttl: one probe for three logins with the same password, another for a token', async (t) => {
    const proxy = await verifyingProxy(t);
    const before = jmap.requests.length;
    for (const tag of ['a', 'b']) {
      const { client } = await rawClient(t, proxy.port);
      client.send(`${tag} LOGIN alice "${PASSWORDS.alice}"\r\n`);
      assertLoginOk(t, await client.response(tag), tag, true);
      client.send('z LOGOUT\r\n');
    }
    t.equal(since(before).length, 1, 'the second LOGIN was answered from the cache');
    // The key is the credential (kind, user, secret), not the IMAP mechanism.
    const { client } = await rawClient(t, proxy.port);
    client.send(`c AUTHENTICATE PLAIN ${plainResponse('alice', PASSWORDS.alice as string)}\r\n`);
    assertLoginOk(t, await client.response('c'), 'c', true);
    t.equal(since(before).length, 1, 'PLAIN with the same password: a cache hit too');
    t.equal(await metricValue(proxy, VERIFY_METRIC, { result: 'verified', cache: 'miss' }), 1, 'metrics: one miss');
    t.equal(await metricValue(proxy, VERIFY_METRIC, { result: 'verified', reason: 'ok', cache: 'hit' }), 2, 'metrics: two hits');

    const { client: other } = await rawClient(t, proxy.port);
    other.send(`d AUTHENTICATE XOAUTH2 ${xoauth2Response('alice', TOKENS.alice as string)}\r\n`);
    assertLoginOk(t, await other.response('d'), 'd', true);
    t.equal(since(before).length, 2, 'a token is another credential: a new probe');
    t.equal(await metricValue(proxy, VERIFY_METRIC, { cache: 'miss' }), 2);
    t.equal(await metricValue(proxy, DECISIONS_METRIC, { decision: 'granted' }), 4, 'four sessions granted');
  });

  await t.test('--jmap-verify-ttl 1s: a hit within the second, a new probe after it', async (t) => {
    const proxy = await verifyingProxy(t, { jmapVerifyTtl: '1s' });
    const before = jmap.requests.length;
    const login = async (tag: string) => {
      const { client } = await rawClient(t, proxy.port);
      client.send(`${tag} LOGIN bob "${PASSWORDS.bob}"\r\n`);
      assertLoginOk(t, await client.response(tag), tag, true);
      await assertJmapAccess(t, client, { url: urlFor('bob') }, `${tag}x`);
    };
    await login('a');
    await login('b');
    t.equal(since(before).length, 1, 'within the ttl: from the cache');
    await sleep(1300);
    await login('c');
    t.equal(since(before).length, 2, 'after the ttl: asked again');
    t.equal(await metricValue(proxy, VERIFY_METRIC, { cache: 'miss' }), 2);
    t.equal(await metricValue(proxy, VERIFY_METRIC, { cache: 'hit' }), 1);
  });
});

t.test('a wrong IMAP password: NO and nothing granted, although the probe ran in parallel', async (t) => {
  const proxy = await verifyingProxy(t);

  await t.test('a password neither server accepts', async (t) => {
    const before = jmap.requests.length;
    const { client } = await rawClient(t, proxy.port);
    client.send('a LOGIN alice "Wrong-Secret-pw"\r\nb GETJMAPACCESS\r\nc CAPABILITY\r\n');
    const text = await client.response('c');
    t.match(text, /^a NO /m, 'login refused by Dovecot');
    t.match(text, /^b BAD GETJMAPACCESS is valid only after authentication\r$/m, 'GETJMAPACCESS: not authenticated');
    t.equal(countAtom(capabilityLists(text).flat(), 'JMAPACCESS'), 0, 'no JMAPACCESS anywhere');
    // By design the check starts with the login (in parallel), so the JMAP server was asked, and said no.
    t.same(since(before).map((r) => [r.authorization, r.user]), [[basicHeader('alice', 'Wrong-Secret-pw'), undefined]], 'one probe, refused (401)');
    t.match(lastLogin(proxy), { user: 'alice', result: 'NO' });
    t.notOk('jmapaccess' in lastLogin(proxy), 'no JMAP decision logged for a failed login');
  });

  await t.test('a password only the JMAP server accepts', async (t) => {
    const before = jmap.requests.length;
    const { client } = await rawClient(t, proxy.port);
    client.send('a LOGIN gina "gina-jmap-only-pw"\r\n');
    t.match(await client.response('a'), /^a NO /m, 'Dovecot refuses');
    t.same(since(before).map((r) => r.user), ['gina'], 'the JMAP server accepted it');
    client.send('b GETJMAPACCESS\r\n');
    t.equal(await client.response('b'), 'b BAD GETJMAPACCESS is valid only after authentication\r\n', 'still nothing granted');
  });

  await t.test('the IMAP password, which the JMAP server refuses: logged in, not eligible', async (t) => {
    const before = jmap.requests.length;
    const { client } = await rawClient(t, proxy.port);
    client.send(`a LOGIN gina "${PASSWORDS.gina}"\r\n`);
    assertLoginOk(t, await client.response('a'), 'a', false);
    t.same(since(before).map((r) => [r.authorization, r.user]), [[basicHeader('gina', PASSWORDS.gina as string), undefined]]);
    await assertJmapAccess(t, client, 'refused');
    t.match(lastLogin(proxy), { user: 'gina', result: 'OK', jmapaccess: 'refused', reason: 'jmap-not-verified', detail: 'unauthorized' });
  });
});

t.test('an endpoint that never answers: the tagged OK comes after --jmap-verify-timeout, not eligible; pipelined commands answered in order', async (t) => {
  const proxy = await verifyingProxy(t, { jmapVerifyTimeout: '300ms' });
  const before = jmap.requests.length;
  const { client } = await rawClient(t, proxy.port);
  const started = Date.now();
  client.send(`a LOGIN hank "${PASSWORDS.hank}"\r\nb CAPABILITY\r\nc GETJMAPACCESS\r\nd NOOP\r\n`);
  const text = await client.response('d', 8000);
  const elapsed = Date.now() - started;
  t.ok(elapsed >= 280, `the login's answer waited for the check (${elapsed} ms)`);
  t.ok(elapsed < 5000, `and no longer than the timeout allows (${elapsed} ms)`);
  const tagged = lines(text).filter((l) => /^[a-d] /.test(l));
  t.same(
    tagged.map((l) => l.split(' ').slice(0, 2).join(' ')),
    ['a OK', 'b OK', 'c BAD', 'd OK'],
    'every command answered, in order',
  );
  t.equal(jmapAccessCount(text).withJmapAccess, 0, 'no JMAPACCESS in the login answer nor in CAPABILITY');
  t.equal(jmapAccessCount(text).lists, 2, 'two capability lists (login OK, CAPABILITY)');
  t.ok(text.includes(NOT_FOR_THIS_ACCOUNT('c')), 'GETJMAPACCESS: BAD');
  t.equal(since(before).length, 1, 'one probe');
  t.match(lastLogin(proxy), { user: 'hank', result: 'OK', jmapaccess: 'refused', reason: 'jmap-not-verified', detail: 'timeout' });
  t.equal(await metricValue(proxy, VERIFY_METRIC, { result: 'refused', reason: 'timeout', cache: 'miss' }), 1, 'metrics: refused, timeout');
  t.ok(
    proxy.logs().some((l) => l.msg === 'JMAP verification probe failed' && l.level === 40 && l.reason === 'timeout' && l.user === 'hank'),
    'the probe failure logged at warn with its reason',
  );

  // A timeout is transient: not cached, the next login asks again.
  const { client: again } = await rawClient(t, proxy.port);
  again.send(`e LOGIN hank "${PASSWORDS.hank}"\r\n`);
  assertLoginOk(t, await again.response('e', 8000), 'e', false);
  t.equal(since(before).length, 2, 'a new probe for the next login');
  t.equal(await metricValue(proxy, VERIFY_METRIC, { reason: 'timeout', cache: 'miss' }), 2);
});

t.test('endpoint refusals: each with its reason in the login log line and in the metrics', async (t) => {
  const proxy = await verifyingProxy(t);
  const cases: Array<{ user: string; reason: string; probeDetail: string | RegExp }> = [
    { user: 'u401', reason: 'unauthorized', probeDetail: '401' },
    { user: 'u403', reason: 'forbidden', probeDetail: '403' },
    { user: 'u500', reason: 'http-status', probeDetail: '500' },
    { user: 'ujson', reason: 'bad-session', probeDetail: 'not JSON' },
    { user: 'usession', reason: 'bad-session', probeDetail: /^no capabilities object$/ },
    { user: 'unomail', reason: 'no-mail-account', probeDetail: 'no primary mail account' },
  ];
  for (const c of cases) {
    await t.test(`${c.user}: ${c.reason}`, async (t) => {
      const { client } = await rawClient(t, proxy.port);
      client.send(`a LOGIN ${c.user} "${PASSWORDS[c.user]}"\r\n`);
      assertLoginOk(t, await client.response('a'), 'a', false);
      await assertJmapAccess(t, client, 'refused');
      t.match(lastLogin(proxy), { user: c.user, result: 'OK', jmapaccess: 'refused', reason: 'jmap-not-verified', detail: c.reason });
      const probe = proxy.logs().filter((l) => l.component === 'jmap-verify' && l.user === c.user);
      t.equal(probe.length, 1, 'one probe log line');
      t.match(probe[0], { result: 'refused', reason: c.reason, detail: c.probeDetail, url: urlFor(c.user) });
    });
  }
  for (const reason of ['unauthorized', 'forbidden', 'http-status', 'no-mail-account']) {
    t.equal(await metricValue(proxy, VERIFY_METRIC, { result: 'refused', reason, cache: 'miss' }), 1, `metrics: ${reason}`);
  }
  t.equal(await metricValue(proxy, VERIFY_METRIC, { result: 'refused', reason: 'bad-session' }), 2, 'metrics: bad-session twice');
  t.equal(await metricValue(proxy, VERIFY_METRIC, { result: 'verified' }), 0, 'nothing verified');
  t.equal(await metricValue(proxy, DECISIONS_METRIC, { decision: 'refused', reason: 'jmap-not-verified' }), cases.length, 'decisions: all refused as jmap-not-verified');
  t.equal(loginLogs(proxy).filter((l) => l.jmapaccess === 'granted').length, 0);
});

t.test('AUTHENTICATE LOGIN with an empty initial response ("="): the credentials are still checked with the JMAP server', async (t) => {
  /** `a AUTHENTICATE LOGIN =`, then the user name and the password in two continuations (Dovecot accepts this). */
  const emptyInitialResponseLogin = async (t: Test, port: number, user: string): Promise<{ client: RawClient; text: string }> => {
    const { client } = await rawClient(t, port);
    client.send('a AUTHENTICATE LOGIN =\r\n');
    t.match(await client.readUntil('\n'), /^\+/, 'Username: challenge');
    client.send(`${b64(user)}\r\n`);
    t.match(await client.readUntil('\n'), /^\+/, 'Password: challenge');
    client.send(`${b64(PASSWORDS[user] as string)}\r\n`);
    const text = await client.response('a');
    t.match(text, /^a OK /m, 'Dovecot accepted the login');
    return { client, text };
  };

  await t.test('control: the user name as the initial response (ivan, whom the JMAP server refuses)', async (t) => {
    const proxy = await verifyingProxy(t);
    const before = jmap.requests.length;
    const { client } = await rawClient(t, proxy.port);
    client.send(`a AUTHENTICATE LOGIN ${b64('ivan')}\r\n`);
    t.match(await client.readUntil('\n'), /^\+/);
    client.send(`${b64(PASSWORDS.ivan as string)}\r\n`);
    assertLoginOk(t, await client.response('a'), 'a', false);
    t.equal(since(before).length, 1, 'probed');
    await assertJmapAccess(t, client, 'refused');
  });

  await t.test('"=": a user the JMAP server refuses gets no JMAPACCESS', async (t) => {
    const proxy = await verifyingProxy(t);
    const { client, text } = await emptyInitialResponseLogin(t, proxy.port, 'ivan');
    t.equal(jmapAccessCount(text).withJmapAccess, 0, 'no JMAPACCESS in the login answer');
    await assertJmapAccess(t, client, 'refused');
    t.match(lastLogin(proxy), { user: 'ivan', mechanism: 'LOGIN', jmapaccess: 'refused', reason: 'jmap-not-verified' });
  });

  await t.test('"=": a user the JMAP server accepts is probed with Basic and granted', async (t) => {
    const proxy = await verifyingProxy(t);
    const before = jmap.requests.length;
    const { client, text } = await emptyInitialResponseLogin(t, proxy.port, 'jack');
    t.same(
      since(before).map((r) => [r.target, r.authorization]),
      [['/jmap/?account=jack', basicHeader('jack', PASSWORDS.jack as string)]],
      'the JMAP server was asked, with the user and password of the two continuations',
    );
    t.equal(jmapAccessCount(text).withJmapAccess, 1, 'JMAPACCESS in the login answer');
    await assertJmapAccess(t, client, { url: urlFor('jack') });
    t.match(lastLogin(proxy), { user: 'jack', mechanism: 'LOGIN', jmapaccess: 'granted' });
  });
});
