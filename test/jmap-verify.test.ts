/**
 * JmapVerifier (src/jmap-verify.ts) against the scripted fake JMAP endpoint
 * (test/harness/jmap-endpoint.ts): every reason, redirects, the cache
 * (hits, expiry, transient failures not cached, in-flight sharing,
 * eviction), the deadline, metrics, and that no secret ever leaves the
 * verifier. The real server is in integration/jmap-verify-cyrus.test.ts.
 */

import { Writable } from 'node:stream';
import t from 'tap';
import { JmapVerifier, checkSession, metricsHook, type Credential, type ProbeEvent, type VerifierOptions } from '../src/jmap-verify.js';
import { createLogger } from '../src/logger.js';
import { Metrics } from '../src/metrics.js';
import { startFakeJmapEndpoint, fakeSession, DEFAULT_FAKE_USERS } from './harness/jmap-endpoint.js';

const endpoint = await startFakeJmapEndpoint({
  users: {
    carol: { password: 'carol-secret-pw', mode: 'forbidden' },
    dave: { password: 'dave-secret-pw', mode: 'server-error' },
    erin: { password: 'erin-secret-pw', mode: 'invalid-json' },
    frank: { password: 'frank-secret-pw', mode: 'no-mail-account' },
    grace: { password: 'grace-secret-pw', mode: 'huge' },
    heidi: { password: 'heidi-secret-pw', mode: 'huge-declared' },
    ivan: { password: 'ivan-secret-pw', mode: 'hang' },
    judy: { password: 'judy-secret-pw', mode: 'hang-body' },
    mallory: { password: 'mallory-secret-pw', mode: 'not-a-session' },
    oscar: { password: 'oscar-secret-pw', mode: 'unauthorized' },
    trent: { password: 'trent-secret-pw', mode: 'cut-short' },
  },
});
t.teardown(() => endpoint.close());

const ALICE_PW = DEFAULT_FAKE_USERS.alice?.password as string;
const ALICE_TOKEN = DEFAULT_FAKE_USERS.alice?.tokens?.[0] as string;
const pw = (user: string, secret = `${user}-secret-pw`): Credential => ({ kind: 'password', user, secret });
const alice = pw('alice', ALICE_PW);

/** Every secret the tests use, to look for in outcomes and logs. */
const SECRETS = [
  ALICE_PW,
  ALICE_TOKEN,
  'wrong-password-xyz',
  'not.a.real.token-xyz',
  ...['carol', 'dave', 'erin', 'frank', 'grace', 'heidi', 'ivan', 'judy', 'mallory', 'oscar', 'trent'].map((u) => `${u}-secret-pw`),
];
const forms = (secret: string) => [secret, Buffer.from(secret).toString('base64'), Buffer.from(`alice:${secret}`).toString('base64')];

/** A verifier with the endpoint's CA, short timeouts, and everything it reports captured. */
function verifier(options: Partial<VerifierOptions> = {}) {
  const events: ProbeEvent[] = [];
  const logLines: string[] = [];
  const log = createLogger(
    'trace',
    new Writable({
      write(chunk, _enc, cb) {
        logLines.push(String(chunk));
        cb();
      },
    }),
  );
  const v = new JmapVerifier({
    timeoutMs: 1500,
    ttlMs: 60_000,
    ca: endpoint.ca,
    log,
    onProbe: (e) => events.push(e),
    ...options,
  });
  return { v, events, logLines };
}

