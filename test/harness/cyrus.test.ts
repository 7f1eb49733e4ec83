// Self-test of the Cyrus harness, against a real Cyrus 3.6 (IMAP and JMAP)
// directly (no proxy involved).
import t from 'tap';
import { access } from 'node:fs/promises';
import { ensureCyrusInstalled, startCyrus, type Cyrus } from './cyrus.js';
import { LineClient } from './line-client.js';


function capsOf(line: string): string[] {
  const m = /\[CAPABILITY ([^\]]*)\]/i.exec(line) ?? /^\* CAPABILITY (.*)$/i.exec(line);
  return m?.[1] ? m[1].toUpperCase().split(/\s+/) : [];
}

const basic = (user: string, pw: string) => `Basic ${Buffer.from(`${user}:${pw}`).toString('base64')}`;

interface JmapSession {
  accounts: Record<string, { name: string; accountCapabilities: Record<string, unknown> }>;
  primaryAccounts: Record<string, string>;
  capabilities: Record<string, unknown>;
  apiUrl: string;
}

async function login(cyrus: Cyrus, user: string, pw: string): Promise<{ c: LineClient; greeting: string; done: string }> {
  const c = await LineClient.connect(cyrus.host, cyrus.port);
  const greeting = await c.line();
  const r = await c.command('a', `LOGIN ${user} "${pw}"`);
  return { c, greeting, done: r.done };
}

const tInstall = Date.now();
await ensureCyrusInstalled();
t.comment(`ensureCyrusInstalled took ${Date.now() - tInstall} ms`);

t.test('IMAP: greeting, LOGIN with OBJECTID, APPEND + FETCH EMAILID; JMAP session; stop', async (t) => {
  const t0 = Date.now();
  const cyrus = await startCyrus();
  t.comment(`startCyrus took ${Date.now() - t0} ms (${cyrus.dir}, imap ${cyrus.port}, http ${cyrus.httpPort})`);
  t.teardown(() => cyrus.stop());
  t.same(cyrus.users, { alice: 'alicepw', bob: 'bobpw' }, 'default users');
  t.equal(cyrus.jmapSessionUrl, `http://127.0.0.1:${cyrus.httpPort}/.well-known/jmap`);

  const { c, greeting, done } = await login(cyrus, 'alice', 'alicepw');
  t.teardown(() => c.close());
  t.match(greeting, /^\* OK \[CAPABILITY .*\] .*Cyrus IMAP/, 'Cyrus greeting');
  t.notOk(capsOf(greeting).includes('OBJECTID'), 'greeting: pre-auth items only');
  t.match(done, /^a OK \[CAPABILITY /, 'tagged LOGIN OK carries [CAPABILITY ...]');
  t.ok(capsOf(done).includes('OBJECTID'), 'post-login capabilities include OBJECTID');

  // Mailboxes were created by the provisioning login.
  const list = await c.command('b', 'LIST "" "*"');
  const names = list.untagged.map((l) => /"([^"]*)"$|(\S+)$/.exec(l)?.slice(1).find(Boolean));
  for (const mb of ['INBOX', 'Drafts', 'Sent', 'Trash']) t.ok(names.includes(mb), `mailbox ${mb} exists`);

  const msg =
    'From: a@example.org\r\nTo: alice@example.org\r\nSubject: harness self-test\r\n' +
    `Message-ID: <${Date.now()}.${process.pid}@example.org>\r\n\r\nbody\r\n`;
  const app = await c.command('c', `APPEND INBOX {${Buffer.byteLength(msg)}+}\r\n${msg}`);
  t.match(app.done, /^c OK \[APPENDUID \d+ \d+\]/, 'APPEND OK with APPENDUID');
  const uid = /APPENDUID \d+ (\d+)/.exec(app.done)?.[1];
  t.match((await c.command('d', 'SELECT INBOX')).done, /^d OK /);
  const fetch1 = await c.command('e', `UID FETCH ${uid} (EMAILID THREADID)`);
  t.match(fetch1.done, /^e OK /, 'FETCH EMAILID OK');
  const emailId = /EMAILID \(([^()\s]+)\)/.exec(fetch1.untagged.join('\n'))?.[1];
  t.match(emailId, /^M[0-9a-f]{24}$/, `EMAILID ${emailId}`);
  await c.command('z', 'LOGOUT');
  c.close();

  // JMAP: fetch follows the 301 /.well-known/jmap -> /jmap keeping Basic auth (same origin).
  const res = await fetch(cyrus.jmapSessionUrl, { headers: { Authorization: basic('alice', 'alicepw') } });
  t.equal(res.status, 200, 'session resource: 200');
  t.match(res.url, /\/jmap\/?$/, 'redirected to /jmap');
  const session = (await res.json()) as JmapSession;
  t.ok(session.capabilities['urn:ietf:params:jmap:mail'], 'capabilities has urn:ietf:params:jmap:mail');
  t.ok(session.accounts.alice, 'accounts has alice');
  t.ok(session.accounts.alice?.accountCapabilities['urn:ietf:params:jmap:mail'], 'alice has a mail account');
  t.equal(session.primaryAccounts['urn:ietf:params:jmap:mail'], 'alice', 'primary mail account');

  // The IMAP EMAILID is the JMAP Email id.
  const api = await fetch(new URL(session.apiUrl, res.url), {
    method: 'POST',
    headers: { Authorization: basic('alice', 'alicepw'), 'Content-Type': 'application/json' },
    body: JSON.stringify({
      using: ['urn:ietf:params:jmap:core', 'urn:ietf:params:jmap:mail'],
      methodCalls: [['Email/get', { accountId: 'alice', ids: [emailId], properties: ['id', 'subject'] }, 'g']],
    }),
  });
  t.equal(api.status, 200, 'JMAP API call: 200');
  const out = (await api.json()) as { methodResponses: [string, { list: { id: string; subject: string }[] }, string][] };
  t.same(out.methodResponses[0]?.[1].list, [{ id: emailId, subject: 'harness self-test' }], 'Email/get finds the IMAP EMAILID');

  const bad = await fetch(cyrus.jmapSessionUrl, { headers: { Authorization: basic('alice', 'wrong') } });
  await bad.arrayBuffer();
  t.equal(bad.status, 401, 'wrong password: 401');

  // A failed IMAP login is answered at once (failedloginpause: 0).
  const tf = Date.now();
  const no = await login(cyrus, 'bob', 'wrong');
  no.c.close();
  t.match(no.done, /^a NO /, 'wrong password: NO');
  t.ok(Date.now() - tf < 1500, `failed login answered without the 3 s pause (${Date.now() - tf} ms)`);

  const dir = cyrus.dir;
  const ts = Date.now();
  await cyrus.stop();
  t.comment(`stop took ${Date.now() - ts} ms`);
  await cyrus.stop(); // idempotent
  await t.rejects(access(dir), 'temp dir removed by stop()');
  await t.rejects(LineClient.connect(cyrus.host, cyrus.port), 'IMAP listener gone');
  const log = await cyrus.readLog();
  t.match(log, /login: localhost \[127\.0\.0\.1\] alice plaintext User logged in/, 'syslog lines readable after stop');
  t.match(log, /All children have exited/, 'clean shutdown logged');
});

