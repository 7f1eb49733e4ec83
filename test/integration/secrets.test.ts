/**
 * Secrets never reach the proxy's log, even at trace level: passwords in
 * quoted strings and literals, SASL payloads in initial responses and in
 * continuation lines, for logins that succeed and logins that fail.
 */

import t from 'tap';
import { dovecotFor, imapflowFor, proxyFor, rawClient, runImaplib, type ImaplibResult } from './helpers.js';

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