t.test('valid credentials', async (t) => {
  const { v } = verifier();

  await t.test('Basic through the /.well-known/jmap 301', async (t) => {
    endpoint.reset();
    const outcome = await v.verify(endpoint.wellKnownUrl, 'alice', alice);
    t.match(outcome, { ok: true, cached: false });
    t.type(outcome.ms, 'number');
    t.same(
      endpoint.requests.map((r) => r.path),
      ['/.well-known/jmap', '/jmap/'],
      'the redirect was followed to the session resource',
    );
    const expected = `Basic ${Buffer.from(`alice:${ALICE_PW}`).toString('base64')}`;
    t.same(
      endpoint.requests.map((r) => r.authorization),
      [expected, expected],
      'Basic user:password on both hops (same origin)',
    );
  });

  await t.test('Bearer token', async (t) => {
    endpoint.reset();
    const outcome = await v.verify(endpoint.sessionUrl, 'alice', { kind: 'bearer', secret: ALICE_TOKEN });
    t.match(outcome, { ok: true, cached: false });
    t.same(endpoint.requests.map((r) => [r.authorization, r.user]), [[`Bearer ${ALICE_TOKEN}`, 'alice']], 'Authorization: Bearer');
  });

  await t.test('a UTF-8 password', async (t) => {
    endpoint.setUser('zoë', { password: 'pässwörd-ß' });
    t.match(await v.verify(endpoint.sessionUrl, 'zoë', pw('zoë', 'pässwörd-ß')), { ok: true });
  });
});

t.test('every refusal reason', async (t) => {
  t.setTimeout(30_000);
  const { v } = verifier({ timeoutMs: 400 });
  const cases: Array<[string, string, Credential, Record<string, unknown>]> = [
    ['wrong password', endpoint.wellKnownUrl, pw('alice', 'wrong-password-xyz'), { reason: 'unauthorized', detail: '401' }],
    ['unknown token', endpoint.sessionUrl, { kind: 'bearer', secret: 'not.a.real.token-xyz' }, { reason: 'unauthorized' }],
    ['server says 401 anyway', endpoint.sessionUrl, pw('oscar'), { reason: 'unauthorized' }],
    ['403', endpoint.sessionUrl, pw('carol'), { reason: 'forbidden', detail: '403' }],
    ['500', endpoint.sessionUrl, pw('dave'), { reason: 'http-status', detail: '500' }],
    ['404', endpoint.url('/nothing-here'), alice, { reason: 'http-status', detail: '404' }],
    ['invalid JSON', endpoint.sessionUrl, pw('erin'), { reason: 'bad-session', detail: 'not JSON' }],
    ['JSON but no session', endpoint.sessionUrl, pw('mallory'), { reason: 'bad-session', detail: /capabilities/ }],
    ['session without mail', endpoint.sessionUrl, pw('frank'), { reason: 'no-mail-account', detail: 'no primary mail account' }],
    ['huge chunked body', endpoint.sessionUrl, pw('grace'), { reason: 'too-large', detail: /body over/ }],
    ['huge Content-Length', endpoint.sessionUrl, pw('heidi'), { reason: 'too-large', detail: /Content-Length/ }],
    ['headers never come', endpoint.sessionUrl, pw('ivan'), { reason: 'timeout' }],
    ['body never ends', endpoint.sessionUrl, pw('judy'), { reason: 'timeout' }],
    ['cross-origin redirect', endpoint.url('/cross-origin'), alice, { reason: 'redirect', detail: `302 to another origin (https://localhost:${endpoint.port})` }],
    ['redirect to http', endpoint.url('/to-http'), alice, { reason: 'redirect', detail: `302 to another origin (http://127.0.0.1:${endpoint.port})` }],
    ['redirect loop', endpoint.url('/redirect-loop'), alice, { reason: 'redirect', detail: 'more than 5 redirects' }],
    ['redirect without Location', endpoint.url('/no-location'), alice, { reason: 'redirect', detail: /without/ }],
    ['body cut short', endpoint.sessionUrl, pw('trent'), { reason: 'network', detail: /ECONNRESET|cut short/ }],
    ['connection refused', 'https://127.0.0.1:1/jmap/', alice, { reason: 'network', detail: 'ECONNREFUSED' }],
    ['user name with a colon', endpoint.sessionUrl, pw('a:b', 'x'), { reason: 'unauthorized', detail: /colon|":"/ }],
    ['token with CR LF', endpoint.sessionUrl, { kind: 'bearer', secret: 'abc\r\nX-Evil: 1' }, { reason: 'unauthorized', detail: /Bearer/ }],
  ];
  for (const [name, url, credential, expected] of cases) {
    const outcome = await v.verify(url, 'someone', credential);
    t.match(outcome, { ok: false, cached: false, ...expected }, name);
  }
});

