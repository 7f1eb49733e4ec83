/**
 * Secrets never reach the proxy's log, even at trace level: passwords in
 * quoted strings and literals, SASL payloads in initial responses and in
 * continuation lines, for logins that succeed and logins that fail.
 */

import t, { type Test } from 'tap';
import { dovecotFor, imapflowFor, proxyFor, rawClient, runImaplib, type ImaplibResult, type RawClient } from './helpers.js';
import { fakeJmapFor, oauthBearerResponse, plainResponse, xoauth2Response } from './jmap-helpers.js';

// Every password contains "Secret", which nothing else the proxy could log does.
const USERS = {
  quinn: 'Quoted-Secret-4711',
  lena: 'Literal-Secret-0815',
  lara: 'LitPlus-Secret-2357',
  ira: 'SaslIR-Secret-2718',
  cole: 'SaslCont-Secret-3141',
  luis: 'SaslLogin-Secret-1618',
  ivy: 'Imapflow-Secret-1123',
  pia: 'Python-Secret-5813',
};
const WRONG_LOGIN = 'Wrong-Secret-9999';
const WRONG_SASL = 'WrongSasl-Secret-5555';

const b64 = (text: string): string => Buffer.from(text, 'utf8').toString('base64');

const dovecot = await dovecotFor(t, { users: USERS });

t.test('no password or SASL payload in the trace-level log; user names and outcomes are there', async (t) => {
  const proxy = await proxyFor(t, dovecot.port, { logLevel: 'trace' });
  const payloads: string[] = [];

  await t.test('LOGIN with a quoted password', async (t) => {
    const { client } = await rawClient(t, proxy.port);
    client.send(`a LOGIN quinn "${USERS.quinn}"\r\n`);
    t.match(await client.response('a'), /^a OK /m);
  });

  await t.test('LOGIN with a synchronizing literal password', async (t) => {
    const { client } = await rawClient(t, proxy.port);
    client.send(`a LOGIN lena {${USERS.lena.length}}\r\n`);
    t.match(await client.readUntil('\n'), /^\+ /);
    client.send(`${USERS.lena}\r\n`);
    t.match(await client.response('a'), /^a OK /m);
  });

  await t.test('LOGIN with non-synchronizing literals', async (t) => {
    const { client } = await rawClient(t, proxy.port);
    client.send(`a LOGIN {4+}\r\nlara {${USERS.lara.length}+}\r\n${USERS.lara}\r\n`);
    t.match(await client.response('a'), /^a OK /m);
  });

  await t.test('AUTHENTICATE PLAIN with an initial response', async (t) => {
    const { client } = await rawClient(t, proxy.port);
    const payload = b64(`\0ira\0${USERS.ira}`);
    payloads.push(payload);
    client.send(`a AUTHENTICATE PLAIN ${payload}\r\n`);
    t.match(await client.response('a'), /^a OK /m);
  });

  await t.test('AUTHENTICATE PLAIN answering a continuation', async (t) => {
    const { client } = await rawClient(t, proxy.port);
    const payload = b64(`\0cole\0${USERS.cole}`);
    payloads.push(payload);
    client.send('a AUTHENTICATE PLAIN\r\n');
    await client.readUntil(/^\+/m);
    client.send(`${payload}\r\n`);
    t.match(await client.response('a'), /^a OK /m);
  });

  await t.test('AUTHENTICATE LOGIN (SASL): user and password in separate continuations', async (t) => {
    const { client } = await rawClient(t, proxy.port);
    const password = b64(USERS.luis);
    payloads.push(password);
    client.send('a AUTHENTICATE LOGIN\r\n');
    await client.readUntil(/^\+/m);
    client.send(`${b64('luis')}\r\n`);
    await client.readUntil(/^\+/m);
    client.send(`${password}\r\n`);
    t.match(await client.response('a'), /^a OK /m);
  });

  await t.test('failed logins: LOGIN and AUTHENTICATE PLAIN with wrong passwords', async (t) => {
    const { client } = await rawClient(t, proxy.port);
    client.send(`a LOGIN quinn "${WRONG_LOGIN}"\r\n`);
    t.match(await client.response('a'), /^a NO /m);
    const payload = b64(`\0ira\0${WRONG_SASL}`);
    payloads.push(payload);
    client.send(`b AUTHENTICATE PLAIN ${payload}\r\n`);
    t.match(await client.response('b'), /^b NO /m);
  });

  await t.test('imapflow and imaplib logins', async (t) => {
    const flow = await imapflowFor(t, proxy.port, 'ivy', USERS.ivy);
    t.ok(flow.authenticated);
    const run = await runImaplib(['127.0.0.1', String(proxy.port), 'pia', USERS.pia, '--mode', 'plain']);
    t.equal(run.code, 0, run.stderr);
    t.equal((JSON.parse(run.stdout) as ImaplibResult).login, 'OK');
    payloads.push(b64(`\0pia\0${USERS.pia}`));
  });

  const raw = proxy.rawLog();
  t.ok(raw.length > 0, 'the log was captured');
  t.ok(proxy.logs().some((l) => l.level === 10), 'trace-level lines were written');
  for (const [user, password] of Object.entries(USERS)) {
    t.notOk(raw.includes(password), `${user}'s password is not in the log`);
    t.ok(raw.includes(`"user":"${user}"`), `${user}'s user name is in the log`);
  }
  t.notOk(raw.includes(WRONG_LOGIN), 'the wrong LOGIN password is not in the log');
  t.notOk(raw.includes(WRONG_SASL), 'the wrong SASL password is not in the log');
  for (const payload of payloads) t.notOk(raw.includes(payload), `SASL payload ${payload.slice(0, 8)}... is not in the log`);
  t.notOk(/secret/i.test(raw), 'no part of any password is in the log');

  const outcomes = proxy.logs().filter((l) => l.msg === 'login succeeded' || l.msg === 'login failed');
  t.equal(outcomes.filter((l) => l.msg === 'login succeeded').length, 8, 'eight successful logins logged');
  t.match(
    outcomes.filter((l) => l.msg === 'login failed'),
    [
      { user: 'quinn', mechanism: 'LOGIN', result: 'NO' },
      { user: 'ira', mechanism: 'PLAIN', result: 'NO' },
    ],
    'both failures logged with user and mechanism',
  );
  t.ok(raw.includes('login succeeded'));
});

