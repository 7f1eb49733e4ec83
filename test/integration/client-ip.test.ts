/**
 * --forward-client-ip id against a real Dovecot (the harness sets
 * login_trusted_networks = 127.0.0.1/8): Dovecot's login log shows the
 * client's own address, not the proxy's. The client connects from
 * 127.0.0.2 so that the two differ.
 */

import t from 'tap';
import net from 'node:net';
import { dovecotFor, proxyFor, RawClient } from './helpers.js';

const dovecot = await dovecotFor(t);

function connectFrom(localAddress: string, port: number): Promise<RawClient> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port, localAddress }, () => {
      socket.off('error', reject);
      // Wrap the connected socket in the byte-level client.
      resolve(RawClient.fromSocket(socket));
    });
    socket.once('error', reject);
  });
}

t.test('Dovecot logs the client address, and the client never sees the proxy\'s ID', async (t) => {
  const proxy = await proxyFor(t, dovecot.port, { forwardClientIp: 'id' });
  const client = await connectFrom('127.0.0.2', proxy.port);
  t.teardown(() => client.close());
  await client.readUntil('\n');
  // The client's own ID, trying to claim another address, comes second and is ignored by Dovecot.
  client.send('a ID ("name" "test" "x-originating-ip" "192.0.2.9")\r\nb LOGIN alice alicepw\r\n');
  const reply = await client.response('b');
  t.match(reply, /^\* ID \("name" "Dovecot"\)\r\na OK [^\n]*\nb OK /, 'one * ID answer: to the client\'s own ID');
  t.notMatch(reply, /jmapaccess-proxy\.id/);
  const log = await dovecot.readLog();
  const login = log.split('\n').find((l) => /Login: user=<alice>/.test(l) && /rip=127\.0\.0\.2/.test(l));
  t.ok(login, 'Dovecot saw the client\'s address');
  t.match(login, /session=<jap\d+-\d+>/, 'and the proxy\'s session id');
  t.notOk(/rip=192\.0\.2\.9/.test(log), 'the client cannot claim another address');
});

t.test('without --forward-client-ip, Dovecot sees the proxy', async (t) => {
  const proxy = await proxyFor(t, dovecot.port);
  const client = await connectFrom('127.0.0.3', proxy.port);
  t.teardown(() => client.close());
  await client.readUntil('\n');
  client.send('b LOGIN bob bobpw\r\n');
  await client.response('b');
  const log = await dovecot.readLog();
  t.ok(log.split('\n').some((l) => /Login: user=<bob>/.test(l) && /rip=127\.0\.0\.1,/.test(l)));
  t.notOk(/rip=127\.0\.0\.3/.test(log));
});
