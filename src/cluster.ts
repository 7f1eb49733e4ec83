/**
 * `--workers N`: one primary process and N workers (node:cluster) sharing
 * the listening sockets, so that one host can use all its cores.
 *
 * The primary holds no client connection. It forks the workers, replaces
 * one that dies (with a backoff, giving up after repeated crashes), relays
 * SIGHUP and SIGTERM/SIGINT to them over IPC, and serves --metrics-listen
 * with the metrics of all workers added up. Each worker runs the same
 * ProxyServer as a single process does (listeners, TLS, PROXY protocol,
 * sessions), with --max-connections divided among the workers.
 *
 * Workers act on the primary's orders only: signals sent to them directly
 * are logged and ignored, because a terminal's Ctrl-C (and systemd's
 * default control-group SIGTERM) reaches every process of the group at
 * once, and a worker must not start its own drain or die behind the
 * primary's back. A worker whose primary disappears exits (node:cluster).
 */

import cluster, { type Worker } from 'node:cluster';
import type http from 'node:http';
import { AggregatorRegistry, Counter, Gauge, Registry } from 'prom-client';
import type { Logger } from 'pino';
import { describeConfig, type Config } from './config.js';
import { ProxyServer } from './server.js';
import { probeUpstream, startMetricsServer, type MetricsSource, type Readiness } from './metrics.js';
import { CertificateError } from './tls.js';

/** Tells a forked worker which slot (1..N) it fills; a replacement takes over its predecessor's slot. */
const SLOT_ENV = 'JMAPACCESS_CLUSTER_SLOT';

/** A worker that has not answered a metrics request by then is represented by its last answer. */
const METRICS_TIMEOUT_MS = 2000;
/** Crashes counted for the backoff and the give-up decision are those of the last minute. */
const CRASH_WINDOW_MS = 60_000;
/** This many crashes within CRASH_WINDOW_MS and the primary gives up (exit 1). */
const MAX_CRASHES = 5;
/** First replacement delay; doubled for each further crash within the window. */
const RESTART_BASE_DELAY_MS = 250;
const RESTART_MAX_DELAY_MS = 30_000;
/** After the drain order, workers get the grace period plus this long before they are killed. */
const STOP_SLACK_MS = 10_000;

/** A metric as prom-client's getMetricsAsJSON() returns it (its own typings are off). */
interface MetricJson {
  name: string;
  help: string;
  type: string;
  aggregator: string;
  values: Array<{ value: number; labels: Record<string, string | number>; metricName?: string }>;
}

type ToWorker =
  | { type: 'jmapaccess:drain'; graceMs: number; signal: string }
  | { type: 'jmapaccess:stop-now'; reason: string }
  | { type: 'jmapaccess:reload' }
  | { type: 'jmapaccess:metrics-request'; id: number };

type ToPrimary =
  | { type: 'jmapaccess:listening'; listen: string; listenTls: string | null }
  | { type: 'jmapaccess:metrics'; id: number; metrics: MetricJson[] };

/** --max-connections is a promise for the host: each worker takes its share, rounded up. */
export function perWorkerConfig(config: Config): Config {
  const maxConnections = config.maxConnections === 0 ? 0 : Math.ceil(config.maxConnections / config.workers);
  // --max-connections-per-ip stays as given in every worker: see README (Workers).
  return { ...config, maxConnections };
}

/**
 * SIGHUP: reads --jmap-url-map again (each process that serves sessions
 * holds its own copy) and logs the outcome; on an error the previous map
 * stays in use. Nothing to do without a map file.
 */
export function reloadJmapUrlMap(config: Config, log: Logger): void {
  const file = config.jmapUrls.mapFile;
  if (!file) return;
  const result = config.jmapUrls.reload();
  if (result.ok) log.info({ jmapUrlMap: file, entries: result.entries }, 'JMAP URL map reloaded');
  else log.error({ jmapUrlMap: file, errors: result.errors, entries: config.jmapUrls.mapEntries }, 'JMAP URL map reload failed; previous map kept');
}

