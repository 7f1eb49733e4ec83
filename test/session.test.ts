/**
 * Session behaviour at the byte level, against the SCRIPTED FAKE SERVER in
 * test/harness/scripted-upstream.ts: response shapes and timings a real
 * Dovecot cannot be made to produce on demand. The same behaviours are
 * exercised against a real Dovecot in test/integration/.
 */

import t, { type Test } from 'tap';
import { startProxy, type RunningProxy } from './harness/proxy.js';
import { RawClient } from './harness/raw-client.js';
import { startScriptedUpstream, type ScriptedConnection, type ScriptedUpstream } from './harness/scripted-upstream.js';
import type { RawConfig } from '../src/config.js';

const URL_QUOTED = '"https://jmap.example.test/.well-known/jmap"';
const PRE = 'IMAP4rev1 LITERAL+ SASL-IR STARTTLS AUTH=PLAIN';
const POST = 'IMAP4rev1 LITERAL+ IDLE OBJECTID COMPRESS=DEFLATE';

interface Rig {
  proxy: RunningProxy;
  upstream: ScriptedUpstream;
  client: RawClient;
  server: ScriptedConnection;
  greeting: string;
}

async function rig(t: Test, greeting = `* OK [CAPABILITY ${PRE}] fake ready\r\n`, config: Partial<RawConfig> = {}): Promise<Rig> {
  const upstream = await startScriptedUpstream();
  // Exact capability lists are asserted here: the proxy's own COMPRESS=DEFLATE
  // offer is off unless a test asks for it (test/compress.test.ts).
  const proxy = await startProxy({ upstreamPort: upstream.port, compress: false, ...config });
  const client = await RawClient.connect(proxy.port);
  const server = await upstream.accept();
  server.send(greeting);
  const seen = await client.readUntil('\n');
  t.teardown(async () => {
    client.close();
    await proxy.close();
    await upstream.close();
  });
  return { proxy, upstream, client, server, greeting: seen };
}

/** Logs in through the proxy; the fake server answers with the given lines. */
async function login(r: Rig, answer: string, tag = 'a'): Promise<string> {
  r.client.send(`${tag} LOGIN alice secret\r\n`);
  t.equal(await r.server.line(), `${tag} LOGIN alice secret`);
  r.server.send(answer);
  return r.client.response(tag);
}

t.test('greeting: STARTTLS, COMPRESS and an upstream JMAPACCESS are removed before login', async (t) => {
  const r = await rig(t, '* OK [CAPABILITY IMAP4rev1 STARTTLS JMAPACCESS COMPRESS=DEFLATE AUTH=PLAIN] hi\r\n');
  t.equal(r.greeting, '* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] hi\r\n');
});

t.test('RFC 9698 shape: untagged OK [CAPABILITY] before the tagged OK gains JMAPACCESS', async (t) => {
  const r = await rig(t);
  const reply = await login(r, `* OK [CAPABILITY ${POST}] Logged in\r\na OK Success\r\n`);
  t.equal(reply, '* OK [CAPABILITY IMAP4rev1 LITERAL+ IDLE OBJECTID JMAPACCESS] Logged in\r\na OK Success\r\n');
  r.client.send('b GETJMAPACCESS\r\n');
  t.equal(await r.client.response('b'), `* JMAPACCESS ${URL_QUOTED}\r\nb OK GETJMAPACCESS completed\r\n`);
  t.equal(r.server.pending(), '', 'GETJMAPACCESS never reaches the upstream');
});

t.test('capability list held during a login that fails gets no JMAPACCESS', async (t) => {
  const r = await rig(t);
  const reply = await login(r, `* CAPABILITY ${POST}\r\na NO [AUTHENTICATIONFAILED] nope\r\n`);
  t.equal(reply, '* CAPABILITY IMAP4rev1 LITERAL+ IDLE OBJECTID\r\na NO [AUTHENTICATIONFAILED] nope\r\n');
  r.client.send('b GETJMAPACCESS\r\n');
  t.match(await r.client.response('b'), /^b BAD .*after authentication/);
});

