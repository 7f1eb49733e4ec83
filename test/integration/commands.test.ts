/**
 * GETJMAPACCESS and the command stream against a real Dovecot 2.3:
 * answers through RawClient and imapflow, pipelining, IDLE, and LOGIN
 * with literals.
 */

import t from 'tap';
import type { ImapFlow } from 'imapflow';
import {
  AUTH_WAIT_LINE,
  JMAP_URL,
  JMAP_URL_QUOTED,
  JMAPACCESS_LINE,
  RawClient,
  capabilityLists,
  countAtom,
  dovecotFor,
  imapflowFor,
  lines,
  makeMessage,
  proxyFor,
  rawClient,
  rawLogin,
} from './helpers.js';

// Notice new mail within a second even where inotify is unavailable.
const dovecot = await dovecotFor(t, { extraConfig: 'mailbox_idle_check_interval = 1 secs' });

/** imapflow's exec() is internal API; this is the part of it the tests use. */
interface ExecCapable {
  exec(
    command: string,
    attributes: unknown,
    options?: { untagged?: Record<string, (untagged: { attributes?: Array<{ value?: unknown }> }) => Promise<void> | void> },
  ): Promise<{ response: { command: string; attributes?: Array<{ value?: unknown }> }; next: () => void }>;
}

t.test('GETJMAPACCESS (objectid assume) through RawClient: * JMAPACCESS then tagged OK, nothing else', async (t) => {
  const proxy = await proxyFor(t, dovecot.port, { objectId: 'assume' });
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
    { tag: 'b', user: 'alice', answered: 'OK', reason: 'objectid-assumed' },
    { tag: 'c', answered: 'OK' },
    { tag: 'e', answered: 'OK' },
  ]);
  const dovecotLog = await dovecot.readLog();
  t.notMatch(dovecotLog, /GETJMAPACCESS/i, 'the upstream never saw GETJMAPACCESS');
});

t.test('GETJMAPACCESS (objectid assume) through imapflow: JMAPACCESS in client.capabilities, the URL from exec()', async (t) => {
  const proxy = await proxyFor(t, dovecot.port, { objectId: 'assume' });
  const client = await imapflowFor(t, proxy.port, 'alice', 'alicepw');
  t.ok(client.authenticated, 'imapflow logged in');
  t.equal(client.capabilities.get('JMAPACCESS'), true, 'JMAPACCESS among imapflow\'s capabilities after login');
  t.notOk(
    [...client.capabilities.keys()].some((c) => c.startsWith('COMPRESS=')),
    'no COMPRESS=* (so imapflow never tries to compress the link)',
  );
  t.ok(client.capabilities.has('IDLE'), 'the post-login list');

  const urls: unknown[] = [];
  const { response, next } = await (client as unknown as ExecCapable).exec('GETJMAPACCESS', false, {
    untagged: {
      JMAPACCESS: (untagged) => {
        urls.push(untagged.attributes?.[0]?.value);
      },
    },
  });
  next();
  t.equal(response.command, 'OK', 'tagged OK');
  t.same(urls, [JMAP_URL], 'one * JMAPACCESS with the configured URL');

  // The session is still in step afterwards.
  const mailbox = await client.mailboxOpen('INBOX');
  t.equal(mailbox.path, 'INBOX');
  t.match(proxy.logs().find((l) => l.msg === 'login succeeded'), { user: 'alice', jmapaccess: 'granted' });
});

t.test('imapflow with the default --objectid require: no JMAPACCESS, GETJMAPACCESS rejected as BAD', async (t) => {
  const proxy = await proxyFor(t, dovecot.port);
  const client = await imapflowFor(t, proxy.port, 'alice', 'alicepw');
  t.notOk(client.capabilities.has('JMAPACCESS'), 'no JMAPACCESS');
  const error = await (client as unknown as ExecCapable).exec('GETJMAPACCESS', false).then(
    () => null,
    (err: unknown) => err as { responseStatus?: string },
  );
  t.equal(error?.responseStatus, 'BAD', 'GETJMAPACCESS: BAD');
  t.ok(await client.noop().then(() => true), 'the connection is still usable');
});

