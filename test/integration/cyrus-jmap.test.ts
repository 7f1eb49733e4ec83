/**
 * RFC 9698's promise end to end, against a real Cyrus IMAP 3.6 with its
 * JMAP server: the proxy (default --objectid require, --jmap-url set to
 * Cyrus's own session URL) grants JMAPACCESS only after a login whose
 * credentials also work for JMAP, the URL GETJMAPACCESS returns gives a
 * JMAP session with those same credentials, and the object ids IMAP shows
 * through the proxy (EMAILID, THREADID, MAILBOXID) are the JMAP ids, in
 * both directions.
 */

import { randomBytes } from 'node:crypto';
import t, { type Test } from 'tap';
import { ensureCyrusInstalled, startCyrus, type Cyrus } from '../harness/cyrus.js';
import {
  RawClient,
  capabilityLists,
  countAtom,
  imapflowFor,
  imapflowGetJmapAccess,
  lines,
  proxyFor,
  rawClient,
  rawLogin,
  type ProxyOptions,
  type RunningProxy,
} from './helpers.js';

await ensureCyrusInstalled();
const cyrus: Cyrus = await startCyrus();
t.teardown(() => cyrus.stop());

const USER = 'alice';
const PASS = cyrus.users[USER] as string;
const JMAP_URL = cyrus.jmapSessionUrl;
const JMAPACCESS_LINE = `* JMAPACCESS "${JMAP_URL}"\r\n`;
const USING = ['urn:ietf:params:jmap:core', 'urn:ietf:params:jmap:mail'];

/** The proxy as an operator would run it in front of this Cyrus: only the URL and the http:// allowance set. */
function cyrusProxy(t: Test, options: ProxyOptions = {}): Promise<RunningProxy> {
  return proxyFor(t, cyrus.port, { jmapUrl: JMAP_URL, allowInsecureJmapUrl: true, ...options });
}

const plainResponse = (user: string, pass: string): string => Buffer.from(`\0${user}\0${pass}`).toString('base64');

/** The one capability list in a response text (fails the test if there is not exactly one). */
function onlyList(t: Test, text: string, what: string): string[] {
  const lists = capabilityLists(text);
  t.equal(lists.length, 1, `${what}: one capability list`);
  return lists[0] ?? [];
}

/** A post-login list through the proxy: Cyrus's (LOGINDISABLED, OBJECTID) with JMAPACCESS exactly once. */
function assertGranted(t: Test, list: readonly string[], what: string): void {
  t.equal(countAtom(list, 'JMAPACCESS'), 1, `${what}: JMAPACCESS exactly once`);
  t.equal(countAtom(list, 'OBJECTID'), 1, `${what}: OBJECTID (Cyrus's post-login list)`);
  t.equal(countAtom(list, 'LOGINDISABLED'), 1, `${what}: LOGINDISABLED (Cyrus's post-login list)`);
  assertNoProxyOwned(t, list, what);
}

function assertNoProxyOwned(t: Test, list: readonly string[], what: string): void {
  t.equal(countAtom(list, 'STARTTLS'), 0, `${what}: no STARTTLS`);
  t.notOk(
    list.some((a) => a.startsWith('COMPRESS=')),
    `${what}: no COMPRESS=*`,
  );
}

/** Greeting and (before login) GETJMAPACCESS: nothing about JMAP yet. */
async function assertNothingBeforeLogin(t: Test, client: RawClient, greeting: string): Promise<void> {
  const pre = onlyList(t, greeting, 'greeting');
  t.equal(countAtom(pre, 'JMAPACCESS'), 0, 'greeting: no JMAPACCESS');
  client.send('p GETJMAPACCESS\r\n');
  t.equal(await client.response('p'), 'p BAD GETJMAPACCESS is valid only after authentication\r\n', 'GETJMAPACCESS before login: BAD');
}

/** GETJMAPACCESS answered with exactly the Cyrus session URL and a tagged OK. */
async function assertGetJmapAccess(t: Test, client: RawClient, tag: string): Promise<void> {
  client.send(`${tag} GETJMAPACCESS\r\n`);
  t.equal(await client.response(tag), `${JMAPACCESS_LINE}${tag} OK GETJMAPACCESS completed\r\n`, 'GETJMAPACCESS: the Cyrus session URL');
}

