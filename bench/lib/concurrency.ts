/**
 * The `concurrency` workload: thousands of connections that never log in
 * and hundreds of logged-in sessions in IDLE, all held open for a while.
 *
 * What it measures on the target's side (through a probe run.ts supplies):
 * the proxy's RSS per connection of each kind, its event-loop delay while
 * it holds them (prom-client's monitorEventLoopDelay histogram, read from
 * the proxy's /metrics), Dovecot's memory for comparison, and that every
 * connection is still there and answering at the end.
 *
 * It does not depend on when the proxy opens its upstream connection (at
 * accept or at the client's first command): it only relies on the greeting,
 * the tagged answers, and the proxy's own connection gauge.
 */

import http from 'node:http';
import { ImapClient } from './imap.js';
import type { Ctx, Outcome } from './workloads.js';

export interface ConcurrencyParams {
  /** connections that get their greeting and then stay silent, not logged in */
  preauth: number;
  /** sessions that LOGIN, SELECT INBOX and IDLE */
  idle: number;
  /** how long all of them are held, seconds */
  holdS: number;
  /** before the baseline: this many of each, opened, checked and closed (JIT, pools, first-use allocations) */
  warmPreauth: number;
  warmIdle: number;
  /** connection attempts in flight at once (somaxconn is 4096 here: never rely on the backlog) */
  connectInFlight: number;
  /** IDLE sessions being set up at once (each LOGIN makes Dovecot fork an imap process) */
  loginInFlight: number;
  /** checks at the end (NOOP, DONE) in flight at once */
  checkInFlight: number;
  /** seconds between two /metrics scrapes during the hold */
  scrapeEveryS: number;
}

export interface ConcurrencyProbe {
  /** VmRSS and VmHWM of the process between client and Dovecot, KiB; null for direct */
  middleMemory(): { rss: number; hwm: number } | null;
  /** runs a full garbage collection in the middle process and resolves when it is done (no-op for direct) */
  collect(): Promise<void>;
  /** CPU seconds of the middle process so far; null for direct */
  middleCpuS(): number | null;
  /** Dovecot's process tree: summed Pss, KiB, and the number of processes */
  dovecotMemory(): { pss: number; processes: number };
  /** the proxy's /metrics, parsed into name (with labels, as written) -> value, with the request's round trip; null for direct */
  scrape(): Promise<{ values: Map<string, number>; ms: number } | null>;
  /** resolves when the target holds no session any more (or after a bounded wait) */
  drained(): Promise<void>;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

const LAG = 'jmapaccess_proxy_nodejs_eventloop_lag_';
/** committed bytes of each V8 heap space (labelled by space) */
const HEAP_SPACE = 'jmapaccess_proxy_nodejs_heap_space_size_total_bytes';
/** V8's young generation counts as shrunk (by its memory reducer) at or below this committed size */
const YOUNG_SETTLED_KIB = 2048;
const CHECK_TIMEOUT_MS = 30_000;

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** Runs job(0..n-1) with at most `limit` in flight. */
async function pool(n: number, limit: number, job: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < n) await job(next++);
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, n)) }, worker));
}

interface Held {
  client: ImapClient;
  /** IDLE sessions: the tagged completion of the IDLE command */
  idleDone?: Promise<string>;
}

/** A set of connections of one kind, and what went wrong with them. */
class ConnSet {
  readonly open: Held[] = [];
  failedToOpen = 0;
  /** connections that closed before the check at the end (dropped) */
  closedEarly = 0;
  firstError: string | null = null;
  /** set while we close them ourselves, so their closes do not count as drops */
  private closing = false;

  constructor(
    private readonly ctx: Ctx,
    readonly kind: 'pre-auth' | 'IDLE',
  ) {}

  note(err: unknown): void {
    if (this.firstError === null) this.firstError = err instanceof Error ? err.message : String(err);
  }

