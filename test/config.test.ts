/**
 * Configuration validation: every flag value the CLI (or a test) hands in
 * goes through these functions, so a bad value is refused at start-up with a
 * message naming the flag, never discovered while a client is connected.
 */

import t from 'tap';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  ConfigError,
  DEFAULT_MAX_LINE_LENGTH,
  DEFAULT_MECHANISMS,
  describeConfig,
  parseDuration,
  parseHostPort,
  parseUpstream,
  parseWorkers,
  parseUpstreamUrl,
  validateConfig,
  validateJmapUrl,
  type RawConfig,
} from '../src/config.js';

const JMAP = 'https://jmap.example.test/.well-known/jmap';

/** A minimal valid raw configuration, with overrides. */
function raw(overrides: Partial<RawConfig> = {}): RawConfig {
  return { listen: '127.0.0.1:1143', upstream: 'imap://127.0.0.1:143', jmapUrl: JMAP, ...overrides };
}

t.test('parseHostPort: accepted forms', async (t) => {
  t.same(parseHostPort('127.0.0.1:1143', '--listen'), { host: '127.0.0.1', port: 1143 });
  t.same(parseHostPort('localhost:993', '--listen'), { host: 'localhost', port: 993 });
  t.same(parseHostPort('[::1]:143', '--listen'), { host: '::1', port: 143 });
  t.same(parseHostPort('[fe80::1%eth0]:143', '--listen'), { host: 'fe80::1%eth0', port: 143 });
  t.same(parseHostPort(':1143', '--listen'), { host: '0.0.0.0', port: 1143 }, ':PORT means all interfaces');
  t.same(parseHostPort('1143', '--listen'), { host: '0.0.0.0', port: 1143 }, 'PORT alone means all interfaces');
  t.same(parseHostPort('  127.0.0.1:1143 \n', '--listen'), { host: '127.0.0.1', port: 1143 }, 'surrounding space is ignored');
  t.same(parseHostPort('127.0.0.1:0', '--listen'), { host: '127.0.0.1', port: 0 }, 'port 0 asks for a free port');
  t.same(parseHostPort('127.0.0.1:65535', '--listen'), { host: '127.0.0.1', port: 65535 });
});

t.test('parseHostPort: refusals name the flag', async (t) => {
  const cases: Array<[string, RegExp]> = [
    ['localhost', /^--listen: expected HOST:PORT, got "localhost"$/],
    ['', /^--listen: expected HOST:PORT/],
    ['::1:143', /^--listen: write IPv6 addresses in brackets, as \[::1\]:143$/],
    ['127.0.0.1:', /^--listen: port must be a number, got ""$/],
    ['127.0.0.1:http', /^--listen: port must be a number, got "http"$/],
    ['127.0.0.1:-1', /^--listen: port must be a number, got "-1"$/],
    ['127.0.0.1:65536', /^--listen: port 65536 is out of range 0-65535$/],
    ['[::1]:99999', /^--listen: port 99999 is out of range 0-65535$/],
  ];
  for (const [input, message] of cases) {
    t.throws(() => parseHostPort(input, '--listen'), { name: 'ConfigError', message }, JSON.stringify(input));
  }
  t.throws(() => parseHostPort('x', '--other'), ConfigError, 'errors are ConfigError instances');
});

t.test('parseUpstream: imap://HOST:PORT', async (t) => {
  t.same(parseUpstream('imap://127.0.0.1:1430'), { host: '127.0.0.1', port: 1430 });
  t.same(parseUpstream('imap://mail.example.test'), { host: 'mail.example.test', port: 143 }, 'port defaults to 143');
  t.same(parseUpstream('imap://mail.example.test/'), { host: 'mail.example.test', port: 143 }, 'a bare trailing slash is fine');
  t.same(parseUpstream('imap://[::1]:143'), { host: '::1', port: 143 }, 'IPv6 brackets are removed');
  t.same(parseUpstream('IMAP://mail.example.test:10143'), { host: 'mail.example.test', port: 10143 }, 'the scheme is case-insensitive');
});

t.test('parseUpstreamUrl: TLS modes and default ports', async (t) => {
  t.same(parseUpstreamUrl('imaps://mail.example.test'), { address: { host: 'mail.example.test', port: 993 }, tls: 'implicit' });
  t.same(parseUpstreamUrl('imap://mail.example.test?starttls'), { address: { host: 'mail.example.test', port: 143 }, tls: 'starttls' });
  t.same(parseUpstreamUrl('imap://127.0.0.1:1143'), { address: { host: '127.0.0.1', port: 1143 }, tls: null });
});