t.test('pipelined LOGIN, GETJMAPACCESS, LOGOUT in one write: answered in order after the login', async (t) => {
  const proxy = await proxyFor(t, dovecot.port, { objectId: 'assume' });
  const { client } = await rawClient(t, proxy.port);
  client.send('a LOGIN alice alicepw\r\nb GETJMAPACCESS\r\nc LOGOUT\r\n');
  const text = await client.response('c');
  const got = lines(text);
  t.equal(got.length, 5, `five lines: ${JSON.stringify(got)}`);
  t.match(got[0], /^a OK \[CAPABILITY [^\]]*\bJMAPACCESS\b[^\]]*\] Logged in$/, 'login OK, granted');
  t.equal(got[1], `* JMAPACCESS ${JMAP_URL_QUOTED}`, 'the post-login answer, not a pre-login BAD');
  t.equal(got[2], 'b OK GETJMAPACCESS completed');
  t.match(got[3], /^\* BYE /, 'then the BYE');
  t.match(got[4], /^c OK /, 'then LOGOUT completes');
  await client.waitClosed();
  t.ok(client.closed, 'the connection is closed after LOGOUT');
});

t.test('pipelined CAPABILITY, LOGIN, GETJMAPACCESS, LOGOUT in one write (Dovecot\'s untagged-list shape)', async (t) => {
  const proxy = await proxyFor(t, dovecot.port, { objectId: 'assume' });
  const { client } = await rawClient(t, proxy.port);
  client.send('x CAPABILITY\r\na LOGIN alice alicepw\r\nb GETJMAPACCESS\r\nc LOGOUT\r\n');
  const got = lines(await client.response('c'));
  t.equal(got.length, 8, `eight lines: ${JSON.stringify(got)}`);
  t.match(got[0], /^\* CAPABILITY /);
  t.equal(countAtom(capabilityLists(`${got[0]}\r\n`)[0] ?? [], 'JMAPACCESS'), 0, 'the pre-login list has no JMAPACCESS');
  t.match(got[1], /^x OK /);
  t.match(got[2], /^\* CAPABILITY /);
  t.equal(countAtom(capabilityLists(`${got[2]}\r\n`)[0] ?? [], 'JMAPACCESS'), 1, 'the post-login list has JMAPACCESS once');
  t.equal(got[3], 'a OK Logged in');
  t.equal(got[4], `* JMAPACCESS ${JMAP_URL_QUOTED}`);
  t.equal(got[5], 'b OK GETJMAPACCESS completed');
  t.match(got[6], /^\* BYE /);
  t.match(got[7], /^c OK /);
  await client.waitClosed();
});

t.test('LOGIN pipelined before the greeting arrives: the greeting (pre-login list) still has no JMAPACCESS', async (t) => {
  const proxy = await proxyFor(t, dovecot.port, { objectId: 'assume' });
  const client = await RawClient.connect(proxy.port);
  t.teardown(() => client.close());
  // Sent as soon as TCP connects, before Dovecot's greeting can have arrived.
  client.send('a LOGIN alice alicepw\r\nb GETJMAPACCESS\r\nc LOGOUT\r\n');
  const got = lines(await client.response('c')).filter((l) => !AUTH_WAIT_LINE.test(l));
  t.equal(got.length, 6, `six lines: ${JSON.stringify(got)}`);
  t.match(got[0], /^\* OK \[CAPABILITY [^\]]*\] Dovecot/, 'the greeting comes first');
  t.equal(countAtom(capabilityLists(`${got[0]}\r\n`)[0] ?? [], 'JMAPACCESS'), 0, 'the greeting advertises no JMAPACCESS');
  t.match(got[1], /^a OK \[CAPABILITY /, 'then the login OK');
  t.equal(countAtom(capabilityLists(`${got[1]}\r\n`)[0] ?? [], 'JMAPACCESS'), 1, 'whose list has JMAPACCESS once');
  t.equal(got[2], `* JMAPACCESS ${JMAP_URL_QUOTED}`);
  t.equal(got[3], 'b OK GETJMAPACCESS completed');
  t.match(got[4], /^\* BYE /);
  t.match(got[5], /^c OK /);
  await client.waitClosed();
});

