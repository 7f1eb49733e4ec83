/**
 * Capability lists and the JMAPACCESS decision against a real Dovecot 2.3
 * (which has no OBJECTID): before and after login, in both shapes Dovecot
 * answers a LOGIN with, under --objectid assume and the default require,
 * after a failed login, and per authentication mechanism.
 */

import t, { type Test } from 'tap';
import {
  JMAPACCESS_LINE,
  RawClient,
  capabilityLists,
  capabilityStrippingRelay,
  countAtom,
  dovecotFor,
  lines,
  proxyFor,
  rawClient,
  rawLogin,
  type ProxyOptions,
  type RunningProxy,
} from './helpers.js';

const dovecot = await dovecotFor(t);

/** The capability atoms the proxy must never let through before or after login. */
function assertNoProxyOwned(t: Test, list: readonly string[], what: string): void {
  t.equal(countAtom(list, 'STARTTLS'), 0, `${what}: no STARTTLS`);
  t.notOk(
    list.some((a) => a.startsWith('COMPRESS=')),
    `${what}: no COMPRESS=*`,
  );
}

async function proxyAndClient(t: Test, options: ProxyOptions): Promise<{ proxy: RunningProxy; client: RawClient; greeting: string }> {
  const proxy = await proxyFor(t, dovecot.port, options);
  const { client, greeting } = await rawClient(t, proxy.port);
  return { proxy, client, greeting };
}

t.test('control: Dovecot itself offers COMPRESS=DEFLATE after login and has no OBJECTID', async (t) => {
  const { client } = await rawClient(t, dovecot.port);
  const reply = await rawLogin(client, 'alice', 'alicepw');
  const [list] = capabilityLists(reply);
  t.ok(list, 'Dovecot sends a capability list with the login OK');
  t.equal(countAtom(list ?? [], 'COMPRESS=DEFLATE'), 1, 'COMPRESS=DEFLATE offered directly');
  t.equal(countAtom(list ?? [], 'OBJECTID'), 0, 'no OBJECTID');
  t.equal(countAtom(list ?? [], 'JMAPACCESS'), 0, 'no JMAPACCESS of its own');
});

t.test('objectid assume, login without a CAPABILITY command first: [CAPABILITY] code on the tagged OK', async (t) => {
  const { client, greeting } = await proxyAndClient(t, { objectId: 'assume' });
  const greetingLists = capabilityLists(greeting);
  t.equal(greetingLists.length, 1, 'the greeting carries a capability list');
  const pre = greetingLists[0] ?? [];
  t.ok(pre.includes('IMAP4REV1'), 'greeting list is the upstream list');
  t.equal(countAtom(pre, 'JMAPACCESS'), 0, 'no JMAPACCESS before login');
  assertNoProxyOwned(t, pre, 'greeting');

  const reply = await rawLogin(client, 'alice', 'alicepw');
  t.match(reply, /^a OK \[CAPABILITY [^\]]+\] Logged in\r\n$/, 'Dovecot shape: one tagged OK with the list');
  const [after] = capabilityLists(reply);
  t.ok(after?.includes('IMAP4REV1'), 'post-login list is the upstream list');
  t.equal(countAtom(after ?? [], 'JMAPACCESS'), 1, 'JMAPACCESS exactly once after login');
  assertNoProxyOwned(t, after ?? [], 'login OK');

  client.send('b CAPABILITY\r\n');
  const caps = await client.response('b');
  const capsLists = capabilityLists(caps);
  t.equal(capsLists.length, 1, 'one list for CAPABILITY');
  t.equal(countAtom(capsLists[0] ?? [], 'JMAPACCESS'), 1, 'CAPABILITY after login: JMAPACCESS exactly once');
  t.ok(capsLists[0]?.includes('IDLE'), 'CAPABILITY after login: the post-login list');
  assertNoProxyOwned(t, capsLists[0] ?? [], 'CAPABILITY after login');

  client.send('c COMPRESS DEFLATE\r\nd NOOP\r\n');
  const compress = await client.response('d');
  t.match(compress, /^c NO /, 'COMPRESS is refused by the proxy');
  t.match(compress, /\r\nd OK /, 'and the link stays uncompressed: NOOP is answered in clear');
});