t.test('--jmap-verify at trace level: no password, token, SASL payload or Authorization value in the log', async (t) => {
  // Its own Dovecot with local OAuth, and the fake JMAP endpoint knowing the same passwords and tokens.
  const VERIFY_USERS: Record<string, string> = {
    vlogin: 'VLogin-Secret-1001',
    vliteral: 'VLiteral-Secret-1002',
    vplain: 'VPlain-Secret-1003',
    vplaincont: 'VPlainCont-Secret-1004',
    vsasllogin: 'VSaslLogin-Secret-1005',
    vbearer: 'VBearer-Secret-1006',
    vbearercont: 'VBearerCont-Secret-1007',
    vxoauth: 'VXoauth-Secret-1008',
    vxoauthcont: 'VXoauthCont-Secret-1009',
    vrefused: 'VRefused-Secret-1010',
    vtokrefused: 'VTokRefused-Secret-1011',
  };
  const oauthDovecot = await dovecotFor(t, { users: VERIFY_USERS, oauth: true });
  const tokens: Record<string, string> = Object.fromEntries(Object.keys(VERIFY_USERS).map((u) => [u, oauthDovecot.mintToken(u)]));
  const { jmap, caFile } = await fakeJmapFor(
    t,
    Object.fromEntries(Object.keys(VERIFY_USERS).map((u) => [u, { password: VERIFY_USERS[u] as string, tokens: [tokens[u] as string] }])),
  );
  jmap.setMode('vrefused', 'unauthorized');
  jmap.setMode('vtokrefused', 'unauthorized');
  const proxy = await proxyFor(t, oauthDovecot.port, {
    logLevel: 'trace',
    objectId: 'assume',
    jmapUrl: `${jmap.origin}/jmap/?u={user}`,
    jmapVerify: true,
    jmapVerifyCa: caFile,
    jmapVerifyTimeout: '5s',
  });
  const secrets: string[] = [];
  const note = (...values: string[]) => secrets.push(...values);

  const session = async (t: Test, script: (client: RawClient) => Promise<string>) => {
    const { client } = await rawClient(t, proxy.port);
    const text = await script(client);
    client.send('z GETJMAPACCESS\r\n');
    await client.response('z');
    return text;
  };
  const password = (user: string) => VERIFY_USERS[user] as string;
  const basicValue = (user: string, pass: string) => b64(`${user}:${pass}`);

  // LOGIN, quoted; twice (the second from the cache).
  for (const tag of ['a', 'b']) {
    await session(t, async (c) => {
      c.send(`${tag} LOGIN vlogin "${password('vlogin')}"\r\n`);
      return c.response(tag);
    });
  }
  note(password('vlogin'), basicValue('vlogin', password('vlogin')));
  // LOGIN with literals.
  await session(t, async (c) => {
    c.send(`a LOGIN {8+}\r\nvliteral {${password('vliteral').length}+}\r\n${password('vliteral')}\r\n`);
    return c.response('a');
  });
  note(password('vliteral'), basicValue('vliteral', password('vliteral')));
  // PLAIN, SASL-IR and continuation.
  for (const [user, ir] of [['vplain', true], ['vplaincont', false]] as const) {
    const payload = plainResponse(user, password(user));
    await session(t, async (c) => {
      if (ir) c.send(`a AUTHENTICATE PLAIN ${payload}\r\n`);
      else {
        c.send('a AUTHENTICATE PLAIN\r\n');
        await c.readUntil(/^\+/m);
        c.send(`${payload}\r\n`);
      }
      return c.response('a');
    });
    note(password(user), payload, basicValue(user, password(user)));
  }
  // SASL LOGIN.
  await session(t, async (c) => {
    c.send('a AUTHENTICATE LOGIN\r\n');
    await c.readUntil(/^\+/m);
    c.send(`${b64('vsasllogin')}\r\n`);
    await c.readUntil(/^\+/m);
    c.send(`${b64(password('vsasllogin'))}\r\n`);
    return c.response('a');
  });
  note(password('vsasllogin'), b64(password('vsasllogin')), basicValue('vsasllogin', password('vsasllogin')));
  // OAUTHBEARER and XOAUTH2, SASL-IR and continuation; one token the JMAP server refuses.
  const bearerCases: Array<[string, string, boolean]> = [
    ['vbearer', 'OAUTHBEARER', true],
    ['vbearercont', 'OAUTHBEARER', false],
    ['vxoauth', 'XOAUTH2', true],
    ['vxoauthcont', 'XOAUTH2', false],
    ['vtokrefused', 'OAUTHBEARER', true],
  ];
  for (const [user, mechanism, ir] of bearerCases) {
    const token = tokens[user] as string;
    const payload = mechanism === 'OAUTHBEARER' ? oauthBearerResponse(user, token) : xoauth2Response(user, token);
    const text = await session(t, async (c) => {
      if (ir) c.send(`a AUTHENTICATE ${mechanism} ${payload}\r\n`);
      else {
        c.send(`a AUTHENTICATE ${mechanism}\r\n`);
        await c.readUntil(/^\+/m);
        c.send(`${payload}\r\n`);
      }
      return c.response('a');
    });
    t.match(text, /^a OK /m, `${user}: ${mechanism} login`);
    note(token, token.split('.')[2] as string, payload, `Bearer ${token}`);
  }
  // The JMAP server refusing a password; and a wrong IMAP password (probed in parallel).
  await session(t, async (c) => {
    c.send(`a LOGIN vrefused "${password('vrefused')}"\r\n`);
    return c.response('a');
  });
  note(password('vrefused'), basicValue('vrefused', password('vrefused')));
  const wrong = 'VWrong-Secret-9090';
  await session(t, async (c) => {
    c.send(`a LOGIN vlogin "${wrong}"\r\n`);
    return c.response('a');
  });
  note(wrong, basicValue('vlogin', wrong));

  // The premises: the probes were made, with these very credentials, and some were refused.
  t.ok(jmap.requests.some((r) => r.authorization === `Bearer ${tokens.vbearer}`), 'a Bearer probe was made');
  t.ok(jmap.requests.some((r) => r.authorization === `Basic ${basicValue('vplain', password('vplain'))}`), 'a Basic probe was made');
  const outcomes = proxy.logs().filter((l) => l.msg === 'login succeeded');
  t.equal(outcomes.filter((l) => l.jmapaccess === 'granted').length, 10, 'ten sessions verified and granted');
  t.equal(outcomes.filter((l) => l.reason === 'jmap-not-verified').length, 2, 'two refused by the JMAP server');
  t.ok(proxy.logs().some((l) => l.component === 'jmap-verify' && l.result === 'refused'), 'refused probes logged');

  const raw = proxy.rawLog();
  t.ok(proxy.logs().some((l) => l.level === 10), 'trace-level lines were written');
  for (const secret of secrets) t.notOk(raw.includes(secret), `not in the log: ${secret.slice(0, 6)}...`);
  t.notOk(/secret/i.test(raw), 'no part of any password');
  t.notOk(/Bearer|Basic /.test(raw), 'no Authorization value');
  for (const user of Object.keys(VERIFY_USERS)) t.ok(raw.includes(`"user":"${user}"`), `${user} is named in the log`);
});
