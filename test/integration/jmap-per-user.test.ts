/**
 * Per-user JMAP URLs through the proxy, in front of a real Dovecot that
 * accepts unusual user names (`auth_username_chars =`): --jmap-url
 * templates with {user}, {localpart} and {domain} for identities such as
 * `"a b"@example.com`, `zoë@exämple.com` and `per%cent@example.com`
 * (expected URLs computed here with an independent percent-encoder), the
 * --jmap-url-map file (and its reload on SIGHUP, through the real CLI), and
 * --jmap-users-allow / --jmap-users-deny. An identity that gets no URL logs
 * in, sees no JMAPACCESS in any capability list, and gets BAD for
 * GETJMAPACCESS, with the reason in the log.
 *
 * Dovecot 2.3 has no OBJECTID: the proxies run with --objectid assume, so
 * the URL policy is the only thing deciding.
 */

import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import t, { type Test } from 'tap';
import { ensureBuilt } from '../harness/build.js';
import { startCli } from '../harness/cli-process.js';
import { isRoot } from '../harness/util.js';
import { dovecotFor, proxyFor, rawClient, waitFor, type ProxyOptions } from './helpers.js';
import type { RawClient } from './helpers.js';
import { DECISIONS_METRIC, assertJmapAccess, jmapAccessCount, lastLogin, metricValue, pct, plainResponse } from './jmap-helpers.js';

// "a b"@example.com cannot be a passwd-file key (Dovecot does not find it),
// so a static passdb/userdb after the harness's passwd-file takes it.
const QUOTED = '"a b"@example.com';
const QUOTED_PASSWORD = 'Quoted-Local-pw';
const USERS: Record<string, string> = {
  'zoë@exämple.com': 'Zoe-pw',
  'per%cent@example.com': 'Percent-pw',
  'alice@example.com': 'Alice-pw',
  'bob@example.org': 'Bob-pw',
  'carol@example.net': 'Carol-pw',
  'erin@mail.example.net': 'Erin-pw',
  dave: 'Dave-pw',
};

const mailUid = isRoot() ? Number(spawnSync('id', ['-u', 'mail']).stdout.toString().trim()) : (process.getuid?.() ?? 0);
const mailGid = isRoot() ? Number(spawnSync('id', ['-g', 'mail']).stdout.toString().trim()) : (process.getgid?.() ?? 0);
const oddHome = mkdtempSync(path.join(tmpdir(), 'odd-home-'));
spawnSync('chmod', ['755', oddHome]);
if (isRoot()) spawnSync('chown', [`${mailUid}:${mailGid}`, oddHome]);
t.teardown(() => rmSync(oddHome, { recursive: true, force: true }));

const dovecot = await dovecotFor(t, {
  users: USERS,
  extraConfig: `auth_username_chars =
passdb {
  driver = static
  args = password=${QUOTED_PASSWORD}
}
userdb {
  driver = static
  args = uid=${mailUid} gid=${mailGid} home=${oddHome}/%u
}
`,
});

/** IMAP quoted string of a UTF-8 text, as bytes. */
const quoted = (text: string): string => `"${text.replace(/[\\"]/g, (c) => `\\${c}`)}"`;

function policyProxy(t: Test, options: ProxyOptions) {
  return proxyFor(t, dovecot.port, { objectId: 'assume', ...options });
}

/** Logs `user` in with `how`; returns the client and the login's answer (asserted OK). */
async function login(
  t: Test,
  port: number,
  user: string,
  password: string,
  how: 'quoted' | 'literal' | 'plain' = 'quoted',
): Promise<{ client: RawClient; text: string }> {
  const { client } = await rawClient(t, port);
  if (how === 'quoted') {
    client.send(Buffer.from(`a LOGIN ${quoted(user)} ${quoted(password)}\r\n`, 'utf8'));
  } else if (how === 'literal') {
    const bytes = Buffer.from(user, 'utf8');
    client.send(Buffer.concat([Buffer.from(`a LOGIN {${bytes.length}+}\r\n`), bytes, Buffer.from(` ${quoted(password)}\r\n`)]));
  } else {
    client.send(`a AUTHENTICATE PLAIN ${plainResponse(user, password)}\r\n`);
  }
  const text = await client.response('a');
  t.match(text, /^a OK /m, `${user} logged in (${how})`);
  return { client, text };
}

async function expectUrl(t: Test, port: number, user: string, password: string, url: string, how: 'quoted' | 'literal' | 'plain' = 'quoted') {
  const { client, text } = await login(t, port, user, password, how);
  t.equal(jmapAccessCount(text).withJmapAccess, 1, 'JMAPACCESS in the login answer');
  await assertJmapAccess(t, client, { url });
}