t.test('objectid assume, CAPABILITY before login: untagged * CAPABILITY then a bare tagged OK', async (t) => {
  const { client, greeting } = await proxyAndClient(t, { objectId: 'assume' });
  t.equal(countAtom(capabilityLists(greeting)[0] ?? [], 'JMAPACCESS'), 0, 'greeting: no JMAPACCESS');

  client.send('c CAPABILITY\r\n');
  const preReply = await client.response('c');
  const preLists = capabilityLists(preReply);
  t.equal(preLists.length, 1, 'one pre-login list');
  t.equal(countAtom(preLists[0] ?? [], 'JMAPACCESS'), 0, 'pre-login CAPABILITY: no JMAPACCESS');
  t.ok(preLists[0]?.includes('AUTH=PLAIN'), 'pre-login CAPABILITY: the pre-login list');
  assertNoProxyOwned(t, preLists[0] ?? [], 'pre-login CAPABILITY');

  const reply = await rawLogin(client, 'alice', 'alicepw');
  const replyLines = lines(reply);
  t.equal(replyLines.length, 2, 'Dovecot shape: untagged list plus tagged OK');
  t.match(replyLines[0], /^\* CAPABILITY /, 'untagged CAPABILITY first');
  t.equal(replyLines[1], 'a OK Logged in', 'bare tagged OK');
  const lists = capabilityLists(reply);
  t.equal(lists.length, 1, 'one list in the login reply');
  t.equal(countAtom(lists[0] ?? [], 'JMAPACCESS'), 1, 'held list gains JMAPACCESS exactly once');
  t.ok(lists[0]?.includes('IDLE'), 'it is the post-login list');
  assertNoProxyOwned(t, lists[0] ?? [], 'login reply');

  client.send('b CAPABILITY\r\n');
  const caps = capabilityLists(await client.response('b'));
  t.equal(caps.length, 1);
  t.equal(countAtom(caps[0] ?? [], 'JMAPACCESS'), 1, 'CAPABILITY after login: JMAPACCESS exactly once');
  assertNoProxyOwned(t, caps[0] ?? [], 'CAPABILITY after login');
});

t.test('objectid require (default), login without a CAPABILITY command first: no JMAPACCESS, GETJMAPACCESS BAD', async (t) => {
  const { client } = await proxyAndClient(t, {});
  const reply = await rawLogin(client, 'alice', 'alicepw');
  t.match(reply, /^a OK \[CAPABILITY [^\]]+\] Logged in\r\n$/);
  const [after] = capabilityLists(reply);
  t.ok(after?.includes('IMAP4REV1'));
  t.equal(countAtom(after ?? [], 'JMAPACCESS'), 0, 'no JMAPACCESS without OBJECTID');
  assertNoProxyOwned(t, after ?? [], 'login OK');

  client.send('b GETJMAPACCESS\r\n');
  t.equal(await client.response('b'), 'b BAD JMAP access is not available on this server\r\n', 'GETJMAPACCESS: BAD');

  client.send('c CAPABILITY\r\n');
  const caps = capabilityLists(await client.response('c'));
  t.equal(caps.length, 1);
  t.equal(countAtom(caps[0] ?? [], 'JMAPACCESS'), 0, 'later CAPABILITY agrees: no JMAPACCESS');
});

t.test('objectid require (default), CAPABILITY before login: no JMAPACCESS, GETJMAPACCESS BAD', async (t) => {
  const { client } = await proxyAndClient(t, {});
  client.send('c CAPABILITY\r\n');
  await client.response('c');
  const reply = await rawLogin(client, 'alice', 'alicepw');
  const replyLines = lines(reply);
  t.match(replyLines[0], /^\* CAPABILITY /);
  t.equal(replyLines[1], 'a OK Logged in');
  t.equal(countAtom(capabilityLists(reply)[0] ?? [], 'JMAPACCESS'), 0, 'no JMAPACCESS without OBJECTID');

  client.send('b GETJMAPACCESS\r\nd NOOP\r\n');
  const answer = await client.response('d');
  t.match(answer, /^b BAD JMAP access is not available on this server\r\nd OK /, 'GETJMAPACCESS: BAD, then NOOP');
  t.equal(capabilityLists(answer).length, 0, 'no capability list in the answer');
});