// ---------------------------------------------------------------- JMAP

interface JmapSession {
  username?: string;
  apiUrl: string;
  capabilities: Record<string, unknown>;
  accounts: Record<string, { name: string; isPersonal: boolean; accountCapabilities: Record<string, unknown> }>;
  primaryAccounts: Record<string, string>;
}

type Invocation = [string, Record<string, unknown>, string];

const basic = (user: string, pass: string): string => `Basic ${Buffer.from(`${user}:${pass}`).toString('base64')}`;

/** GET the session resource (following Cyrus's 301 to /jmap) with Basic credentials. */
async function fetchSession(url: string, user: string, pass: string): Promise<{ status: number; finalUrl: string; body: string }> {
  const response = await fetch(url, { headers: { Authorization: basic(user, pass), Accept: 'application/json' } });
  return { status: response.status, finalUrl: response.url, body: await response.text() };
}

/** A JMAP client for one account, from the session URL and the IMAP credentials. */
class Jmap {
  private constructor(
    readonly session: JmapSession,
    /** The apiUrl resolved against the session resource's final URL. */
    readonly apiUrl: string,
    readonly accountId: string,
    private readonly auth: string,
  ) {}

  static async open(sessionUrl: string, user: string, pass: string): Promise<Jmap> {
    const { status, finalUrl, body } = await fetchSession(sessionUrl, user, pass);
    if (status !== 200) throw new Error(`JMAP session: HTTP ${status}: ${body.slice(0, 200)}`);
    const session = JSON.parse(body) as JmapSession;
    const accountId = session.primaryAccounts['urn:ietf:params:jmap:mail'];
    if (!accountId) throw new Error(`JMAP session without a mail account: ${body.slice(0, 300)}`);
    return new Jmap(session, new URL(session.apiUrl, finalUrl).toString(), accountId, basic(user, pass));
  }

  /** One API request; returns the method responses (an `error` response throws). */
  async call(methodCalls: Invocation[]): Promise<Invocation[]> {
    const response = await fetch(this.apiUrl, {
      method: 'POST',
      headers: { Authorization: this.auth, 'Content-Type': 'application/json', Accept: 'application/json' },
      body: JSON.stringify({ using: USING, methodCalls }),
    });
    const text = await response.text();
    if (response.status !== 200) throw new Error(`JMAP API: HTTP ${response.status}: ${text.slice(0, 300)}`);
    const { methodResponses } = JSON.parse(text) as { methodResponses: Invocation[] };
    const failed = methodResponses.find(([name]) => name === 'error');
    if (failed) throw new Error(`JMAP method error: ${JSON.stringify(failed)}`);
    return methodResponses;
  }

  /** The arguments of the response to the call with this id. */
  static result(responses: Invocation[], callId: string): Record<string, unknown> {
    const found = responses.find(([, , id]) => id === callId);
    if (!found) throw new Error(`no response for ${callId}: ${JSON.stringify(responses)}`);
    return found[1];
  }

  async inboxId(): Promise<string> {
    const responses = await this.call([['Mailbox/get', { accountId: this.accountId, properties: ['id', 'name', 'role'] }, 'm']]);
    const list = Jmap.result(responses, 'm').list as Array<{ id: string; role: string | null }>;
    const inbox = list.find((m) => m.role === 'inbox');
    if (!inbox) throw new Error(`no mailbox with role inbox: ${JSON.stringify(list)}`);
    return inbox.id;
  }
}

interface JmapEmail {
  id: string;
  threadId: string;
  mailboxIds: Record<string, boolean>;
  subject: string;
  messageId?: string[] | null;
}

// ---------------------------------------------------------------- IMAP ids

const EMAILID = /EMAILID \(([^()\s]+)\)/;
const THREADID = /THREADID \(([^()\s]+)\)/;

function uniqueTag(): { token: string; subject: string; messageId: string } {
  const token = randomBytes(6).toString('hex');
  return { token, subject: `jmapaccess ${token}`, messageId: `${token}@jmapaccess-proxy.test` };
}

// ====================================================================== tests

