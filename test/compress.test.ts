/**
 * COMPRESS=DEFLATE (RFC 4978) on the client link, done by the proxy: the
 * byte-level exchange against the SCRIPTED FAKE SERVER (which must never see
 * COMPRESS or compressed bytes), then imapflow through TLS + COMPRESS to a
 * real Dovecot with a 20 MB message.
 */

import t, { type Test } from 'tap';
import zlib from 'node:zlib';
import { createHash } from 'node:crypto';
import { ImapFlow } from 'imapflow';
import { startProxy } from './harness/proxy.js';
import { RawClient } from './harness/raw-client.js';
import { startScriptedUpstream } from './harness/scripted-upstream.js';
import { startDovecot } from './harness/dovecot.js';
import { makeTestCa } from './harness/pki.js';

async function compressedRig(t: Test) {
  const upstream = await startScriptedUpstream();
  const proxy = await startProxy({ upstreamPort: upstream.port, objectId: 'assume' });
  const client = await RawClient.connect(proxy.port);
  const server = await upstream.accept();
  t.teardown(async () => {
    client.close();
    await proxy.close();
    await upstream.close();
  });
  server.send('* OK [CAPABILITY IMAP4rev1 COMPRESS=DEFLATE] fake\r\n');
  t.equal(await client.readUntil('\n'), '* OK [CAPABILITY IMAP4rev1] fake\r\n', 'no COMPRESS before login');
  client.send('a LOGIN alice secret\r\n');
  await server.line();
  server.send('a OK [CAPABILITY IMAP4rev1 COMPRESS=DEFLATE OBJECTID] in\r\n');
  t.equal(
    await client.response('a'),
    'a OK [CAPABILITY IMAP4rev1 OBJECTID COMPRESS=DEFLATE JMAPACCESS] in\r\n',
    'after login: the proxy\'s own COMPRESS=DEFLATE, once',
  );
  return { proxy, client, server };
}

t.test('COMPRESS DEFLATE: compressed both ways on the client link only', async (t) => {
  const { client, server } = await compressedRig(t);
  client.send('b COMPRESS DEFLATE\r\n');
  t.equal(await client.response('b'), 'b OK DEFLATE active\r\n');
  // From here on the client side speaks raw DEFLATE.
  const deflate = zlib.createDeflateRaw();
  const inflate = zlib.createInflateRaw();
  client.socket.removeAllListeners('data');
  client.socket.pipe(inflate);
  deflate.pipe(client.socket);
  let clear = '';
  inflate.on('data', (chunk: Buffer) => (clear += chunk.toString('latin1')));
  const send = (text: string) => {
    deflate.write(text);
    deflate.flush(zlib.constants.Z_SYNC_FLUSH);
  };
  const until = async (re: RegExp) => {
    const deadline = Date.now() + 5000;
    while (!re.test(clear)) {
      if (Date.now() > deadline) throw new Error(`timed out on ${re}: ${JSON.stringify(clear)}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    const out = clear;
    clear = '';
    return out;
  };
  send('c NOOP\r\n');
  t.equal(await server.line(), 'c NOOP', 'the upstream sees clear text and never saw COMPRESS');
  server.send('* 3 EXISTS\r\nc OK noop\r\n');
  t.equal(await until(/c OK/), '* 3 EXISTS\r\nc OK noop\r\n', 'responses arrive whole (sync flush)');
  send('d GETJMAPACCESS\r\ne COMPRESS DEFLATE\r\n');
  t.match(await until(/e (OK|NO|BAD)/), /^\* JMAPACCESS "[^"]+"\r\nd OK [^\n]*\ne NO \[COMPRESSIONACTIVE\]/);
  const body = 'x'.repeat(100_000);
  send(`f APPEND INBOX {${body.length}+}\r\n${body}\r\n`);
  t.equal(await server.line(), `f APPEND INBOX {${body.length}+}`);
  t.equal((await server.bytes(body.length + 2)).toString('latin1'), `${body}\r\n`, 'a literal decompressed byte for byte');
});

t.test('COMPRESS with another mechanism is BAD and the link stays uncompressed', async (t) => {
  const { client, server } = await compressedRig(t);
  client.send('b COMPRESS GZIP\r\n');
  t.match(await client.response('b'), /^b BAD Unsupported compression mechanism/);
  client.send('c NOOP\r\n');
  t.equal(await server.line(), 'c NOOP');
  server.send('c OK done\r\n');
  t.equal(await client.response('c'), 'c OK done\r\n', 'answered in clear');
});

t.test('imapflow through TLS + COMPRESS to a real Dovecot: 20 MB APPEND and FETCH byte-identical', async (t) => {
  const ca = makeTestCa();
  const cert = ca.issue('proxy', ['localhost', '127.0.0.1']);
  const dovecot = await startDovecot();
  const proxy = await startProxy({
    upstreamPort: dovecot.port,
    objectId: 'assume',
    tlsCert: [cert.certFile],
    tlsKey: [cert.keyFile],
    listenTls: '127.0.0.1:0',
    logLevel: 'debug',
  });
  const client = new ImapFlow({
    host: '127.0.0.1',
    port: proxy.tlsPort as number,
    secure: true,
    tls: { ca: [ca.ca], servername: 'localhost' },
    auth: { user: 'alice', pass: 'alicepw' },
    logger: false,
  });
  t.teardown(async () => {
    await client.logout().catch(() => client.close());
    await proxy.close();
    await dovecot.stop();
    ca.remove();
  });
  await client.connect();
  t.ok(proxy.logs().some((l) => l.msg === 'COMPRESS=DEFLATE active'), 'imapflow switched compression on');
  t.equal(client.capabilities.get('JMAPACCESS'), true);
  const size = 20 * 1024 * 1024;
  const line = 'The quick brown fox jumps over the lazy dog, 0123456789 ABCDEFGHIJ!\r\n';
  const message = Buffer.from(`Subject: big\r\nMessage-ID: <big@test>\r\n\r\n${line.repeat(Math.ceil(size / line.length))}`);
  const appended = await client.append('INBOX', message);
  t.ok(appended, 'appended');
  await client.mailboxOpen('INBOX');
  const fetched = await client.fetchOne('*', { source: true });
  const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
  t.equal(fetched && fetched.source ? sha(fetched.source) : '', sha(message), 'the same bytes came back');
});