  async add(make: () => Promise<Held>): Promise<void> {
    try {
      const h = await make();
      this.open.push(h);
    } catch (err) {
      this.failedToOpen++;
      this.note(err);
    }
  }

  track(c: ImapClient): void {
    this.ctx.clients.add(c);
    c.socket.once('close', () => {
      this.ctx.clients.delete(c);
      if (!this.closing) this.closedEarly++;
    });
  }

  /** Asks every connection for a tagged answer; returns how many gave one. */
  async check(inFlight: number): Promise<number> {
    let ok = 0;
    await pool(this.open.length, inFlight, async (i) => {
      const h = this.open[i] as Held;
      try {
        if (h.idleDone) {
          h.client.socket.write('DONE\r\n', 'latin1');
          await withTimeout(h.idleDone, CHECK_TIMEOUT_MS, 'DONE');
        } else {
          await withTimeout(h.client.command('a', 'NOOP'), CHECK_TIMEOUT_MS, 'NOOP');
        }
        ok++;
      } catch (err) {
        this.note(err);
      }
    });
    return ok;
  }

  close(): void {
    this.closing = true;
    for (const h of this.open) h.client.close();
  }
}

async function openPreauth(ctx: Ctx, set: ConnSet): Promise<Held> {
  const client = await ImapClient.connect(ctx.port);
  set.track(client);
  return { client };
}

async function openIdle(ctx: Ctx, set: ConnSet): Promise<Held> {
  const client = await ImapClient.connect(ctx.port);
  set.track(client);
  try {
    await client.login(ctx.user, ctx.password);
    await client.command('S', 'SELECT INBOX');
    const idleDone = client.expectTagged('I');
    // Observed at the check; until then a failure only has to be recorded, not thrown.
    idleDone.catch(() => {});
    const go = client.expectContinuation();
    client.socket.write('I IDLE\r\n', 'latin1');
    await Promise.race([
      go,
      idleDone.then((line) => {
        throw new Error(`IDLE ended at once: ${line.trimEnd()}`);
      }),
    ]);
    return { client, idleDone };
  } catch (err) {
    client.close();
    throw err;
  }
}

async function openMany(ctx: Ctx, set: ConnSet, n: number, inFlight: number): Promise<void> {
  const make = set.kind === 'IDLE' ? () => openIdle(ctx, set) : () => openPreauth(ctx, set);
  await pool(n, inFlight, () => set.add(make));
}

