/**
 * The PROXY protocol against a real Dovecot 2.3:
 *
 * - toward the upstream (--upstream-proxy-protocol v1|v2): Dovecot's
 *   `haproxy = yes` listener learns the client's address from the header;
 * - from a load balancer (--accept-proxy-protocol --trusted-proxies): the
 *   header's client address becomes the session's peer (logged, and sent on
 *   to Dovecot in the --forward-client-ip ID), on the plain and on the
 *   implicit-TLS listener; a trusted source without a valid header is cut
 *   off, an untrusted one is not listened to;
 * - --check toward a haproxy listener (a LOCAL header).
 *
 * Clients connect from 127.0.0.2 where the proxy's own address (127.0.0.1)
 * must not be what Dovecot logs.
 */

import t, { type Test } from 'tap';
import net from 'node:net';
import tls from 'node:tls';
import { checkUpstream } from '../../src/check.js';
import { validateConfig } from '../../src/config.js';
import { encodeLocal, encodeV2 } from '../../src/proxy-protocol.js';
import { freePort } from '../harness/dovecot.js';
import { makeTestCa } from '../harness/pki.js';
import { AUTH_WAIT_LINE, dovecotFor, JMAP_URL, proxyFor, rawLogin, RawClient, sleep, type RunningProxy } from './helpers.js';

/** One user per subtest, so that each finds its own Login line in Dovecot's log. */
const USERS = Object.fromEntries(
  ['up-v1', 'up-v2', 'up-none', 'lb-v1', 'lb-v2', 'lb-v6', 'lb-same', 'lb-split', 'lb-local', 'lb-untrusted', 'lb-tls'].map((u) => [u, `${u}-pw`]),
);

const haproxyPort = await freePort();
const dovecot = await dovecotFor(t, {
  users: USERS,
  extraConfig: [
    'haproxy_trusted_networks = 127.0.0.1/8',
    // Stock is 3 s; the subtests that send Dovecot no header wait for it.
    'haproxy_timeout = 1s',
    'service imap-login {',
    '  inet_listener imap_haproxy {',
    '    address = 127.0.0.1',
    `    port = ${haproxyPort}`,
    '    haproxy = yes',
    '  }',
    '}',
  ].join('\n'),
});

const ca = makeTestCa();
t.teardown(() => ca.remove());
const cert = ca.issue('proxy', ['localhost', '127.0.0.1']);

// A throw in a connection callback must fail a test, not end the test process.
const uncaught: unknown[] = [];
process.on('uncaughtException', (err) => uncaught.push(err));
process.on('unhandledRejection', (err) => uncaught.push(err));
t.teardown(() => {
  if (uncaught.length > 0) throw new Error(`uncaught in the proxy: ${uncaught.map(String).join('; ')}`);
});

const ACCEPTING = { acceptProxyProtocol: true, trustedProxies: '127.0.0.1/32', forwardClientIp: 'id' } as const;

function connect(t: Test, port: number, localAddress = '127.0.0.1'): Promise<RawClient> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port, localAddress }, () => {
      socket.off('error', reject);
      const client = RawClient.fromSocket(socket);
      t.teardown(() => client.close());
      resolve(client);
    });
    socket.once('error', reject);
  });
}

/** The greeting line, past Dovecot's "Waiting for authentication process" notice. */
async function greeting(client: RawClient): Promise<string> {
  let line = await client.readUntil('\n');
  while (AUTH_WAIT_LINE.test(line)) line = await client.readUntil('\n');
  return line;
}

/** Dovecot's `imap-login: Login: user=<user>, ...` line (logged a moment after the OK). */
async function loginLine(user: string): Promise<string> {
  const deadline = Date.now() + 5000;
  for (;;) {
    const line = (await dovecot.readLog()).split('\n').find((l) => l.includes(`Login: user=<${user}>`));
    if (line) return line;
    if (Date.now() > deadline) throw new Error(`no Login line for ${user} in Dovecot's log`);
    await sleep(50);
  }
}

function logsWith(proxy: RunningProxy, msg: string): Array<Record<string, unknown>> {
  return proxy.logs().filter((l) => l.msg === msg);
}

