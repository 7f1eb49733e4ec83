// Self-test of the Dovecot harness and the imaplib client, against Dovecot
// directly (no proxy involved).
import t from 'tap';
import { access } from 'node:fs/promises';
import { ensureDovecotInstalled, startDovecot } from './dovecot.js';
import { runImaplib } from './imaplib.js';
import { LineClient } from './line-client.js';



function capsOf(line: string): string[] {
  const m = /\[CAPABILITY ([^\]]*)\]/i.exec(line) ?? /^\* CAPABILITY (.*)$/i.exec(line);
  return m?.[1] ? m[1].toUpperCase().split(/\s+/) : [];
}

await ensureDovecotInstalled();

t.test('startDovecot: greeting, LOGIN, capabilities, stop', async (t) => {
  const t0 = Date.now();
  const dovecot = await startDovecot();
  t.comment(`startDovecot took ${Date.now() - t0} ms (${dovecot.dir}, port ${dovecot.port})`);
  t.teardown(() => dovecot.stop());

  const c = await LineClient.connect(dovecot.host, dovecot.port);
  t.teardown(() => c.close());
  const greeting = await c.line();
  t.match(greeting, /^\* OK /, 'greeting');
  t.ok(capsOf(greeting).includes('AUTH=PLAIN'), 'AUTH=PLAIN offered before login');

  const login = await c.command('a', 'LOGIN alice alicepw');
  t.match(login.done, /^a OK /, 'LOGIN OK');
  const caps = await c.command('b', 'CAPABILITY');
  t.match(caps.done, /^b OK /);
  const after = capsOf(caps.untagged.find((l) => l.startsWith('* CAPABILITY ')) ?? '');
  t.ok(after.includes('IMAP4REV1'), 'post-login capabilities parsed');
  t.notOk(after.includes('OBJECTID'), 'Dovecot 2.3 has no OBJECTID');
  t.ok(after.includes('COMPRESS=DEFLATE'), 'imap_zlib loaded by default');

  const bad = await c.command('c', 'LOGIN bob wrong');
  t.match(bad.done, /^c BAD /, 'LOGIN in authenticated state is rejected');
  await c.command('z', 'LOGOUT');
  c.close();

  // A wrong password is refused promptly: auth_failure_delay = 0 and no anvil
  // penalty leave only Dovecot's 500 ms failure-flush timer.
  const c2 = await LineClient.connect(dovecot.host, dovecot.port);
  t.teardown(() => c2.close());
  await c2.line();
  const tf = Date.now();
  const no = await c2.command('a', 'LOGIN alice wrong');
  t.match(no.done, /^a NO /, 'wrong password gets NO');
  t.ok(Date.now() - tf < 1500, `failed login answered without the 2 s delay (${Date.now() - tf} ms)`);
  c2.close();

  t.ok(dovecot.maildir('alice').startsWith(dovecot.dir), 'maildir inside dir');
  const dir = dovecot.dir;
  await dovecot.stop();
  await dovecot.stop(); // idempotent
  await t.rejects(access(dir), 'temp dir removed by stop()');
  t.match(await dovecot.readLog(), /Login: user=<alice>/, 'log readable after stop');
});

t.test('compress: false and custom users', async (t) => {
  const dovecot = await startDovecot({ compress: false, users: { carol: 'c4rol pw' } });
  t.teardown(() => dovecot.stop());
  const c = await LineClient.connect(dovecot.host, dovecot.port);
  t.teardown(() => c.close());
  await c.line();
  const login = await c.command('a', 'LOGIN carol "c4rol pw"');
  t.match(login.done, /^a OK /);
  t.notOk(capsOf(login.done).includes('COMPRESS=DEFLATE'), 'no COMPRESS=DEFLATE');
  const logout = await c.command('b', 'LOGOUT');
  t.match(logout.done, /^b OK /);
});

t.test('killAll drops established sessions', async (t) => {
  const dovecot = await startDovecot();
  t.teardown(() => dovecot.stop());
  const c = await LineClient.connect(dovecot.host, dovecot.port);
  t.teardown(() => c.close());
  await c.line();
  t.match((await c.command('a', 'LOGIN alice alicepw')).done, /^a OK /);
  t.match((await c.command('b', 'SELECT INBOX')).done, /^b OK /);
  await dovecot.killAll();
  await c.waitClosed(2000);
  t.ok(c.closed, 'client connection dropped');
  await t.rejects(LineClient.connect(dovecot.host, dovecot.port), 'listener gone');
});

t.test('python imaplib client directly against Dovecot', async (t) => {
  const dovecot = await startDovecot();
  t.teardown(() => dovecot.stop());

  for (const mode of ['login', 'plain']) {
    const r = await runImaplib([dovecot.host, String(dovecot.port), 'alice', 'alicepw', '--mode', mode, '--getjmapaccess']);
    t.equal(r.code, 0, `${mode}: exit 0 ${r.stderr}`);
    const out = JSON.parse(r.stdout) as {
      greeting_caps: string[];
      login: string;
      login_error: string | null;
      caps_after: string[];
      getjmapaccess: { typ: string; data: string[] } | null;
      append_uid_ok: boolean;
      fetched_equal: boolean;
    };
    t.ok(out.greeting_caps.includes('AUTH=PLAIN'), `${mode}: greeting caps`);
    t.equal(out.login, 'OK', `${mode}: login OK`);
    t.equal(out.login_error, null);
    t.ok(out.caps_after.includes('COMPRESS=DEFLATE'), `${mode}: caps after login`);
    t.equal(out.getjmapaccess?.typ, 'BAD', `${mode}: Dovecot does not know GETJMAPACCESS`);
    t.equal(out.append_uid_ok, true, `${mode}: APPENDUID`);
    t.equal(out.fetched_equal, true, `${mode}: 8-bit message round-trips byte for byte`);
  }

  const r = await runImaplib([dovecot.host, String(dovecot.port), 'bob', 'nope']);
  t.equal(r.code, 0, 'failed login still exits 0');
  const out = JSON.parse(r.stdout) as { login: string; login_error: string | null; getjmapaccess: unknown };
  t.equal(out.login, 'NO');
  t.match(out.login_error, /AUTHENTICATIONFAILED/);
  t.equal(out.getjmapaccess, null);
});
