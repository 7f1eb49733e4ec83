/**
 * The RFC 9698 policy, over every combination of its inputs.
 */

import t from 'tap';
import fc from 'fast-check';
import {
  decide,
  getJmapAccessReply,
  needsObjectIdProbe,
  type Authentication,
  type Decision,
  type JmapTarget,
  type ObjectIdKnowledge,
  type PolicyConfig,
  type SessionFacts,
  type Verification,
} from '../src/jmapaccess.js';

const QUOTED = '"https://jmap.example.test/.well-known/jmap"';
const TARGET: JmapTarget = { ok: true, url: 'https://jmap.example.test/.well-known/jmap', quoted: QUOTED };
const OTHER: JmapTarget = { ok: true, url: 'https://jmap.other.test/', quoted: '"https://jmap.other.test/"' };
const NO_URL: JmapTarget = { ok: false, reason: 'no-url' };
const TARGETS: readonly JmapTarget[] = [TARGET, OTHER, NO_URL];
const VERIFICATIONS: readonly Verification[] = ['off', 'pending', { ok: true }, { ok: false, reason: 'unauthorized' }];
const verified = (v: Verification) => v === 'off' || (v !== 'pending' && v.ok);
const MECHANISMS = ['LOGIN', 'PLAIN', 'OAUTHBEARER', 'XOAUTH2', 'SCRAM-SHA-256', 'EXTERNAL', 'UNKNOWN'] as const;
const OBJECT_ID: readonly ObjectIdKnowledge[] = ['present', 'absent', 'unknown'];

const authenticationArb: fc.Arbitrary<Authentication | null> = fc.option(
  fc.record({
    mechanism: fc.constantFrom(...MECHANISMS),
    user: fc.option(fc.string(), { nil: undefined }),
    jmap: fc.constantFrom(...TARGETS),
    verification: fc.constantFrom(...VERIFICATIONS),
  }),
  { nil: null },
);
const factsArb: fc.Arbitrary<SessionFacts> = fc.record({
  authenticated: fc.boolean(),
  authentication: authenticationArb,
  objectId: fc.constantFrom(...OBJECT_ID),
});
const configArb: fc.Arbitrary<PolicyConfig> = fc.record({
  jmapMechanisms: fc.subarray([...MECHANISMS]).map((m) => new Set<string>(m)),
  objectId: fc.constantFrom('require' as const, 'assume' as const),
});

function expectedGrant(facts: SessionFacts, config: PolicyConfig): boolean {
  return (
    facts.authenticated &&
    facts.authentication !== null &&
    config.jmapMechanisms.has(facts.authentication.mechanism) &&
    facts.authentication.jmap.ok &&
    verified(facts.authentication.verification) &&
    (facts.objectId === 'present' || config.objectId === 'assume')
  );
}

function expectedReason(facts: SessionFacts, config: PolicyConfig): Decision['reason'] {
  if (!facts.authenticated) return 'not-authenticated';
  if (facts.authentication === null) return 'preauthenticated';
  if (!config.jmapMechanisms.has(facts.authentication.mechanism)) return 'mechanism-not-eligible';
  if (!facts.authentication.jmap.ok) return 'user-not-eligible';
  if (!verified(facts.authentication.verification)) return 'jmap-not-verified';
  if (facts.objectId === 'present') return 'eligible';
  if (config.objectId === 'assume') return 'objectid-assumed';
  return 'no-objectid';
}

function expectedProbe(facts: SessionFacts, config: PolicyConfig): boolean {
  return (
    config.objectId === 'require' &&
    facts.objectId === 'unknown' &&
    facts.authenticated &&
    facts.authentication !== null &&
    config.jmapMechanisms.has(facts.authentication.mechanism) &&
    facts.authentication.jmap.ok &&
    verified(facts.authentication.verification)
  );
}

t.test('decide: grant iff authenticated, known mechanism in the set, and OBJECTID present or assumed', async (t) => {
  fc.assert(
    fc.property(factsArb, configArb, (facts, config) => {
      const decision = decide(facts, config);
      return decision.grant === expectedGrant(facts, config) && decision.reason === expectedReason(facts, config);
    }),
    { numRuns: 2000 },
  );
  t.pass();
});