async function waitForLog(proxy: RunningProxy, msg: string, timeoutMs = 5000): Promise<Record<string, unknown>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const found = logsWith(proxy, msg)[0];
    if (found) return found;
    if (Date.now() > deadline) throw new Error(`no "${msg}" in the proxy's log`);
    await sleep(20);
  }
}

// ---------------------------------------------------------------------------

t.test('--upstream-proxy-protocol: Dovecot\'s haproxy listener sees the client\'s address', async (t) => {
  for (const version of ['v1', 'v2'] as const) {
    t.test(version, async (t) => {
      const user = `up-${version}`;
      const proxy = await proxyFor(t, haproxyPort, { upstreamProxyProtocol: version });
      const client = await connect(t, proxy.port, '127.0.0.2');
      t.match(await greeting(client), /^\* OK .*Dovecot/);
      t.match(await rawLogin(client, user, `${user}-pw`), /(^|\n)a OK /);
      const login = await loginLine(user);
      t.match(login, /rip=127\.0\.0\.2,/, 'the client\'s address, from the header');
      t.match(login, /lip=127\.0\.0\.1,/, 'the proxy\'s listening address as the destination');
    });
  }

  t.test('without the option, the haproxy listener gets no header and drops the proxy', async (t) => {
    const proxy = await proxyFor(t, haproxyPort);
    const client = await connect(t, proxy.port, '127.0.0.2');
    // Dovecot waits haproxy_timeout (1 s) for a header, then disconnects; the
    // client never sees a greeting, only the proxy's BYE.
    const started = Date.now();
    const bye = await client.readUntil('\n', 8000);
    t.equal(bye, '* BYE [UNAVAILABLE] Connection to the IMAP server was lost\r\n', 'the client is told BYE, then closed');
    await client.waitClosed();
    t.ok(Date.now() - started >= 900, 'after Dovecot\'s haproxy_timeout');
    t.equal(client.all.toString('latin1'), bye, 'nothing else');
    t.match(await waitForLog(proxy, 'connection closed'), { reason: 'upstream closed' });
  });
});

t.test('--accept-proxy-protocol from a trusted load balancer', async (t) => {
  async function viaHeader(t: Test, header: Buffer | string, user: string) {
    const proxy = await proxyFor(t, dovecot.port, ACCEPTING);
    const client = await connect(t, proxy.port);
    client.send(header);
    t.match(await greeting(client), /^\* OK .*Dovecot/);
    t.match(await rawLogin(client, user, `${user}-pw`), /(^|\n)a OK /);
    return { proxy, client, opened: await waitForLog(proxy, 'connection opened'), login: await loginLine(user) };
  }

  t.test('v1 header', async (t) => {
    const { client, opened, login } = await viaHeader(t, 'PROXY TCP4 192.0.2.10 127.0.0.1 40000 143\r\n', 'lb-v1');
    t.match(opened, { peer: '192.0.2.10:40000', via: `127.0.0.1:${client.socket.localPort}`, tls: false });
    t.match(login, /rip=192\.0\.2\.10,/, 'Dovecot sees the header\'s client (through the ID)');
  });

  t.test('v2 header', async (t) => {
    const header = encodeV2({ sourceAddress: '192.0.2.11', sourcePort: 40001, destinationAddress: '127.0.0.1', destinationPort: 143 });
    const { client, opened, login } = await viaHeader(t, header, 'lb-v2');
    t.match(opened, { peer: '192.0.2.11:40001', via: `127.0.0.1:${client.socket.localPort}` });
    t.match(login, /rip=192\.0\.2\.11,/);
  });

  t.test('v1 header with IPv6 addresses', async (t) => {
    const { opened, login } = await viaHeader(t, 'PROXY TCP6 2001:db8::10 2001:db8::1 40002 143\r\n', 'lb-v6');
    t.match(opened, { peer: '2001:db8::10:40002' });
    t.match(login, /rip=2001:db8::10,/);
  });

  t.test('the header and the first command in one write: the command is not lost', async (t) => {
    const proxy = await proxyFor(t, dovecot.port, ACCEPTING);
    const client = await connect(t, proxy.port);
    client.send('PROXY TCP4 192.0.2.12 127.0.0.1 40003 143\r\na LOGIN lb-same "lb-same-pw"\r\n');
    t.match(await client.response('a'), /^(\* OK Waiting[^\n]*\n)?\* OK [^\n]*Dovecot[^\n]*\r\na OK /);
    t.match(await waitForLog(proxy, 'connection opened'), { peer: '192.0.2.12:40003' });
    t.match(await loginLine('lb-same'), /rip=192\.0\.2\.12,/);
  });

  t.test('the header in pieces, the command after it in the last piece', async (t) => {
    const proxy = await proxyFor(t, dovecot.port, ACCEPTING);
    const client = await connect(t, proxy.port);
    const bytes = Buffer.from('PROXY TCP4 192.0.2.13 127.0.0.1 40004 143\r\na LOGIN lb-split "lb-split-pw"\r\n', 'latin1');
    for (const [from, to] of [[0, 3], [3, 20], [20, 42], [42, bytes.length]] as const) {
      client.send(bytes.subarray(from, to));
      await sleep(30);
    }
    t.match(await client.response('a'), /(^|\n)a OK /);
    t.match(await waitForLog(proxy, 'connection opened'), { peer: '192.0.2.13:40004' });
    t.match(await loginLine('lb-split'), /rip=192\.0\.2\.13,/);
  });

  t.test('a LOCAL header (health check): the connection\'s own addresses', async (t) => {
    const { client, opened, login } = await viaHeader(t, encodeLocal('v2'), 'lb-local');
    t.match(opened, { peer: `127.0.0.1:${client.socket.localPort}` });
    t.equal(opened.via, undefined, 'no load balancer to name');
    t.match(login, /rip=127\.0\.0\.1,/);
  });
});