t.test('Cyrus directly (control): OBJECTID in the pre-login CAPABILITY, LOGINDISABLED after login, no JMAPACCESS', async (t) => {
  const { client } = await rawClient(t, cyrus.port);
  client.send('x CAPABILITY\r\n');
  const pre = onlyList(t, await client.response('x'), 'pre-login CAPABILITY');
  t.equal(countAtom(pre, 'OBJECTID'), 1, 'Cyrus lists OBJECTID even before login');
  t.equal(countAtom(pre, 'COMPRESS=DEFLATE'), 1, 'and COMPRESS=DEFLATE');
  t.equal(countAtom(pre, 'JMAPACCESS'), 0, 'no JMAPACCESS of its own');
  const post = onlyList(t, await rawLogin(client, USER, PASS), 'LOGIN OK');
  t.equal(countAtom(post, 'LOGINDISABLED'), 1, 'LOGINDISABLED after login');
  t.equal(countAtom(post, 'OBJECTID'), 1, 'OBJECTID after login');
  t.equal(countAtom(post, 'JMAPACCESS'), 0, 'no JMAPACCESS of its own');
  client.send('b GETJMAPACCESS\r\n');
  t.match(await client.response('b'), /^b BAD /, 'Cyrus itself does not know GETJMAPACCESS');
});

t.test('Cyrus shapes through the proxy: pre-login CAPABILITY (with OBJECTID) gets no JMAPACCESS; post-login lists do', async (t) => {
  // What Cyrus says directly, to compare with what the proxy passes on.
  const direct = (await rawClient(t, cyrus.port)).client;
  direct.send('x CAPABILITY\r\n');
  const directPre = onlyList(t, await direct.response('x'), 'direct pre-login');
  const directPost = onlyList(t, await rawLogin(direct, USER, PASS), 'direct LOGIN OK');
  direct.send('y CAPABILITY\r\n');
  const directPostCommand = onlyList(t, await direct.response('y'), 'direct post-login CAPABILITY');

  const proxy = await cyrusProxy(t);
  const { client, greeting } = await rawClient(t, proxy.port);
  await assertNothingBeforeLogin(t, client, greeting);

  client.send('x CAPABILITY\r\n');
  const preText = await client.response('x');
  t.match(preText, /^\* CAPABILITY [^\r\n]*\r\nx OK /, 'an untagged list, then the tagged OK');
  const pre = onlyList(t, preText, 'pre-login CAPABILITY');
  t.equal(countAtom(pre, 'OBJECTID'), 1, 'OBJECTID passes through');
  t.equal(countAtom(pre, 'JMAPACCESS'), 0, 'no JMAPACCESS before login, OBJECTID notwithstanding');
  assertNoProxyOwned(t, pre, 'pre-login CAPABILITY');
  t.same(pre, directPre.filter((a) => !a.startsWith('COMPRESS=')), 'otherwise exactly Cyrus\'s list, in order');

  const loginText = await rawLogin(client, USER, PASS);
  t.equal(lines(loginText).length, 1, 'the login answer is the one tagged line');
  t.match(loginText, /^a OK \[CAPABILITY [^\]]*\] User logged in/, 'tagged OK with a [CAPABILITY ...] code');
  const post = onlyList(t, loginText, 'LOGIN OK');
  assertGranted(t, post, 'LOGIN OK');
  t.same(post, [...directPost.filter((a) => !a.startsWith('COMPRESS=')), 'JMAPACCESS'], 'Cyrus\'s list, COMPRESS removed, JMAPACCESS added');

  client.send('y CAPABILITY\r\n');
  const postCommand = onlyList(t, await client.response('y'), 'post-login CAPABILITY');
  assertGranted(t, postCommand, 'post-login CAPABILITY');
  t.same(postCommand, [...directPostCommand.filter((a) => !a.startsWith('COMPRESS=')), 'JMAPACCESS']);
  await assertGetJmapAccess(t, client, 'b');

  t.match(proxy.logs().find((l) => l.msg === 'login succeeded'), { user: USER, mechanism: 'LOGIN', jmapaccess: 'granted', reason: 'eligible' });
  t.match(
    proxy.logs().filter((l) => l.msg === 'GETJMAPACCESS'),
    [
      { tag: 'p', answered: 'BAD', reason: 'not-authenticated' },
      { tag: 'b', user: USER, answered: 'OK', reason: 'eligible' },
    ],
  );
});