t.test('needsObjectIdProbe: only when OBJECTID is the one thing missing to decide', async (t) => {
  fc.assert(
    fc.property(factsArb, configArb, (facts, config) => {
      const probe = needsObjectIdProbe(facts, config);
      if (probe !== expectedProbe(facts, config)) return false;
      if (!probe) return true;
      // A probe is asked for exactly when the answer decides: present grants, absent refuses.
      const present = decide({ ...facts, objectId: 'present' }, config);
      const absent = decide({ ...facts, objectId: 'absent' }, config);
      const unknown = decide(facts, config);
      return present.grant && !absent.grant && !unknown.grant && unknown.reason === 'no-objectid';
    }),
    { numRuns: 2000 },
  );
  t.pass();
});

t.test('every combination, enumerated', async (t) => {
  let combinations = 0;
  let grants = 0;
  const authentications: Array<Authentication | null> = [
    null,
    ...MECHANISMS.flatMap((mechanism) =>
      TARGETS.flatMap((jmap) => VERIFICATIONS.map((verification) => ({ mechanism, user: 'alice', jmap, verification }))),
    ),
  ];
  const mechanismSets = [new Set<string>(), new Set<string>(['LOGIN', 'PLAIN', 'OAUTHBEARER', 'XOAUTH2']), new Set<string>(['PLAIN'])];
  for (const authenticated of [false, true]) {
    for (const authentication of authentications) {
      for (const objectId of OBJECT_ID) {
        for (const mode of ['require', 'assume'] as const) {
          for (const jmapMechanisms of mechanismSets) {
            const facts: SessionFacts = { authenticated, authentication, objectId };
            const config: PolicyConfig = { jmapMechanisms, objectId: mode };
            const decision = decide(facts, config);
            combinations++;
            if (decision.grant) grants++;
            if (
              decision.grant !== expectedGrant(facts, config) ||
              decision.reason !== expectedReason(facts, config) ||
              needsObjectIdProbe(facts, config) !== expectedProbe(facts, config)
            ) {
              t.fail(`wrong decision for ${JSON.stringify({ facts, mode, mechanisms: [...jmapMechanisms] })}: ${JSON.stringify(decision)}`);
            }
            const reply = getJmapAccessReply('t1', decision);
            if (decision.grant) {
              // The URL is this user's, whichever it is.
              const quoted = authentication?.jmap.ok ? authentication.jmap.quoted : '?';
              t.equal(reply, `* JMAPACCESS ${quoted}\r\nt1 OK GETJMAPACCESS completed\r\n`);
            } else {
              t.match(reply, /^t1 BAD [^\r\n]+\r\n$/);
            }
          }
        }
      }
    }
  }
  t.equal(combinations, 2 * (1 + MECHANISMS.length * TARGETS.length * VERIFICATIONS.length) * 3 * 2 * 3);
  t.ok(grants > 0 && grants < combinations, 'both outcomes occur');
});