t.test('a trusted source without a valid header is closed without a greeting', async (t) => {
  const cases: Array<[string, string, RegExp]> = [
    ['no header, an IMAP command', 'a NOOP\r\n', /not a PROXY header/],
    ['a garbage v1 header', 'PROXY TCP4 192.0.2.10 nowhere 40000 143\r\n', /malformed PROXY v1 header/],
    ['a v2 signature gone wrong', '\r\n\r\n\x00\r\nQUIX\n\x21\x11\x00\x0c', /not a PROXY header/],
  ];
  for (const [name, bytes, reason] of cases) {
    t.test(name, async (t) => {
      const proxy = await proxyFor(t, dovecot.port, ACCEPTING);
      const client = await connect(t, proxy.port);
      client.send(bytes);
      await client.waitClosed(5000);
      t.equal(client.all.length, 0, 'not a byte back: no greeting, no BYE');
      const warning = await waitForLog(proxy, 'connection from a trusted proxy without a valid PROXY header');
      t.match(warning, { level: 40, peer: '127.0.0.1', err: reason });
      t.same(logsWith(proxy, 'connection opened'), [], 'no session was started');
    });
  }
});

t.test('a trusted source whose header names a port above 65535 is cut off, even when re-encoded as v2', async (t) => {
  // The spec's ports are 0..65535; re-encoding 65536 as v2 toward the upstream cannot work.
  const proxy = await proxyFor(t, haproxyPort, { ...ACCEPTING, forwardClientIp: 'none', upstreamProxyProtocol: 'v2' });
  const client = await connect(t, proxy.port);
  client.send('PROXY TCP4 192.0.2.10 127.0.0.1 65536 143\r\n');
  const deadline = Date.now() + 3000;
  while (!client.closed && uncaught.length === 0 && Date.now() < deadline) await sleep(20);
  t.same(uncaught.splice(0).map(String), [], 'nothing thrown in the proxy (in production: the process would exit)');
  t.ok(client.closed, 'the connection is closed');
  t.equal(client.all.toString('latin1'), '', 'not a byte back');
  t.match(await waitForLog(proxy, 'connection from a trusted proxy without a valid PROXY header', 500), { peer: '127.0.0.1' });
});

t.test('--max-connections-per-ip counts the addresses in the PROXY headers, not the balancer', async (t) => {
  const proxy = await proxyFor(t, dovecot.port, { ...ACCEPTING, maxConnectionsPerIp: 1 });
  const open = async (source: string): Promise<string> => {
    const client = await connect(t, proxy.port);
    client.send(`PROXY TCP4 ${source} 127.0.0.1 40100 143\r\n`);
    return greeting(client);
  };
  t.match(await open('192.0.2.31'), /^\* OK /, 'a first client behind the balancer');
  t.match(await open('192.0.2.32'), /^\* OK /, 'another client behind the same balancer');
  t.match(await open('192.0.2.31'), /^\* BYE \[UNAVAILABLE\] Too many connections/, 'the first client again: over its limit');
  t.match(await waitForLog(proxy, 'connection refused'), { peer: '192.0.2.31', limit: 'max-connections-per-ip' });
});