t.test('no capability list after login: the proxy asks the upstream itself, and hides the exchange', async (t) => {
  const r = await rig(t);
  t.equal(await login(r, 'a OK Logged in\r\n'), 'a OK Logged in\r\n');
  r.client.send('b GETJMAPACCESS\r\nc NOOP\r\n');
  const probe = await r.server.line();
  t.match(probe, /^(\S+) CAPABILITY$/);
  const probeTag = probe.split(' ')[0];
  t.equal(r.server.pending(), '', 'commands after GETJMAPACCESS wait for its answer');
  r.server.send(`* CAPABILITY ${POST}\r\n${probeTag} OK done\r\n`);
  t.equal(await r.server.line(), 'c NOOP');
  r.server.send('c OK noop\r\n');
  const reply = await r.client.response('c');
  t.equal(reply, `* JMAPACCESS ${URL_QUOTED}\r\nb OK GETJMAPACCESS completed\r\nc OK noop\r\n`);
});

t.test('the probe finding no OBJECTID gives BAD, and later lists agree', async (t) => {
  const r = await rig(t);
  await login(r, 'a OK Logged in\r\n');
  r.client.send('b GETJMAPACCESS\r\n');
  const probeTag = (await r.server.line()).split(' ')[0];
  r.server.send(`* CAPABILITY IMAP4rev1 IDLE\r\n${probeTag} OK done\r\n`);
  t.match(await r.client.response('b'), /^b BAD JMAP access is not available on this server/);
  r.client.send('c CAPABILITY\r\n');
  await r.server.line();
  r.server.send('* CAPABILITY IMAP4rev1 IDLE\r\nc OK done\r\n');
  t.equal(await r.client.response('c'), '* CAPABILITY IMAP4rev1 IDLE\r\nc OK done\r\n');
});

t.test('--objectid assume grants JMAPACCESS without OBJECTID', async (t) => {
  const r = await rig(t, undefined, { objectId: 'assume' });
  const reply = await login(r, 'a OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n');
  t.equal(reply, 'a OK [CAPABILITY IMAP4rev1 IDLE JMAPACCESS] Logged in\r\n');
  t.ok(r.proxy.logs().some((l) => l.level === 40 && String(l.msg).includes('without OBJECTID')), 'a warning is logged');
});

t.test('a mechanism outside --jmap-mechanisms gets no JMAPACCESS', async (t) => {
  const r = await rig(t, undefined, { jmapMechanisms: 'PLAIN' });
  const reply = await login(r, `a OK [CAPABILITY ${POST}] Logged in\r\n`);
  t.equal(reply, 'a OK [CAPABILITY IMAP4rev1 LITERAL+ IDLE OBJECTID] Logged in\r\n');
  r.client.send('b GETJMAPACCESS\r\n');
  t.match(await r.client.response('b'), /^b BAD .*authentication method/);
});

t.test('PREAUTH greeting: authenticated, but nothing says how: no JMAPACCESS', async (t) => {
  const r = await rig(t, `* PREAUTH [CAPABILITY ${POST}] welcome\r\n`);
  t.equal(r.greeting, '* PREAUTH [CAPABILITY IMAP4rev1 LITERAL+ IDLE OBJECTID] welcome\r\n');
  r.client.send('b GETJMAPACCESS\r\n');
  t.match(await r.client.response('b'), /^b BAD /);
});

t.test('a refused synchronizing literal is not waited for', async (t) => {
  const r = await rig(t);
  r.client.send('a APPEND nobox {10}\r\n');
  t.equal(await r.server.line(), 'a APPEND nobox {10}');
  r.server.send('a NO [TRYCREATE] no such mailbox\r\n');
  await r.client.response('a');
  r.client.send('b NOOP\r\n');
  t.equal(await r.server.line(), 'b NOOP', 'the next line is a command, not literal data');
});

