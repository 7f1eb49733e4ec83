/**
 * --jmap-users-allow / --jmap-users-deny: list syntax, refusals at start-up,
 * and decisions (deny wins, empty allow list allows everyone, no identity).
 */

import t from 'tap';
import fc from 'fast-check';
import { JmapUserFilter, parseUserRules, splitUserList } from '../src/jmap-users.js';

const filter = (allow?: string | string[], deny?: string | string[]) => JmapUserFilter.fromFlags(allow, deny);
const OK = { ok: true };
const NOT_ALLOWED = { ok: false, reason: 'not-allowed' };
const DENIED = { ok: false, reason: 'denied' };

t.test('splitUserList: commas, spaces, and regular expressions holding commas or slashes', async (t) => {
  t.same(splitUserList('a.test, b.test,,c.test ', 'f'), ['a.test', 'b.test', 'c.test']);
  t.same(splitUserList('/^a{1,3}@x$/i, b.test', 'f'), ['/^a{1,3}@x$/i', 'b.test']);
  t.same(splitUserList('/a\\/b/,/[/,]x/', 'f'), ['/a\\/b/', '/[/,]x/']);
  t.same(splitUserList('', 'f'), []);
  t.throws(() => splitUserList('/abc', '--jmap-users-allow'), { name: 'ConfigError', message: '--jmap-users-allow: "/abc" has no closing "/"' });
  t.throws(() => splitUserList('/a/ b', '--jmap-users-deny'), { name: 'ConfigError', message: '--jmap-users-deny: expected "," after /a/' });
});

t.test('parseUserRules: kinds of entry, repeated flags add up', async (t) => {
  const rules = parseUserRules(['Example.COM,*.Hosted.test', 'Alice@Example.org', '/^test-\\d+@/i'], '--jmap-users-allow');
  t.match(rules, [
    { kind: 'domain', domain: 'example.com', subdomains: false, source: 'Example.COM' },
    { kind: 'domain', domain: 'hosted.test', subdomains: true },
    { kind: 'identity', identity: 'alice@example.org' },
    { kind: 'regex', source: '/^test-\\d+@/i' },
  ]);
  t.same(parseUserRules(undefined, 'f'), []);
});

t.test('parseUserRules: bad entries are ConfigErrors naming the flag', async (t) => {
  const cases: Array<[string, RegExp]> = [
    ['/[/', /^--jmap-users-allow: "\/\[\/" has no closing/],
    ['/(/', /^--jmap-users-allow: "\/\(\/" is not a valid regular expression: /],
    ['/a)|(b/', /is not a valid regular expression/],
    ['/a/g', /^--jmap-users-allow: "\/a\/g": regular expression flags may only be i, s, u and v$/],
    ['/a/m', /flags may only be/],
    ['//', /is an empty regular expression/],
    ['*.', /is not a domain/],
    ['*', /"\*" is not a domain, \*\.domain, user@domain or \/regular expression\/$/],
    ['a..b', /is not a domain/],
    ['@example.com', /is not a domain/],
    ['alice@', /is not a domain/],
    ['a@*.example.com', /is not a domain/],
    ['exa mple.com', /is not a domain/],
    ['https://x.test', /is not a domain/],
  ];
  for (const [value, message] of cases) {
    t.throws(() => parseUserRules(value, '--jmap-users-allow'), { name: 'ConfigError', message }, value);
  }
});

t.test('allowed: empty lists allow everyone, even with no identity', async (t) => {
  const f = filter();
  t.equal(f.empty, true);
  for (const id of [undefined, '', 'bob', 'a@b.test']) t.same(f.allowed(id), OK, JSON.stringify(id));
});

t.test('allowed: an allow list of domains', async (t) => {
  const f = filter('example.com,*.hosted.test');
  t.same(f.allowed('alice@example.com'), OK);
  t.same(f.allowed('Alice@EXAMPLE.COM'), OK, 'domains are case-insensitive');
  t.same(f.allowed('"a@b"@example.com'), OK, 'the domain is after the last @');
  t.same(f.allowed('a@sub.example.com'), NOT_ALLOWED, 'a plain domain does not cover subdomains');
  t.same(f.allowed('a@x.hosted.test'), OK);
  t.same(f.allowed('a@y.x.hosted.test'), OK);
  t.same(f.allowed('a@hosted.test'), NOT_ALLOWED, '*.x is not x');
  t.same(f.allowed('a@evilhosted.test'), NOT_ALLOWED);
  t.same(f.allowed('a@example.com.evil.test'), NOT_ALLOWED);
  t.same(f.allowed('example.com'), NOT_ALLOWED, 'no @: no domain');
  t.same(f.allowed('a@'), NOT_ALLOWED);
  t.same(f.allowed(undefined), NOT_ALLOWED, 'no identity is not allowed when there is an allow list');
});

t.test('allowed: deny wins; regular expressions match the whole identity', async (t) => {
  const f = filter(['example.com', '/beta-.*@example\\.org/'], ['/.*\\+test@.*/i', 'Bob@Example.com']);
  t.same(f.allowed('alice@example.com'), OK);
  t.same(f.allowed('bob@example.com'), DENIED, 'an identity entry, case-insensitive');
  t.same(f.allowed('a+TEST@example.com'), DENIED, 'deny wins over allow');
  t.same(f.allowed('beta-1@example.org'), OK);
  t.same(f.allowed('xbeta-1@example.org'), NOT_ALLOWED, 'anchored at the start');
  t.same(f.allowed('beta-1@example.org.evil'), NOT_ALLOWED, 'anchored at the end');
  t.same(f.allowed('alice@example.org'), NOT_ALLOWED);
  t.same(f.allowed(undefined), NOT_ALLOWED);
  const denyOnly = filter(undefined, 'example.net');
  t.same(denyOnly.allowed('a@example.net'), DENIED);
  t.same(denyOnly.allowed('a@example.com'), OK);
  t.same(denyOnly.allowed(undefined), OK, 'no identity, no allow list: only a deny list cannot refuse it');
  t.same(filter('/a|b/').allowed('ab'), NOT_ALLOWED, 'alternation stays inside the anchors');
  t.same(filter('/a|b/').allowed('b'), OK);
});

t.test('allowed: the same answer each time (no stateful regular expressions) and never throws', async (t) => {
  const f = filter(['/x/i', 'example.com', '*.example.com', 'a@b.c'], ['/y/']);
  fc.assert(
    fc.property(fc.option(fc.string({ unit: 'binary' }), { nil: undefined }), (id) => {
      const first = f.allowed(id);
      const second = f.allowed(id);
      return JSON.stringify(first) === JSON.stringify(second) && (first.ok || first.reason === 'denied' || first.reason === 'not-allowed');
    }),
    { numRuns: 2000 },
  );
  t.same(f.describe(), { allow: ['/x/i', 'example.com', '*.example.com', 'a@b.c'], deny: ['/y/'] });
  t.same(JSON.parse(JSON.stringify({ ...{ f } })), { f: { allow: ['/x/i', 'example.com', '*.example.com', 'a@b.c'], deny: ['/y/'] } });
});