t.test('AUTHENTICATE PLAIN without SASL-IR: JMAPACCESS once in the tagged OK, GETJMAPACCESS gives the URL', async (t) => {
  const proxy = await cyrusProxy(t);
  const { client, greeting } = await rawClient(t, proxy.port);
  await assertNothingBeforeLogin(t, client, greeting);
  client.send('a AUTHENTICATE PLAIN\r\n');
  t.equal(await client.readUntil('\n'), '+ \r\n', 'empty challenge');
  client.send(`${plainResponse(USER, PASS)}\r\n`);
  const text = await client.response('a');
  t.equal(lines(text).length, 1, 'one tagged line');
  t.match(text, /^a OK \[CAPABILITY [^\]]*\] Success/, 'Cyrus\'s OK with [CAPABILITY ...]');
  assertGranted(t, onlyList(t, text, 'AUTHENTICATE OK'), 'AUTHENTICATE OK');
  await assertGetJmapAccess(t, client, 'b');
  t.match(proxy.logs().find((l) => l.msg === 'login succeeded'), { user: USER, mechanism: 'PLAIN', jmapaccess: 'granted' });
});

t.test('AUTHENTICATE PLAIN with SASL-IR: JMAPACCESS once in the tagged OK, GETJMAPACCESS gives the URL', async (t) => {
  const proxy = await cyrusProxy(t);
  const { client, greeting } = await rawClient(t, proxy.port);
  t.equal(countAtom(onlyList(t, greeting, 'greeting'), 'SASL-IR'), 1, 'Cyrus offers SASL-IR');
  client.send(`a AUTHENTICATE PLAIN ${plainResponse(USER, PASS)}\r\n`);
  const text = await client.response('a');
  t.equal(lines(text).length, 1, 'no challenge, one tagged line');
  assertGranted(t, onlyList(t, text, 'AUTHENTICATE OK'), 'AUTHENTICATE OK');
  await assertGetJmapAccess(t, client, 'b');
  client.send('c CAPABILITY\r\n');
  assertGranted(t, onlyList(t, await client.response('c'), 'post-login CAPABILITY'), 'post-login CAPABILITY');
  t.match(proxy.logs().find((l) => l.msg === 'login succeeded'), { user: USER, mechanism: 'PLAIN', jmapaccess: 'granted' });
});

for (const [what, loginMethod, mechanism] of [
  ['AUTHENTICATE PLAIN (imapflow\'s default)', undefined, 'PLAIN'],
  ['LOGIN', 'LOGIN', 'LOGIN'],
] as const) {
  t.test(`imapflow with ${what}: JMAPACCESS after login, GETJMAPACCESS returns the Cyrus URL`, async (t) => {
    const proxy = await cyrusProxy(t);
    const client = await imapflowFor(t, proxy.port, USER, PASS, {
      auth: { user: USER, pass: PASS, ...(loginMethod ? { loginMethod } : {}) },
    });
    t.ok(client.authenticated, 'logged in');
    t.equal(client.capabilities.get('JMAPACCESS'), true, 'JMAPACCESS among imapflow\'s capabilities');
    t.ok(client.capabilities.has('OBJECTID'), 'the post-login list (OBJECTID)');
    t.notOk([...client.capabilities.keys()].some((c) => c.startsWith('COMPRESS=')), 'no COMPRESS=*');
    t.same(await imapflowGetJmapAccess(client), { status: 'OK', urls: [JMAP_URL] }, 'one * JMAPACCESS with the Cyrus URL, tagged OK');
    t.match(proxy.logs().find((l) => l.msg === 'login succeeded'), { user: USER, mechanism, jmapaccess: 'granted' });
    t.equal((await client.mailboxOpen('INBOX')).path, 'INBOX', 'the session is still in step');
  });
}

