/**
 * Prometheus metrics and the health endpoints (`--metrics-listen`).
 *
 * Counters are bumped at events that happen a few times per connection
 * (logins, decisions, failures), never per chunk: byte totals are read from
 * the sockets when Prometheus scrapes.
 */

import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { Logger } from 'pino';
import type { HostPort } from './config.js';

export interface ByteTotals {
  fromClient: number;
  toClient: number;
}

export class Metrics {
  readonly registry = new Registry();
  readonly connectionsOpen: Gauge;
  readonly connectionsTotal: Counter<'listener'>;
  readonly connectionsRefused: Counter<'reason'>;
  readonly logins: Counter<'mechanism' | 'result'>;
  readonly jmapAccessDecisions: Counter<'decision' | 'reason'>;
  readonly getJmapAccess: Counter<'answer'>;
  readonly upstreamConnectFailures: Counter<'code'>;
  readonly upstreamConnectSeconds: Histogram;
  readonly protocolErrors: Counter<'side' | 'kind'>;
  readonly sessionsClosed: Counter<'reason'>;
  readonly jmapVerify: Counter<'result' | 'reason' | 'cache'>;
  readonly jmapVerifySeconds: Histogram;

  constructor(bytes: () => ByteTotals) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry, prefix: 'jmapaccess_proxy_' });
    // These walk every handle at each scrape (process._getActiveHandles()
    // and friends): with 8,000 connections a scrape took 50-110 ms of the
    // event loop (bench/README.md). connections_open says what they would.
    for (const kind of ['resources', 'handles', 'requests']) {
      this.registry.removeSingleMetric(`jmapaccess_proxy_nodejs_active_${kind}`);
      this.registry.removeSingleMetric(`jmapaccess_proxy_nodejs_active_${kind}_total`);
    }
    this.connectionsOpen = new Gauge({ name: 'jmapaccess_proxy_connections_open', help: 'Client connections open now', registers });
    this.connectionsTotal = new Counter({
      name: 'jmapaccess_proxy_connections_total',
      help: 'Client connections accepted',
      labelNames: ['listener'],
      registers,
    });
    this.connectionsRefused = new Counter({
      name: 'jmapaccess_proxy_connections_refused_total',
      help: 'Client connections refused by a limit',
      labelNames: ['reason'],
      registers,
    });
    this.logins = new Counter({
      name: 'jmapaccess_proxy_logins_total',
      help: 'LOGIN/AUTHENTICATE outcomes by mechanism (LOGIN = the LOGIN command)',
      labelNames: ['mechanism', 'result'],
      registers,
    });
    this.jmapAccessDecisions = new Counter({
      name: 'jmapaccess_proxy_jmapaccess_decisions_total',
      help: 'JMAPACCESS decisions at login: granted, refused or pending (OBJECTID not known yet), with the reason',
      labelNames: ['decision', 'reason'],
      registers,
    });
    this.getJmapAccess = new Counter({
      name: 'jmapaccess_proxy_getjmapaccess_total',
      help: 'GETJMAPACCESS commands answered, by answer (OK or BAD)',
      labelNames: ['answer'],
      registers,
    });
    this.upstreamConnectFailures = new Counter({
      name: 'jmapaccess_proxy_upstream_connect_failures_total',
      help: 'Failed connections to the upstream, by error code',
      labelNames: ['code'],
      registers,
    });
    this.upstreamConnectSeconds = new Histogram({
      name: 'jmapaccess_proxy_upstream_connect_seconds',
      help: 'Time to a usable upstream link (TCP, TLS, STARTTLS)',
      buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5],
      registers,
    });
    this.protocolErrors = new Counter({
      name: 'jmapaccess_proxy_protocol_errors_total',
      help: 'Protocol errors by side (client, upstream) and kind',
      labelNames: ['side', 'kind'],
      registers,
    });
    this.sessionsClosed = new Counter({
      name: 'jmapaccess_proxy_sessions_closed_total',
      help: 'Sessions ended, by reason',
      labelNames: ['reason'],
      registers,
    });
    this.jmapVerify = new Counter({
      name: 'jmapaccess_proxy_jmap_verify_total',
      help: 'JMAP credential checks (--jmap-verify): verified or refused, the reason (ok, unauthorized, timeout...), and whether the cache answered',
      labelNames: ['result', 'reason', 'cache'],
      registers,
    });
    this.jmapVerifySeconds = new Histogram({
      name: 'jmapaccess_proxy_jmap_verify_seconds',
      help: 'Duration of JMAP session probes actually sent (cache misses), redirects included',
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5],
      registers,
    });
    new Counter({
      name: 'jmapaccess_proxy_client_bytes_received_total',
      help: 'Bytes received from clients (as on the wire: compressed/encrypted where so)',
      registers,
      collect() {
        this.reset();
        this.inc(bytes().fromClient);
      },
    });
    new Counter({
      name: 'jmapaccess_proxy_client_bytes_sent_total',
      help: 'Bytes sent to clients (as on the wire)',
      registers,
      collect() {
        this.reset();
        this.inc(bytes().toClient);
      },
    });
  }
}

export interface Readiness {
  ready: boolean;
  reason: string;
}

/**
 * What /metrics serves: a process's own Metrics, or (with --workers) the
 * primary's aggregation over its workers.
 */
export interface MetricsSource {
  readonly registry: { metrics(): Promise<string>; readonly contentType: string };
}

/** The upstream half of /readyz: does the upstream accept a TCP connection within 2 s? */
export function probeUpstream({ host, port }: HostPort): Promise<Readiness> {
  return new Promise((resolve) => {
    const socket = net.connect({ host, port });
    const done = (readiness: Readiness) => {
      socket.destroy();
      resolve(readiness);
    };
    socket.setTimeout(2000, () => done({ ready: false, reason: `upstream ${host}:${port}: no answer within 2 s` }));
    socket.once('connect', () => done({ ready: true, reason: 'ready' }));
    socket.once('error', (err) => done({ ready: false, reason: `upstream ${host}:${port}: ${err.message}` }));
  });
}

/**
 * `GET /healthz`: the process is alive. `GET /readyz`: the upstream accepts
 * connections and the proxy is not draining. `GET /metrics`: Prometheus.
 */
export function startMetricsServer(
  listen: HostPort,
  metrics: MetricsSource,
  readiness: () => Promise<Readiness>,
  log: Logger,
): Promise<{ server: http.Server; address: AddressInfo }> {
  const server = http.createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    const reply = (status: number, body: string, type = 'text/plain; charset=utf-8') => {
      res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
      res.end(body);
    };
    if (req.method !== 'GET' && req.method !== 'HEAD') return reply(405, 'method not allowed\n');
    if (path === '/healthz') return reply(200, 'ok\n');
    if (path === '/readyz') {
      void readiness().then(
        (r) => reply(r.ready ? 200 : 503, `${r.reason}\n`),
        (err: Error) => reply(503, `${err.message}\n`),
      );
      return;
    }
    if (path === '/metrics') {
      void metrics.registry.metrics().then(
        (text) => reply(200, text, metrics.registry.contentType),
        (err: Error) => reply(500, `${err.message}\n`),
      );
      return;
    }
    reply(404, 'not found\n');
  });
  // Scrapers and probes come and go; a reset connection is nothing to log loudly.
  server.on('clientError', (_err, socket) => socket.destroy());
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: listen.host, port: listen.port }, () => {
      server.off('error', reject);
      server.on('error', (err) => log.error({ err: err.message }, 'metrics listener error'));
      resolve({ server, address: server.address() as AddressInfo });
    });
  });
}