t.test('pipelined LOGIN and GETJMAPACCESS under the default --objectid require: BAD after the login', async (t) => {
  const proxy = await proxyFor(t, dovecot.port);
  const { client } = await rawClient(t, proxy.port);
  client.send('a LOGIN alice alicepw\r\nb GETJMAPACCESS\r\nc NOOP\r\n');
  const got = lines(await client.response('c'));
  t.match(got[0], /^a OK \[CAPABILITY /);
  t.equal(got[1], 'b BAD JMAP access is not available on this server', 'decided for the logged-in session');
  t.match(got[2], /^c OK /);
  t.equal(got.length, 3);
});

t.test('IDLE: new mail arrives through the proxy; DONE + NOOP + GETJMAPACCESS in one write are answered in order', async (t) => {
  const proxy = await proxyFor(t, dovecot.port, { objectId: 'assume' });
  const { client } = await rawClient(t, proxy.port);
  await rawLogin(client, 'alice', 'alicepw');
  client.send('s SELECT INBOX\r\n');
  const select = await client.response('s');
  const exists = Number(/^\* (\d+) EXISTS\r$/m.exec(select)?.[1]);
  t.ok(Number.isInteger(exists), `SELECT reported ${exists} messages`);

  client.send('i IDLE\r\n');
  t.match(await client.readUntil(/^\+ /m), /^\+ /, 'IDLE continuation');

  // Another client, also through the proxy, delivers a message.
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
  const proxy = await proxyFor(t, dovecot.port, { objectId: 'assume' });
  const { client, greeting } = await rawClient(t, proxy.port);
  t.ok(capabilityLists(greeting)[0]?.includes('LITERAL+'), 'LITERAL+ advertised before login');
  client.send('a LOGIN {5+}\r\nalice {7+}\r\nalicepw\r\n');
  const reply = await client.response('a');
  t.match(reply, /^a OK \[CAPABILITY /, 'LOGIN OK');
  t.equal(countAtom(capabilityLists(reply)[0] ?? [], 'JMAPACCESS'), 1, 'granted');
  client.send('b GETJMAPACCESS\r\n');
  t.equal(await client.response('b'), `${JMAPACCESS_LINE}b OK GETJMAPACCESS completed\r\n`);
  t.match(proxy.logs().find((l) => l.msg === 'login succeeded'), { user: 'alice', mechanism: 'LOGIN' }, 'user name read from the literal');
});

t.test('LOGIN with synchronizing literals', async (t) => {
  const proxy = await proxyFor(t, dovecot.port, { objectId: 'assume' });
  const { client } = await rawClient(t, proxy.port);
  client.send('a LOGIN {5}\r\n');
  t.match(await client.readUntil('\n'), /^\+ /, 'go-ahead for the user name');
  client.send('alice {7}\r\n');
  t.match(await client.readUntil('\n'), /^\+ /, 'go-ahead for the password');
  client.send('alicepw\r\n');
  const reply = await client.response('a');
  t.match(reply, /^a OK \[CAPABILITY /);
  t.equal(countAtom(capabilityLists(reply)[0] ?? [], 'JMAPACCESS'), 1);
  t.match(proxy.logs().find((l) => l.msg === 'login succeeded'), { user: 'alice', mechanism: 'LOGIN' });
});

t.test('a client that half-closes after pipelining still gets every answer', async (t) => {
  const proxy = await proxyFor(t, dovecot.port, { objectId: 'assume' });
  const { client } = await rawClient(t, proxy.port);
  client.send('a LOGIN alice alicepw\r\nb GETJMAPACCESS\r\nc SELECT INBOX\r\nd LOGOUT\r\n');
  client.socket.end();
  await client.waitClosed();
  const got = client.all.toString('latin1');
  t.match(got, /\r\na OK \[CAPABILITY [^\]]*JMAPACCESS[^\]]*\] Logged in/);
  t.match(got, /\* JMAPACCESS "[^"]+"\r\nb OK GETJMAPACCESS completed\r\n/);
  t.match(got, /\r\nc OK \[READ-WRITE\]/);
  t.match(got, /\r\nd OK Logout completed/);
});