t.test('decide: named cases', async (t) => {
  const all: PolicyConfig = { jmapMechanisms: new Set(['LOGIN', 'PLAIN']), objectId: 'require' };
  const alice: Authentication = { mechanism: 'LOGIN', user: 'alice', jmap: TARGET, verification: 'off' };
  t.same(decide({ authenticated: false, authentication: null, objectId: 'present' }, all), { grant: false, reason: 'not-authenticated' });
  t.same(
    decide({ authenticated: false, authentication: alice, objectId: 'present' }, all),
    { grant: false, reason: 'not-authenticated' },
    'a remembered authentication does not count once the state says otherwise',
  );
  t.same(decide({ authenticated: true, authentication: null, objectId: 'present' }, all), { grant: false, reason: 'preauthenticated' });
  t.same(
    decide({ authenticated: true, authentication: { ...alice, mechanism: 'XOAUTH2' }, objectId: 'present' }, all),
    { grant: false, reason: 'mechanism-not-eligible' },
  );
  t.same(
    decide({ authenticated: true, authentication: { ...alice, mechanism: 'login' }, objectId: 'present' }, all),
    { grant: false, reason: 'mechanism-not-eligible' },
    'mechanisms are compared as given (the session upper-cases them)',
  );
  t.same(decide({ authenticated: true, authentication: alice, objectId: 'present' }, all), { grant: true, reason: 'eligible', quoted: QUOTED });
  t.same(decide({ authenticated: true, authentication: alice, objectId: 'absent' }, all), { grant: false, reason: 'no-objectid' });
  t.same(decide({ authenticated: true, authentication: alice, objectId: 'unknown' }, all), { grant: false, reason: 'no-objectid' });
  const assume: PolicyConfig = { ...all, objectId: 'assume' };
  t.same(decide({ authenticated: true, authentication: alice, objectId: 'absent' }, assume), { grant: true, reason: 'objectid-assumed', quoted: QUOTED });
  t.same(decide({ authenticated: true, authentication: alice, objectId: 'present' }, assume), { grant: true, reason: 'eligible', quoted: QUOTED });
  t.same(
    decide({ authenticated: true, authentication: { ...alice, jmap: OTHER }, objectId: 'present' }, all),
    { grant: true, reason: 'eligible', quoted: OTHER.ok ? OTHER.quoted : '' },
    "a per-user URL is the one granted",
  );
  t.same(
    decide({ authenticated: true, authentication: { ...alice, jmap: NO_URL }, objectId: 'present' }, assume),
    { grant: false, reason: 'user-not-eligible', detail: 'no-url' },
    'no URL for this user: refused even with --objectid assume',
  );
  t.same(
    decide({ authenticated: true, authentication: { ...alice, verification: { ok: false, reason: 'unauthorized' } }, objectId: 'present' }, all),
    { grant: false, reason: 'jmap-not-verified', detail: 'unauthorized' },
  );
  t.same(
    decide({ authenticated: true, authentication: { ...alice, verification: 'pending' }, objectId: 'present' }, all),
    { grant: false, reason: 'jmap-not-verified', detail: 'pending' },
    'not known yet is not granted',
  );
  t.same(
    decide({ authenticated: true, authentication: { ...alice, verification: { ok: true } }, objectId: 'present' }, all),
    { grant: true, reason: 'eligible', quoted: QUOTED },
  );
});

t.test('getJmapAccessReply: the exact bytes', async (t) => {
  t.equal(
    getJmapAccessReply('A1', { grant: true, reason: 'eligible', quoted: QUOTED }),
    `* JMAPACCESS ${QUOTED}\r\nA1 OK GETJMAPACCESS completed\r\n`,
  );
  t.equal(
    getJmapAccessReply('A1', { grant: true, reason: 'objectid-assumed', quoted: QUOTED }),
    `* JMAPACCESS ${QUOTED}\r\nA1 OK GETJMAPACCESS completed\r\n`,
  );
  t.equal(
    getJmapAccessReply('b', { grant: false, reason: 'not-authenticated' }),
    'b BAD GETJMAPACCESS is valid only after authentication\r\n',
  );
  t.equal(
    getJmapAccessReply('b', { grant: false, reason: 'preauthenticated' }),
    'b BAD JMAP access is not available for this session\r\n',
  );
  t.equal(
    getJmapAccessReply('b', { grant: false, reason: 'mechanism-not-eligible' }),
    'b BAD JMAP access is not available for this authentication method\r\n',
  );
  t.equal(
    getJmapAccessReply('b', { grant: false, reason: 'no-objectid' }),
    'b BAD JMAP access is not available on this server\r\n',
  );
});

t.test('getJmapAccessReply: property: one line on refusal, never the URL', async (t) => {
  fc.assert(
    fc.property(factsArb, configArb, fc.stringMatching(/^[A-Za-z0-9.]{1,10}$/), (facts, config, tag) => {
      const decision = decide(facts, config);
      const reply = getJmapAccessReply(tag, decision);
      const quoted = facts.authentication?.jmap.ok ? facts.authentication.jmap.quoted : '';
      if (decision.grant) return reply === `* JMAPACCESS ${quoted}\r\n${tag} OK GETJMAPACCESS completed\r\n`;
      return (
        reply.startsWith(`${tag} BAD `) &&
        reply.endsWith('\r\n') &&
        reply.indexOf('\n') === reply.length - 1 &&
        !TARGETS.some((target) => target.ok && reply.includes(target.url)) &&
        !reply.includes('* JMAPACCESS')
      );
    }),
    { numRuns: 1000 },
  );
  t.pass();
});