t.test('objectid require, login completed by a bare OK with no list anywhere: the proxy asks upstream, the client never sees it', async (t) => {
  // Dovecot always sends its post-login list with the login reply; the relay
  // removes it so the proxy must ask the real Dovecot itself.
  const relay = await capabilityStrippingRelay(t, dovecot.port);
  const proxy = await proxyFor(t, relay.port);
  const { client } = await rawClient(t, proxy.port);

  const reply = await rawLogin(client, 'alice', 'alicepw');
  t.equal(reply, 'a OK Logged in\r\n', 'the login OK carries no list');
  t.equal(relay.stripped.length, 1, 'the relay removed the list from the login OK');
  t.equal(
    proxy.logs().filter((l) => l.msg === 'asking the upstream for its post-login capabilities').length,
    0,
    'nothing asked yet: the question waits for GETJMAPACCESS',
  );

  client.send('b GETJMAPACCESS\r\nc NOOP\r\n');
  const answer = await client.response('c');
  t.match(answer, /^b BAD JMAP access is not available on this server\r\nc OK [^\r\n]*\r\n$/, 'BAD, then the NOOP answer, nothing else');
  t.notMatch(answer, /CAPABILITY/i, 'the proxy\'s own CAPABILITY exchange is hidden');
  t.equal(
    proxy.logs().filter((l) => l.msg === 'asking the upstream for its post-login capabilities').length,
    1,
    'the proxy asked the upstream once',
  );
  t.match(
    proxy.logs().find((l) => l.msg === 'GETJMAPACCESS'),
    { answered: 'BAD', reason: 'no-objectid' },
    'decided from the upstream\'s answer',
  );

  client.send('d GETJMAPACCESS\r\n');
  t.equal(await client.response('d'), 'd BAD JMAP access is not available on this server\r\n', 'second GETJMAPACCESS: same answer');
  t.equal(
    proxy.logs().filter((l) => l.msg === 'asking the upstream for its post-login capabilities').length,
    1,
    'the answer is remembered: no second question',
  );

  client.send('e CAPABILITY\r\n');
  const caps = await client.response('e');
  t.equal(capabilityLists(caps).length, 1, 'the client\'s own CAPABILITY gets exactly one list');
  t.equal(countAtom(capabilityLists(caps)[0] ?? [], 'JMAPACCESS'), 0, 'without JMAPACCESS');
  t.notMatch(client.all.toString('latin1'), /jmapaccess-proxy\./i, 'no response to the proxy\'s tag ever reached the client');
});

t.test('wrong password: NO, and no JMAPACCESS anywhere afterwards (objectid assume)', async (t) => {
  const { proxy, client } = await proxyAndClient(t, { objectId: 'assume' });

  // Without a CAPABILITY command first.
  const no = await rawLogin(client, 'alice', 'wrong-password');
  t.match(no, /^a NO \[AUTHENTICATIONFAILED\] /, 'LOGIN: NO');
  t.equal(capabilityLists(no).filter((l) => l.includes('JMAPACCESS')).length, 0, 'no JMAPACCESS in the NO');
  client.send('b CAPABILITY\r\n');
  const caps = await client.response('b');
  t.equal(capabilityLists(caps).length, 1);
  t.equal(countAtom(capabilityLists(caps)[0] ?? [], 'JMAPACCESS'), 0, 'CAPABILITY after the failure: no JMAPACCESS');
  client.send('c GETJMAPACCESS\r\n');
  t.equal(await client.response('c'), 'c BAD GETJMAPACCESS is valid only after authentication\r\n', 'GETJMAPACCESS: BAD');

  // Now the client has sent CAPABILITY: Dovecot's other shape. Still no list gains JMAPACCESS.
  const no2 = await rawLogin(client, 'alice', 'still-wrong', 'd');
  t.match(no2, /^d NO \[AUTHENTICATIONFAILED\] /, 'second LOGIN: NO');
  t.equal(capabilityLists(no2).filter((l) => l.includes('JMAPACCESS')).length, 0);
  client.send('e GETJMAPACCESS\r\nf CAPABILITY\r\n');
  const after = await client.response('f');
  t.match(after, /^e BAD GETJMAPACCESS is valid only after authentication\r\n/);
  t.equal(capabilityLists(after).length, 1);
  t.equal(countAtom(capabilityLists(after)[0] ?? [], 'JMAPACCESS'), 0, 'still no JMAPACCESS');
  const everything = capabilityLists(client.all.toString('latin1'));
  t.ok(everything.length >= 3, 'greeting and CAPABILITY lists seen');
  t.notOk(
    everything.some((list) => list.includes('JMAPACCESS')),
    'no list on the connection ever held JMAPACCESS',
  );

  // The same connection then logs in properly and is granted.
  const ok = await rawLogin(client, 'alice', 'alicepw', 'g');
  t.equal(countAtom(capabilityLists(ok)[0] ?? [], 'JMAPACCESS'), 1, 'a later good login is granted');
  t.match(
    proxy.logs().filter((l) => l.msg === 'login failed' || l.msg === 'login succeeded'),
    [
      { msg: 'login failed', user: 'alice', result: 'NO' },
      { msg: 'login failed', user: 'alice', result: 'NO' },
      { msg: 'login succeeded', user: 'alice', jmapaccess: 'granted' },
    ],
    'both failures and the success are logged as such',
  );
});

