/**
 * A non-Node client: Python's stdlib imaplib (test/clients/imaplib_client.py)
 * through the proxy to a real Dovecot 2.3. imaplib sends CAPABILITY before
 * logging in, so Dovecot answers its login in the untagged-list shape.
 */

import t from 'tap';
import { JMAP_URL_QUOTED, countAtom, dovecotFor, proxyFor, runImaplib, type ImaplibResult } from './helpers.js';

const dovecot = await dovecotFor(t);

async function imaplib(port: number, args: string[]): Promise<ImaplibResult> {
  const run = await runImaplib(['127.0.0.1', String(port), ...args]);
  if (run.code !== 0) throw new Error(`imaplib_client.py exited ${run.code}: ${run.stderr}`);
  return JSON.parse(run.stdout) as ImaplibResult;
}

t.test('imaplib, objectid assume: JMAPACCESS after login, GETJMAPACCESS OK with the URL, mail round-trips', async (t) => {
  const proxy = await proxyFor(t, dovecot.port, { objectId: 'assume' });
  for (const mode of ['login', 'plain']) {
    const out = await imaplib(proxy.port, ['alice', 'alicepw', '--mode', mode, '--getjmapaccess']);
    t.ok(out.greeting_caps.includes('IMAP4REV1'), `${mode}: greeting capabilities`);
    t.equal(countAtom(out.greeting_caps, 'JMAPACCESS'), 0, `${mode}: no JMAPACCESS before login`);
    t.notOk(out.greeting_caps.some((c) => c === 'STARTTLS' || c.startsWith('COMPRESS=')), `${mode}: no STARTTLS or COMPRESS before login`);
    t.equal(out.login, 'OK', `${mode}: login OK`);
    t.equal(out.login_error, null);
    t.equal(countAtom(out.caps_after, 'JMAPACCESS'), 1, `${mode}: JMAPACCESS once in caps_after`);
    t.notOk(out.caps_after.some((c) => c.startsWith('COMPRESS=')), `${mode}: no COMPRESS after login`);
    t.equal(out.getjmapaccess?.typ, 'OK', `${mode}: GETJMAPACCESS OK`);
    t.same(out.getjmapaccess?.data, [JMAP_URL_QUOTED], `${mode}: the configured URL`);
    t.equal(out.append_uid_ok, true, `${mode}: APPEND with APPENDUID`);
    t.equal(out.fetched_equal, true, `${mode}: fetched bytes equal the appended ones`);
  }
  t.match(
    proxy.logs().filter((l) => l.msg === 'login succeeded'),
    [
      { user: 'alice', mechanism: 'LOGIN', jmapaccess: 'granted' },
      { user: 'alice', mechanism: 'PLAIN', jmapaccess: 'granted' },
    ],
  );
});

t.test('imaplib, default objectid require: no JMAPACCESS, GETJMAPACCESS BAD', async (t) => {
  const proxy = await proxyFor(t, dovecot.port);
  const out = await imaplib(proxy.port, ['bob', 'bobpw', '--getjmapaccess']);
  t.equal(out.login, 'OK');
  t.equal(countAtom(out.caps_after, 'JMAPACCESS'), 0, 'no JMAPACCESS in caps_after');
  t.ok(out.caps_after.includes('IDLE'), 'caps_after is the post-login list');
  t.equal(out.getjmapaccess?.typ, 'BAD', 'GETJMAPACCESS: BAD');
  t.match(out.getjmapaccess?.data.join(' '), /JMAP access is not available on this server/);
  t.equal(out.fetched_equal, true, 'the session stays in step after the BAD');
});

t.test('imaplib, wrong password: NO, nothing after', async (t) => {
  const proxy = await proxyFor(t, dovecot.port, { objectId: 'assume' });
  const out = await imaplib(proxy.port, ['alice', 'not-the-password', '--getjmapaccess']);
  t.equal(out.login, 'NO');
  t.match(out.login_error, /AUTHENTICATIONFAILED/);
  t.same(out.caps_after, []);
  t.equal(out.getjmapaccess, null);
});