t.test('the URL GETJMAPACCESS returns, fetched with the IMAP credentials, is a JMAP session for the same user', async (t) => {
  const proxy = await cyrusProxy(t);
  const { client } = await rawClient(t, proxy.port);
  await rawLogin(client, USER, PASS);
  client.send('b GETJMAPACCESS\r\n');
  const answer = await client.response('b');
  const url = /^\* JMAPACCESS "([^"]*)"\r\n/.exec(answer)?.[1];
  t.equal(url, JMAP_URL, 'the advertised URL');
  if (url === undefined) return;

  const { status, finalUrl, body } = await fetchSession(url, USER, PASS);
  t.equal(status, 200, 'HTTP 200 with the IMAP credentials (Basic)');
  t.comment(`session resource ${url} -> ${finalUrl}`);
  const session = JSON.parse(body) as JmapSession;
  t.type(session.capabilities['urn:ietf:params:jmap:core'], 'object', 'capabilities: urn:ietf:params:jmap:core');
  t.type(session.capabilities['urn:ietf:params:jmap:mail'], 'object', 'capabilities: urn:ietf:params:jmap:mail');
  const accountId = session.primaryAccounts['urn:ietf:params:jmap:mail'];
  t.ok(accountId, 'a primary mail account');
  const account = accountId === undefined ? undefined : session.accounts[accountId];
  t.ok(account, 'the primary mail account is in accounts');
  t.type(account?.accountCapabilities['urn:ietf:params:jmap:mail'], 'object', 'the account has mail capabilities');
  t.equal(session.username, USER, 'the session is the IMAP user\'s');
  t.type(session.apiUrl, 'string', 'apiUrl');
  const apiUrl = new URL(session.apiUrl, finalUrl);
  t.equal(apiUrl.origin, new URL(url).origin, `apiUrl ${session.apiUrl} resolves to ${apiUrl.href}`);

  // The API works with the same credentials: a trivial Core/echo.
  const jmap = await Jmap.open(url, USER, PASS);
  const echo = await jmap.call([['Core/echo', { hello: 'jmapaccess' }, 'e']]);
  t.same(echo, [['Core/echo', { hello: 'jmapaccess' }, 'e']], 'Core/echo through the resolved apiUrl');

  const wrong = await fetchSession(url, USER, `${PASS}-wrong`);
  t.equal(wrong.status, 401, 'a wrong password: 401');
  const other = await fetchSession(url, 'bob', cyrus.users.bob as string);
  t.equal(other.status, 200, 'control: bob gets his own session');
  t.equal((JSON.parse(other.body) as JmapSession).primaryAccounts['urn:ietf:params:jmap:mail'], 'bob', 'with his own account');
});

