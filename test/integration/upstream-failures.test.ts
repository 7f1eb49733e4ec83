/**
 * The upstream going away, against each real upstream (Dovecot 2.3 and
 * Cyrus IMAP 3.6, see UPSTREAMS): the server killed under live sessions
 * (between responses and in the middle of a literal), and an upstream port
 * nobody listens on. The proxy must tell its clients, close them, and keep
 * serving.
 */

import t from 'tap';
import { ImapFlow } from 'imapflow';
import {
  RawClient,
  UPSTREAMS,
  imapflowFor,
  literalAfter,
  makeMessage,
  proxyFor,
  rawClient,
  rawLogin,
  upstreamFor,
  waitFor,
} from './helpers.js';

const MB = 1024 * 1024;

for (const kind of UPSTREAMS) {
  t.test(kind, async (t) => {
    t.test('upstream killed between responses: * BYE, close, and the proxy keeps serving', async (t) => {
      const upstream = await upstreamFor(t, kind);
      const proxy = await proxyFor(t, upstream.port, { objectId: 'assume' });

      const { client } = await rawClient(t, proxy.port);
      await rawLogin(client, 'alice', 'alicepw');
      client.send('s SELECT INBOX\r\n');
      await client.response('s');

      const flow = await imapflowFor(t, proxy.port, 'bob', 'bobpw');
      const flowClosed = new Promise<void>((resolve) => flow.once('close', () => resolve()));
      t.equal(proxy.server.connectionCount, 2, 'two sessions through the proxy');

      await upstream.killAll();

      const bye = await client.readUntil('\n');
      t.match(bye, /^\* BYE \[UNAVAILABLE\] /, 'the idle RawClient session gets * BYE [UNAVAILABLE]');
      await client.waitClosed();
      t.equal(client.unread(), '', 'nothing after the BYE');
      await flowClosed;
      t.notOk(flow.usable, 'the imapflow session was closed too');
      await waitFor(() => proxy.server.connectionCount === 0, 'the sessions to be gone');
      t.match(
        proxy.logs().filter((l) => l.msg === 'connection closed'),
        [{ reason: 'upstream closed' }, { reason: 'upstream closed' }],
        'both closes are logged as the upstream\'s',
      );

      // The listener still works: a new client is told the server is unavailable.
      for (const attempt of [1, 2]) {
        const late = await RawClient.connect(proxy.port);
        t.teardown(() => late.close());
        t.match(await late.readUntil('\n'), /^\* BYE \[UNAVAILABLE\] /, `new connection ${attempt}: * BYE [UNAVAILABLE]`);
        await late.waitClosed();
      }
      t.ok(proxy.logs().some((l) => l.msg === 'upstream connect failed'), 'the failed connects are logged');
      await waitFor(() => proxy.server.connectionCount === 0, 'the late sessions to be gone');
    });

    t.test('upstream killed in the middle of a literal: no BYE inside it, the connection closes', async (t) => {
      const upstream = await upstreamFor(t, kind);
      const proxy = await proxyFor(t, upstream.port);
      const { client } = await rawClient(t, proxy.port);
      await rawLogin(client, 'alice', 'alicepw');
      client.send('s SELECT INBOX\r\n');
      await client.response('s');
      const message = makeMessage(20 * MB, 'interrupted');
      client.send(`a APPEND INBOX {${message.length}+}\r\n`);
      client.send(message);
      client.send('\r\n');
      await client.response('a', 30_000);

      // Stop reading so that the FETCH response is stuck part way through.
      client.socket.pause();
      const start = client.all.length;
      const [before] = proxy.server.snapshot();
      client.send('f FETCH 1 BODY.PEEK[]\r\n');
      await waitFor(
        () => (proxy.server.snapshot()[0]?.bytesFromUpstream ?? 0) > (before?.bytesFromUpstream ?? 0) + MB,
        'the FETCH response to be under way',
      );
      await upstream.killAll();
      client.socket.resume();
      await client.waitClosed(30_000);

      const received = client.all.subarray(start);
      const text = received.toString('latin1');
      t.match(text, /^\* 1 FETCH \(BODY\[\] \{\d+\}\r\n/, 'the FETCH response had started');
      t.equal(literalAfter(received, '* 1 FETCH'), null, 'the literal is incomplete');
      t.notMatch(text, /\* BYE/, 'no BYE was written into the literal');
      t.notMatch(text, /\r\nf (OK|NO|BAD)/, 'the FETCH never completed');
      await waitFor(() => proxy.server.connectionCount === 0, 'the session to be gone');
    });

    // The proxy meets no server here at all; per upstream, the port is that of
    // a server of this kind that was shut down cleanly (the tests above kill
    // theirs with SIGKILL under live sessions).
    t.test('unreachable upstream (a server that was shut down): * BYE [UNAVAILABLE], close, and the failure is logged', async (t) => {
      const gone = await upstreamFor(t, kind);
      await gone.stop();
      const port = gone.port;
      const proxy = await proxyFor(t, port);

      const client = await RawClient.connect(proxy.port);
      t.teardown(() => client.close());
      t.match(await client.readUntil('\n'), /^\* BYE \[UNAVAILABLE\] /, 'BYE instead of a greeting');
      await client.waitClosed();
      t.equal(client.unread(), '', 'and nothing else');
      const failure = proxy.logs().find((l) => l.msg === 'upstream connect failed');
      t.match(failure, { code: 'ECONNREFUSED', upstream: { host: '127.0.0.1', port } }, 'logged with the cause');
      await waitFor(() => proxy.server.connectionCount === 0, 'the session to be gone');
      t.match(proxy.logs().find((l) => l.msg === 'connection closed'), { reason: 'upstream unavailable' });

      // An ordinary client library sees a failed connection, not a hang.
      const flow = new ImapFlow({
        host: '127.0.0.1',
        port: proxy.port,
        secure: false,
        doSTARTTLS: false,
        auth: { user: 'alice', pass: 'alicepw' },
        logger: false,
      });
      flow.on('error', () => {});
      t.teardown(() => flow.close());
      await t.rejects(flow.connect(), 'imapflow connect() fails');
      await waitFor(() => proxy.server.connectionCount === 0, 'the sessions to be gone');
    });
  });
}