t.test('the CA option is used per request', async (t) => {
  const { v } = verifier({ ca: null });
  const outcome = await v.verify(endpoint.sessionUrl, 'alice', alice);
  t.match(outcome, { ok: false, reason: 'network' }, 'without the test CA the certificate is not trusted');
  t.comment(`detail: ${outcome.ok ? '' : outcome.detail}`);
});

t.test('same-origin redirect chains', async (t) => {
  const { v } = verifier({ ttlMs: 0 });
  endpoint.reset();
  t.match(await v.verify(endpoint.url('/redirect/4'), 'alice', alice), { ok: true }, '4 redirects (303 307 302 301) then the session');
  t.same(
    endpoint.requests.map((r) => r.path),
    ['/redirect/4', '/redirect/3', '/redirect/2', '/redirect/1', '/jmap/'],
  );
  t.ok(endpoint.requests.every((r) => r.authorization?.startsWith('Basic ')), 'Authorization kept on every same-origin hop');
  t.match(await v.verify(endpoint.url('/redirect/5'), 'alice', alice), { ok: true }, '5 redirects is the limit');
  t.match(await v.verify(endpoint.url('/redirect/6'), 'alice', alice), { ok: false, reason: 'redirect', detail: 'more than 5 redirects' }, '6 is too many');
  endpoint.reset();
  await v.verify(endpoint.url('/cross-origin'), 'alice', alice);
  t.same(endpoint.requests.map((r) => r.path), ['/cross-origin'], 'a cross-origin target is never requested (credentials stay home)');
});