// ---------------------------------------------------------------------------
// The worker side.

export async function runWorker(config: Config, processLog: Logger): Promise<void> {
  const slot = Number(process.env[SLOT_ENV] ?? cluster.worker?.id ?? 0);
  const log = processLog.child({ worker: slot, pid: process.pid });
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(signal, () => log.debug({ signal }, 'signal ignored: workers act on the primary process\'s orders'));
  }
  const workerConfig = perWorkerConfig(config);
  let server: ProxyServer;
  try {
    server = new ProxyServer(workerConfig, log);
  } catch (err) {
    if (!(err instanceof CertificateError)) throw err;
    log.fatal({ err: err.message }, 'cannot load the certificates');
    log.flush();
    process.exit(2);
  }
  let stopping = false;
  const send = (message: ToPrimary) => {
    try {
      process.send?.(message);
    } catch {
      // The primary is gone; node:cluster makes this worker exit.
    }
  };
  process.on('message', (message: ToWorker) => {
    switch (message?.type) {
      case 'jmapaccess:metrics-request':
        void server.metrics.registry.getMetricsAsJSON().then(
          (metrics) => send({ type: 'jmapaccess:metrics', id: message.id, metrics: metrics as unknown as MetricJson[] }),
          (err: Error) => log.warn({ err: err.message }, 'cannot collect metrics'),
        );
        return;
      case 'jmapaccess:reload':
        reloadJmapUrlMap(config, log);
        log.info(
          { config: describeConfig(config), maxConnectionsThisWorker: workerConfig.maxConnections },
          'SIGHUP: effective configuration',
        );
        server.reloadCertificates('SIGHUP');
        return;
      case 'jmapaccess:drain': {
        if (stopping) return;
        stopping = true;
        log.info({ signal: message.signal, graceSeconds: message.graceMs / 1000 }, 'stopping: no new connections, sessions finishing');
        setTimeout(() => process.exit(0), message.graceMs + 5000).unref();
        void server.drain(message.graceMs).then(() => {
          log.info('stopped');
          log.flush();
          process.exit(0);
        });
        return;
      }
      case 'jmapaccess:stop-now':
        stopping = true;
        log.info({ reason: message.reason }, 'stopping now');
        void server.close().then(() => {
          log.flush();
          process.exit(0);
        });
        return;
      default:
    }
  });
  try {
    const { plain, tls } = await server.listen();
    send({ type: 'jmapaccess:listening', listen: `${plain.address}:${plain.port}`, listenTls: tls ? `${tls.address}:${tls.port}` : null });
  } catch (err) {
    log.fatal({ err: (err as Error).message }, 'cannot listen');
    log.flush();
    process.exit(1);
  }
}

// ---------------------------------------------------------------------------
// The primary side.

interface Slot {
  /** 1..N, stable across replacements (the `worker` of log lines and metric labels). */
  readonly index: number;
  worker: Worker | null;
  state: 'starting' | 'listening' | 'draining' | 'down';
  /** The worker's last metrics answer, used when it is slow to answer and kept (counters) when it exits. */
  snapshot: MetricJson[] | null;
  restartTimer: NodeJS.Timeout | null;
  readonly pending: Map<number, (metrics: MetricJson[] | null) => void>;
}

export async function runPrimary(config: Config, log: Logger): Promise<void> {
  await new Primary(config, log).start();
}

class Primary {
  private readonly config: Config;
  private readonly log: Logger;
  private readonly slots: Slot[];
  /** Every slot has had a listening worker once: start-up is over. */
  private started = false;
  private stopping = false;
  private exitCode = 0;
  private readonly crashes: number[] = [];
  private nextRequestId = 1;
  private metricsServer: http.Server | null = null;
  /** Counters and histograms of workers that have exited, so that the sums never go down. */
  private retired: MetricJson[] = [];
  private readonly registry = new Registry();
  private readonly restarts: Counter;