t.test('validateConfig: upstream TLS flags', async (t) => {
  const base = { listen: '127.0.0.1:1143', jmapUrl: JMAP };
  t.same(validateConfig({ ...base, upstream: 'imap://h:143', upstreamStarttls: true }).upstreamTls, {
    mode: 'starttls',
    ca: null,
    servername: null,
    insecure: false,
  });
  t.throws(() => validateConfig({ ...base, upstream: 'imaps://h', upstreamStarttls: true }), { message: /does not go with imaps/ });
  t.throws(() => validateConfig({ ...base, upstream: 'imap://h', upstreamTlsInsecure: true }), {
    message: /^--upstream-tls-insecure needs TLS to the upstream/,
  });
  t.throws(() => validateConfig({ ...base, upstream: 'imaps://h', upstreamCa: '/nonexistent/ca.pem' }), {
    message: /^--upstream-ca: cannot read \/nonexistent\/ca.pem/,
  });
});

t.test('parseUpstream: refusals', async (t) => {
  const cases: Array<[string, RegExp]> = [
    ['mail.example.test:143', /^--upstream: scheme must be imap:\/\/ or imaps:\/\/, got "mail.example.test:\/\/"$/],
    ['127.0.0.1:143', /^--upstream: "127.0.0.1:143" is not a URL; expected imap:\/\/HOST:PORT$/],
    ['http://mail.example.test', /^--upstream: scheme must be imap:\/\/ or imaps:\/\/, got "http:\/\/"$/],
    ['imap://user:pw@mail.example.test', /^--upstream: must not contain credentials$/],
    ['imap://user@mail.example.test', /^--upstream: must not contain credentials$/],
    ['imap://mail.example.test/INBOX', /^--upstream: expected imap:\/\/HOST:PORT, imap:\/\/HOST:PORT\?starttls or imaps:\/\/HOST:PORT/],
    ['imap://mail.example.test?x=1', /^--upstream: expected imap:\/\/HOST:PORT, imap:\/\/HOST:PORT\?starttls/],
    ['imaps://mail.example.test?starttls', /^--upstream: expected imap:\/\/HOST:PORT, imap:\/\/HOST:PORT\?starttls/],
    ['imap://mail.example.test#f', /^--upstream: expected imap:\/\/HOST:PORT, imap:\/\/HOST:PORT\?starttls/],
    ['imap://mail.example.test:0', /^--upstream: port must be 1-65535$/],
    ['imap://mail.example.test:70000', /not a URL/],
    ['imap:///', /^--upstream: missing host$/],
    ['', /not a URL/],
  ];
  for (const [input, message] of cases) {
    t.throws(() => parseUpstream(input), { name: 'ConfigError', message }, JSON.stringify(input));
  }
});

t.test('validateJmapUrl: https accepted, quoted as given', async (t) => {
  t.same(validateJmapUrl(JMAP, false), { url: JMAP, quoted: `"${JMAP}"` });
  const unnormalised = 'HTTPS://JMAP.Example.Test:443/jmap/session?x=1';
  t.same(
    validateJmapUrl(unnormalised, false),
    { url: unnormalised, quoted: `"${unnormalised}"` },
    'the text is kept as given, not normalised',
  );
  const encodedQuote = 'https://jmap.example.test/a%22b%5Cc';
  t.same(
    validateJmapUrl(encodedQuote, false),
    { url: encodedQuote, quoted: `"${encodedQuote}"` },
    'a percent-encoded quote or backslash needs no escaping',
  );
});

t.test('validateJmapUrl: http only with allowInsecureJmapUrl', async (t) => {
  t.throws(() => validateJmapUrl('http://jmap.example.test/jmap', false), {
    name: 'ConfigError',
    message: '--jmap-url: must be an https:// URL, got "http://" (use --allow-insecure-jmap-url for a lab or test setup)',
  });
  t.same(validateJmapUrl('http://jmap.example.test/jmap', true), {
    url: 'http://jmap.example.test/jmap',
    quoted: '"http://jmap.example.test/jmap"',
  });
  for (const allow of [false, true]) {
    t.throws(
      () => validateJmapUrl('ftp://jmap.example.test/jmap', allow),
      { name: 'ConfigError', message: '--jmap-url: must be an https:// URL, got "ftp://"' },
      `other schemes are refused (allowInsecure ${allow}), without the http hint`,
    );
  }
});