t.test('the cache', async (t) => {
  await t.test('a hit makes no request', async (t) => {
    const { v, events } = verifier();
    endpoint.reset();
    t.match(await v.verify(endpoint.sessionUrl, 'alice', alice), { ok: true, cached: false });
    t.match(await v.verify(endpoint.sessionUrl, 'alice', alice), { ok: true, cached: true });
    t.equal(endpoint.count(), 1, 'one request for two verifications');
    t.equal(v.size, 1);
    t.match(events, [{ ok: true, cached: false, identity: 'alice' }, { ok: true, cached: true }]);

    // Refusals are cached too.
    t.match(await v.verify(endpoint.sessionUrl, 'alice', pw('alice', 'wrong-password-xyz')), { ok: false, reason: 'unauthorized', cached: false });
    t.match(await v.verify(endpoint.sessionUrl, 'alice', pw('alice', 'wrong-password-xyz')), { ok: false, reason: 'unauthorized', detail: '401', cached: true });
    t.match(await v.verify(endpoint.sessionUrl, 'frank', pw('frank')), { ok: false, reason: 'no-mail-account', cached: false });
    t.match(await v.verify(endpoint.sessionUrl, 'frank', pw('frank')), { ok: false, reason: 'no-mail-account', cached: true });
    t.equal(endpoint.count(), 3, 'refusals answered from the cache');
  });

  await t.test('the key covers url, identity, credential kind, user and secret', async (t) => {
    const { v } = verifier();
    endpoint.reset();
    await v.verify(endpoint.sessionUrl, 'alice', alice);
    const variants: Array<[string, string, Credential]> = [
      [endpoint.wellKnownUrl, 'alice', alice],
      [endpoint.sessionUrl, 'alice@other', alice],
      [endpoint.sessionUrl, 'alice', pw('alice', `${ALICE_PW}x`)],
      [endpoint.sessionUrl, 'alice', { kind: 'bearer', secret: ALICE_TOKEN }],
      [endpoint.sessionUrl, 'alice', pw('bob', ALICE_PW)],
    ];
    for (const [url, identity, credential] of variants) {
      t.match(await v.verify(url, identity, credential), { cached: false }, `${url} ${identity} ${credential.kind}: a miss`);
    }
    t.equal(v.size, 1 + variants.length);
    // Field boundaries: ("a", "b:c") and ("a:b", "c") must not collide.
    const w = verifier().v;
    await w.verify(endpoint.url('/status/404'), 'x', pw('u', 'ab'));
    t.match(await w.verify(endpoint.url('/status/404'), 'x', pw('ua', 'b')), { cached: false }, 'user/secret boundary is part of the key');
  });

  await t.test('expiry', async (t) => {
    const { v } = verifier({ ttlMs: 100 });
    endpoint.reset();
    await v.verify(endpoint.sessionUrl, 'alice', alice);
    t.match(await v.verify(endpoint.sessionUrl, 'alice', alice), { cached: true });
    await new Promise((r) => setTimeout(r, 150));
    t.match(await v.verify(endpoint.sessionUrl, 'alice', alice), { ok: true, cached: false }, 'probed again after the ttl');
    t.equal(endpoint.count(), 2);
    // The sweep drops expired entries without them being asked for again.
    await v.verify(endpoint.sessionUrl, 'bob', pw('bob'));
    t.equal(v.size, 2);
    await new Promise((r) => setTimeout(r, 150));
    await v.verify(endpoint.url('/status/503'), 'x', alice); // any call sweeps; a 503 is not cached
    t.equal(v.size, 0, 'expired entries swept');
  });

  await t.test('ttl 0: no cache', async (t) => {
    const { v } = verifier({ ttlMs: 0 });
    endpoint.reset();
    await v.verify(endpoint.sessionUrl, 'alice', alice);
    t.match(await v.verify(endpoint.sessionUrl, 'alice', alice), { cached: false });
    t.equal(endpoint.count(), 2);
    t.equal(v.size, 0);
  });

  await t.test('transient failures are not cached', async (t) => {
    const { v } = verifier({ timeoutMs: 300 });
    endpoint.setUser('peggy', { password: 'peggy-pw', mode: 'server-error' });
    const peggy = pw('peggy', 'peggy-pw');
    endpoint.reset();
    t.match(await v.verify(endpoint.sessionUrl, 'peggy', peggy), { ok: false, reason: 'http-status', detail: '500' });
    endpoint.setMode('peggy', 'hang');
    t.match(await v.verify(endpoint.sessionUrl, 'peggy', peggy), { ok: false, reason: 'timeout', cached: false }, 'the 500 was not cached');
    endpoint.setMode('peggy', 'session');
    t.match(await v.verify(endpoint.sessionUrl, 'peggy', peggy), { ok: true, cached: false }, 'the timeout was not cached');
    t.equal(endpoint.count(), 3);
    for (const status of [502, 503, 408, 429]) {
      await v.verify(endpoint.url(`/status/${status}`), 'x', alice);
      t.match(await v.verify(endpoint.url(`/status/${status}`), 'x', alice), { reason: 'http-status', detail: String(status), cached: false }, `${status} not cached`);
    }
    await v.verify('https://127.0.0.1:1/jmap/', 'x', alice);
    t.match(await v.verify('https://127.0.0.1:1/jmap/', 'x', alice), { reason: 'network', cached: false }, 'network errors not cached');
    t.equal(v.size, 1, 'only the final ok is cached');
  });

  await t.test('concurrent calls share one probe', async (t) => {
    const { v, events } = verifier();
    endpoint.reset();
    const outcomes = await Promise.all([
      v.verify(endpoint.wellKnownUrl, 'alice', alice),
      v.verify(endpoint.wellKnownUrl, 'alice', alice),
      v.verify(endpoint.wellKnownUrl, 'alice', alice),
    ]);
    t.equal(endpoint.count('/jmap/'), 1, 'one session request for three calls');
    t.same(outcomes.map((o) => [o.ok, o.cached]), [[true, false], [true, true], [true, true]], 'one probe, two joined it');
    t.equal(v.pending, 0);
    t.equal(events.filter((e) => !e.cached).length, 1);

    // Also for a transient failure, which is then not cached.
    const { v: w } = verifier({ timeoutMs: 200 });
    endpoint.reset();
    const hung = await Promise.all([w.verify(endpoint.sessionUrl, 'ivan', pw('ivan')), w.verify(endpoint.sessionUrl, 'ivan', pw('ivan'))]);
    t.match(hung, [{ reason: 'timeout', cached: false }, { reason: 'timeout', cached: true }]);
    t.equal(endpoint.count(), 1);
    t.equal(w.size, 0);
  });

  await t.test('maxEntries evicts the oldest', async (t) => {
    const { v } = verifier({ maxEntries: 3 });
    endpoint.reset();
    for (const u of ['u1', 'u2', 'u3', 'u4']) await v.verify(endpoint.sessionUrl, u, pw(u, 'nope'));
    t.equal(v.size, 3, 'bounded');
    t.equal(endpoint.count(), 4);
    t.match(await v.verify(endpoint.sessionUrl, 'u4', pw('u4', 'nope')), { cached: true }, 'the newest stays');
    t.match(await v.verify(endpoint.sessionUrl, 'u2', pw('u2', 'nope')), { cached: true });
    t.match(await v.verify(endpoint.sessionUrl, 'u1', pw('u1', 'nope')), { cached: false }, 'the oldest was evicted');
    t.equal(endpoint.count(), 5);
    t.equal(v.size, 3);
  });
});