async function expectRefused(t: Test, port: number, user: string, password: string, how: 'quoted' | 'literal' | 'plain' = 'quoted') {
  const { client, text } = await login(t, port, user, password, how);
  t.equal(jmapAccessCount(text).withJmapAccess, 0, 'no JMAPACCESS in the login answer');
  await assertJmapAccess(t, client, 'refused');
}

t.test('templates with odd identities: the exact percent-encoded URL', async (t) => {
  t.equal(pct('"a b"'), '%22a%20b%22', 'premise: the independent encoder');
  t.equal(pct('zoë'), 'zo%C3%AB');
  t.equal(pct('per%cent'), 'per%25cent');

  await t.test("'https://jmap.example.net/u/{localpart}/{domain}'", async (t) => {
    const proxy = await policyProxy(t, { jmapUrl: 'https://jmap.example.net/u/{localpart}/{domain}' });
    const base = 'https://jmap.example.net/u';
    await expectUrl(t, proxy.port, QUOTED, QUOTED_PASSWORD, `${base}/${pct('"a b"')}/example.com`);
    t.equal(`${base}/${pct('"a b"')}/example.com`, 'https://jmap.example.net/u/%22a%20b%22/example.com');
    await expectUrl(t, proxy.port, 'zoë@exämple.com', USERS['zoë@exämple.com'] as string, `${base}/zo%C3%AB/ex%C3%A4mple.com`, 'quoted');
    await expectUrl(t, proxy.port, 'zoë@exämple.com', USERS['zoë@exämple.com'] as string, `${base}/zo%C3%AB/ex%C3%A4mple.com`, 'literal');
    await expectUrl(t, proxy.port, 'zoë@exämple.com', USERS['zoë@exämple.com'] as string, `${base}/zo%C3%AB/ex%C3%A4mple.com`, 'plain');
    await expectUrl(t, proxy.port, 'per%cent@example.com', USERS['per%cent@example.com'] as string, `${base}/per%25cent/example.com`);
    // Dovecot lower-cases the name it looks up; the proxy keeps what the
    // client sent for {localpart} and lower-cases {domain}.
    await expectUrl(t, proxy.port, 'Per%Cent@EXAMPLE.com', USERS['per%cent@example.com'] as string, `${base}/Per%25Cent/example.com`);
    t.equal(await metricValue(proxy, DECISIONS_METRIC, { decision: 'granted' }), 6);
  });

  await t.test("'https://jmap.example.net/all/{user}'", async (t) => {
    const proxy = await policyProxy(t, { jmapUrl: 'https://jmap.example.net/all/{user}' });
    const base = 'https://jmap.example.net/all';
    await expectUrl(t, proxy.port, QUOTED, QUOTED_PASSWORD, `${base}/%22a%20b%22%40example.com`);
    await expectUrl(t, proxy.port, 'zoë@exämple.com', USERS['zoë@exämple.com'] as string, `${base}/${pct('zoë@exämple.com')}`, 'literal');
    await expectUrl(t, proxy.port, 'Per%Cent@EXAMPLE.com', USERS['per%cent@example.com'] as string, `${base}/Per%25Cent%40EXAMPLE.com`);
  });

  await t.test("{domain} in the host, 'https://jmap.{domain}/.well-known/jmap': a non-ASCII domain is refused", async (t) => {
    const proxy = await policyProxy(t, { jmapUrl: 'https://jmap.{domain}/.well-known/jmap' });
    await expectUrl(t, proxy.port, QUOTED, QUOTED_PASSWORD, 'https://jmap.example.com/.well-known/jmap');
    for (const how of ['quoted', 'plain'] as const) {
      await expectRefused(t, proxy.port, 'zoë@exämple.com', USERS['zoë@exämple.com'] as string, how);
      t.match(lastLogin(proxy), { user: 'zoë@exämple.com', result: 'OK', jmapaccess: 'refused', reason: 'user-not-eligible', detail: 'invalid-host' });
    }
    t.equal(await metricValue(proxy, DECISIONS_METRIC, { decision: 'refused', reason: 'user-not-eligible' }), 2);
  });
});

