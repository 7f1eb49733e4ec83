/**
 * Operations: Prometheus metrics and health endpoints, connection limits,
 * login and idle timeouts, graceful drain. The upstream is the SCRIPTED FAKE
 * SERVER (test/harness/scripted-upstream.ts), which lets the test control
 * exactly when the upstream answers or goes away.
 */

import t, { type Test } from 'tap';
import net from 'node:net';
import { startProxy } from './harness/proxy.js';
import { RawClient } from './harness/raw-client.js';
import { startScriptedUpstream, type ScriptedUpstream } from './harness/scripted-upstream.js';
import { startMetricsServer } from '../src/metrics.js';
import { createLogger } from '../src/logger.js';
import type { RawConfig } from '../src/config.js';

const GREETING = '* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] fake\r\n';

async function rig(t: Test, config: Partial<RawConfig> = {}) {
  const upstream: ScriptedUpstream = await startScriptedUpstream();
  const proxy = await startProxy({ upstreamPort: upstream.port, objectId: 'assume', ...config });
  t.teardown(async () => {
    await proxy.close();
    await upstream.close();
  });
  const connect = async () => {
    const client = await RawClient.connect(proxy.port);
    t.teardown(() => client.close());
    const server = await upstream.accept();
    server.send(GREETING);
    await client.readUntil('\n');
    return { client, server };
  };
  return { proxy, upstream, connect };
}

t.test('metrics and health endpoints', async (t) => {
  const { proxy, upstream, connect } = await rig(t);
  const { server: http, address } = await startMetricsServer(
    { host: '127.0.0.1', port: 0 },
    proxy.server.metrics,
    () => proxy.server.readiness(),
    createLogger('silent'),
  );
  t.teardown(() => new Promise<void>((resolve) => http.close(() => resolve())));
  const get = async (path: string) => {
    const response = await fetch(`http://127.0.0.1:${address.port}${path}`);
    return { status: response.status, body: await response.text() };
  };
  t.same(await get('/healthz'), { status: 200, body: 'ok\n' });
  t.equal((await get('/nope')).status, 404);

  const { client, server } = await connect();
  client.send('a LOGIN alice secret\r\n');
  await server.line();
  server.send('a OK [CAPABILITY IMAP4rev1] in\r\n');
  client.send('b GETJMAPACCESS\r\n');
  await client.response('b');
  const metrics = (await get('/metrics')).body;
  t.match(metrics, /^jmapaccess_proxy_connections_open 1$/m);
  t.match(metrics, /^jmapaccess_proxy_connections_total\{listener="plain"\} 1$/m);
  t.match(metrics, /^jmapaccess_proxy_logins_total\{mechanism="LOGIN",result="OK"\} 1$/m);
  t.match(metrics, /^jmapaccess_proxy_jmapaccess_decisions_total\{decision="granted",reason="objectid-assumed"\} 1$/m);
  t.match(metrics, /^jmapaccess_proxy_getjmapaccess_total\{answer="OK"\} 1$/m);
  t.match(metrics, /^jmapaccess_proxy_client_bytes_received_total (\d+)$/m);
  const received = Number(/^jmapaccess_proxy_client_bytes_received_total (\d+)$/m.exec(metrics)?.[1]);
  t.equal(received, 'a LOGIN alice secret\r\nb GETJMAPACCESS\r\n'.length, 'bytes from clients, live sessions included');
  t.notOk(metrics.includes('secret'), 'no secret in the metrics');
  // (After the session's connection was accepted: /readyz opens one of its own to the upstream.)
  t.same(await get('/readyz'), { status: 200, body: 'ready\n' });

  await upstream.close();
  const ready = await get('/readyz');
  t.equal(ready.status, 503, 'not ready when the upstream refuses connections');
  t.match(ready.body, /upstream 127\.0\.0\.1:\d+/);
});

t.test('--max-connections-per-ip: the next connection is told BYE', async (t) => {
  const { proxy, connect } = await rig(t, { maxConnectionsPerIp: 1 });
  await connect();
  const second = await RawClient.connect(proxy.port);
  t.teardown(() => second.close());
  t.equal(await second.readUntil('\n'), '* BYE [UNAVAILABLE] Too many connections, try again later\r\n');
  await second.waitClosed();
  t.ok(proxy.logs().some((l) => l.msg === 'connection refused' && l.limit === 'max-connections-per-ip'));
});

t.test('--max-connections: the same, for the total', async (t) => {
  const { proxy, connect } = await rig(t, { maxConnections: 1 });
  await connect();
  const second = await RawClient.connect(proxy.port);
  t.teardown(() => second.close());
  t.match(await second.readUntil('\n'), /^\* BYE \[UNAVAILABLE\] Too many connections/);
});

t.test('--preauth-timeout: no login in time, BYE and close', async (t) => {
  const { connect } = await rig(t, { preauthTimeout: '300ms' });
  const { client } = await connect();
  t.equal(await client.readUntil('* BYE'), '* BYE [UNAVAILABLE] Timed out waiting for a login\r\n');
  await client.waitClosed();
});

t.test('--idle-timeout: logged in but silent, BYE; activity postpones it', async (t) => {
  const { connect } = await rig(t, { idleTimeout: '400ms', preauthTimeout: '60s' });
  const { client, server } = await connect();
  client.send('a LOGIN alice secret\r\n');
  await server.line();
  server.send('a OK in\r\n');
  await client.response('a');
  for (let i = 0; i < 3; i++) {
    await new Promise((resolve) => setTimeout(resolve, 200));
    client.send(`n${i} NOOP\r\n`);
    await server.line();
    server.send(`n${i} OK\r\n`);
    await client.response(`n${i}`);
  }
  t.notOk(client.closed, 'still open after 600 ms of regular activity');
  t.equal(await client.readUntil('* BYE'), '* BYE Autologout; idle for too long\r\n');
  await client.waitClosed();
});

t.test('drain: no new connections, open sessions go on, then BYE when the grace ends', async (t) => {
  const { proxy, connect } = await rig(t);
  const { client, server } = await connect();
  const drained = proxy.server.drain(600);
  const refused = await new Promise<string>((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port: proxy.port });
    socket.once('connect', () => resolve('connected'));
    socket.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? 'error'));
  });
  t.equal(refused, 'ECONNREFUSED', 'the listener is closed');
  t.same(await proxy.server.readiness(), { ready: false, reason: 'draining' });
  client.send('a NOOP\r\n');
  t.equal(await server.line(), 'a NOOP', 'the open session still relays');
  server.send('a OK\r\n');
  await client.response('a');
  t.equal(await client.readUntil('* BYE'), '* BYE [UNAVAILABLE] Server shutting down\r\n', 'told BYE when the grace ended');
  await drained;
  t.equal(proxy.server.connectionCount, 0);
});

t.test('drain ends early when the last session ends', async (t) => {
  const { proxy, connect } = await rig(t);
  const { client } = await connect();
  const started = Date.now();
  const drained = proxy.server.drain(30_000);
  client.close();
  await drained;
  t.ok(Date.now() - started < 5000, `drained in ${Date.now() - started} ms, not 30 s`);
});