t.test('a hanging endpoint ends in a timeout, never a hang', async (t) => {
  t.setTimeout(10_000); // a broken deadline fails here rather than at tap's 180 s
  const { v } = verifier({ timeoutMs: 300 });
  const started = Date.now();
  const outcome = await v.verify(endpoint.url('/hang'), 'alice', alice);
  t.match(outcome, { ok: false, reason: 'timeout', detail: 'no answer within 300 ms', cached: false });
  t.comment(`ended after ${Date.now() - started} ms`);
  // An address that drops SYNs would also be a timeout; a blackholed connect is not portable, the hang covers the deadline.
});

t.test('no secret in outcomes, events or logs', async (t) => {
  const { v, events, logLines } = verifier({ timeoutMs: 300 });
  const outcomes: unknown[] = [];
  const creds: Array<[string, string, Credential]> = [
    [endpoint.wellKnownUrl, 'alice', alice],
    [endpoint.sessionUrl, 'alice', { kind: 'bearer', secret: ALICE_TOKEN }],
    [endpoint.sessionUrl, 'alice', pw('alice', 'wrong-password-xyz')],
    [endpoint.sessionUrl, 'alice', { kind: 'bearer', secret: 'not.a.real.token-xyz' }],
    [endpoint.url('/cross-origin'), 'alice', alice],
    [endpoint.url('/redirect-loop'), 'alice', alice],
    ['https://127.0.0.1:1/jmap/', 'alice', alice],
  ];
  for (const u of ['carol', 'dave', 'erin', 'frank', 'grace', 'heidi', 'ivan', 'judy', 'mallory', 'oscar', 'trent']) creds.push([endpoint.sessionUrl, u, pw(u)]);
  for (const [url, identity, credential] of creds) {
    outcomes.push(await v.verify(url, identity, credential));
    outcomes.push(await v.verify(url, identity, credential)); // cached or not, once more
  }
  const text = JSON.stringify(outcomes) + JSON.stringify(events) + logLines.join('');
  t.ok(logLines.length >= creds.length, `probes were logged (${logLines.length} lines)`);
  t.match(logLines.join(''), /"user":"alice".*"result":"verified"/, 'the log says who was verified');
  for (const secret of SECRETS) {
    for (const form of forms(secret)) t.notOk(text.includes(form), `no ${secret} (as ${form.slice(0, 8)}...)`);
  }
});