t.test('validateJmapUrl: relative URLs, credentials and fragments are refused', async (t) => {
  for (const relative of ['/.well-known/jmap', 'jmap.example.test/jmap', '//jmap.example.test/jmap', '']) {
    t.throws(
      () => validateJmapUrl(relative, false),
      { name: 'ConfigError', message: `--jmap-url: "${relative}" is not an absolute URL` },
      JSON.stringify(relative),
    );
  }
  for (const withCredentials of ['https://user:pw@jmap.example.test/', 'https://user@jmap.example.test/', 'https://:pw@jmap.example.test/']) {
    t.throws(
      () => validateJmapUrl(withCredentials, false),
      { name: 'ConfigError', message: '--jmap-url: must not contain credentials' },
      withCredentials,
    );
  }
  t.throws(() => validateJmapUrl('https://jmap.example.test/jmap#x', false), {
    name: 'ConfigError',
    message: '--jmap-url: must not contain a #fragment',
  });
});

t.test('validateJmapUrl: CR, LF, NUL and non-ASCII cannot be quoted and are refused', async (t) => {
  const message = /^--jmap-url: "(\\n|\\r|\\u0000|[^"]+)" is not allowed in a URL \(RFC 3986\); percent-encode it$/;
  // The WHATWG parser silently drops CR and LF, so these are only caught
  // because the text as given is what gets quoted.
  for (const bad of [
    'https://jmap.example.test/a\nb',
    'https://jmap.example.test/a\rb',
    'https://jmap.example.test/jmap\r\n',
    'https://jmap.example.test/a\x00b',
    'https://jmap.example.test/caf\u00e9',
    'https://jm\u00e4p.example.test/jmap',
    'https://jmap.example.test/\u{1F4E7}',
  ]) {
    t.throws(() => validateJmapUrl(bad, false), { name: 'ConfigError', message }, JSON.stringify(bad));
  }
});

t.test('validateJmapUrl: characters not allowed in a URI (RFC 3986) are refused, not sent as given', async (t) => {
  // The URL is sent to clients exactly as given, but checked only in its
  // WHATWG-normalised form, which percent-encodes `"`, turns `\` into `/`,
  // and drops tabs. A client would receive a string that is not a URI, or
  // (for `\`) one it may read with a different host or path than checked.
  for (const bad of [
    'https://jmap.example.test/a"b',
    'https://jmap.example.test/a\\b',
    'https://jmap.example.test\\@evil.example/',
    'https://jmap.example.test/a b',
    ' https://jmap.example.test/jmap',
    'https://jmap.example.test/a\tb',
    'https://jmap.example.test/a\x01b',
  ]) {
    t.throws(() => validateJmapUrl(bad, false), { name: 'ConfigError', message: /^--jmap-url: / }, JSON.stringify(bad));
  }
});

t.test('parseDuration: units and plain seconds', async (t) => {
  t.equal(parseDuration('500ms', 'd'), 500);
  t.equal(parseDuration('30s', 'd'), 30_000);
  t.equal(parseDuration('31m', 'd'), 1_860_000);
  t.equal(parseDuration('2h', 'd'), 7_200_000);
  t.equal(parseDuration('1.5', 'd'), 1500, 'plain numbers are seconds');
  t.equal(parseDuration('10', 'd'), 10_000);
  t.equal(parseDuration('0.25s', 'd'), 250);
  t.equal(parseDuration(' 30 s ', 'd'), 30_000, 'spaces around and before the unit are allowed');
  t.equal(parseDuration('0', 'd'), 0);
  t.equal(parseDuration(2.5, 'd'), 2500, 'a number is seconds');
  t.equal(parseDuration(0, 'd'), 0);
  t.equal(parseDuration('1.0004', 'd'), 1000, 'rounded to whole milliseconds');
});