  constructor(config: Config, log: Logger) {
    this.config = config;
    this.log = log;
    this.slots = Array.from({ length: config.workers }, (_, i) => ({
      index: i + 1,
      worker: null,
      state: 'down' as const,
      snapshot: null,
      restartTimer: null,
      pending: new Map(),
    }));
    const slots = this.slots;
    new Gauge({
      name: 'jmapaccess_proxy_workers',
      help: 'Worker processes by state (listening, starting, draining, down)',
      labelNames: ['state'],
      registers: [this.registry],
      collect() {
        this.reset();
        for (const state of ['listening', 'starting', 'draining', 'down'] as const) {
          this.set({ state }, slots.filter((s) => s.state === state).length);
        }
      },
    });
    this.restarts = new Counter({
      name: 'jmapaccess_proxy_worker_restarts_total',
      help: 'Workers replaced after exiting on their own',
      registers: [this.registry],
    });
  }

  async start(): Promise<void> {
    // SCHED_RR: the primary accepts each connection and hands it to the next
    // worker in turn. IMAP sessions last hours, so an uneven spread at accept
    // time stays uneven (the kernel's choice under SCHED_NONE piles them on
    // one worker), while the primary's cost per accept is negligible at IMAP
    // connection rates. NODE_CLUSTER_SCHED_POLICY=none still overrides it.
    if (!process.env.NODE_CLUSTER_SCHED_POLICY) cluster.schedulingPolicy = cluster.SCHED_RR;
    const policy = cluster.schedulingPolicy === cluster.SCHED_RR ? 'rr' : 'none';
    if (this.config.metricsListen) {
      try {
        const source: MetricsSource = {
          registry: { metrics: () => this.scrape(), contentType: Registry.PROMETHEUS_CONTENT_TYPE },
        };
        const { server, address } = await startMetricsServer(this.config.metricsListen, source, () => this.readiness(), this.log);
        this.metricsServer = server;
        this.log.info({ metricsListen: `${address.address}:${address.port}` }, 'metrics listening');
      } catch (err) {
        this.log.fatal({ err: (err as Error).message }, 'cannot listen');
        this.log.flush();
        process.exit(1);
      }
    }
    process.on('SIGHUP', () => this.reload());
    process.on('SIGTERM', () => this.stop('SIGTERM'));
    process.on('SIGINT', () => this.stop('SIGINT'));
    this.log.info({ workers: this.config.workers, schedulingPolicy: policy, pid: process.pid }, 'starting workers');
    for (const slot of this.slots) this.fork(slot);
  }

  private fork(slot: Slot): void {
    const worker = cluster.fork({ [SLOT_ENV]: String(slot.index) });
    slot.worker = worker;
    slot.state = 'starting';
    const startedAt = Date.now();
    this.log.info({ worker: slot.index, pid: worker.process.pid }, 'worker started');
    worker.on('message', (message: ToPrimary) => this.onMessage(slot, worker, message));
    worker.on('exit', (code, signal) => this.onExit(slot, worker, code, signal, startedAt));
    // Sending to a worker that is going away is not an error worth crashing for.
    worker.on('error', (err) => this.log.debug({ worker: slot.index, err: err.message }, 'worker IPC error'));
  }

  private send(slot: Slot, message: ToWorker): void {
    const worker = slot.worker;
    if (!worker || !worker.isConnected()) return;
    try {
      worker.send(message);
    } catch {
      // exiting
    }
  }