t.test('literal contents that look like protocol pass through untouched, both ways', async (t) => {
  const r = await rig(t);
  const body = 'x GETJMAPACCESS\r\n* CAPABILITY IMAP4rev1 STARTTLS\r\na OK [CAPABILITY X JMAPACCESS]\r\n{5}\r\n';
  const n = Buffer.byteLength(body);
  r.client.send(`a APPEND INBOX {${n}+}\r\n${body}\r\n`);
  t.equal(await r.server.line(), `a APPEND INBOX {${n}+}`);
  t.equal((await r.server.bytes(n + 2)).toString('latin1'), `${body}\r\n`);
  r.server.send(`a OK appended\r\n* 1 FETCH (BODY[] {${n}}\r\n${body})\r\n`);
  r.client.send('b NOOP\r\n');
  t.equal(await r.server.line(), 'b NOOP');
  r.server.send('b OK done\r\n');
  const seen = await r.client.response('b');
  t.equal(seen, `a OK appended\r\n* 1 FETCH (BODY[] {${n}}\r\n${body})\r\nb OK done\r\n`);
});

t.test('GETJMAPACCESS waits for a response in progress to end', async (t) => {
  const r = await rig(t, undefined, { objectId: 'assume' });
  await login(r, 'a OK [CAPABILITY IMAP4rev1] in\r\n');
  // An unsolicited FETCH with a literal starts, and GETJMAPACCESS arrives in the middle of it.
  r.server.send('* 1 FETCH (BODY[] {10}\r\n01234');
  await r.client.readUntil('{10}');
  r.client.send('b GETJMAPACCESS\r\n');
  await new Promise((resolve) => setTimeout(resolve, 100));
  t.equal(r.client.unread(), '01234', 'nothing is inserted inside the literal');
  r.server.send('56789)\r\n');
  t.equal(await r.client.response('b'), `0123456789)\r\n* JMAPACCESS ${URL_QUOTED}\r\nb OK GETJMAPACCESS completed\r\n`);
});

t.test('SASL responses are not commands, even when they look like one', async (t) => {
  const r = await rig(t);
  r.client.send('a AUTHENTICATE X-TEST\r\n');
  t.equal(await r.server.line(), 'a AUTHENTICATE X-TEST');
  r.server.send('+ \r\n');
  await r.client.readUntil('+');
  r.client.send('c GETJMAPACCESS\r\n');
  t.equal(await r.server.line(), 'c GETJMAPACCESS', 'forwarded as the SASL response');
  r.server.send('a NO failed\r\n');
  t.match(await r.client.response('a'), /a NO failed/);
});

t.test('a command pipelined behind AUTHENTICATE with SASL-IR waits for its outcome', async (t) => {
  const r = await rig(t);
  const ir = Buffer.from('\0alice\0secret').toString('base64');
  r.client.send(`a AUTHENTICATE PLAIN ${ir}\r\nb GETJMAPACCESS\r\n`);
  t.equal(await r.server.line(), `a AUTHENTICATE PLAIN ${ir}`);
  r.server.send(`a OK [CAPABILITY ${POST}] Logged in\r\n`);
  t.equal(
    await r.client.response('b'),
    `a OK [CAPABILITY IMAP4rev1 LITERAL+ IDLE OBJECTID JMAPACCESS] Logged in\r\n* JMAPACCESS ${URL_QUOTED}\r\nb OK GETJMAPACCESS completed\r\n`,
  );
  const login = r.proxy.logs().find((l) => l.msg === 'login succeeded');
  t.match(login, { user: 'alice', mechanism: 'PLAIN', jmapaccess: 'granted' });
});