t.test('IMAP to JMAP: a message APPENDed through the proxy has the same ids over JMAP', async (t) => {
  const proxy = await cyrusProxy(t);
  const { client } = await rawClient(t, proxy.port);
  await rawLogin(client, USER, PASS);
  await assertGetJmapAccess(t, client, 'g');

  const { subject, messageId } = uniqueTag();
  const message = Buffer.from(
    'From: Alice <alice@example.test>\r\n' +
      'To: Bob <bob@example.test>\r\n' +
      `Subject: ${subject}\r\n` +
      `Message-ID: <${messageId}>\r\n` +
      'Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n' +
      'MIME-Version: 1.0\r\n' +
      'Content-Type: text/plain; charset=us-ascii\r\n' +
      '\r\n' +
      'Appended over IMAP through the proxy.\r\n',
    'latin1',
  );
  client.send(`c APPEND INBOX (\\Seen) {${message.length}}\r\n`);
  t.match(await client.readUntil('\n'), /^\+ /, 'go-ahead for the synchronizing literal');
  client.send(Buffer.concat([message, Buffer.from('\r\n')]));
  const appended = await client.response('c');
  const appendUid = /^c OK \[APPENDUID (\d+) (\d+)\]/m.exec(appended);
  t.ok(appendUid, `APPEND OK with APPENDUID: ${JSON.stringify(appended)}`);
  const uid = appendUid?.[2];

  // MAILBOXID alone: Cyrus 3.6.1 answers garbage bytes for MAILBOXID when
  // another item (MESSAGES) is asked in the same STATUS, with or without the proxy.
  client.send('s STATUS INBOX (MAILBOXID)\r\n');
  const status = await client.response('s');
  const mailboxId = /^\* STATUS (?:INBOX|"INBOX") \(MAILBOXID \(([^()\s]+)\)\)\r\ns OK /m.exec(status)?.[1];
  t.match(mailboxId, /^[\x21-\x7e]+$/, `STATUS MAILBOXID: ${JSON.stringify(status)}`);

  client.send('d SELECT INBOX\r\n');
  const selected = await client.response('d');
  t.match(selected, /^d OK \[READ-WRITE\]/m, 'SELECT INBOX');
  t.match(selected, new RegExp(`^\\* OK \\[MAILBOXID \\(${mailboxId}\\)\\]`, 'm'), 'SELECT reports the same MAILBOXID');

  client.send(`e UID FETCH ${uid} (EMAILID THREADID)\r\n`);
  const fetched = await client.response('e');
  t.match(fetched, /\r\ne OK /, 'FETCH completed');
  const emailId = EMAILID.exec(fetched)?.[1];
  const threadId = THREADID.exec(fetched)?.[1];
  t.ok(emailId && threadId, `EMAILID and THREADID: ${JSON.stringify(fetched)}`);
  t.comment(`IMAP: MAILBOXID ${mailboxId} EMAILID ${emailId} THREADID ${threadId} (UID ${uid})`);

  const jmap = await Jmap.open(JMAP_URL, USER, PASS);
  const inboxId = await jmap.inboxId();
  t.equal(inboxId, mailboxId, 'the JMAP inbox id is the IMAP MAILBOXID');
  const responses = await jmap.call([
    ['Email/query', { accountId: jmap.accountId, filter: { inMailbox: inboxId }, sort: [{ property: 'receivedAt', isAscending: false }] }, 'q'],
    [
      'Email/get',
      {
        accountId: jmap.accountId,
        '#ids': { resultOf: 'q', name: 'Email/query', path: '/ids' },
        properties: ['id', 'threadId', 'mailboxIds', 'subject', 'messageId'],
      },
      'g',
    ],
  ]);
  const ids = Jmap.result(responses, 'q').ids as string[];
  t.ok(ids.includes(emailId as string), 'Email/query in the inbox finds the IMAP EMAILID');
  const emails = Jmap.result(responses, 'g').list as JmapEmail[];
  const email = emails.find((e) => e.subject === subject);
  t.ok(email, `Email/get returns the appended message (subject ${subject})`);
  if (!email) return;
  t.comment(`JMAP: id ${email.id} threadId ${email.threadId} mailboxIds ${JSON.stringify(email.mailboxIds)}`);
  t.equal(email.id, emailId, 'JMAP id === IMAP EMAILID');
  t.equal(email.threadId, threadId, 'JMAP threadId === IMAP THREADID');
  t.same(email.mailboxIds, { [mailboxId as string]: true }, 'JMAP mailboxIds is the IMAP MAILBOXID');
  t.same(email.messageId, [messageId], 'the same message (Message-ID)');
});