  private onMessage(slot: Slot, worker: Worker, message: ToPrimary): void {
    if (slot.worker !== worker) return;
    if (message?.type === 'jmapaccess:metrics') {
      slot.snapshot = message.metrics;
      slot.pending.get(message.id)?.(message.metrics);
      slot.pending.delete(message.id);
      return;
    }
    if (message?.type !== 'jmapaccess:listening') return;
    if (this.stopping) return;
    slot.state = 'listening';
    if (!this.started && this.slots.every((s) => s.state === 'listening')) {
      this.started = true;
      this.log.info({ workers: this.slots.length, listen: message.listen, listenTls: message.listenTls ?? undefined }, 'all workers listening');
    }
  }

  private onExit(slot: Slot, worker: Worker, code: number | null, signal: string | null, startedAt: number): void {
    if (slot.worker !== worker) return;
    const wasStarting = slot.state === 'starting';
    slot.worker = null;
    slot.state = 'down';
    for (const resolve of slot.pending.values()) resolve(slot.snapshot);
    slot.pending.clear();
    this.retire(slot);
    const fields = { worker: slot.index, pid: worker.process.pid, code, signal: signal ?? undefined, ranSeconds: (Date.now() - startedAt) / 1000 };
    if (this.stopping) {
      this.log.info(fields, 'worker exited');
      this.exitIfAllDown();
      return;
    }
    if (!this.started && wasStarting) {
      // The same flags will fail the same way: no retry (a bad address, a port in use...).
      this.log.fatal(fields, 'a worker failed to start; stopping');
      this.abort(1, 'another worker failed to start');
      return;
    }
    const now = Date.now();
    this.crashes.push(now);
    while ((this.crashes[0] ?? now) < now - CRASH_WINDOW_MS) this.crashes.shift();
    if (this.crashes.length >= MAX_CRASHES) {
      this.log.fatal({ ...fields, crashes: this.crashes.length, withinSeconds: CRASH_WINDOW_MS / 1000 }, 'workers keep exiting; giving up');
      this.abort(1, 'workers keep exiting');
      return;
    }
    const delay = Math.min(RESTART_MAX_DELAY_MS, RESTART_BASE_DELAY_MS * 2 ** (this.crashes.length - 1));
    this.log.error({ ...fields, restartInMs: delay }, 'worker exited unexpectedly; replacing it');
    this.restarts.inc();
    slot.restartTimer = setTimeout(() => {
      slot.restartTimer = null;
      if (!this.stopping) this.fork(slot);
    }, delay);
  }

  /** Keeps a dead worker's counters and histograms in the sums (its gauges go with it). */
  private retire(slot: Slot): void {
    const snapshot = slot.snapshot;
    slot.snapshot = null;
    if (!snapshot) return;
    const monotonic = snapshot.filter((m) => m.type === 'counter' || m.type === 'histogram');
    void AggregatorRegistry.aggregate([this.retired, monotonic])
      .getMetricsAsJSON()
      .then((merged) => {
        this.retired = merged as unknown as MetricJson[];
      });
  }

  private reload(): void {
    const live = this.slots.filter((s) => s.worker);
    this.log.info({ workers: live.map((s) => s.index) }, 'SIGHUP: forwarded to the workers');
    for (const slot of live) this.send(slot, { type: 'jmapaccess:reload' });
  }

  private stop(signal: string): void {
    if (this.stopping) {
      // A second signal: no more grace.
      this.log.info({ signal }, 'stopping now');
      for (const slot of this.slots) this.send(slot, { type: 'jmapaccess:stop-now', reason: `second ${signal}` });
      return;
    }
    this.stopping = true;
    this.log.info({ signal, graceSeconds: this.config.shutdownGraceMs / 1000, workers: this.slots.length }, 'stopping: no new connections, sessions finishing');
    for (const slot of this.slots) {
      if (slot.restartTimer) clearTimeout(slot.restartTimer);
      slot.restartTimer = null;
      if (!slot.worker) continue;
      slot.state = 'draining';
      this.send(slot, { type: 'jmapaccess:drain', graceMs: this.config.shutdownGraceMs, signal });
    }
    this.killAfter(this.config.shutdownGraceMs + STOP_SLACK_MS);
    this.exitIfAllDown();
  }