export async function concurrency(ctx: Ctx, p: ConcurrencyParams, probe: ConcurrencyProbe, wallOf: () => number): Promise<Outcome> {
  const metrics: Record<string, number> = {};
  const detail: Record<string, unknown> = {};
  const kib = (x: number) => Math.round(x * 10) / 10;

  // --- warm-up, then the baseline
  if (p.warmPreauth + p.warmIdle > 0) {
    const wp = new ConnSet(ctx, 'pre-auth');
    const wi = new ConnSet(ctx, 'IDLE');
    await openMany(ctx, wp, p.warmPreauth, p.connectInFlight);
    await openMany(ctx, wi, p.warmIdle, p.loginInFlight);
    const ok = (await wp.check(p.checkInFlight)) + (await wi.check(p.checkInFlight));
    wp.close();
    wi.close();
    if (ok !== p.warmPreauth + p.warmIdle) {
      throw new Error(`warm-up: only ${ok} of ${p.warmPreauth + p.warmIdle} connections answered (${wp.firstError ?? wi.firstError})`);
    }
  }
  await probe.drained();
  await sleep(1000);
  // Each reading of the proxy: RSS as it is, then RSS right after a full GC
  // (the garbage of a ramp is collected whenever V8 likes), and the committed
  // size of V8's young generation then. A ramp of thousands of connections
  // makes V8 grow its young generation to the maximum (32 MiB committed, ~4
  // KiB per pre-auth connection of 8,000), and only V8's memory reducer
  // shrinks it again, 10–30 s after the allocation stops (measured; a forced
  // GC, even a last-resort one, does not). That memory follows the recent
  // allocation rate, not the connections held. So the settled figures compare
  // readings taken with the young generation shrunk: the baseline (we wait for
  // it) and the end of the hold (V8 has shrunk it by then); the IDLE ramp's
  // delta is taken between two readings with the same, grown, young generation.
  const read = async () => {
    const raw = probe.middleMemory();
    await probe.collect();
    // V8 gives the freed pages back from a background thread, shortly after the GC
    await sleep(1000);
    const gc = probe.middleMemory();
    const s = await probe.scrape();
    const young = (s?.values.get(`${HEAP_SPACE}{space="new"}`) ?? NaN) / 1024;
    // V8 heap in use right after the GC: live JS objects only, exact to the byte
    // (RSS moves by pages and by a MiB or two on its own); plus Buffers' memory
    const heap = (s?.values.get('jmapaccess_proxy_nodejs_heap_size_used_bytes') ?? NaN) / 1024;
    const external = (s?.values.get('jmapaccess_proxy_nodejs_external_memory_bytes') ?? NaN) / 1024;
    return raw && gc ? { raw: raw.rss, gc: gc.rss, hwm: gc.hwm, young, heap, external } : null;
  };
  let base = await read();
  if (base && !(base.young <= YOUNG_SETTLED_KIB)) {
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline && base && !(base.young <= YOUNG_SETTLED_KIB)) {
      await sleep(2000);
      base = await read();
    }
  }
  const dBase = probe.dovecotMemory();
  await probe.scrape(); // resets the proxy's loop-delay histogram: the next reading covers the ramp

  // --- pre-auth connections
  const pre = new ConnSet(ctx, 'pre-auth');
  const idle = new ConnSet(ctx, 'IDLE');
  let cpuClient = process.cpuUsage();
  let cpuMiddle = probe.middleCpuS();
  let t = Date.now();
  const preStarted = t;
  await openMany(ctx, pre, p.preauth, p.connectInFlight);
  const preRampS = (Date.now() - t) / 1000;
  const clientPre = process.cpuUsage(cpuClient);
  const middlePre = cpuMiddle === null ? null : (probe.middleCpuS() as number) - cpuMiddle;
  await sleep(1000);
  const afterPre = await read();
  const dPre = probe.dovecotMemory();

  // --- IDLE sessions
  cpuClient = process.cpuUsage();
  cpuMiddle = probe.middleCpuS();
  t = Date.now();
  await openMany(ctx, idle, p.idle, p.loginInFlight);
  const idleRampS = (Date.now() - t) / 1000;
  const clientIdle = process.cpuUsage(cpuClient);
  const middleIdle = cpuMiddle === null ? null : (probe.middleCpuS() as number) - cpuMiddle;
  await sleep(1000);
  const afterIdle = await read();
  const dIdle = probe.dovecotMemory();

  // --- the hold. A scrape returns the loop-delay histogram's figures since
  // the previous scrape and resets it (prom-client's eventLoopLag collector),
  // so this first one closes the ramp's window and every later one covers the
  // few seconds since the one before.
  const ramp = await probe.scrape();
  const windows: Array<{ atS: number; p50: number; p99: number; max: number; mean: number; open: number; scrapeMs: number; rssKiB: number; youngKiB: number }> = [];
  ctx.win.start();
  const holdStart = Date.now();
  const holdEnd = holdStart + p.holdS * 1000;
  while (Date.now() < holdEnd) {
    await sleep(Math.min(p.scrapeEveryS * 1000, holdEnd - Date.now()));
    const s = await probe.scrape();
    if (s) {
      const v = s.values;
      windows.push({
        atS: Math.round((Date.now() - holdStart) / 100) / 10,
        p50: (v.get(`${LAG}p50_seconds`) ?? NaN) * 1000,
        p99: (v.get(`${LAG}p99_seconds`) ?? NaN) * 1000,
        max: (v.get(`${LAG}max_seconds`) ?? NaN) * 1000,
        mean: (v.get(`${LAG}mean_seconds`) ?? NaN) * 1000,
        open: v.get('jmapaccess_proxy_connections_open') ?? NaN,
        scrapeMs: Math.round(s.ms * 10) / 10,
        rssKiB: probe.middleMemory()?.rss ?? NaN,
        youngKiB: (v.get(`${HEAP_SPACE}{space="new"}`) ?? NaN) / 1024,
      });
    }
  }
  ctx.win.stop();
  const end = await read();
  const dEnd = probe.dovecotMemory();

  // --- nothing dropped: every connection still open and answering
  const closedInHold = pre.closedEarly + idle.closedEarly;
  const oldestAgeS = (Date.now() - preStarted) / 1000;
  const preOk = await pre.check(p.checkInFlight);
  const idleOk = await idle.check(p.checkInFlight);
  pre.close();
  idle.close();
  await probe.drained();

  const total = p.preauth + p.idle;
  const held = preOk + idleOk;
  metrics.held = held;
  metrics.of = total;
  metrics['pre-auth held'] = preOk;
  metrics['IDLE held'] = idleOk;
  metrics['failed to open'] = pre.failedToOpen + idle.failedToOpen;
  metrics['closed before the check'] = closedInHold;
  metrics['hold s'] = wallOf();
  metrics['oldest connection age at the check s'] = Math.round(oldestAgeS * 10) / 10;
  metrics['pre-auth ramp s'] = preRampS;
  metrics['pre-auth connects/s'] = p.preauth / preRampS;
  metrics['IDLE ramp s'] = idleRampS;
  metrics['client CPU s, pre-auth ramp'] = (clientPre.user + clientPre.system) / 1e6;
  metrics['client CPU s, IDLE ramp'] = (clientIdle.user + clientIdle.system) / 1e6;
  if (middlePre !== null && middleIdle !== null) {
    metrics['proxy CPU µs/pre-auth conn'] = (middlePre / p.preauth) * 1e6;
    metrics['proxy CPU µs/IDLE session'] = (middleIdle / p.idle) * 1e6;
  }
  if (base && afterPre && afterIdle && end) {
    const idleDelta = afterIdle.gc - afterPre.gc;
    metrics['RSS KiB/pre-auth'] = kib((end.gc - base.gc - idleDelta) / p.preauth);
    // Only meaningful when the IDLE ramp did not grow the young generation further (the pre-auth ramp maxed it).
    if (afterIdle.young === afterPre.young) metrics['RSS KiB/IDLE'] = kib(idleDelta / p.idle);
    metrics['RSS KiB/IDLE, whatever the young generation did'] = kib(idleDelta / p.idle);
    metrics['RSS KiB/pre-auth, as is'] = kib((afterPre.gc - base.gc) / p.preauth);
    metrics['RSS KiB/pre-auth, no GC'] = kib((afterPre.raw - base.raw) / p.preauth);
    metrics['RSS KiB/IDLE, no GC'] = kib((afterIdle.raw - afterPre.raw) / p.idle);
    metrics['RSS KiB/conn, end of hold'] = kib((end.gc - base.gc) / total);
    metrics['RSS KiB/conn, end of hold, no GC'] = kib((end.raw - base.raw) / total);
    metrics['JS heap KiB/pre-auth'] = kib((afterPre.heap - base.heap) / p.preauth);
    metrics['JS heap KiB/IDLE'] = kib((afterIdle.heap - afterPre.heap) / p.idle);
    metrics['external KiB/pre-auth'] = kib((afterPre.external - base.external) / p.preauth);
    metrics['external KiB/IDLE'] = kib((afterIdle.external - afterPre.external) / p.idle);
    metrics['young generation MiB, base'] = base.young / 1024;
    metrics['young generation MiB, after the ramps'] = afterIdle.young / 1024;
    metrics['young generation MiB, end of hold'] = end.young / 1024;
    metrics['RSS growth in hold KiB'] = end.gc - afterIdle.gc;
    metrics['RSS base MiB'] = base.gc / 1024;
    metrics['RSS end MiB'] = end.gc / 1024;
    metrics['peak RSS MiB'] = end.hwm / 1024;
    detail.proxyRssKiB = { base, afterPreauth: afterPre, afterIdle, endOfHold: end };
  }
  metrics['Dovecot PSS KiB/pre-auth'] = kib((dPre.pss - dBase.pss) / p.preauth);
  metrics['Dovecot PSS KiB/IDLE'] = kib((dIdle.pss - dPre.pss) / p.idle);
  metrics['Dovecot PSS MiB at end'] = dEnd.pss / 1024;
  metrics['Dovecot processes at end'] = dEnd.processes;
  detail.dovecotPssKiB = { base: dBase.pss, afterPreauth: dPre.pss, afterIdle: dIdle.pss, endOfHold: dEnd.pss, processes: dEnd.processes };
  if (ramp) {
    metrics['loop p99 ms, ramp'] = (ramp.values.get(`${LAG}p99_seconds`) ?? NaN) * 1000;
    metrics['loop max ms, ramp'] = (ramp.values.get(`${LAG}max_seconds`) ?? NaN) * 1000;
  }
  if (windows.length > 0) {
    const p99s = windows.map((w) => w.p99).sort((a, b) => a - b);
    metrics['loop p99 ms'] = p99s[p99s.length - 1] as number;
    metrics['loop p99 ms, median window'] = p99s[p99s.length >> 1] as number;
    metrics['loop max ms'] = Math.max(...windows.map((w) => w.max));
    metrics['loop p50 ms'] = Math.max(...windows.map((w) => w.p50));
    metrics['scrape ms, max'] = Math.max(...windows.map((w) => w.scrapeMs));
    metrics['proxy connections open, min in hold'] = Math.min(...windows.map((w) => w.open));
    detail.loopWindows = windows;
  }

  let failure: string | undefined;
  if (held !== total) {
    const firstError = pre.firstError ?? idle.firstError;
    failure =
      `held ${held}/${total}: pre-auth ${preOk}/${p.preauth}, IDLE ${idleOk}/${p.idle} ` +
      `(${pre.failedToOpen + idle.failedToOpen} failed to open, ${closedInHold} closed before the check` +
      `${firstError ? `; first error: ${firstError}` : ''})` +
      (oldestAgeS >= 175 ? `; the oldest connection was ${oldestAgeS.toFixed(0)} s old, and Dovecot 2.3 closes connections that have not logged in 180 s after they connected` : '');
  }
  return { metrics, detail, ...(failure ? { failure } : {}) };
}

/** GET /metrics from the proxy's --metrics-listen port: samples as name (with its labels, as written) -> value, and the round trip in ms. */
export function scrapeMetrics(port: number, host = '127.0.0.1', timeoutMs = 10_000): Promise<{ values: Map<string, number>; ms: number }> {
  const t0 = process.hrtime.bigint();
  return new Promise((resolve, reject) => {
    const req = http.get({ host, port, path: '/metrics', timeout: timeoutMs }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => {
        const ms = Number(process.hrtime.bigint() - t0) / 1e6;
        if (res.statusCode !== 200) return reject(new Error(`/metrics answered ${res.statusCode}`));
        const values = new Map<string, number>();
        for (const line of body.split('\n')) {
          if (line === '' || line.startsWith('#')) continue;
          // `name value` or `name{label="x",...} value` (kept with its labels as the key)
          const sp = line.lastIndexOf(' ');
          if (sp > 0) values.set(line.slice(0, sp), Number(line.slice(sp + 1)));
        }
        resolve({ values, ms });
      });
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`/metrics: no answer within ${timeoutMs} ms`)));
    req.on('error', reject);
  });
}