t.test('JMAP to IMAP: a message created over JMAP has the same ids through the proxy', async (t) => {
  const proxy = await cyrusProxy(t);
  const client = await imapflowFor(t, proxy.port, USER, PASS);
  const access = await imapflowGetJmapAccess(client);
  t.same(access, { status: 'OK', urls: [JMAP_URL] }, 'GETJMAPACCESS through imapflow');
  const url = access.urls[0];
  if (typeof url !== 'string') return;

  const jmap = await Jmap.open(url, USER, PASS);
  const inboxId = await jmap.inboxId();
  const { subject, messageId } = uniqueTag();
  const responses = await jmap.call([
    [
      'Email/set',
      {
        accountId: jmap.accountId,
        create: {
          k1: {
            mailboxIds: { [inboxId]: true },
            keywords: { $seen: true },
            from: [{ name: 'Bob', email: 'bob@example.test' }],
            to: [{ name: 'Alice', email: 'alice@example.test' }],
            subject,
            messageId: [messageId],
            receivedAt: new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
            bodyStructure: { partId: 'p1', type: 'text/plain' },
            bodyValues: { p1: { value: 'Created over JMAP.\r\n' } },
          },
        },
      },
      's',
    ],
    ['Email/get', { accountId: jmap.accountId, ids: ['#k1'], properties: ['id', 'threadId', 'mailboxIds', 'subject'] }, 'g'],
  ]);
  const set = Jmap.result(responses, 's') as { created?: Record<string, { id: string; threadId?: string }>; notCreated?: unknown };
  t.notOk(set.notCreated, `Email/set created it: ${JSON.stringify(set.notCreated ?? null)}`);
  const created = set.created?.k1;
  t.ok(created?.id, 'an id for the new message');
  const [email] = Jmap.result(responses, 'g').list as JmapEmail[];
  t.equal(email?.id, created?.id, 'Email/get by creation reference');
  t.same(email?.mailboxIds, { [inboxId]: true }, 'in the inbox');
  t.comment(`JMAP: id ${email?.id} threadId ${email?.threadId} inbox ${inboxId}`);

  // Over IMAP, through the proxy.
  const status = await client.status('INBOX', { messages: true });
  const messages = status ? status.messages : undefined;
  t.ok(messages !== undefined && messages > 0, `STATUS INBOX: ${messages} messages`);
  const mailbox = await client.mailboxOpen('INBOX');
  t.equal(mailbox.mailboxId, inboxId, 'SELECT INBOX: the MAILBOXID is the JMAP inbox id');
  const byHeader = await client.search({ header: { 'message-id': messageId } }, { uid: true });
  t.equal(byHeader && byHeader.length, 1, `UID SEARCH HEADER Message-ID <${messageId}>: one message`);
  const bySubject = await client.search({ subject }, { uid: true });
  t.same(bySubject, byHeader, 'UID SEARCH SUBJECT finds the same message');
  const uid = byHeader && byHeader[0];
  if (uid === undefined) return;
  const fetched = await client.fetchOne(String(uid), { uid: true, envelope: true, emailId: true, threadId: true }, { uid: true });
  t.ok(fetched, 'UID FETCH');
  if (!fetched) return;
  t.comment(`IMAP: UID ${uid} EMAILID ${fetched.emailId} THREADID ${fetched.threadId}`);
  t.equal(fetched.envelope?.subject, subject, 'the same message (subject)');
  t.equal(fetched.emailId, email?.id, 'IMAP EMAILID === JMAP id');
  t.equal(fetched.threadId, email?.threadId, 'IMAP THREADID === JMAP threadId');

  const flags = await client.fetchOne(String(uid), { flags: true }, { uid: true });
  t.ok(flags && flags.flags?.has('\\Seen'), 'the $seen keyword is \\Seen over IMAP');
});

t.test('byte level: JMAP-created message found by UID SEARCH HEADER, EMAILID/THREADID over RawClient', async (t) => {
  const jmap = await Jmap.open(JMAP_URL, USER, PASS);
  const inboxId = await jmap.inboxId();
  const { subject, messageId } = uniqueTag();
  const responses = await jmap.call([
    [
      'Email/set',
      {
        accountId: jmap.accountId,
        create: {
          k1: {
            mailboxIds: { [inboxId]: true },
            from: [{ email: 'bob@example.test' }],
            to: [{ email: 'alice@example.test' }],
            subject,
            messageId: [messageId],
            bodyStructure: { partId: 'p1', type: 'text/plain' },
            bodyValues: { p1: { value: 'Created over JMAP.' } },
          },
        },
      },
      's',
    ],
    ['Email/get', { accountId: jmap.accountId, ids: ['#k1'], properties: ['id', 'threadId'] }, 'g'],
  ]);
  const [email] = Jmap.result(responses, 'g').list as JmapEmail[];
  t.ok(email?.id && email.threadId, 'created over JMAP');

  const proxy = await cyrusProxy(t);
  const { client } = await rawClient(t, proxy.port);
  client.send(`a AUTHENTICATE PLAIN ${plainResponse(USER, PASS)}\r\n`);
  assertGranted(t, onlyList(t, await client.response('a'), 'AUTHENTICATE OK'), 'AUTHENTICATE OK');
  client.send('b SELECT INBOX\r\n');
  t.match(await client.response('b'), new RegExp(`^\\* OK \\[MAILBOXID \\(${inboxId}\\)\\]`, 'm'), 'SELECT: MAILBOXID is the JMAP inbox id');
  client.send(`c UID SEARCH HEADER Message-ID "<${messageId}>"\r\n`);
  const search = await client.response('c');
  const uids = /^\* SEARCH((?: \d+)*)\r\n/m.exec(search)?.[1]?.trim().split(' ').filter(Boolean) ?? [];
  t.equal(uids.length, 1, `one UID: ${JSON.stringify(search)}`);
  client.send(`d UID FETCH ${uids[0]} (EMAILID THREADID)\r\n`);
  const fetched = await client.response('d');
  t.equal(EMAILID.exec(fetched)?.[1], email?.id, 'EMAILID === JMAP id');
  t.equal(THREADID.exec(fetched)?.[1], email?.threadId, 'THREADID === JMAP threadId');
  await assertGetJmapAccess(t, client, 'e');
});