t.test('metrics', async (t) => {
  const metrics = new Metrics(() => ({ fromClient: 0, toClient: 0 }));
  const v = new JmapVerifier({ timeoutMs: 300, ttlMs: 60_000, ca: endpoint.ca, onProbe: metricsHook(metrics) });
  await v.verify(endpoint.sessionUrl, 'alice', alice);
  await v.verify(endpoint.sessionUrl, 'alice', alice);
  await v.verify(endpoint.sessionUrl, 'alice', pw('alice', 'wrong-password-xyz'));
  await v.verify(endpoint.sessionUrl, 'ivan', pw('ivan'));
  const text = await metrics.registry.metrics();
  t.match(text, /jmapaccess_proxy_jmap_verify_total\{result="verified",reason="ok",cache="miss"\} 1/);
  t.match(text, /jmapaccess_proxy_jmap_verify_total\{result="verified",reason="ok",cache="hit"\} 1/);
  t.match(text, /jmapaccess_proxy_jmap_verify_total\{result="refused",reason="unauthorized",cache="miss"\} 1/);
  t.match(text, /jmapaccess_proxy_jmap_verify_total\{result="refused",reason="timeout",cache="miss"\} 1/);
  t.match(text, /jmapaccess_proxy_jmap_verify_seconds_count 3/, 'the histogram counts real probes only');
  t.notOk(text.includes(ALICE_PW), 'no secret in metrics');
});

t.test('checkSession', async (t) => {
  t.same(checkSession(JSON.stringify(fakeSession('x'))), { ok: true });
  const broken = (f: (s: Record<string, any>) => void) => {
    const s = fakeSession('x') as Record<string, any>;
    f(s);
    return checkSession(JSON.stringify(s));
  };
  t.match(checkSession('[]'), { reason: 'bad-session', detail: 'not a JSON object' });
  t.match(checkSession('null'), { reason: 'bad-session' });
  t.match(broken((s) => delete s.capabilities['urn:ietf:params:jmap:core']), { reason: 'bad-session', detail: /core/ });
  t.match(broken((s) => (s.accounts = [])), { reason: 'bad-session', detail: /accounts/ });
  t.match(broken((s) => delete s.primaryAccounts), { reason: 'bad-session', detail: /primaryAccounts/ });
  t.match(broken((s) => (s.username = 1)), { reason: 'bad-session', detail: /username/ });
  t.match(broken((s) => delete s.apiUrl), { reason: 'bad-session', detail: /apiUrl/ });
  t.match(broken((s) => (s.primaryAccounts['urn:ietf:params:jmap:mail'] = 'nobody')), { reason: 'no-mail-account', detail: /not in accounts/ });
  t.match(broken((s) => (s.primaryAccounts['urn:ietf:params:jmap:mail'] = 'constructor')), { reason: 'no-mail-account' }, 'no prototype keys');
  t.match(broken((s) => delete s.accounts.x.accountCapabilities['urn:ietf:params:jmap:mail']), { reason: 'no-mail-account', detail: /mail capability/ });
});

t.test('constructor bounds', async (t) => {
  t.throws(() => new JmapVerifier({ timeoutMs: 0, ttlMs: 1 }));
  t.throws(() => new JmapVerifier({ timeoutMs: 1, ttlMs: -1 }));
});

t.test('odd inputs still get an answer', async (t) => {
  const v = new JmapVerifier({ timeoutMs: 300, ttlMs: 60_000, ca: endpoint.ca, onProbe: () => { throw new Error('hook bug'); } });
  t.match(await v.verify('not a url', 'alice', alice), { ok: false, reason: 'network', detail: 'invalid URL' });
  t.match(await v.verify('ftp://127.0.0.1/jmap', 'alice', alice), { ok: false, reason: 'network', detail: 'unsupported scheme ftp:' });
  t.match(await v.verify(endpoint.sessionUrl, 'alice', alice), { ok: true }, 'a throwing onProbe hook changes nothing');
  t.match(await v.verify(endpoint.sessionUrl, 'alice', undefined as unknown as Credential), { ok: false, reason: 'network', detail: 'invalid arguments' }, 'no rejection even on a type error');
  t.ok(v.size > 0);
  v.clear();
  t.equal(v.size, 0, 'clear() empties the cache');
  t.match(await v.verify(endpoint.sessionUrl, 'alice', alice), { ok: true, cached: false });
});