t.test('two instances at once, custom users, extraConfig', async (t) => {
  const [a, b] = await Promise.all([
    startCyrus(),
    startCyrus({ users: { carol: 'c4rol pw' }, extraConfig: { sasl_mech_list: 'PLAIN' } }),
  ]);
  t.teardown(() => a.stop());
  t.teardown(() => b.stop());
  t.not(a.port, b.port, 'different IMAP ports');
  t.not(a.httpPort, b.httpPort, 'different HTTP ports');
  t.not(a.dir, b.dir);

  const la = await login(a, 'alice', 'alicepw');
  la.c.close();
  t.match(la.done, /^a OK /, 'alice on instance A');
  const lb = await login(b, 'carol', 'c4rol pw');
  lb.c.close();
  t.match(lb.done, /^a OK /, 'carol on instance B');
  t.ok(capsOf(la.greeting).includes('AUTH=LOGIN'), 'A offers AUTH=LOGIN');
  t.notOk(capsOf(lb.greeting).includes('AUTH=LOGIN'), 'B: extraConfig sasl_mech_list replaced the generated one');
  const nob = await login(b, 'alice', 'alicepw');
  nob.c.close();
  t.match(nob.done, /^a NO /, 'alice does not exist on B');

  const rb = await fetch(b.jmapSessionUrl, { headers: { Authorization: basic('carol', 'c4rol pw') } });
  const sb = (await rb.json()) as JmapSession;
  t.ok(sb.accounts.carol, 'JMAP on B: carol has an account');

  await a.stop();
  // Stopping A leaves B (and, where it is this process's, the syslog receiver) alone.
  const again = await login(b, 'carol', 'c4rol pw');
  again.c.close();
  t.match(again.done, /^a OK /, 'B still serves after A stopped');
  const logB = await b.readLog();
  t.match(logB, /carol plaintext User logged in/, "B's log has its own logins");
  t.notMatch(logB, /alice plaintext User logged in/, "B's log has none of A's lines");
  t.notMatch(await a.readLog(), /carol/, "A's log has none of B's lines");
});

t.test('killAll drops established sessions', async (t) => {
  const cyrus = await startCyrus({ users: { dave: 'davepw' } });
  t.teardown(() => cyrus.stop());
  const { c, done } = await login(cyrus, 'dave', 'davepw');
  t.teardown(() => c.close());
  t.match(done, /^a OK /);
  t.match((await c.command('b', 'SELECT INBOX')).done, /^b OK /);
  await cyrus.killAll();
  await c.waitClosed(2000);
  t.ok(c.closed, 'client connection dropped');
  await t.rejects(LineClient.connect(cyrus.host, cyrus.port), 'listener gone');
});

t.test('bad options are refused before anything starts', async (t) => {
  await t.rejects(startCyrus({ users: { 'x@y': 'pw' } }), /unsupported cyrus user name/);
  await t.rejects(startCyrus({ users: { admin: 'pw' } }), /Cyrus admin/);
  await t.rejects(startCyrus({ extraConfig: { 'a b': 'c' } }), /bad extraConfig/);
});
