/**
 * --jmap-url templates and the --jmap-url-map file: what is refused at
 * start-up, what each identity resolves to, and that no identity can ever
 * produce a URL a static --jmap-url would not have been allowed to be.
 */

import t, { type Test } from 'tap';
import fc from 'fast-check';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { ConfigError, validateJmapUrl } from '../src/config.js';
import {
  encodeComponent,
  isDnsName,
  JmapUrlResolver,
  lookupMap,
  MAX_URL_LENGTH,
  parseTemplate,
  parseUrlMap,
  splitIdentity,
  type JmapUrlMap,
} from '../src/jmap-url.js';

const HOST_TEMPLATE = 'https://jmap.{domain}/.well-known/jmap';
const PATH_TEMPLATE = 'https://jmap.example.test/{domain}/{localpart}/session?u={user}';

function tempDir(t: Test): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'jmap-url-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

t.test('encodeComponent: everything but ALPHA DIGIT - . _ ~, as UTF-8 bytes', async (t) => {
  t.equal(encodeComponent('aZ09-._~'), 'aZ09-._~');
  t.equal(encodeComponent("!'()*"), '%21%27%28%29%2A', 'the sub-delims encodeURIComponent leaves alone are encoded');
  t.equal(encodeComponent('"a b"@x/?#%'), '%22a%20b%22%40x%2F%3F%23%25');
  t.equal(encodeComponent('é'), '%C3%A9');
  t.equal(encodeComponent('日本'), '%E6%97%A5%E6%9C%AC');
  t.equal(encodeComponent('\u{1F4E7}'), '%F0%9F%93%A7');
  t.equal(encodeComponent('\r\n\0'), '%0D%0A%00');
  t.equal(encodeComponent('\ud800'), null, 'a lone surrogate has no UTF-8 form');
});

t.test('splitIdentity: at the last @, domain lower-cased', async (t) => {
  t.same(splitIdentity('Alice@Example.COM'), { user: 'Alice@Example.COM', localpart: 'Alice', domain: 'example.com' });
  t.same(splitIdentity('"a@b"@x.org'), { user: '"a@b"@x.org', localpart: '"a@b"', domain: 'x.org' });
  t.same(splitIdentity('a@@x'), { user: 'a@@x', localpart: 'a@', domain: 'x' });
  t.same(splitIdentity('bob'), { user: 'bob', localpart: 'bob', domain: null });
  t.same(splitIdentity('bob@'), { user: 'bob@', localpart: 'bob', domain: null }, 'nothing after @ is no domain');
  t.same(splitIdentity('@x'), { user: '@x', localpart: '', domain: 'x' });
});

t.test('parseTemplate: a URL without placeholders validates exactly as validateJmapUrl', async (t) => {
  const url = 'HTTPS://JMAP.Example.Test:443/jmap/session?x=1';
  const tpl = parseTemplate(url, false);
  t.same(tpl.static, validateJmapUrl(url, false));
  t.equal(tpl.placeholders.size, 0);
  for (const bad of ['http://jmap.example.test/', '/jmap', 'https://u:p@jmap.example.test/', 'https://jmap.example.test/a b', 'https://jmap.example.test/#x']) {
    let expected = '';
    try {
      validateJmapUrl(bad, false);
    } catch (err) {
      expected = (err as Error).message;
    }
    t.not(expected, '', `${bad} is refused by validateJmapUrl`);
    t.throws(() => parseTemplate(bad, false), new ConfigError(expected), `${bad}: same refusal`);
  }
  t.equal(parseTemplate('http://127.0.0.1:8080/jmap', true).static?.url, 'http://127.0.0.1:8080/jmap');
});