t.test('--jmap-url-map: each domain its URL, `*` for the rest; an identity the map cannot serve is refused', async (t) => {
  const dir = mkdtempSync(path.join(tmpdir(), 'jmap-map-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const map = path.join(dir, 'map.txt');
  writeFileSync(
    map,
    [
      '# test map',
      'example.com     https://mail.example.com/jmap/{localpart}',
      'EXAMPLE.org     https://jmap.example.org/.well-known/jmap   # case-insensitive',
      '*.example.net   https://jmap.example.net/{domain}/{localpart}',
      '*               https://default.example.test/jmap/{domain}',
      '',
    ].join('\n'),
  );
  const proxy = await policyProxy(t, { jmapUrl: '', jmapUrlMap: map });
  await expectUrl(t, proxy.port, 'alice@example.com', USERS['alice@example.com'] as string, 'https://mail.example.com/jmap/alice');
  await expectUrl(t, proxy.port, QUOTED, QUOTED_PASSWORD, 'https://mail.example.com/jmap/%22a%20b%22');
  await expectUrl(t, proxy.port, 'bob@example.org', USERS['bob@example.org'] as string, 'https://jmap.example.org/.well-known/jmap', 'plain');
  await expectUrl(t, proxy.port, 'erin@mail.example.net', USERS['erin@mail.example.net'] as string, 'https://jmap.example.net/mail.example.net/erin');
  await expectUrl(t, proxy.port, 'carol@example.net', USERS['carol@example.net'] as string, 'https://default.example.test/jmap/example.net');
  await expectRefused(t, proxy.port, 'dave', USERS.dave as string);
  t.match(lastLogin(proxy), { user: 'dave', jmapaccess: 'refused', reason: 'user-not-eligible', detail: 'no-domain' });
});

t.test('--jmap-users-allow / --jmap-users-deny: a denied or not-allowed user logs in, no JMAPACCESS, BAD', async (t) => {
  const proxy = await policyProxy(t, {
    jmapUrl: 'https://jmap.example.net/u/{user}',
    jmapUsersAllow: ['example.com,example.org', '/^da.e$/'],
    jmapUsersDeny: 'BOB@example.org',
  });
  await expectUrl(t, proxy.port, 'alice@example.com', USERS['alice@example.com'] as string, 'https://jmap.example.net/u/alice%40example.com');
  await expectUrl(t, proxy.port, 'dave', USERS.dave as string, 'https://jmap.example.net/u/dave');
  await expectRefused(t, proxy.port, 'bob@example.org', USERS['bob@example.org'] as string, 'plain');
  t.match(lastLogin(proxy), { user: 'bob@example.org', jmapaccess: 'refused', reason: 'user-not-eligible', detail: 'denied' });
  await expectRefused(t, proxy.port, 'carol@example.net', USERS['carol@example.net'] as string);
  t.match(lastLogin(proxy), { user: 'carol@example.net', jmapaccess: 'refused', reason: 'user-not-eligible', detail: 'not-allowed' });
  await expectRefused(t, proxy.port, 'erin@mail.example.net', USERS['erin@mail.example.net'] as string);
  t.match(lastLogin(proxy), { user: 'erin@mail.example.net', detail: 'not-allowed' }, 'a subdomain is not the domain');
});

t.test('the real CLI: SIGHUP reloads the map; the next login gets the new URL, a session already in keeps its own', async (t) => {
  ensureBuilt();
  const dir = mkdtempSync(path.join(tmpdir(), 'jmap-map-cli-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const map = path.join(dir, 'map.txt');
  writeFileSync(map, 'example.com https://old.example.com/jmap/{localpart}\n* https://fallback.example.test/jmap\n');
  const cli = startCli(t, ['--listen', '127.0.0.1:0', '--upstream', `imap://127.0.0.1:${dovecot.port}`, '--jmap-url-map', map, '--objectid', 'assume', '--no-compress']);
  const { child, logs } = cli;
  const listening = await cli.waitLog((l) => l.msg === 'listening', 'the CLI to listen', 1, 15_000).catch(() => undefined);
  t.ok(listening, `listening (stderr: ${cli.stderr()})`);
  const port = Number(String(listening?.listen).split(':').pop());

  const before = await login(t, port, 'alice@example.com', USERS['alice@example.com'] as string);
  await assertJmapAccess(t, before.client, { url: 'https://old.example.com/jmap/alice' }, 'p');

  writeFileSync(map, 'example.com https://new.example.com/jmap/{domain}/{localpart}\n* https://fallback.example.test/jmap\n');
  child.kill('SIGHUP');
  await waitFor(() => logs().some((l) => l.msg === 'JMAP URL map reloaded'), 'the reload line');
  t.match(
    logs().find((l) => l.msg === 'JMAP URL map reloaded'),
    { jmapUrlMap: map, entries: 2 },
  );

  const after = await login(t, port, 'alice@example.com', USERS['alice@example.com'] as string);
  await assertJmapAccess(t, after.client, { url: 'https://new.example.com/jmap/example.com/alice' }, 'q');
  await assertJmapAccess(t, before.client, { url: 'https://old.example.com/jmap/alice' }, 'r');
  const other = await login(t, port, 'carol@example.net', USERS['carol@example.net'] as string);
  await assertJmapAccess(t, other.client, { url: 'https://fallback.example.test/jmap' }, 's');
  t.equal(child.exitCode, null, 'still running');
});