t.test('IDLE: DONE and a command in the same write', async (t) => {
  const r = await rig(t, undefined, { objectId: 'assume' });
  await login(r, 'a OK [CAPABILITY IMAP4rev1 IDLE] in\r\n');
  r.client.send('b IDLE\r\n');
  t.equal(await r.server.line(), 'b IDLE');
  r.server.send('+ idling\r\n* 3 EXISTS\r\n');
  await r.client.readUntil('* 3 EXISTS');
  r.client.send('DONE\r\nc GETJMAPACCESS\r\nd NOOP\r\n');
  t.equal(await r.server.line(), 'DONE');
  r.server.send('b OK idle done\r\n');
  t.equal(await r.server.line(), 'd NOOP');
  r.server.send('d OK noop\r\n');
  t.equal(await r.client.response('d'), `b OK idle done\r\n* JMAPACCESS ${URL_QUOTED}\r\nc OK GETJMAPACCESS completed\r\nd OK noop\r\n`);
});

t.test('STARTTLS without a certificate, and COMPRESS when turned off, are refused locally and never reach the upstream', async (t) => {
  const r = await rig(t);
  r.client.send('a STARTTLS\r\nb COMPRESS DEFLATE\r\nc NOOP\r\n');
  t.equal(await r.server.line(), 'c NOOP');
  r.server.send('c OK\r\n');
  const seen = await r.client.response('c');
  t.match(seen, /^a NO STARTTLS is not available[^\n]*\nb NO COMPRESS is not available[^\n]*\nc OK/);
});

t.test('GETJMAPACCESS with arguments is BAD, including a literal argument', async (t) => {
  const r = await rig(t, undefined, { objectId: 'assume' });
  await login(r, 'a OK [CAPABILITY IMAP4rev1] in\r\n');
  r.client.send('b getjmapaccess foo\r\n');
  t.match(await r.client.response('b'), /^b BAD GETJMAPACCESS takes no arguments/);
  r.client.send('c GETJMAPACCESS {3+}\r\nabc\r\nd NOOP\r\n');
  t.match(await r.client.response('c'), /^c BAD/);
  t.equal(await r.server.line(), 'd NOOP', 'the discarded literal never reaches the upstream');
  r.server.send('d OK\r\n');
  await r.client.response('d');
  r.client.send('e GETJMAPACCESS {3}\r\n');
  t.match(await r.client.response('e'), /^e BAD/);
  r.client.send('f getjmapaccess\r\n');
  t.match(await r.client.response('f'), /^\* JMAPACCESS/, 'the command name is case-insensitive');
});

t.test('invalid command lines get BAD; ten in a row end the session', async (t) => {
  const r = await rig(t);
  r.client.send('(bad\r\n');
  t.match(await r.client.readUntil('\n'), /^\* BAD \[CLIENTBUG\]/);
  r.client.send('x\r\n'.repeat(10));
  await r.client.readUntil('* BYE [CLIENTBUG] Too many invalid commands');
  await r.client.waitClosed();
  t.equal(r.server.pending(), '', 'nothing invalid was forwarded');
});

t.test('an over-long client line: BYE, and no part of it reaches the upstream', async (t) => {
  const r = await rig(t, undefined, { maxLineLength: 2048 });
  r.client.send(`a NOOP ${'x'.repeat(5000)}`);
  await r.client.readUntil('* BYE [LIMIT]');
  await r.client.waitClosed();
  t.equal(r.server.pending(), '');
});

t.test('an over-long upstream line: BYE to the client', async (t) => {
  const r = await rig(t, undefined, { maxLineLength: 2048 });
  r.server.send(`* OK ${'y'.repeat(5000)}`);
  await r.client.readUntil('* BYE [UNAVAILABLE]');
  await r.client.waitClosed();
});

t.test('upstream closing mid-session: BYE and close', async (t) => {
  const r = await rig(t);
  r.server.socket.destroy();
  await r.client.readUntil('* BYE [UNAVAILABLE]');
  await r.client.waitClosed();
});