t.test('AUTHENTICATE cancelled by the client, with GETJMAPACCESS pipelined behind the cancel: BAD; a later LOGIN is granted', async (t) => {
  const { proxy, client } = await proxyAndClient(t, { objectId: 'assume' });
  client.send('a AUTHENTICATE PLAIN\r\n');
  t.match(await client.readUntil('\n'), /^\+ ?\r\n$/);
  client.send('*\r\nb GETJMAPACCESS\r\n');
  const answer = await client.response('b');
  t.match(answer, /^a BAD [^\r\n]*\r\nb BAD GETJMAPACCESS is valid only after authentication\r\n$/, 'cancelled, then BAD');
  const ok = await rawLogin(client, 'alice', 'alicepw', 'c');
  t.equal(countAtom(capabilityLists(ok)[0] ?? [], 'JMAPACCESS'), 1, 'the LOGIN afterwards is granted');
  client.send('d GETJMAPACCESS\r\n');
  t.equal(await client.response('d'), `${JMAPACCESS_LINE}d OK GETJMAPACCESS completed\r\n`);
  t.match(proxy.logs().find((l) => l.msg === 'login succeeded'), { tag: 'c', user: 'alice', mechanism: 'LOGIN' });
});

t.test('ineligible mechanism: LOGIN with --jmap-mechanisms PLAIN gets no JMAPACCESS; AUTHENTICATE PLAIN does', async (t) => {
  const options: ProxyOptions = { objectId: 'assume', jmapMechanisms: 'PLAIN' };
  const p = await proxyFor(t, dovecot.port, options);
  const plain = Buffer.from('\0alice\0alicepw').toString('base64');

  t.test('LOGIN command', async (t) => {
    const { client } = await rawClient(t, p.port);
    const reply = await rawLogin(client, 'alice', 'alicepw');
    t.match(reply, /^a OK \[CAPABILITY /);
    t.equal(countAtom(capabilityLists(reply)[0] ?? [], 'JMAPACCESS'), 0, 'login OK: no JMAPACCESS');
    client.send('b GETJMAPACCESS\r\nc CAPABILITY\r\n');
    const answer = await client.response('c');
    t.match(answer, /^b BAD JMAP access is not available for this authentication method\r\n/, 'GETJMAPACCESS: BAD');
    t.equal(countAtom(capabilityLists(answer)[0] ?? [], 'JMAPACCESS'), 0, 'CAPABILITY: no JMAPACCESS');
  });

  t.test('AUTHENTICATE PLAIN with an initial response (SASL-IR)', async (t) => {
    const { client } = await rawClient(t, p.port);
    client.send(`a AUTHENTICATE PLAIN ${plain}\r\n`);
    const reply = await client.response('a');
    t.match(reply, /^a OK \[CAPABILITY /);
    t.equal(countAtom(capabilityLists(reply)[0] ?? [], 'JMAPACCESS'), 1, 'JMAPACCESS granted');
    client.send('b GETJMAPACCESS\r\n');
    t.equal(await client.response('b'), `${JMAPACCESS_LINE}b OK GETJMAPACCESS completed\r\n`);
  });

  t.test('AUTHENTICATE PLAIN without an initial response', async (t) => {
    const { client } = await rawClient(t, p.port);
    client.send('a AUTHENTICATE PLAIN\r\n');
    t.match(await client.readUntil('\n'), /^\+ ?\r\n$/, 'empty challenge');
    client.send(`${plain}\r\n`);
    const reply = await client.response('a');
    t.match(reply, /^a OK \[CAPABILITY /);
    t.equal(countAtom(capabilityLists(reply)[0] ?? [], 'JMAPACCESS'), 1, 'JMAPACCESS granted');
    client.send('b GETJMAPACCESS\r\n');
    t.equal(await client.response('b'), `${JMAPACCESS_LINE}b OK GETJMAPACCESS completed\r\n`);
  });

  t.test('AUTHENTICATE LOGIN (the SASL mechanism) is not PLAIN either', async (t) => {
    const { client } = await rawClient(t, p.port);
    client.send('a AUTHENTICATE LOGIN\r\n');
    await client.readUntil(/^\+ /m);
    client.send(`${Buffer.from('alice').toString('base64')}\r\n`);
    await client.readUntil(/^\+ /m);
    client.send(`${Buffer.from('alicepw').toString('base64')}\r\n`);
    const reply = await client.response('a');
    t.match(reply, /^a OK \[CAPABILITY /);
    t.equal(countAtom(capabilityLists(reply)[0] ?? [], 'JMAPACCESS'), 0, 'no JMAPACCESS');
    client.send('b GETJMAPACCESS\r\n');
    t.match(await client.response('b'), /^b BAD /);
  });

  t.test('the log tells which mechanism was used and what was decided', async (t) => {
    const logins = p.logs().filter((l) => l.msg === 'login succeeded');
    t.match(logins, [
      { user: 'alice', mechanism: 'LOGIN', jmapaccess: 'refused', reason: 'mechanism-not-eligible' },
      { user: 'alice', mechanism: 'PLAIN', jmapaccess: 'granted' },
      { user: 'alice', mechanism: 'PLAIN', jmapaccess: 'granted' },
      { user: 'alice', mechanism: 'LOGIN', jmapaccess: 'refused', reason: 'mechanism-not-eligible' },
    ]);
  });
});