t.test('parseDuration: junk is refused with the flag name', async (t) => {
  for (const junk of ['', 'abc', '5x', '5 minutes', '-1', '-1s', '.5', '1.', '1e3', 'ms', '10ms5', '1,5', '30S', 'Infinity', 'NaN']) {
    t.throws(
      () => parseDuration(junk, '--upstream-connect-timeout'),
      {
        name: 'ConfigError',
        message: `--upstream-connect-timeout: expected seconds or a duration such as 500ms, 30s, 31m; got "${junk}"`,
      },
      JSON.stringify(junk),
    );
  }
  for (const junk of [-1, Number.NaN, Number.POSITIVE_INFINITY]) {
    t.throws(
      () => parseDuration(junk, '--upstream-connect-timeout'),
      { name: 'ConfigError', message: '--upstream-connect-timeout: must be a non-negative number of seconds' },
      String(junk),
    );
  }
});

t.test('validateConfig: defaults', async (t) => {
  const config = validateConfig(raw());
  t.same(config.listen, { host: '127.0.0.1', port: 1143 });
  t.same(config.upstream, { host: '127.0.0.1', port: 143 });
  t.equal(config.jmapUrl, JMAP);
  t.equal(config.jmapUrlQuoted, `"${JMAP}"`);
  t.same([...config.jmapMechanisms].sort(), [...DEFAULT_MECHANISMS].sort());
  t.equal(config.objectId, 'require');
  t.equal(config.allowInsecureJmapUrl, false);
  t.equal(config.maxLineLength, DEFAULT_MAX_LINE_LENGTH);
  t.equal(config.maxLineLength, 65536);
  t.equal(config.upstreamConnectTimeoutMs, 10_000);
  t.equal(config.logLevel, 'info');
});

t.test('validateConfig: every field given', async (t) => {
  const config = validateConfig(
    raw({
      listen: '[::1]:0',
      upstream: 'imap://[::1]:10143',
      jmapUrl: 'http://127.0.0.1:8080/jmap',
      allowInsecureJmapUrl: true,
      jmapMechanisms: ' plain , xoauth2,,',
      objectId: 'assume',
      maxLineLength: 1024,
      upstreamConnectTimeout: '500ms',
      logLevel: 'silent',
    }),
  );
  t.same(config.listen, { host: '::1', port: 0 });
  t.same(config.upstream, { host: '::1', port: 10143 });
  t.equal(config.jmapUrlQuoted, '"http://127.0.0.1:8080/jmap"');
  t.same([...config.jmapMechanisms], ['PLAIN', 'XOAUTH2'], 'mechanisms are trimmed, upper-cased, empty items skipped');
  t.equal(config.objectId, 'assume');
  t.equal(config.allowInsecureJmapUrl, true);
  t.equal(config.maxLineLength, 1024);
  t.equal(config.upstreamConnectTimeoutMs, 500);
  t.equal(config.logLevel, 'silent');

  const fromArray = validateConfig(raw({ jmapMechanisms: ['login', 'OAUTHBEARER,plain', 'login'] }));
  t.same([...fromArray.jmapMechanisms], ['LOGIN', 'OAUTHBEARER', 'PLAIN'], 'repeated flags are merged, duplicates removed');
  t.equal(validateConfig(raw({ upstreamConnectTimeout: 3 })).upstreamConnectTimeoutMs, 3000);
  t.equal(validateConfig(raw({ maxLineLength: 16 * 1024 * 1024 })).maxLineLength, 16 * 1024 * 1024);
  t.same([...validateConfig(raw({ jmapMechanisms: 'SCRAM-SHA-256,X_Y' })).jmapMechanisms], ['SCRAM-SHA-256', 'X_Y']);
});