t.test('an untrusted source: a PROXY line is just a bad IMAP command', async (t) => {
  const proxy = await proxyFor(t, dovecot.port, ACCEPTING);
  const client = await connect(t, proxy.port, '127.0.0.2');
  client.send('PROXY TCP4 192.0.2.10 127.0.0.1 40000 143\r\n');
  t.match(await greeting(client), /^\* OK .*Dovecot/, 'greeted at once, no header awaited');
  const answer = await client.readUntil(/ BAD /);
  // Relayed like any command (tag "PROXY", command "TCP4"): Dovecot answers it.
  t.match(answer, /^PROXY BAD /, `answered BAD: ${JSON.stringify(answer)}`);
  t.match(await rawLogin(client, 'lb-untrusted', 'lb-untrusted-pw'), /(^|\n)a OK /, 'the session goes on');
  t.match(await waitForLog(proxy, 'connection opened'), { peer: `127.0.0.2:${client.socket.localPort}` });
  t.equal((await waitForLog(proxy, 'connection opened')).via, undefined);
  const login = await loginLine('lb-untrusted');
  t.match(login, /rip=127\.0\.0\.2,/, 'Dovecot sees the real client');
  t.notMatch(login, /192\.0\.2\.10/);
  t.same(logsWith(proxy, 'connection from a trusted proxy without a valid PROXY header'), []);
});

t.test('implicit TLS: the header in clear, then the TLS handshake', async (t) => {
  const proxy = await proxyFor(t, dovecot.port, {
    ...ACCEPTING,
    listenTls: '127.0.0.1:0',
    tlsCert: [cert.certFile],
    tlsKey: [cert.keyFile],
  });
  const plain = await new Promise<net.Socket>((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port: proxy.tlsPort as number }, () => resolve(socket));
    socket.once('error', reject);
  });
  t.teardown(() => plain.destroy());
  plain.write('PROXY TCP4 192.0.2.20 127.0.0.1 40005 993\r\n');
  const secure = await new Promise<tls.TLSSocket>((resolve, reject) => {
    const socket = tls.connect({ socket: plain, ca: ca.ca, servername: 'localhost' }, () => resolve(socket));
    socket.once('error', reject);
  });
  t.ok(secure.authorized, 'the proxy\'s certificate verified');
  const client = RawClient.fromSocket(secure);
  t.teardown(() => client.close());
  t.match(await greeting(client), /^\* OK .*Dovecot/);
  t.match(await rawLogin(client, 'lb-tls', 'lb-tls-pw'), /(^|\n)a OK /, 'LOGIN allowed: the link is TLS');
  t.match(await waitForLog(proxy, 'connection opened'), {
    peer: '192.0.2.20:40005',
    via: `127.0.0.1:${plain.localPort}`,
    tls: true,
  });
  t.match(await loginLine('lb-tls'), /rip=192\.0\.2\.20,/);
});

t.test('--check through a haproxy listener', async (t) => {
  const configFor = (upstreamProxyProtocol?: 'v1' | 'v2') =>
    validateConfig({
      listen: '127.0.0.1:0',
      upstream: `imap://127.0.0.1:${haproxyPort}`,
      jmapUrl: JMAP_URL,
      upstreamConnectTimeout: '5s',
      ...(upstreamProxyProtocol && { upstreamProxyProtocol }),
    });
  for (const version of ['v2', 'v1'] as const) {
    t.test(`${version}: a ${version === 'v2' ? 'LOCAL' : 'UNKNOWN'} header, then the usual check`, async (t) => {
      const report = await checkUpstream(configFor(version));
      t.match(report, { ok: true, greeting: /^\* OK .*Dovecot/, capabilities: Array });
      t.ok(report.capabilities?.includes('IMAP4rev1'), 'the capability list was read');
    });
  }
  t.test('without a header: not ok', async (t) => {
    const report = await checkUpstream(configFor());
    t.equal(report.ok, false, `error: ${report.error}`);
  });
});