  /** Stops every worker at once (their sessions are told BYE) and exits with `code`. */
  private abort(code: number, reason: string): void {
    this.exitCode = code;
    this.stopping = true;
    for (const slot of this.slots) {
      if (slot.restartTimer) clearTimeout(slot.restartTimer);
      slot.restartTimer = null;
      this.send(slot, { type: 'jmapaccess:stop-now', reason });
    }
    this.killAfter(STOP_SLACK_MS);
    this.exitIfAllDown();
  }

  private killAfter(ms: number): void {
    setTimeout(() => {
      const left = this.slots.filter((s) => s.worker);
      this.log.error({ workers: left.map((s) => s.index) }, 'workers still running; killing them');
      for (const slot of left) slot.worker?.process.kill('SIGKILL');
      this.log.flush();
      process.exit(1);
    }, ms).unref();
  }

  private exitIfAllDown(): void {
    if (this.slots.some((s) => s.worker)) return;
    if (this.exitCode === 0) this.log.info('stopped');
    this.log.flush();
    this.metricsServer?.close();
    process.exit(this.exitCode);
  }

  /** /readyz: not draining, start-up over, at least one worker listening, and the upstream answers. */
  private async readiness(): Promise<Readiness> {
    if (this.stopping) return { ready: false, reason: 'draining' };
    const listening = this.slots.filter((s) => s.state === 'listening').length;
    const total = this.slots.length;
    if (!this.started) return { ready: false, reason: `starting: ${listening} of ${total} workers listening` };
    if (listening === 0) return { ready: false, reason: `no worker listening (0 of ${total})` };
    const upstream = await probeUpstream(this.config.upstream);
    if (!upstream.ready) return upstream;
    return { ready: true, reason: listening === total ? 'ready' : `ready (${listening} of ${total} workers listening)` };
  }

  private askMetrics(slot: Slot): Promise<MetricJson[] | null> {
    if (!slot.worker || slot.state === 'starting' || slot.state === 'down') return Promise.resolve(slot.snapshot);
    const id = this.nextRequestId++;
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        slot.pending.delete(id);
        resolve(slot.snapshot);
      }, METRICS_TIMEOUT_MS);
      slot.pending.set(id, (metrics) => {
        clearTimeout(timer);
        resolve(metrics);
      });
      this.send(slot, { type: 'jmapaccess:metrics-request', id });
    });
  }

  /** /metrics: every worker's metrics added up (prom-client's aggregation rules), plus per-worker and cluster series. */
  private async scrape(): Promise<string> {
    const answers = await Promise.all(this.slots.map(async (slot) => ({ slot, metrics: await this.askMetrics(slot) })));
    const perWorker = (name: string, help: string, type: string, from: string): MetricJson => ({
      name,
      help,
      type,
      aggregator: 'sum',
      values: answers
        .filter((a) => a.metrics && a.slot.worker)
        .map(({ slot, metrics }) => ({
          labels: { worker: slot.index },
          value: (metrics?.find((m) => m.name === from)?.values ?? []).reduce((sum, v) => sum + v.value, 0),
        })),
    });
    const all: MetricJson[][] = [
      ...answers.flatMap((a) => (a.metrics ? [a.metrics] : [])),
      this.retired,
      (await this.registry.getMetricsAsJSON()) as unknown as MetricJson[],
      [
        perWorker('jmapaccess_proxy_worker_connections_open', 'Client connections open now, per worker', 'gauge', 'jmapaccess_proxy_connections_open'),
        perWorker(
          'jmapaccess_proxy_worker_connections_total',
          'Client connections accepted by the current process of each worker slot',
          'counter',
          'jmapaccess_proxy_connections_total',
        ),
      ],
    ];
    return AggregatorRegistry.aggregate(all).metrics();
  }
}