t.test('validateConfig: refusals', async (t) => {
  const cases: Array<[string, Partial<RawConfig>, string | RegExp]> = [
    ['missing upstream', { upstream: '' }, '--upstream is required (imap://HOST:PORT)'],
    ['missing jmap url', { jmapUrl: '' }, '--jmap-url is required (the JMAP session resource URL)'],
    ['bad objectid', { objectId: 'maybe' }, '--objectid: must be "require" or "assume", got "maybe"'],
    ['objectid is case-sensitive', { objectId: 'REQUIRE' }, '--objectid: must be "require" or "assume", got "REQUIRE"'],
    ['max-line-length too small', { maxLineLength: 1023 }, '--max-line-length: must be an integer from 1024 to 16777216'],
    ['max-line-length 10', { maxLineLength: 10 }, '--max-line-length: must be an integer from 1024 to 16777216'],
    ['max-line-length too large', { maxLineLength: 16 * 1024 * 1024 + 1 }, /^--max-line-length: must be an integer/],
    ['max-line-length not an integer', { maxLineLength: 2048.5 }, /^--max-line-length: must be an integer/],
    ['max-line-length NaN', { maxLineLength: Number.NaN }, /^--max-line-length: must be an integer/],
    ['bad log level', { logLevel: 'verbose' }, '--log-level: must be one of fatal, error, warn, info, debug, trace, silent'],
    ['mechanism with a space', { jmapMechanisms: 'PLAIN,SCRAM SHA' }, '--jmap-mechanisms: "SCRAM SHA" is not a SASL mechanism name'],
    ['mechanism too long', { jmapMechanisms: 'A'.repeat(21) }, `--jmap-mechanisms: "${'A'.repeat(21)}" is not a SASL mechanism name`],
    ['mechanism with punctuation', { jmapMechanisms: ['PLAIN', 'X=Y'] }, '--jmap-mechanisms: "X=Y" is not a SASL mechanism name'],
    ['mechanism non-ASCII', { jmapMechanisms: 'PL\u00c4IN' }, /^--jmap-mechanisms: "PL\u00c4IN" is not a SASL mechanism name$/],
    ['starttls with imaps upstream', { upstream: 'imaps://mail.example.test', upstreamStarttls: true }, /^--upstream-starttls does not go with imaps:\/\//],
    ['http jmap url', { jmapUrl: 'http://jmap.example.test/' }, /use --allow-insecure-jmap-url/],
    ['relative jmap url', { jmapUrl: '/jmap' }, '--jmap-url: "/jmap" is not an absolute URL'],
    ['zero connect timeout', { upstreamConnectTimeout: '0' }, '--upstream-connect-timeout: must be above zero'],
    ['sub-millisecond connect timeout', { upstreamConnectTimeout: '0.0004' }, '--upstream-connect-timeout: must be above zero'],
    ['junk connect timeout', { upstreamConnectTimeout: 'soon' }, /^--upstream-connect-timeout: expected seconds/],
    ['bad listen', { listen: 'nowhere' }, '--listen: expected HOST:PORT, got "nowhere"'],
  ];
  for (const [name, overrides, message] of cases) {
    t.throws(() => validateConfig(raw(overrides)), { name: 'ConfigError', message }, name);
  }
});

t.test('parseWorkers: a count from 1 to 64, or auto (one per CPU, capped)', async (t) => {
  t.equal(validateConfig(raw()).workers, 1, 'one process by default');
  t.equal(validateConfig(raw({ workers: '4' })).workers, 4);
  t.equal(validateConfig(raw({ workers: 8 })).workers, 8);
  t.equal(parseWorkers('auto', () => 6), 6);
  t.equal(parseWorkers(' AUTO ', () => 6), 6);
  t.equal(parseWorkers('auto', () => 256), 64, 'auto is capped at 64');
  t.equal(parseWorkers('64'), 64);
  for (const bad of ['0', '65', '-2', '1.5', 'two', '', '4x', 0, 2.5]) {
    t.throws(() => parseWorkers(bad), new ConfigError(`--workers: must be a whole number from 1 to 64, or auto; got "${String(bad)}"`), JSON.stringify(bad));
  }
});

t.test('validateConfig: JMAP URL, users and verification defaults', async (t) => {
  const config = validateConfig(raw());
  t.same(config.jmapUrls.static, { url: JMAP, quoted: `"${JMAP}"` }, 'a plain --jmap-url is static');
  t.same(config.jmapUrls.resolve('anyone@anywhere.test'), { ok: true, url: JMAP, quoted: `"${JMAP}"` });
  t.equal(config.jmapUsers.empty, true);
  t.same(config.jmapUsers.allowed(undefined), { ok: true });
  t.equal(config.jmapVerify, false);
  t.equal(config.jmapVerifyTimeoutMs, 2000);
  t.equal(config.jmapVerifyTtlMs, 600_000);
  t.equal(config.jmapVerifyCa, null);
  t.equal(config.jmapVerifyCaFile, null);
});

t.test('validateConfig: a --jmap-url template', async (t) => {
  const template = 'https://jmap.{domain}/.well-known/jmap';
  const config = validateConfig(raw({ jmapUrl: template }));
  t.equal(config.jmapUrl, template, 'jmapUrl is the text as given');
  t.equal(config.jmapUrlQuoted, '', 'no single quoted URL: it depends on the identity');
  t.equal(config.jmapUrls.static, null);
  t.same(config.jmapUrls.resolve('a@Example.TEST'), {
    ok: true,
    url: 'https://jmap.example.test/.well-known/jmap',
    quoted: '"https://jmap.example.test/.well-known/jmap"',
  });
  const copy = { ...config, listen: { host: '127.0.0.1', port: 0 } };
  t.equal(copy.jmapUrls, config.jmapUrls, 'the resolver survives a spread (test harness, perWorkerConfig)');
  t.match(copy.jmapUrls.resolve('b@x.test'), { ok: true, url: 'https://jmap.x.test/.well-known/jmap' });
  const cases: Array<[string, RegExp]> = [
    ['https://x.test/{name}', /^--jmap-url: unknown placeholder \{name\}/],
    ['https://x.test/{user', /^--jmap-url: "\{" without "\}"/],
    ['http://jmap.{domain}/', /^--jmap-url: must be an https:\/\/ URL, got "http:\/\/" \(use --allow-insecure-jmap-url/],
    ['https://{user}.x.test/', /^--jmap-url: the template gives no valid URL for the identity alice@example\.com/],
  ];
  for (const [jmapUrl, message] of cases) t.throws(() => validateConfig(raw({ jmapUrl })), { name: 'ConfigError', message }, jmapUrl);
  t.equal(validateConfig(raw({ jmapUrl: 'http://jmap.{domain}/', allowInsecureJmapUrl: true })).jmapUrls.insecure, true);
});

t.test('validateConfig: --jmap-url-map, with or without --jmap-url', async (t) => {
  const dir = mkdtempSync(path.join(tmpdir(), 'config-map-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'map.txt');
  writeFileSync(file, '# by domain\nexample.com https://jmap.example.com/jmap\n');
  const mapOnly = validateConfig(raw({ jmapUrl: undefined, jmapUrlMap: file }));
  t.equal(mapOnly.jmapUrl, '');
  t.equal(mapOnly.jmapUrlQuoted, '');
  t.match(mapOnly.jmapUrls.resolve('a@example.com'), { ok: true, url: 'https://jmap.example.com/jmap' });
  t.same(mapOnly.jmapUrls.resolve('a@example.org'), { ok: false, reason: 'no-url' });
  const both = validateConfig(raw({ jmapUrlMap: file }));
  t.equal(both.jmapUrlQuoted, '', 'with a map the URL is never the same for everyone');
  t.match(both.jmapUrls.resolve('a@example.org'), { ok: true, url: JMAP }, '--jmap-url is the default');

  t.throws(() => validateConfig(raw({ jmapUrl: '' })), {
    name: 'ConfigError',
    message: '--jmap-url is required (the JMAP session resource URL), unless --jmap-url-map is given',
  });
  writeFileSync(file, 'example.com https://jmap.example.com/jmap\nexample.org\n');
  t.throws(() => validateConfig(raw({ jmapUrlMap: file })), {
    name: 'ConfigError',
    message: `--jmap-url-map: ${file}:2: expected "DOMAIN URL" (or "* URL"), got one field`,
  });
  t.throws(() => validateConfig(raw({ jmapUrlMap: path.join(dir, 'nope.txt') })), { name: 'ConfigError', message: /^--jmap-url-map: .*nope\.txt: cannot read/ });
});

t.test('validateConfig: --jmap-users-allow / --jmap-users-deny', async (t) => {
  const config = validateConfig(raw({ jmapUsersAllow: ['example.com,/^beta-\\d{1,3}@example\\.org$/', '*.hosted.test'], jmapUsersDeny: 'ceo@example.com' }));
  t.same(config.jmapUsers.allowed('a@example.com'), { ok: true });
  t.same(config.jmapUsers.allowed('beta-12@example.org'), { ok: true });
  t.same(config.jmapUsers.allowed('a@x.hosted.test'), { ok: true });
  t.same(config.jmapUsers.allowed('CEO@example.com'), { ok: false, reason: 'denied' });
  t.same(config.jmapUsers.allowed('a@example.org'), { ok: false, reason: 'not-allowed' });
  t.throws(() => validateConfig(raw({ jmapUsersAllow: '/(/' })), { name: 'ConfigError', message: /^--jmap-users-allow: "\/\(\/" is not a valid regular expression/ });
  t.throws(() => validateConfig(raw({ jmapUsersDeny: ['ok.test', 'not a domain'] })), { name: 'ConfigError', message: /^--jmap-users-deny: "not a domain" is not a domain/ });
});

t.test('validateConfig: --jmap-verify, its timeout, TTL and CA', async (t) => {
  const dir = mkdtempSync(path.join(tmpdir(), 'config-ca-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const pem = path.join(dir, 'ca.pem');
  writeFileSync(pem, '-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n');
  const notPem = path.join(dir, 'ca.txt');
  writeFileSync(notPem, 'not a certificate\n');
  const config = validateConfig(raw({ jmapVerify: true, jmapVerifyTimeout: '500ms', jmapVerifyTtl: '2h', jmapVerifyCa: pem }));
  t.equal(config.jmapVerify, true);
  t.equal(config.jmapVerifyTimeoutMs, 500);
  t.equal(config.jmapVerifyTtlMs, 7_200_000);
  t.match(config.jmapVerifyCa?.toString('utf8'), /BEGIN CERTIFICATE/);
  t.equal(config.jmapVerifyCaFile, pem);
  t.equal(validateConfig(raw({ jmapVerifyTimeout: 3, jmapVerifyTtl: '0' })).jmapVerifyTimeoutMs, 3000, 'plain seconds');
  t.equal(validateConfig(raw({ jmapVerifyTtl: '0' })).jmapVerifyTtlMs, 0, 'TTL 0: results are not remembered');
  t.equal(validateConfig(raw({ jmapVerifyTtl: '10' })).jmapVerifyTtlMs, 10_000);

  const cases: Array<[string, Partial<RawConfig>, string | RegExp]> = [
    ['zero timeout', { jmapVerifyTimeout: '0' }, '--jmap-verify-timeout: must be above zero'],
    ['junk timeout', { jmapVerifyTimeout: 'soon' }, /^--jmap-verify-timeout: expected seconds or a duration/],
    ['junk TTL', { jmapVerifyTtl: '10 minutes' }, /^--jmap-verify-ttl: expected seconds or a duration/],
    ['negative TTL', { jmapVerifyTtl: -1 }, '--jmap-verify-ttl: must be a non-negative number of seconds'],
    ['CA without --jmap-verify', { jmapVerifyCa: pem }, '--jmap-verify-ca needs --jmap-verify'],
    ['missing CA file', { jmapVerify: true, jmapVerifyCa: path.join(dir, 'nope.pem') }, /^--jmap-verify-ca: cannot read .*nope\.pem: ENOENT/],
    ['CA file without PEM', { jmapVerify: true, jmapVerifyCa: notPem }, `--jmap-verify-ca: ${notPem} holds no PEM certificate`],
  ];
  for (const [name, overrides, message] of cases) t.throws(() => validateConfig(raw(overrides)), { name: 'ConfigError', message }, name);
});

t.test('describeConfig: summaries of the new fields, no certificate bytes, JSON-safe', async (t) => {
  const dir = mkdtempSync(path.join(tmpdir(), 'config-describe-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const map = path.join(dir, 'map.txt');
  writeFileSync(map, 'a.test https://jmap.a.test/\n* https://jmap.{domain}/\n');
  const pem = path.join(dir, 'ca.pem');
  writeFileSync(pem, '-----BEGIN CERTIFICATE-----\nMIIBsecretish\n-----END CERTIFICATE-----\n');
  const config = validateConfig(
    raw({ jmapUrl: 'https://jmap.example.test/{localpart}', jmapUrlMap: map, jmapUsersAllow: 'a.test,/x/i', jmapVerify: true, jmapVerifyCa: pem }),
  );
  const described = JSON.parse(JSON.stringify(describeConfig(config))) as Record<string, unknown>;
  t.same(described.jmapUrls, { jmapUrl: 'https://jmap.example.test/{localpart}', jmapUrlMap: map, mapEntries: 2 });
  t.same(described.jmapUsers, { allow: ['a.test', '/x/i'], deny: [] });
  t.equal(described.jmapVerifyCa, 'from --jmap-verify-ca');
  t.equal(described.jmapVerifyCaFile, pem);
  t.equal(described.jmapVerifyTimeoutMs, 2000);
  t.notMatch(JSON.stringify(described), /MIIB|BEGIN CERTIFICATE/, 'no certificate bytes');
});