t.test('parseTemplate: placeholders, and what is refused at start-up', async (t) => {
  const tpl = parseTemplate(HOST_TEMPLATE, false);
  t.same([...tpl.placeholders], ['domain']);
  t.equal(tpl.inAuthority, true);
  t.equal(tpl.static, null);
  t.equal(parseTemplate(PATH_TEMPLATE, false).inAuthority, false);
  t.equal(parseTemplate('https://{localpart}.users.example.test/jmap', false).inAuthority, true);
  t.equal(parseTemplate('http://jmap.{domain}/', true).insecure, true);

  const cases: Array<[string, RegExp]> = [
    ['https://x.test/{nope}', /^--jmap-url: unknown placeholder \{nope\}; use \{user\}, \{localpart\} or \{domain\}$/],
    ['https://x.test/{USER}', /unknown placeholder \{USER\}/],
    ['https://x.test/{}', /unknown placeholder \{\}/],
    ['https://x.test/{user', /^--jmap-url: "\{" without "\}" at position 16$/],
    ['https://x.test/{{user}}', /"\{" without "\}" at position 16/],
    ['https://x.test/user}', /^--jmap-url: "\}" without "\{" at position 20$/],
    ['{user}://x.test/', /must start with https:\/\/ before any placeholder/],
    ['https:{domain}/', /must start with https:\/\/ before any placeholder/],
    ['http://jmap.{domain}/', /must be an https:\/\/ URL, got "http:\/\/" \(use --allow-insecure-jmap-url/],
    ['ftp://jmap.{domain}/', /must be an https:\/\/ URL, got "ftp:\/\/"$/],
    ['https://x.test/a b/{user}', /" " is not allowed in a URL \(RFC 3986\)/],
    ['https://x.test/caf\u00e9/{user}', /is not allowed in a URL/],
    ['https://x.test/\n{user}', /"\\n" is not allowed in a URL/],
    ['https://x.test/#{user}', /must not contain a #fragment/],
    ['https://x.test/%{user}', /"%" must start a %XX escape/],
    ['https://x.test/%4{user}', /"%" must start a %XX escape/],
    // Only the sample identity can show these.
    ['https://{user}.example.test/', /identity alice@example\.com: the host of https:\/\/alice%40example\.com\.example\.test\/ is not a DNS name/],
    ['https://x.test:{localpart}/', /identity alice@example\.com: https:\/\/x\.test:alice\/: /],
    ['https://{localpart}@x.test/', /identity alice@example\.com: .*must not contain credentials/],
    ['https://[{localpart}]/', /is not a DNS name/],
  ];
  for (const [template, message] of cases) {
    t.throws(() => parseTemplate(template, false), { name: 'ConfigError', message }, template);
  }
  t.throws(() => parseTemplate('https://x.test/{nope}', false, 'map.txt:3'), { message: /^map\.txt:3: unknown placeholder/ });
  t.throws(() => parseTemplate('http://x.test/', false, 'map.txt:3'), { message: /^map\.txt:3: must be an https:\/\/ URL/ });
});

t.test('resolve: a template with odd identities gives a valid URL or a refusal', async (t) => {
  const host = new JmapUrlResolver({ jmapUrl: HOST_TEMPLATE, allowInsecure: false });
  const inPath = new JmapUrlResolver({ jmapUrl: PATH_TEMPLATE, allowInsecure: false });
  const ok = (url: string) => ({ ok: true, url, quoted: `"${url}"` });
  const no = (reason: string) => ({ ok: false, reason });

  t.same(host.resolve('alice@Example.COM'), ok('https://jmap.example.com/.well-known/jmap'), 'domain lower-cased');
  t.same(host.resolve('"a b"@x.org'), ok('https://jmap.x.org/.well-known/jmap'));
  t.same(host.resolve('a@@x.org'), ok('https://jmap.x.org/.well-known/jmap'), 'split at the last @');
  t.same(host.resolve('a@sub-1.x.org'), ok('https://jmap.sub-1.x.org/.well-known/jmap'));
  t.same(host.resolve('bob'), no('no-domain'));
  t.same(host.resolve('bob@'), no('no-domain'));
  t.same(host.resolve(undefined), no('no-identity'));
  t.same(host.resolve(''), no('no-identity'));
  t.same(host.resolve('a@日本.jp'), no('invalid-host'), 'a non-ASCII domain in the host: percent-encoded, not a DNS name');
  t.same(host.resolve('a@b_c.org'), no('invalid-host'));
  t.same(host.resolve('a@-x.org'), no('invalid-host'));
  t.same(host.resolve('a@x..org'), no('invalid-host'));
  t.same(host.resolve('a@x.org/evil.test'), no('invalid-host'), 'a / in the domain cannot end the authority');
  t.same(host.resolve('a@evil.test#'), no('invalid-host'));
  t.same(host.resolve('a@evil.test:443'), no('invalid-host'), 'a : in the domain cannot start a port');
  t.same(host.resolve('a@x%2Fy.org'), no('invalid-host'));
  t.same(host.resolve('a@1.2.3.4'), no('invalid-host'));
  t.same(host.resolve('a@\ud800.org'), no('invalid-identity'));
  t.same(host.resolve(`a@${'x'.repeat(64)}.org`), no('invalid-host'), 'a label over 63');

  t.same(
    inPath.resolve('"a b"@X.org'),
    ok('https://jmap.example.test/x.org/%22a%20b%22/session?u=%22a%20b%22%40X.org'),
    '{user} keeps its case, {domain} is lower-cased',
  );
  t.same(inPath.resolve('é@日本'), ok('https://jmap.example.test/%E6%97%A5%E6%9C%AC/%C3%A9/session?u=%C3%A9%40%E6%97%A5%E6%9C%AC'));
  t.same(inPath.resolve('a%b/c?d#e@x'), ok('https://jmap.example.test/x/a%25b%2Fc%3Fd%23e/session?u=a%25b%2Fc%3Fd%23e%40x'));
  t.same(inPath.resolve('a@@x'), ok('https://jmap.example.test/x/a%40/session?u=a%40%40x'));
  t.same(inPath.resolve('@x'), no('no-localpart'), 'an empty localpart where {localpart} is used');
  t.same(inPath.resolve('\r\n"\\@x'), ok('https://jmap.example.test/x/%0D%0A%22%5C/session?u=%0D%0A%22%5C%40x'));
  const long = new JmapUrlResolver({ jmapUrl: 'https://jmap.example.test/{user}', allowInsecure: false });
  t.same(long.resolve('a'.repeat(MAX_URL_LENGTH)), no('url-too-long'));
  t.same(long.resolve('bob'), ok('https://jmap.example.test/bob'), '{user} alone needs no domain');
  t.same(long.resolve('@x'), ok('https://jmap.example.test/%40x'), '{user} alone accepts an empty localpart');
});

t.test('resolve: a plain --jmap-url is the same for everyone, identity or not', async (t) => {
  const url = 'https://mail.example.test/.well-known/jmap';
  const r = new JmapUrlResolver({ jmapUrl: url, allowInsecure: false });
  t.same(r.static, { url, quoted: `"${url}"` });
  for (const id of [undefined, '', 'bob', 'a@b', '\ud800']) t.same(r.resolve(id), { ok: true, url, quoted: `"${url}"` }, JSON.stringify(id));
  t.equal(new JmapUrlResolver({ jmapUrl: HOST_TEMPLATE, allowInsecure: false }).static, null, 'a template has no static URL');
});

t.test('property: for ANY identity, resolve() refuses or returns a URL that passes validateJmapUrl', async (t) => {
  const templates = [
    HOST_TEMPLATE,
    PATH_TEMPLATE,
    'https://{localpart}.users.example.test/jmap',
    'https://jmap.example.test/{user}',
    'https://{localpart}.{domain}/jmap?x={user}',
  ].map((jmapUrl) => new JmapUrlResolver({ jmapUrl, allowInsecure: false }));
  const identity = fc.oneof(
    fc.string({ unit: 'binary' }),
    fc.string({ unit: 'grapheme' }),
    fc.tuple(fc.string({ unit: 'binary' }), fc.constantFrom('', 'x.org', 'Example.COM', '日本', 'a/b', 'a.b:1', '-x', 'x..y')).map(([l, d]) => `${l}@${d}`),
    fc.stringMatching(/^[a-z0-9.@%"\\ -]{0,30}$/),
  );
  let granted = 0;
  fc.assert(
    fc.property(identity, (id) => {
      for (const resolver of templates) {
        const r = resolver.resolve(id);
        if (!r.ok) continue;
        granted++;
        // Passes the same checks as a static --jmap-url (throws otherwise)...
        const checked = validateJmapUrl(r.url, false);
        if (checked.quoted !== r.quoted) return false;
        // ...and nothing a quoted string or a client could misread.
        if (/[\s"\\\x00-\x1f\x7f-\uffff]/.test(r.url)) return false;
        if (!r.url.startsWith('https://')) return false;
        // The host is a DNS name under the template's own suffix.
        const host = new URL(r.url).hostname;
        if (!isDnsName(host)) return false;
        if (resolver.template?.source.includes('users.example.test') && !host.endsWith('.users.example.test')) return false;
      }
      return true;
    }),
    { numRuns: 3000 },
  );
  t.ok(granted > 1000, `most identities get a URL (${granted})`);
});

t.test('parseUrlMap: format, comments, wildcards, case', async (t) => {
  const text = [
    '# JMAP URL by domain',
    '',
    'example.com      https://jmap.example.com/.well-known/jmap',
    '  Example.ORG\thttps://mail.example.org/jmap/{localpart}   # trailing comment',
    '*.hosted.test    https://{localpart}.hosted.test/jmap',
    '*                https://jmap.{domain}/.well-known/jmap',
    '\r',
  ].join('\r\n');
  const loaded = parseUrlMap(text, 'map.txt', false);
  if (!loaded.ok) throw new Error(loaded.errors.join('\n'));
  const map: JmapUrlMap = loaded.map;
  t.equal(map.size, 4);
  t.same([...map.domains.keys()], ['example.com', 'example.org']);
  t.same([...map.subdomains.keys()], ['hosted.test']);
  t.equal(lookupMap(map, 'example.com')?.source, 'https://jmap.example.com/.well-known/jmap');
  t.equal(lookupMap(map, 'example.org')?.source, 'https://mail.example.org/jmap/{localpart}');
  t.equal(lookupMap(map, 'a.b.hosted.test')?.source, 'https://{localpart}.hosted.test/jmap', 'any depth of subdomain');
  t.equal(lookupMap(map, 'hosted.test')?.source, 'https://jmap.{domain}/.well-known/jmap', '*.x does not match x itself');
  t.equal(lookupMap(map, 'other.test')?.source, 'https://jmap.{domain}/.well-known/jmap');
  t.equal(lookupMap(map, null)?.source, 'https://jmap.{domain}/.well-known/jmap', 'no domain: the * entry');
  t.ok(parseUrlMap('\uFEFFexample.com https://x.test/\n', 'f', false).ok, 'a byte-order mark is ignored');
});

t.test('parseUrlMap: errors carry line numbers, all of them at once', async (t) => {
  const text = [
    'example.com https://jmap.example.com/', // 1
    'example.org', // 2: one field
    'a.test https://x.test/ extra', // 3: three fields
    'EXAMPLE.com https://other.test/', // 4: duplicate (case-insensitive)
    'b.test https://x.test/{nope}', // 5
    'c.test http://x.test/', // 6
    'not@domain https://x.test/', // 7
    '*.*.x https://x.test/', // 8
    '* https://x.test/', // 9
    '* https://y.test/', // 10: duplicate *
    'd.test https://{user}.x.test/', // 11: refused for the sample identity alice@d.test
    'e.test relative/path', // 12
  ].join('\n');
  const loaded = parseUrlMap(text, 'map.txt', false);
  t.equal(loaded.ok, false);
  if (loaded.ok) return;
  t.same(
    loaded.errors.map((e) => e.replace(/^(map\.txt:\d+): .*$/, '$1')),
    ['map.txt:2', 'map.txt:3', 'map.txt:4', 'map.txt:5', 'map.txt:6', 'map.txt:7', 'map.txt:8', 'map.txt:10', 'map.txt:11', 'map.txt:12'],
  );
  t.match(loaded.errors[0], /^map\.txt:2: expected "DOMAIN URL" \(or "\* URL"\), got one field$/);
  t.match(loaded.errors[1], /got 3 fields/);
  t.equal(loaded.errors[2], 'map.txt:4: duplicate entry for example.com (first on line 1)');
  t.match(loaded.errors[3], /^map\.txt:5: unknown placeholder \{nope\}/);
  t.match(loaded.errors[4], /^map\.txt:6: must be an https:\/\/ URL/);
  t.match(loaded.errors[5], /^map\.txt:7: "not@domain" is not a domain, \*\.domain or \*$/);
  t.equal(loaded.errors[7], 'map.txt:10: duplicate entry for * (first on line 9)');
  t.match(loaded.errors[8], /^map\.txt:11: the template gives no valid URL for the identity alice@d\.test/);
  t.match(loaded.errors[9], /^map\.txt:12: "relative\/path" is not an absolute URL$/);
  t.same(parseUrlMap('# only comments\n\n', 'empty.txt', false), { ok: false, errors: ['empty.txt: no entries (expected lines of "DOMAIN URL")'] });
  t.ok(parseUrlMap('c.test http://x.test/', 'f', true).ok, 'http with allowInsecure');
});

t.test('JmapUrlResolver: precedence map entry > map * > --jmap-url, and no-url', async (t) => {
  const dir = tempDir(t);
  const file = path.join(dir, 'map.txt');
  writeFileSync(file, 'example.com https://jmap.example.com/jmap\n*.example.com https://sub.example.com/{domain}\n');
  const fallback = 'https://default.example.net/.well-known/jmap';
  const withDefault = new JmapUrlResolver({ jmapUrl: fallback, mapFile: file, allowInsecure: false });
  const mapOnly = new JmapUrlResolver({ mapFile: file, allowInsecure: false });
  t.equal(withDefault.static, null, 'with a map the URL is never static');
  t.match(withDefault.resolve('a@EXAMPLE.com'), { ok: true, url: 'https://jmap.example.com/jmap' }, 'exact entry, case-insensitive');
  t.match(withDefault.resolve('a@x.example.com'), { ok: true, url: 'https://sub.example.com/x.example.com' });
  t.match(withDefault.resolve('a@other.test'), { ok: true, url: fallback }, 'no entry: --jmap-url');
  t.match(withDefault.resolve('bob'), { ok: true, url: fallback }, 'no domain: --jmap-url');
  t.match(withDefault.resolve(undefined), { ok: true, url: fallback });
  t.same(mapOnly.resolve('a@other.test'), { ok: false, reason: 'no-url' }, 'no entry, no *, no --jmap-url');
  t.same(mapOnly.resolve('bob'), { ok: false, reason: 'no-url' });
  t.same(mapOnly.resolve(undefined), { ok: false, reason: 'no-identity' });

  writeFileSync(file, 'example.com https://jmap.example.com/jmap\n* https://jmap.{domain}/jmap\n');
  t.same(withDefault.reload(), { ok: true, entries: 2 });
  t.match(withDefault.resolve('a@other.test'), { ok: true, url: 'https://jmap.other.test/jmap' }, 'map * wins over --jmap-url');
  t.same(withDefault.resolve('bob'), { ok: false, reason: 'no-domain' }, 'the * template needs a domain');

  t.throws(() => new JmapUrlResolver({ allowInsecure: false }), { name: 'ConfigError', message: /^--jmap-url is required .*unless --jmap-url-map/ });
  t.throws(() => new JmapUrlResolver({ mapFile: path.join(dir, 'missing.txt'), allowInsecure: false }), {
    name: 'ConfigError',
    message: /^--jmap-url-map: .*missing\.txt: cannot read: ENOENT/,
  });
  writeFileSync(file, 'a.test https://x.test/\nb.test\nc.test https://x.test/{x}\n');
  t.throws(() => new JmapUrlResolver({ mapFile: file, allowInsecure: false }), {
    name: 'ConfigError',
    message: new RegExp(`^--jmap-url-map: ${file.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}:2: .*; .*:3: unknown placeholder \\{x\\}`),
  });
});

t.test('JmapUrlResolver.reload keeps the previous map on any error', async (t) => {
  const dir = tempDir(t);
  const file = path.join(dir, 'map.txt');
  writeFileSync(file, 'example.com https://one.example.com/jmap\n');
  const r = new JmapUrlResolver({ mapFile: file, allowInsecure: false });
  t.same(r.describe(), { jmapUrl: null, jmapUrlMap: file, mapEntries: 1 });

  writeFileSync(file, 'example.com https://two.example.com/jmap\nexample.org https://two.example.org/jmap\n');
  t.same(r.reload(), { ok: true, entries: 2 });
  t.match(r.resolve('a@example.com'), { ok: true, url: 'https://two.example.com/jmap' });
  t.match(r.resolve('a@example.org'), { ok: true, url: 'https://two.example.org/jmap' });

  for (const [broken, error] of [
    ['example.com https://three.example.com/jmap\nexample.com https://dup.example.com/\n', `${file}:2: duplicate entry for example.com (first on line 1)`],
    ['', `${file}: no entries (expected lines of "DOMAIN URL")`],
    ['example.com https://three.example.com/{oops}\n', `${file}:1: unknown placeholder {oops}; use {user}, {localpart} or {domain}`],
  ] as const) {
    writeFileSync(file, broken);
    t.same(r.reload(), { ok: false, errors: [error] });
    t.match(r.resolve('a@example.com'), { ok: true, url: 'https://two.example.com/jmap' }, 'previous map kept');
    t.equal(r.mapEntries, 2);
  }
  rmSync(file);
  const gone = r.reload();
  t.match(gone, { ok: false, errors: [/cannot read: ENOENT/] });
  t.match(r.resolve('a@example.org'), { ok: true, url: 'https://two.example.org/jmap' }, 'previous map kept when the file is gone');
  t.same(new JmapUrlResolver({ jmapUrl: HOST_TEMPLATE, allowInsecure: false }).reload(), { ok: true, entries: 0 }, 'no map file: nothing to do');
});

t.test('JmapUrlResolver survives object spreads and logs as a summary', async (t) => {
  const r = new JmapUrlResolver({ jmapUrl: HOST_TEMPLATE, allowInsecure: false });
  const copy = { ...{ jmapUrls: r } };
  t.equal(copy.jmapUrls, r);
  t.match(copy.jmapUrls.resolve('a@b.test'), { ok: true, url: 'https://jmap.b.test/.well-known/jmap' });
  t.same(JSON.parse(JSON.stringify(copy)), { jmapUrls: { jmapUrl: HOST_TEMPLATE, jmapUrlMap: null } });
  t.equal(r.insecure, false);
  t.equal(new JmapUrlResolver({ jmapUrl: 'http://jmap.{domain}/', allowInsecure: true }).insecure, true);
});

t.test('isDnsName', async (t) => {
  for (const ok of ['a', 'jmap.example.com', 'xn--bcher-kva.example', 'A-1.b', `${'a'.repeat(63)}.x`]) t.ok(isDnsName(ok), ok);
  for (const bad of ['', '.', 'a.', '.a', 'a..b', '-a.b', 'a-.b', 'a_b.c', 'a%41.b', '1.2.3.4', `${'a'.repeat(64)}.x`, `${'a.'.repeat(127)}ab`]) {
    t.notOk(isDnsName(bad), JSON.stringify(bad));
  }
});
