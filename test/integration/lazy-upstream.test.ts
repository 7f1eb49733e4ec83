/**
 * --upstream-connect lazy (the default): after one real greeting, clients are
 * greeted with it and the upstream is connected at their first line
 * (src/greeting.ts). Real Dovecot for the behaviour, a scripted fake server
 * (named as such) for greetings a real server does not send on demand.
 */

import t from 'tap';
import { startScriptedUpstream } from '../harness/scripted-upstream.js';
import {
  AUTH_WAIT_LINE,
  JMAPACCESS_LINE,
  RawClient,
  getJmapAccessAnswer,
  imapflowFor,
  proxyFor,
  rawClient,
  rawLogin,
  upstreamFor,
  waitFor,
  type RunningProxy,
} from './helpers.js';

const upstreamConnects = (proxy: RunningProxy) => proxy.logs().filter((l) => l.msg === 'upstream connected').length;

t.test('real Dovecot: idle connections never reach the upstream; a command connects it', async (t) => {
  const upstream = await upstreamFor(t, 'dovecot');
  const proxy = await proxyFor(t, upstream.port, { objectId: 'assume' });

  // The first connection has nothing remembered: it connects at once.
  const first = await rawClient(t, proxy.port);
  await waitFor(() => upstreamConnects(proxy) === 1, 'the first upstream connection');
  first.client.close();
  await waitFor(() => proxy.server.connectionCount === 0, 'the first session to end');

  const idle: RawClient[] = [];
  for (let i = 0; i < 20; i++) {
    const { client, greeting } = await rawClient(t, proxy.port);
    t.equal(greeting, first.greeting, `connection ${i} gets the same greeting`);
    idle.push(client);
  }
  t.equal(proxy.server.connectionCount, 20, 'twenty sessions open');
  t.equal(upstreamConnects(proxy), 1, 'none of them connected upstream');

  // A client closing before any command leaves nothing behind.
  for (const client of idle.splice(0, 10)) client.close();
  await waitFor(() => proxy.server.connectionCount === 10, 'the closed sessions to end');

  // Pipelined in the very first packet: LOGIN, CAPABILITY, GETJMAPACCESS, NOOP, in order.
  const client = idle[0] as RawClient;
  client.send('a LOGIN alice alicepw\r\nb CAPABILITY\r\nc GETJMAPACCESS\r\nd NOOP\r\n');
  const text = await client.response('d');
  await waitFor(() => upstreamConnects(proxy) === 2, 'the upstream connection of the client that spoke');
  const tags = text.split('\r\n').filter((l) => /^[a-d] /.test(l)).map((l) => l.slice(0, 4));
  t.same(tags, ['a OK', 'b OK', 'c OK', 'd OK'], 'every answer, in order');
  t.notMatch(text, AUTH_WAIT_LINE, 'the upstream greeting is not shown again');
  t.notMatch(text, /^\* OK \[CAPABILITY/m, 'no second greeting');
  t.ok(text.includes(JMAPACCESS_LINE), 'GETJMAPACCESS answered through a lazy session');
  t.match(text, /^\* CAPABILITY .*\bJMAPACCESS\b/m, 'the post-login list has JMAPACCESS');
  t.equal(upstreamConnects(proxy), 2, 'only that client connected upstream');

  // A real client library through a lazy session.
  const flow = await imapflowFor(t, proxy.port, 'bob', 'bobpw');
  const box = await flow.mailboxOpen('INBOX');
  t.equal(box.path, 'INBOX', 'imapflow works through a lazy session');
});

t.test('real Dovecot: --upstream-connect eager connects every client at once', async (t) => {
  const upstream = await upstreamFor(t, 'dovecot');
  const proxy = await proxyFor(t, upstream.port, { upstreamConnect: 'eager' });
  for (let i = 0; i < 3; i++) await rawClient(t, proxy.port);
  await waitFor(() => upstreamConnects(proxy) === 3, 'three upstream connections');
  t.equal(upstreamConnects(proxy), 3);
});

t.test('real Dovecot stopped: a greeted client gets BYE at its first command, later ones at once', async (t) => {
  const upstream = await upstreamFor(t, 'dovecot');
  const proxy = await proxyFor(t, upstream.port);
  (await rawClient(t, proxy.port)).client.close();
  const { client: greeted, greeting } = await rawClient(t, proxy.port);
  t.match(greeting, /^\* OK \[CAPABILITY /, 'greeted with the remembered greeting');
  await upstream.stop();

  greeted.send('a LOGIN alice alicepw\r\n');
  t.match(await greeted.readUntil('\n'), /^\* BYE \[UNAVAILABLE\] /, 'its first command finds the server gone: BYE');
  await greeted.waitClosed();
  t.ok(proxy.logs().some((l) => l.msg === 'upstream connect failed'), 'the failed connect is logged');

  // The failure made the proxy forget the greeting: no more greeting on the server's behalf.
  const late = await RawClient.connect(proxy.port);
  t.teardown(() => late.close());
  t.match(await late.readUntil('\n'), /^\* BYE \[UNAVAILABLE\] /, 'a new client is told at once');
  await late.waitClosed();
});

t.test('scripted fake server: greetings that differ from the remembered one', async (t) => {
  const fake = await startScriptedUpstream();
  t.teardown(() => fake.close());
  const proxy = await proxyFor(t, fake.port, { upstreamConnect: 'lazy' });
  const GREETING = '* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] fake ready\r\n';

  // Learn the greeting.
  const learn = await RawClient.connect(proxy.port);
  t.teardown(() => learn.close());
  (await fake.accept()).send(GREETING);
  t.equal(await learn.readUntil('\n'), GREETING);

  t.test('a "waiting" notice, then the greeting: neither is shown, the command goes through', async (t) => {
    const client = await RawClient.connect(proxy.port);
    t.teardown(() => client.close());
    t.equal(await client.readUntil('\n'), GREETING, 'greeted by the proxy');
    await t.rejects(fake.accept(200), /no connection/, 'no upstream connection yet');
    client.send('a NOOP\r\n');
    const server = await fake.accept();
    server.send('* OK Waiting for authentication process to respond..\r\n');
    await new Promise((r) => setTimeout(r, 50));
    t.equal(server.pending(), '', 'the command waits for the real greeting');
    server.send(GREETING);
    t.equal(await server.line(), 'a NOOP', 'then it is sent');
    server.send('a OK done\r\n');
    t.equal(await client.response('a'), 'a OK done\r\n', 'and nothing but its answer reaches the client');
  });

  t.test('the upstream greets with BYE: the client gets that BYE', async (t) => {
    const client = await RawClient.connect(proxy.port);
    t.teardown(() => client.close());
    t.equal(await client.readUntil('\n'), GREETING);
    client.send('a LOGIN alice secret\r\n');
    const server = await fake.accept();
    server.send('* BYE Too many connections from your IP\r\n');
    server.socket.end();
    t.equal(await client.readUntil('\n'), '* BYE Too many connections from your IP\r\n', "the server's own BYE");
    await client.waitClosed();
    t.equal(client.unread(), '', 'nothing else: the LOGIN never reached it');
  });

  t.test('after that, the next client is connected at once and sees the real greeting', async (t) => {
    const client = await RawClient.connect(proxy.port);
    t.teardown(() => client.close());
    const server = await fake.accept();
    server.send('* PREAUTH [CAPABILITY IMAP4rev1] logged in already\r\n');
    t.match(await client.readUntil('\n'), /^\* PREAUTH /, 'the PREAUTH greeting as it is');
  });

  t.test('a PREAUTH greeting behind a remembered OK: BYE, logged', async (t) => {
    // Teach it the OK greeting again.
    const teach = await RawClient.connect(proxy.port);
    t.teardown(() => teach.close());
    (await fake.accept()).send(GREETING);
    t.equal(await teach.readUntil('\n'), GREETING);

    const client = await RawClient.connect(proxy.port);
    t.teardown(() => client.close());
    t.equal(await client.readUntil('\n'), GREETING);
    client.send('a CAPABILITY\r\n');
    const server = await fake.accept();
    server.send('* PREAUTH [CAPABILITY IMAP4rev1] logged in already\r\n');
    t.match(await client.readUntil('\n'), /^\* BYE \[UNAVAILABLE\] /);
    await client.waitClosed();
    t.ok(proxy.logs().some((l) => l.msg === 'the upstream greeted differently than before'), 'logged');
  });
});

t.test('GETJMAPACCESS before login on a lazy session: BAD, in order', async (t) => {
  const upstream = await upstreamFor(t, 'dovecot');
  const proxy = await proxyFor(t, upstream.port, { objectId: 'assume' });
  (await rawClient(t, proxy.port)).client.close();
  const { client } = await rawClient(t, proxy.port);
  client.send('x GETJMAPACCESS\r\n');
  t.match(await client.response('x'), /^x BAD GETJMAPACCESS is valid only after authentication\r\n$/, 'answered by the proxy, no upstream needed');
  await rawLogin(client, 'alice', 'alicepw', 'y');
  client.send('z GETJMAPACCESS\r\n');
  t.equal(await client.response('z'), getJmapAccessAnswer('z', true));
});
