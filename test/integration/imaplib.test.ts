/**
 * A non-Node client: Python's stdlib imaplib (test/clients/imaplib_client.py)
 * through the proxy to each real upstream (Dovecot 2.3 and Cyrus IMAP 3.6,
 * see UPSTREAMS). imaplib sends CAPABILITY before logging in, so each server
 * answers its login in its after-CAPABILITY shape (Dovecot: an untagged
 * list; Cyrus: the list in the tagged OK); imaplib must see JMAPACCESS once
 * either way.
 */

import t from 'tap';
import {
  JMAP_URL_QUOTED,
  UPSTREAMS,
  countAtom,
  proxyFor,
  runImaplib,
  upstreamFor,
  type ImaplibResult,
} from './helpers.js';

async function imaplib(port: number, args: string[]): Promise<ImaplibResult> {
  const run = await runImaplib(['127.0.0.1', String(port), ...args]);
  if (run.code !== 0) throw new Error(`imaplib_client.py exited ${run.code}: ${run.stderr}`);
  return JSON.parse(run.stdout) as ImaplibResult;
}

for (const kind of UPSTREAMS) {
  t.test(kind, async (t) => {
    const upstream = await upstreamFor(t, kind);
    /** Under the default --objectid require, JMAPACCESS is granted iff the server has OBJECTID. */
    const grantedUnderRequire = upstream.hasObjectId;

    t.test('imaplib, objectid assume: JMAPACCESS after login, GETJMAPACCESS OK with the URL, mail round-trips', async (t) => {
      const proxy = await proxyFor(t, upstream.port, { objectId: 'assume' });
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

    t.test(`imaplib, default objectid require: ${grantedUnderRequire ? 'JMAPACCESS (OBJECTID), GETJMAPACCESS OK' : 'no JMAPACCESS, GETJMAPACCESS BAD'}`, async (t) => {
      const proxy = await proxyFor(t, upstream.port);
      const out = await imaplib(proxy.port, ['bob', 'bobpw', '--getjmapaccess']);
      t.equal(out.login, 'OK');
      t.equal(countAtom(out.caps_after, 'JMAPACCESS'), Number(grantedUnderRequire), 'JMAPACCESS in caps_after iff the server has OBJECTID');
      t.ok(out.caps_after.includes('IDLE'), 'caps_after is the post-login list');
      t.equal(out.getjmapaccess?.typ, grantedUnderRequire ? 'OK' : 'BAD', 'GETJMAPACCESS status');
      t.match(
        out.getjmapaccess?.data.join(' '),
        grantedUnderRequire ? JMAP_URL_QUOTED : /JMAP access is not available on this server/,
        'the URL, or the reason for the BAD',
      );
      t.equal(out.fetched_equal, true, 'the session stays in step after the answer');
      t.match(proxy.logs().find((l) => l.msg === 'login succeeded'), { user: 'bob', jmapaccess: grantedUnderRequire ? 'granted' : 'refused' });
    });

    t.test('imaplib, wrong password: NO, nothing after', async (t) => {
      const proxy = await proxyFor(t, upstream.port, { objectId: 'assume' });
      const out = await imaplib(proxy.port, ['alice', 'not-the-password', '--getjmapaccess']);
      t.equal(out.login, 'NO');
      t.match(out.login_error, upstream.loginFailedText);
      t.same(out.caps_after, []);
      t.equal(out.getjmapaccess, null);
    });
  });
}