t.test('a mechanism not in --jmap-mechanisms: no JMAPACCESS, GETJMAPACCESS BAD (RFC 9698 cannot infer)', async (t) => {
  const proxy = await cyrusProxy(t, { jmapMechanisms: 'PLAIN' });

  // The LOGIN command: the credentials would work for JMAP, but the operator did not say so.
  const { client } = await rawClient(t, proxy.port);
  const loginText = await rawLogin(client, USER, PASS);
  const post = onlyList(t, loginText, 'LOGIN OK');
  t.equal(countAtom(post, 'JMAPACCESS'), 0, 'no JMAPACCESS after LOGIN');
  t.equal(countAtom(post, 'OBJECTID'), 1, 'even though Cyrus has OBJECTID');
  client.send('b GETJMAPACCESS\r\n');
  t.equal(await client.response('b'), 'b BAD JMAP access is not available for this authentication method\r\n', 'GETJMAPACCESS: BAD');
  client.send('c CAPABILITY\r\n');
  t.equal(countAtom(onlyList(t, await client.response('c'), 'post-login CAPABILITY'), 'JMAPACCESS'), 0, 'nor in a later CAPABILITY');
  client.send('d NOOP\r\n');
  t.match(await client.response('d'), /^d OK /m, 'the session goes on');

  // SASL LOGIN counts as LOGIN too.
  const sasl = (await rawClient(t, proxy.port)).client;
  sasl.send('a AUTHENTICATE LOGIN\r\n');
  t.match(await sasl.readUntil('\n'), /^\+ /, 'user name challenge');
  sasl.send(`${Buffer.from(USER).toString('base64')}\r\n`);
  t.match(await sasl.readUntil('\n'), /^\+ /, 'password challenge');
  sasl.send(`${Buffer.from(PASS).toString('base64')}\r\n`);
  const saslText = await sasl.response('a');
  t.match(saslText, /^a OK /m, 'AUTHENTICATE LOGIN succeeded');
  t.equal(countAtom(onlyList(t, saslText, 'AUTHENTICATE LOGIN OK'), 'JMAPACCESS'), 0, 'no JMAPACCESS after AUTHENTICATE LOGIN');
  sasl.send('b GETJMAPACCESS\r\n');
  t.equal(await sasl.response('b'), 'b BAD JMAP access is not available for this authentication method\r\n');

  // Control on the same proxy: PLAIN is listed, so it is granted.
  const plain = (await rawClient(t, proxy.port)).client;
  plain.send(`a AUTHENTICATE PLAIN ${plainResponse(USER, PASS)}\r\n`);
  assertGranted(t, onlyList(t, await plain.response('a'), 'AUTHENTICATE PLAIN OK'), 'AUTHENTICATE PLAIN OK');
  await assertGetJmapAccess(t, plain, 'b');

  t.match(
    proxy.logs().filter((l) => l.msg === 'login succeeded'),
    [
      { mechanism: 'LOGIN', jmapaccess: 'refused', reason: 'mechanism-not-eligible' },
      { mechanism: 'LOGIN', jmapaccess: 'refused', reason: 'mechanism-not-eligible' },
      { mechanism: 'PLAIN', jmapaccess: 'granted', reason: 'eligible' },
    ],
  );
  t.match(
    proxy.logs().filter((l) => l.msg === 'GETJMAPACCESS'),
    [
      { tag: 'b', answered: 'BAD', reason: 'mechanism-not-eligible' },
      { tag: 'b', answered: 'BAD', reason: 'mechanism-not-eligible' },
      { tag: 'b', answered: 'OK', reason: 'eligible' },
    ],
  );
});
