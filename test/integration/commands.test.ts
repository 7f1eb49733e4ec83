/**
 * GETJMAPACCESS and the command stream against each real upstream (Dovecot
 * 2.3 and Cyrus IMAP 3.6, see UPSTREAMS): answers through RawClient and
 * imapflow, pipelining, IDLE, and LOGIN with literals. What differs between
 * the servers (their texts, OBJECTID, the shape of a login answer) comes from
 * the upstream's facts.
 */

import t from 'tap';
import type { ImapFlow } from 'imapflow';
import {
  AUTH_WAIT_LINE,
  JMAP_URL,
  JMAP_URL_QUOTED,
  JMAPACCESS_LINE,
  RawClient,
  UPSTREAMS,
  capabilityLists,
  countAtom,
  getJmapAccessAnswer,
  imapflowFor,
  imapflowGetJmapAccess,
  lines,
  makeMessage,
  proxyFor,
  rawClient,
  rawLogin,
  statusLine,
  upstreamFor,
} from './helpers.js';

/** The one capability list of a line (an untagged CAPABILITY or a [CAPABILITY] code), or []. */
const listOf = (line: string | undefined): string[] => capabilityLists(`${line ?? ''}\r\n`)[0] ?? [];

for (const kind of UPSTREAMS) {
  t.test(kind, async (t) => {
    const upstream = await upstreamFor(t, kind, {
      // Dovecot: notice new mail within a second even where inotify is
      // unavailable. (Cyrus's harness runs idled, which wakes IDLE at once.)
      dovecotConfig: 'mailbox_idle_check_interval = 1 secs',
    });
    /** Under the default --objectid require, JMAPACCESS is granted iff the server has OBJECTID. */
    const grantedUnderRequire = upstream.hasObjectId;
    /** What a successful login's tagged OK looks like: the post-login list (with JMAPACCESS once) in its code. */
    const loginOk = (tag: string) => ({ tag, status: 'OK', code: /^CAPABILITY /i, text: upstream.loginOkText });

    t.test('GETJMAPACCESS (objectid assume) through RawClient: * JMAPACCESS then tagged OK, nothing else', async (t) => {
      const proxy = await proxyFor(t, upstream.port, { objectId: 'assume' });
      const { client } = await rawClient(t, proxy.port);
      await rawLogin(client, 'alice', 'alicepw');
      client.send('b GETJMAPACCESS\r\n');
      t.equal(await client.response('b'), `${JMAPACCESS_LINE}b OK GETJMAPACCESS completed\r\n`);
      client.send('c getjmapaccess\r\n');
      t.equal(await client.response('c'), `${JMAPACCESS_LINE}c OK GETJMAPACCESS completed\r\n`, 'case-insensitive');
      client.send('d SELECT INBOX\r\n');
      await client.response('d');
      client.send('e GETJMAPACCESS\r\n');
      t.equal(await client.response('e'), `${JMAPACCESS_LINE}e OK GETJMAPACCESS completed\r\n`, 'also in the selected state');
      t.match(proxy.logs().filter((l) => l.msg === 'GETJMAPACCESS'), [
        // With OBJECTID the session is eligible on its own; without, only because of --objectid assume.
        { tag: 'b', user: 'alice', answered: 'OK', reason: upstream.hasObjectId ? 'eligible' : 'objectid-assumed' },
        { tag: 'c', answered: 'OK' },
        { tag: 'e', answered: 'OK' },
      ]);
      t.notMatch(await upstream.readLog(), /GETJMAPACCESS/i, 'the upstream never saw GETJMAPACCESS');
    });

    t.test('GETJMAPACCESS (objectid assume) through imapflow: JMAPACCESS in client.capabilities, the URL from exec()', async (t) => {
      const proxy = await proxyFor(t, upstream.port, { objectId: 'assume' });
      const client = await imapflowFor(t, proxy.port, 'alice', 'alicepw');
      t.ok(client.authenticated, 'imapflow logged in');
      t.equal(client.capabilities.get('JMAPACCESS'), true, 'JMAPACCESS among imapflow\'s capabilities after login');
      t.notOk(
        [...client.capabilities.keys()].some((c) => c.startsWith('COMPRESS=')),
        'no COMPRESS=* (so imapflow never tries to compress the link)',
      );
      t.ok(client.capabilities.has('IDLE'), 'the post-login list');

      const { status, urls } = await imapflowGetJmapAccess(client);
      t.equal(status, 'OK', 'tagged OK');
      t.same(urls, [JMAP_URL], 'one * JMAPACCESS with the configured URL');

      // The session is still in step afterwards.
      const mailbox = await client.mailboxOpen('INBOX');
      t.equal(mailbox.path, 'INBOX');
      t.match(proxy.logs().find((l) => l.msg === 'login succeeded'), { user: 'alice', jmapaccess: 'granted' });
    });

    t.test(`imapflow with the default --objectid require: JMAPACCESS ${grantedUnderRequire ? 'granted (OBJECTID), GETJMAPACCESS OK' : 'absent, GETJMAPACCESS BAD'}`, async (t) => {
      const proxy = await proxyFor(t, upstream.port);
      const client = await imapflowFor(t, proxy.port, 'alice', 'alicepw');
      t.equal(client.capabilities.has('JMAPACCESS'), grantedUnderRequire, 'JMAPACCESS iff the server has OBJECTID');
      const { status, urls } = await imapflowGetJmapAccess(client);
      t.equal(status, grantedUnderRequire ? 'OK' : 'BAD', 'GETJMAPACCESS status');
      t.same(urls, grantedUnderRequire ? [JMAP_URL] : [], 'the URL only when granted');
      t.ok(await client.noop().then(() => true), 'the connection is still usable');
    });

    t.test('pipelined LOGIN, GETJMAPACCESS, LOGOUT in one write: answered in order after the login', async (t) => {
      const proxy = await proxyFor(t, upstream.port, { objectId: 'assume' });
      const { client } = await rawClient(t, proxy.port);
      client.send('a LOGIN alice alicepw\r\nb GETJMAPACCESS\r\nc LOGOUT\r\n');
      const text = await client.response('c');
      const got = lines(text);
      t.equal(got.length, 5, `five lines: ${JSON.stringify(got)}`);
      t.match(statusLine(got[0]), loginOk('a'), 'login OK with the post-login list');
      t.equal(countAtom(listOf(got[0]), 'JMAPACCESS'), 1, 'granted: JMAPACCESS once');
      t.equal(got[1], `* JMAPACCESS ${JMAP_URL_QUOTED}`, 'the post-login answer, not a pre-login BAD');
      t.equal(got[2], 'b OK GETJMAPACCESS completed');
      t.match(statusLine(got[3]), { tag: '*', status: 'BYE' }, 'then the BYE');
      t.match(statusLine(got[4]), { tag: 'c', status: 'OK' }, 'then LOGOUT completes');
      await client.waitClosed();
      t.ok(client.closed, 'the connection is closed after LOGOUT');
    });

    t.test('pipelined CAPABILITY, LOGIN, GETJMAPACCESS, LOGOUT in one write: one post-login list, JMAPACCESS once', async (t) => {
      const proxy = await proxyFor(t, upstream.port, { objectId: 'assume' });
      const { client } = await rawClient(t, proxy.port);
      client.send('x CAPABILITY\r\na LOGIN alice alicepw\r\nb GETJMAPACCESS\r\nc LOGOUT\r\n');
      const got = lines(await client.response('c'));
      t.match(got[0], /^\* CAPABILITY /);
      t.equal(countAtom(listOf(got[0]), 'JMAPACCESS'), 0, 'the pre-login list has no JMAPACCESS');
      t.match(statusLine(got[1]), { tag: 'x', status: 'OK' });

      const loginEnd = got.findIndex((l) => statusLine(l)?.tag === 'a');
      const login = got.slice(2, loginEnd + 1);
      t.match(statusLine(login.at(-1)), { tag: 'a', status: 'OK', text: upstream.loginOkText }, 'the login OK');
      const postLogin = capabilityLists(login.map((l) => `${l}\r\n`).join(''));
      t.equal(postLogin.length, 1, `the login answer carries one list: ${JSON.stringify(login.map((l) => l.slice(0, 40)))}`);
      t.equal(countAtom(postLogin[0] ?? [], 'JMAPACCESS'), 1, 'the post-login list has JMAPACCESS once');
      // The list's shape is the server's (see untaggedListAfterCapability).
      t.equal(login.length, upstream.untaggedListAfterCapability ? 2 : 1, 'lines of the login answer');
      t.equal(/^\* CAPABILITY /.test(login[0] ?? ''), upstream.untaggedListAfterCapability, 'an untagged * CAPABILITY first?');
      t.equal(/^CAPABILITY /i.test(statusLine(login.at(-1))?.code ?? ''), !upstream.untaggedListAfterCapability, 'or a [CAPABILITY] code');

      t.same(
        got.slice(loginEnd + 1, loginEnd + 3),
        [`* JMAPACCESS ${JMAP_URL_QUOTED}`, 'b OK GETJMAPACCESS completed'],
        'then the GETJMAPACCESS answer',
      );
      t.match(statusLine(got[loginEnd + 3]), { tag: '*', status: 'BYE' });
      t.match(statusLine(got[loginEnd + 4]), { tag: 'c', status: 'OK' });
      t.equal(got.length, loginEnd + 5, `nothing else: ${got.length} lines`);
      await client.waitClosed();
    });

    t.test('LOGIN pipelined before the greeting arrives: the greeting (pre-login list) still has no JMAPACCESS', async (t) => {
      const proxy = await proxyFor(t, upstream.port, { objectId: 'assume' });
      const client = await RawClient.connect(proxy.port);
      t.teardown(() => client.close());
      // Sent as soon as TCP connects, before the server's greeting can have arrived.
      client.send('a LOGIN alice alicepw\r\nb GETJMAPACCESS\r\nc LOGOUT\r\n');
      const got = lines(await client.response('c')).filter((l) => !AUTH_WAIT_LINE.test(l));
      t.equal(got.length, 6, `six lines: ${JSON.stringify(got)}`);
      t.match(statusLine(got[0]), { tag: '*', status: 'OK', code: /^CAPABILITY /i, text: upstream.greetingText }, 'the greeting comes first');
      t.equal(countAtom(listOf(got[0]), 'JMAPACCESS'), 0, 'the greeting advertises no JMAPACCESS');
      t.match(statusLine(got[1]), loginOk('a'), 'then the login OK');
      t.equal(countAtom(listOf(got[1]), 'JMAPACCESS'), 1, 'whose list has JMAPACCESS once');
      t.equal(got[2], `* JMAPACCESS ${JMAP_URL_QUOTED}`);
      t.equal(got[3], 'b OK GETJMAPACCESS completed');
      t.match(statusLine(got[4]), { tag: '*', status: 'BYE' });
      t.match(statusLine(got[5]), { tag: 'c', status: 'OK' });
      await client.waitClosed();
    });

    t.test(`pipelined LOGIN and GETJMAPACCESS under the default --objectid require: ${grantedUnderRequire ? 'OK' : 'BAD'} after the login`, async (t) => {
      const proxy = await proxyFor(t, upstream.port);
      const { client } = await rawClient(t, proxy.port);
      client.send('a LOGIN alice alicepw\r\nb GETJMAPACCESS\r\nc NOOP\r\n');
      const got = lines(await client.response('c'));
      t.match(statusLine(got[0]), loginOk('a'));
      t.equal(countAtom(listOf(got[0]), 'JMAPACCESS'), Number(grantedUnderRequire), 'JMAPACCESS iff the server has OBJECTID');
      t.equal(
        got.slice(1, -1).map((l) => `${l}\r\n`).join(''),
        getJmapAccessAnswer('b', grantedUnderRequire),
        'decided for the logged-in session',
      );
      t.match(statusLine(got.at(-1)), { tag: 'c', status: 'OK' });
    });

    t.test('IDLE: new mail arrives through the proxy; DONE + NOOP + GETJMAPACCESS in one write are answered in order', async (t) => {
      const proxy = await proxyFor(t, upstream.port, { objectId: 'assume' });
      const { client } = await rawClient(t, proxy.port);
      await rawLogin(client, 'alice', 'alicepw');
      client.send('s SELECT INBOX\r\n');
      const select = await client.response('s');
      const exists = Number(/^\* (\d+) EXISTS\r$/m.exec(select)?.[1]);
      t.ok(Number.isInteger(exists), `SELECT reported ${exists} messages`);

      client.send('i IDLE\r\n');
      t.match(await client.readUntil(/^\+ /m), /^\+ /, 'IDLE continuation');

      // Another client, also through the proxy, delivers a message. Both
      // servers tell the idling session by themselves: Dovecot by checking
      // the mailbox every second (dovecotConfig above), Cyrus through its
      // idled (the harness runs it), which wakes the idling imapd at once.
      const other: ImapFlow = await imapflowFor(t, proxy.port, 'alice', 'alicepw');
      const appended = await other.append('INBOX', makeMessage(2000, 'idle wake-up'));
      t.ok(appended, 'the other client appended');

      const during = await client.readUntil(`* ${exists + 1} EXISTS`);
      t.match(during, new RegExp(`^\\* ${exists + 1} EXISTS\\r$`, 'm'), 'EXISTS reached the idling client');
      t.notMatch(during, /^i (OK|NO|BAD)/m, 'still idling');

      client.send('DONE\r\nx NOOP\r\ny GETJMAPACCESS\r\n');
      const after = await client.response('y');
      const idleDone = after.search(/^i OK /m);
      const noopDone = after.search(/^x OK /m);
      const jmap = after.indexOf(JMAPACCESS_LINE);
      const getDone = after.search(/^y OK GETJMAPACCESS completed\r$/m);
      t.ok(idleDone >= 0 && noopDone > idleDone, 'IDLE completes, then the NOOP');
      t.ok(jmap > noopDone && getDone > jmap, 'then * JMAPACCESS and the GETJMAPACCESS OK');
      t.equal(after.slice(jmap), `${JMAPACCESS_LINE}y OK GETJMAPACCESS completed\r\n`, 'nothing after the answer');
    });

    t.test('LOGIN with non-synchronizing literals (LITERAL+)', async (t) => {
      const proxy = await proxyFor(t, upstream.port, { objectId: 'assume' });
      const { client, greeting } = await rawClient(t, proxy.port);
      t.ok(capabilityLists(greeting)[0]?.includes('LITERAL+'), 'LITERAL+ advertised before login');
      client.send('a LOGIN {5+}\r\nalice {7+}\r\nalicepw\r\n');
      const reply = await client.response('a');
      t.match(statusLine(lines(reply)[0]), loginOk('a'), 'LOGIN OK');
      t.equal(countAtom(capabilityLists(reply)[0] ?? [], 'JMAPACCESS'), 1, 'granted');
      client.send('b GETJMAPACCESS\r\n');
      t.equal(await client.response('b'), `${JMAPACCESS_LINE}b OK GETJMAPACCESS completed\r\n`);
      t.match(proxy.logs().find((l) => l.msg === 'login succeeded'), { user: 'alice', mechanism: 'LOGIN' }, 'user name read from the literal');
    });

    t.test('LOGIN with synchronizing literals', async (t) => {
      const proxy = await proxyFor(t, upstream.port, { objectId: 'assume' });
      const { client } = await rawClient(t, proxy.port);
      client.send('a LOGIN {5}\r\n');
      t.match(await client.readUntil('\n'), /^\+ /, 'go-ahead for the user name');
      client.send('alice {7}\r\n');
      t.match(await client.readUntil('\n'), /^\+ /, 'go-ahead for the password');
      client.send('alicepw\r\n');
      const reply = await client.response('a');
      t.match(statusLine(lines(reply)[0]), loginOk('a'));
      t.equal(countAtom(capabilityLists(reply)[0] ?? [], 'JMAPACCESS'), 1);
      t.match(proxy.logs().find((l) => l.msg === 'login succeeded'), { user: 'alice', mechanism: 'LOGIN' });
    });

    t.test('a client that half-closes after pipelining still gets every answer', async (t) => {
      const proxy = await proxyFor(t, upstream.port, { objectId: 'assume' });
      const { client } = await rawClient(t, proxy.port);
      client.send('a LOGIN alice alicepw\r\nb GETJMAPACCESS\r\nc SELECT INBOX\r\nd LOGOUT\r\n');
      client.socket.end();
      await client.waitClosed();
      const got = lines(client.all.toString('latin1')).filter((l) => !AUTH_WAIT_LINE.test(l));
      const tagged = got.map(statusLine).filter((s) => s !== null && s.tag !== '*');
      t.match(tagged, [loginOk('a'), { tag: 'b', status: 'OK' }, { tag: 'c', status: 'OK', code: 'READ-WRITE' }, { tag: 'd', status: 'OK' }], 'every command completed, in order');
      t.equal(tagged.length, 4, 'and nothing else tagged');
      const at = (tag: string): number => got.findIndex((l) => statusLine(l)?.tag === tag);
      t.equal(countAtom(listOf(got[at('a')]), 'JMAPACCESS'), 1, 'granted');
      t.equal(got[at('b') - 1], `* JMAPACCESS ${JMAP_URL_QUOTED}`, 'the GETJMAPACCESS answer');
      t.equal(got[at('b')], 'b OK GETJMAPACCESS completed');
      t.match(statusLine(got[at('d') - 1]), { tag: '*', status: 'BYE' }, 'the BYE before the LOGOUT OK');
      t.equal(got.length, at('d') + 1, 'the LOGOUT OK is the last line');
    });
  });
}
