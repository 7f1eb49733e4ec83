/**
 * Large literals through the proxy against each real upstream (Dovecot 2.3
 * and Cyrus IMAP 3.6, see UPSTREAMS): 20 MB APPEND and FETCH byte for byte
 * (imapflow and RawClient), and backpressure when the client stops reading.
 */

import t from 'tap';
import {
  UPSTREAMS,
  imapflowFor,
  literalAfter,
  makeMessage,
  proxyFor,
  rawClient,
  rawLogin,
  sha256,
  sleep,
  upstreamFor,
  waitFor,
} from './helpers.js';

const MB = 1024 * 1024;

for (const kind of UPSTREAMS) {
  t.test(kind, async (t) => {
    const upstream = await upstreamFor(t, kind, { users: { alice: 'alicepw', bob: 'bobpw', carol: 'carolpw' } });

    t.test('imapflow: APPEND and FETCH of a 20 MB message are byte-identical through the proxy', async (t) => {
      const proxy = await proxyFor(t, upstream.port, { objectId: 'assume' });
      const client = await imapflowFor(t, proxy.port, 'alice', 'alicepw');
      const message = makeMessage(20 * MB, 'twenty megabytes');
      t.ok(message.length >= 20 * MB, `message is ${message.length} bytes`);
      const expected = sha256(message);

      const appended = await client.append('INBOX', message);
      t.ok(appended && appended.uid, 'APPEND completed with a UID');
      const uid = appended ? appended.uid : undefined;

      const lock = await client.getMailboxLock('INBOX');
      try {
        const fetched = await client.fetchOne(String(uid), { source: true, size: true }, { uid: true });
        t.ok(fetched, 'FETCH found the message');
        if (fetched) {
          t.equal(fetched.size, message.length, 'RFC822.SIZE is the appended size');
          t.equal(fetched.source?.length, message.length, 'fetched source has the appended length');
          t.equal(sha256(fetched.source ?? Buffer.alloc(0)), expected, 'fetched source sha256 equals the appended one');
        }

        // In 1 MB partial FETCHes: imapflow's default 64 KB would mean 320
        // round trips, and against Cyrus each costs ~44 ms (its imapd's last
        // small segment waits for the delayed ACK on loopback; the same
        // with imapflow connected to Cyrus directly), 14 s in all.
        const download = await client.download(String(uid), undefined, { uid: true, chunkSize: MB });
        t.ok(download.content, 'download stream');
        const chunks: Buffer[] = [];
        if (download.content) for await (const chunk of download.content) chunks.push(chunk as Buffer);
        t.equal(sha256(Buffer.concat(chunks)), expected, 'downloaded bytes sha256 equals the appended one');
      } finally {
        lock.release();
      }
      const [session] = proxy.server.snapshot();
      t.ok(session && session.bytesFromClient > 20 * MB, 'the 20 MB went through the proxy');
      t.ok(session && session.bytesFromUpstream > 40 * MB, 'and came back twice');
    });

    t.test('RawClient: APPEND with a synchronizing literal waits for "+", then FETCH returns the same bytes', async (t) => {
      const proxy = await proxyFor(t, upstream.port);
      const { client } = await rawClient(t, proxy.port);
      await rawLogin(client, 'bob', 'bobpw');
      const message = makeMessage(3 * MB, 'synchronizing literal');

      client.send(`a APPEND INBOX {${message.length}}\r\n`);
      t.match(await client.readUntil('\n'), /^\+ /, 'the server\'s go-ahead reaches the client');
      client.send(message);
      client.send('\r\n');
      const appended = await client.response('a');
      const uid = /\[APPENDUID \d+ (\d+)\]/.exec(appended)?.[1];
      t.ok(uid, `APPEND OK with APPENDUID: ${JSON.stringify(appended)}`);

      client.send('b SELECT INBOX\r\n');
      await client.response('b');
      const before = client.all.length;
      client.send(`c UID FETCH ${uid} BODY.PEEK[]\r\n`);
      await waitFor(() => client.all.indexOf('\r\nc OK ', before, 'latin1') !== -1, 'c OK');
      const literal = literalAfter(client.all.subarray(before), 'BODY[] {');
      t.ok(literal, 'FETCH returned a literal');
      t.equal(literal?.bytes.length, message.length, 'same length');
      t.equal(sha256(literal?.bytes ?? Buffer.alloc(0)), sha256(message), 'same bytes');
      t.match(
        literal?.rest.toString('latin1'),
        /^\)\r\nc OK [^\r\n]*\r\n$/,
        'the FETCH response closes and the command completes right after the literal',
      );
    });

    t.test('a client that stops reading: the proxy stops reading the upstream, then delivers every byte', async (t) => {
      const proxy = await proxyFor(t, upstream.port);
      const { client } = await rawClient(t, proxy.port);
      await rawLogin(client, 'carol', 'carolpw');
      client.send('s SELECT INBOX\r\n');
      t.match(await client.response('s'), /^\* 0 EXISTS\r$/m, 'empty INBOX');

      const message = makeMessage(20 * MB, 'slow reader');
      client.send(`a APPEND INBOX {${message.length}+}\r\n`);
      client.send(message);
      client.send('\r\n');
      t.match(await client.response('a', 30_000), /^(\* 1 EXISTS\r\n)?(\* 1 RECENT\r\n)?a OK /m, 'appended');

      const [before] = proxy.server.snapshot();
      const upstreamBefore = before?.bytesFromUpstream ?? 0;

      client.socket.pause();
      const start = client.all.length;
      client.send('f FETCH 1 BODY.PEEK[]\r\n');
      await sleep(1500);

      const [stalled] = proxy.server.snapshot();
      t.ok(stalled, 'the session is alive');
      const readFromUpstream = (stalled?.bytesFromUpstream ?? 0) - upstreamBefore;
      t.comment(`while the client was not reading: ${readFromUpstream} bytes read from the upstream, ${stalled?.queuedToClient} queued to the client`);
      t.ok(readFromUpstream > 0, 'the FETCH response started');
      t.ok(readFromUpstream < 10 * MB, `the proxy did not read the whole 20 MB from the upstream (${readFromUpstream} bytes)`);
      t.ok((stalled?.queuedToClient ?? Infinity) < 4 * MB, `the queue to the client stays bounded (${stalled?.queuedToClient} bytes)`);
      t.ok(client.all.length - start < 10 * MB, 'the client has not received it all either');

      client.socket.resume();
      await waitFor(() => client.all.indexOf('\r\nf OK ', start, 'latin1') !== -1, 'f OK', 30_000);
      const received = client.all.subarray(start);
      const literal = literalAfter(received, '* 1 FETCH (BODY[] {');
      t.ok(literal, 'the whole literal arrived');
      t.equal(literal?.bytes.length, message.length, 'with the appended length');
      t.equal(sha256(literal?.bytes ?? Buffer.alloc(0)), sha256(message), 'and the appended bytes');
      t.match(literal?.rest.toString('latin1'), /^\)\r\nf OK [^\r\n]*\r\n$/, 'then the FETCH completes');
      const [done] = proxy.server.snapshot();
      t.ok((done?.bytesFromUpstream ?? 0) - upstreamBefore > 20 * MB, 'the proxy read the rest once the client read again');
      t.equal(done?.queuedToClient, 0, 'nothing left queued');
    });
  });
}