t.test('LOGIN with non-synchronizing literals: user name captured, password never logged', async (t) => {
  const r = await rig(t);
  r.client.send('a LOGIN {5+}\r\nalice {14+}\r\nPa55word-Lit3r\r\n');
  t.equal(await r.server.line(), 'a LOGIN {5+}');
  t.equal((await r.server.bytes(5)).toString(), 'alice');
  t.equal(await r.server.line(), ' {14+}');
  t.equal((await r.server.bytes(14)).toString(), 'Pa55word-Lit3r');
  r.server.send(`* CAPABILITY ${POST}\r\na OK in\r\n`);
  t.match(await r.client.response('a'), /JMAPACCESS\r\na OK in/);
  t.match(r.proxy.logs().find((l) => l.msg === 'login succeeded'), { user: 'alice', mechanism: 'LOGIN' });
  t.notOk(r.proxy.rawLog().includes('Pa55word'), 'password not in the log');
});

t.test('CAPABILITY pipelined before LOGIN: its (pre-login) answer never gains JMAPACCESS', async (t) => {
  const r = await rig(t);
  r.client.send('a CAPABILITY\r\nb LOGIN alice secret\r\n');
  t.equal(await r.server.line(), 'a CAPABILITY');
  t.equal(await r.server.line(), 'b LOGIN alice secret');
  // Cyrus answers a pre-login CAPABILITY with its full list, OBJECTID included.
  r.server.send(`* CAPABILITY ${POST} AUTH=PLAIN\r\na OK done\r\n* CAPABILITY ${POST}\r\nb OK Logged in\r\n`);
  t.equal(
    await r.client.response('b'),
    '* CAPABILITY IMAP4rev1 LITERAL+ IDLE OBJECTID AUTH=PLAIN\r\na OK done\r\n' +
      '* CAPABILITY IMAP4rev1 LITERAL+ IDLE OBJECTID JMAPACCESS\r\nb OK Logged in\r\n',
  );
});

t.test('Cyrus shape: OBJECTID in a pre-login CAPABILITY does not count for the post-login decision', async (t) => {
  const r = await rig(t);
  r.client.send('a CAPABILITY\r\n');
  await r.server.line();
  r.server.send(`* CAPABILITY ${POST}\r\na OK done\r\n`);
  t.notMatch(await r.client.response('a'), /JMAPACCESS/);
  t.equal(await login(r, 'b OK Logged in\r\n', 'b'), 'b OK Logged in\r\n');
  r.client.send('c GETJMAPACCESS\r\n');
  const probe = await r.server.line();
  t.match(probe, /CAPABILITY$/, 'the proxy asks again after login instead of trusting the pre-login list');
  r.server.send(`* CAPABILITY IMAP4rev1\r\n${probe.split(' ')[0]} OK done\r\n`);
  t.match(await r.client.response('c'), /^c BAD/);
});

t.test('a line before the greeting, and LOGIN pipelined before both: the greeting is not held or granted', async (t) => {
  const upstream = await startScriptedUpstream();
  const proxy = await startProxy({ upstreamPort: upstream.port, objectId: 'assume', compress: false });
  const client = await RawClient.connect(proxy.port);
  t.teardown(async () => {
    client.close();
    await proxy.close();
    await upstream.close();
  });
  const server = await upstream.accept();
  client.send('a LOGIN alice secret\r\n');
  t.equal(await server.line(), 'a LOGIN alice secret');
  server.send(`* OK Waiting for authentication process to respond..\r\n* OK [CAPABILITY ${PRE}] ready\r\n`);
  server.send(`* CAPABILITY ${POST}\r\na OK Logged in\r\n`);
  t.equal(
    await client.response('a'),
    '* OK Waiting for authentication process to respond..\r\n' +
      '* OK [CAPABILITY IMAP4rev1 LITERAL+ SASL-IR AUTH=PLAIN] ready\r\n' +
      '* CAPABILITY IMAP4rev1 LITERAL+ IDLE OBJECTID JMAPACCESS\r\na OK Logged in\r\n',
  );
});
