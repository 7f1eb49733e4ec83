/**
 * JmapVerifier (src/jmap-verify.ts) against a REAL Cyrus 3.6 JMAP server:
 * the right password verifies through Cyrus's /.well-known/jmap redirect,
 * a wrong one is refused with 401, a URL that is not the session resource
 * is refused, and the cache answers a repeat without asking Cyrus again.
 */

import t from 'tap';
import { JmapVerifier, type ProbeEvent } from '../../src/jmap-verify.js';
import { ensureCyrusInstalled, startCyrus, type Cyrus } from '../harness/cyrus.js';

await ensureCyrusInstalled();
const cyrus: Cyrus = await startCyrus();
t.teardown(() => cyrus.stop());

const USER = 'alice';
const PASS = cyrus.users[USER] as string;
const origin = new URL(cyrus.jmapSessionUrl).origin;

function verifier(ttlMs = 60_000) {
  const events: ProbeEvent[] = [];
  // Cyrus's httpd forks per connection on a busy 2-core machine: a generous deadline.
  const v = new JmapVerifier({ timeoutMs: 10_000, ttlMs, onProbe: (e) => events.push(e) });
  return { v, events };
}

t.test('the right password verifies through /.well-known/jmap', async (t) => {
  // The premise: Cyrus answers the well-known URL with a same-origin redirect.
  const premise = await fetch(cyrus.jmapSessionUrl, { redirect: 'manual' });
  await premise.arrayBuffer();
  t.equal(premise.status, 301, 'Cyrus: /.well-known/jmap is a 301');
  t.equal(new URL(premise.headers.get('location') ?? '', cyrus.jmapSessionUrl).href, `${origin}/jmap`, 'to /jmap on the same origin');

  const { v } = verifier();
  const outcome = await v.verify(cyrus.jmapSessionUrl, USER, { kind: 'password', user: USER, secret: PASS });
  t.match(outcome, { ok: true, cached: false }, `${cyrus.jmapSessionUrl}: ${JSON.stringify(outcome)}`);
  t.match(await v.verify(cyrus.jmapSessionUrl, USER, { kind: 'password', user: USER, secret: PASS }), { ok: true, cached: true }, 'then from the cache');
  const bob = await v.verify(cyrus.jmapSessionUrl, 'bob', { kind: 'password', user: 'bob', secret: cyrus.users.bob as string });
  t.match(bob, { ok: true, cached: false }, 'bob too, with his own password');
  t.match(await v.verify(`${origin}/jmap/`, USER, { kind: 'password', user: USER, secret: PASS }), { ok: true }, 'and at /jmap/ directly');
});

t.test('a wrong password is refused with 401', async (t) => {
  const { v } = verifier();
  const outcome = await v.verify(cyrus.jmapSessionUrl, USER, { kind: 'password', user: USER, secret: `${PASS}-wrong` });
  t.match(outcome, { ok: false, reason: 'unauthorized', cached: false });
  t.notOk(JSON.stringify(outcome).includes(PASS), 'no password in the outcome');
  const other = await v.verify(cyrus.jmapSessionUrl, USER, { kind: 'password', user: 'bob', secret: PASS });
  t.match(other, { ok: false, reason: 'unauthorized' }, "alice's password for bob");
  const nobody = await v.verify(cyrus.jmapSessionUrl, 'nobody', { kind: 'password', user: 'nobody', secret: 'x' });
  t.match(nobody, { ok: false, reason: 'unauthorized' }, 'an unknown user');
});

t.test('a URL that is not the session resource is refused', async (t) => {
  const { v } = verifier();
  const cases: Array<[string, Record<string, unknown>]> = [
    ['/no-such-thing', { reason: 'http-status', detail: '404' }],
    ['/jmap/nope/', { reason: 'http-status', detail: '404' }],
    ['/jmap/upload/alice/', { reason: 'http-status', detail: '204' }],
    // Cyrus's HTML index of well-known resources: 200, but not a session object.
    ['/.well-known/', { reason: 'bad-session', detail: 'not JSON' }],
  ];
  for (const [path, expected] of cases) {
    const outcome = await v.verify(`${origin}${path}`, USER, { kind: 'password', user: USER, secret: PASS });
    t.match(outcome, { ok: false, ...expected }, `${path}: ${JSON.stringify(outcome)}`);
  }
});

t.test('a Bearer token Cyrus does not know is refused (Cyrus is configured for Basic only)', async (t) => {
  const { v } = verifier();
  const outcome = await v.verify(cyrus.jmapSessionUrl, USER, { kind: 'bearer', secret: 'abc.def-ghi' });
  t.match(outcome, { ok: false, reason: 'unauthorized' }, JSON.stringify(outcome));
});
