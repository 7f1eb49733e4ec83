/**
 * `npm run bench [-- --quick]`: the proxy against a direct connection to a
 * real Dovecot and against a plain TCP relay (socat), in the same run.
 *
 * See bench/README.md for what is measured and how to read the numbers.
 */

import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, rename, writeFile } from 'node:fs/promises';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { ensureDovecotInstalled, freePort, startDovecot, type Dovecot } from '../test/harness/dovecot.js';
import { ensureDebianPackage } from '../test/harness/packages.js';
import { ImapClient } from './lib/imap.js';
import { makeMessage, writeMailbox, type Owner } from './lib/maildir.js';
import {
  currentAffinity,
  descendants,
  findDovecotMaster,
  memoryKiB,
  nofileLimit,
  treePssKiB,
  hasTaskset,
  machineBusySeconds,
  setAffinity,
  busiestProcesses,
  startServer,
  treeCpuSeconds,
  type Started,
} from './lib/procs.js';
import { appendMany, fetchAll, loginChurn, noops, type Ctx, type DigestKind, type Outcome, type Window } from './lib/workloads.js';
import { concurrency, scrapeMetrics, type ConcurrencyProbe } from './lib/concurrency.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
/** preloaded into the concurrency proxy: a full GC on SIGUSR2 (see lib/gc-on-signal.ts) */
const GC_HOOK = fileURLToPath(new URL('./lib/gc-on-signal.js', import.meta.url));
const GC_DONE_MARKER = 'bench-gc-done';
const CLI = `${ROOT}dist/cli.js`;
const RESULTS = `${ROOT}bench/results`;
const MiB = 1024 * 1024;
const USER = 'alice';
const PASSWORD = 'alicepw';
const RUN_TIMEOUT_MS = 300_000;
/** The machine counts as idle below this many busy cores (measured over 1 s). */
const QUIET_CORES = 0.15;
/** A run is disturbed when CPU nobody of ours accounts for exceeds this share of its wall time. */
const OTHER_LIMIT_CORES = 0.25;
const MAX_RETRIES = 3;
/** concurrency: connection attempts in flight (somaxconn is 4096: nothing may depend on the listen backlog) */
const CONC_CONNECT_IN_FLIGHT = 200;
/** concurrency: IDLE sessions being set up at once (each LOGIN forks an imap process in Dovecot) */
const CONC_LOGIN_IN_FLIGHT = 20;
/** concurrency: NOOP / DONE checks in flight at the end */
const CONC_CHECK_IN_FLIGHT = 500;
/** concurrency: seconds between two scrapes of the proxy's /metrics during the hold */
const CONC_SCRAPE_EVERY_S = 5;

// ---------------------------------------------------------------------------
// options

type Target = 'direct' | 'relay' | 'proxy';
const ALL_TARGETS: Target[] = ['direct', 'relay', 'proxy'];
const WORKLOADS = ['fetch-big', 'fetch-small', 'append-sync', 'append-nonsync', 'noop', 'noop-pinned', 'login-churn', 'concurrency'] as const;
type Workload = (typeof WORKLOADS)[number];

interface Options {
  quick: boolean;
  reps: number;
  bigCount: number;
  smallCount: number;
  appendCount: number;
  noopCount: number;
  churnCount: number;
  churnWorkers: number;
  /** concurrency: connections held without logging in, IDLE sessions, seconds held, repetitions */
  concPreauth: number;
  concIdle: number;
  concHoldS: number;
  concReps: number;
  targets: Target[];
  workloads: Workload[];
  /** FETCH and APPEND runs repeat their unit until the timed part lasts about this long */
  minTimeS: number;
  digest: DigestKind;
  quietGuard: boolean;
  quietWaitS: number;
  pinCpu: string;
  out: string | null;
  /** extra arguments for node before dist/cli.js (e.g. --cpu-prof) */
  proxyNodeArgs: string[];
  /** extra arguments for the proxy's CLI */
  proxyArgs: string[];
  /** extra environment variables for the proxy process only */
  proxyEnv: Record<string, string>;
}

const HELP = `npm run bench [-- options]

Runs every workload against Dovecot directly, through a socat TCP relay and
through the proxy (dist/cli.js), alternating targets, and prints medians.

  --quick            fewer messages and 2 repetitions (a couple of minutes)
  --reps N           repetitions per workload and target (default 5, quick 2)
  --targets LIST     comma list of direct,relay,proxy (default all; direct is required)
  --only LIST        comma list of workloads: ${WORKLOADS.join(',')}
  --conc-preauth N   concurrency: connections that never log in (default 8000, quick 1000)
  --conc-idle N      concurrency: logged-in sessions in IDLE (default 300, quick 50)
  --conc-hold S      concurrency: seconds all of them are held (default 60, quick 10)
  --conc-reps N      concurrency: repetitions (default 1; each is a fresh Dovecot
                     imap-login process and a fresh proxy, see bench/README.md)
  --min-time S       FETCH and APPEND runs repeat the whole mailbox / the batch of
                     APPENDs a fixed number of times (set from the warm-up) so the
                     timed part lasts about S seconds (default 1, quick 0.3)
  --digest MODE      first (default): each FETCH run starts with one untimed pass
                     whose every literal byte goes through sha256, compared with
                     direct's; the timed passes check response and byte counts.
                     all: the timed passes are hashed too (sha256 then costs the
                     client CPU inside the measurement). none: counts only
  --no-quiet-guard   do not wait for an idle machine before each repetition, nor run
                     a repetition again when other processes used the CPU during it
  --quiet-wait S     give up waiting for an idle machine after S seconds (default 900)
  --pin-cpu CPU      the CPU noop-pinned pins every process to (default 0)
  --proxy-node-arg A pass A to node in front of dist/cli.js (repeatable), e.g.
                     --proxy-node-arg --cpu-prof --proxy-node-arg --cpu-prof-dir=/tmp/prof
  --proxy-arg A      pass A to the proxy's command line (repeatable)
  --proxy-env K=V    set an environment variable for the proxy only (repeatable),
                     e.g. --proxy-env MALLOC_TOP_PAD_=134217728
  --out FILE         JSON results file (default bench/results/<ISO date>.json)
  -h, --help         this text
`;

function parseArgs(argv: string[]): Options {
  const quick = argv.includes('--quick');
  const o: Options = {
    quick,
    reps: quick ? 2 : 5,
    bigCount: quick ? 40 : 200,
    smallCount: quick ? 300 : 1000,
    appendCount: quick ? 20 : 50,
    noopCount: quick ? 1000 : 5000,
    churnCount: quick ? 200 : 1000,
    churnWorkers: 4,
    concPreauth: quick ? 1000 : 8000,
    concIdle: quick ? 50 : 300,
    concHoldS: quick ? 10 : 60,
    concReps: 1,
    targets: [...ALL_TARGETS],
    workloads: [...WORKLOADS],
    minTimeS: quick ? 0.3 : 1,
    digest: 'first',
    quietGuard: true,
    quietWaitS: 900,
    pinCpu: '0',
    out: null,
    proxyNodeArgs: [],
    proxyArgs: [],
    proxyEnv: {},
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = (): string => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    switch (a) {
      case '--quick':
        break;
      case '--reps':
        o.reps = Number(value());
        if (!Number.isInteger(o.reps) || o.reps < 1) throw new Error('--reps must be a positive integer');
        break;
      case '--targets': {
        const list = value().split(',');
        for (const t of list) if (!ALL_TARGETS.includes(t as Target)) throw new Error(`unknown target ${t}`);
        o.targets = ALL_TARGETS.filter((t) => list.includes(t));
        if (!o.targets.includes('direct')) throw new Error('--targets must include direct (ratios are against it)');
        break;
      }
      case '--only': {
        const list = value().split(',');
        for (const w of list) if (!WORKLOADS.includes(w as Workload)) throw new Error(`unknown workload ${w}`);
        o.workloads = WORKLOADS.filter((w) => list.includes(w));
        break;
      }
      case '--conc-preauth':
      case '--conc-idle':
      case '--conc-reps': {
        const n = Number(value());
        if (!Number.isInteger(n) || n < (a === '--conc-reps' ? 1 : 0)) throw new Error(`${a} must be a ${a === '--conc-reps' ? 'positive' : 'non-negative'} integer`);
        if (a === '--conc-preauth') o.concPreauth = n;
        else if (a === '--conc-idle') o.concIdle = n;
        else o.concReps = n;
        break;
      }
      case '--conc-hold':
        o.concHoldS = Number(value());
        if (!(o.concHoldS >= 0)) throw new Error('--conc-hold must be a number of seconds');
        break;
      case '--min-time':
        o.minTimeS = Number(value());
        if (!(o.minTimeS >= 0)) throw new Error('--min-time must be a number of seconds');
        break;
      case '--digest': {
        const d = value();
        if (d !== 'first' && d !== 'all' && d !== 'none') throw new Error('--digest must be first, all or none');
        o.digest = d;
        break;
      }
      case '--no-quiet-guard':
        o.quietGuard = false;
        break;
      case '--quiet-wait':
        o.quietWaitS = Number(value());
        if (!(o.quietWaitS >= 0)) throw new Error('--quiet-wait must be a number of seconds');
        break;
      case '--pin-cpu':
        o.pinCpu = value();
        break;
      case '--proxy-node-arg':
        o.proxyNodeArgs.push(value());
        break;
      case '--proxy-arg':
        o.proxyArgs.push(value());
        break;
      case '--proxy-env': {
        const kv = value();
        const eq = kv.indexOf('=');
        if (eq <= 0) throw new Error('--proxy-env takes NAME=VALUE');
        o.proxyEnv[kv.slice(0, eq)] = kv.slice(eq + 1);
        break;
      }
      case '--out':
        o.out = value();
        break;
      case '-h':
      case '--help':
        process.stdout.write(HELP);
        process.exit(0);
        break;
      default:
        throw new Error(`unknown option ${a}\n\n${HELP}`);
    }
  }
  if (o.workloads.includes('concurrency') && o.concHoldS > 120) {
    process.stderr.write(
      `warning: --conc-hold ${o.concHoldS}: Dovecot 2.3 closes a connection that has not logged in 180 s after it connected ` +
        '(measured: "Disconnected for inactivity", NOOPs or not), so pre-auth connections will not all be held past ~180 s minus the ramp\n',
    );
  }
  return o;
}

// ---------------------------------------------------------------------------
// statistics and formatting

interface Spread {
  median: number;
  min: number;
  max: number;
  n: number;
}

function spread(values: number[]): Spread | null {
  const v = values.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return null;
  const mid = v.length >> 1;
  const median = v.length % 2 ? (v[mid] as number) : ((v[mid - 1] as number) + (v[mid] as number)) / 2;
  return { median, min: v[0] as number, max: v[v.length - 1] as number, n: v.length };
}

function num(x: number): string {
  const a = Math.abs(x);
  if (a >= 100) return x.toFixed(0);
  if (a >= 10) return x.toFixed(1);
  return x.toFixed(2);
}

function fmtSpread(s: Spread | null, f: (x: number) => string = num): string {
  if (!s) return '-';
  return s.n === 1 ? f(s.median) : `${f(s.median)} (${f(s.min)}–${f(s.max)})`;
}

function table(header: string[], rows: string[][], rightAlign: boolean[]): string {
  const widths = header.map((h, i) => Math.max([...h].length, ...rows.map((r) => [...(r[i] ?? '')].length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => {
        const pad = ' '.repeat((widths[i] as number) - [...c].length);
        return rightAlign[i] ? pad + c : c + pad;
      })
      .join('  ')
      .trimEnd();
  return [line(header), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].join('\n');
}

// ---------------------------------------------------------------------------
// waiting for an idle machine

class QuietGuard {
  waitedS = 0;
  gaveUp = 0;

  constructor(
    private readonly enabled: boolean,
    private readonly maxWaitS: number,
  ) {}

  /** Returns once the machine (not counting our idle servers) has been idle for a second. */
  async wait(): Promise<void> {
    if (!this.enabled) return;
    const start = Date.now();
    let quietHalves = 0;
    let told = false;
    for (;;) {
      const b0 = machineBusySeconds();
      await sleep(500);
      const cores = (machineBusySeconds() - b0) / 0.5;
      if (cores < QUIET_CORES) {
        if (++quietHalves >= 2) break;
        continue;
      }
      quietHalves = 0;
      if (!told) {
        told = true;
        log(`  waiting for the machine to go idle (${cores.toFixed(2)} cores busy); the busiest processes:\n${indent(await busiestProcesses(500, 3))}`);
      }
      if ((Date.now() - start) / 1000 > this.maxWaitS) {
        this.gaveUp++;
        log(`  gave up waiting after ${this.maxWaitS} s: this repetition runs under load`);
        break;
      }
    }
    const waited = (Date.now() - start) / 1000;
    this.waitedS += waited;
    if (told) log(`  idle again after ${waited.toFixed(0)} s`);
  }
}

function indent(text: string): string {
  return text
    .split('\n')
    .map((l) => `    ${l}`)
    .join('\n');
}

// ---------------------------------------------------------------------------
// the run

interface RunRecord {
  workload: Workload;
  rep: number;
  target: Target;
  /** how many times the workload's unit (a whole mailbox, a batch of APPENDs) ran */
  passes: number;
  wallS: number;
  clientCpuS: number;
  /** of which in the kernel (socket reads and writes) */
  clientSysS: number;
  /** CPU of the process between client and Dovecot (socat tree or proxy); null for direct */
  middleCpuS: number | null;
  /** of which in the kernel */
  middleSysS: number | null;
  dovecotCpuS: number;
  /** CPU the machine spent busy that none of client, relay/proxy and Dovecot account for:
   * other processes, and kernel work (softirq) not charged to a process */
  otherCpuS: number;
  metrics: Record<string, number>;
  digest?: string;
  bytes?: number;
  digestOk?: boolean;
  /** what a workload keeps besides its numbers (concurrency: RSS readings, loop-delay windows) */
  detail?: Record<string, unknown>;
  error?: string;
  /** other CPU above the limit during this run */
  disturbed?: boolean;
  /** run again because of other load; left out of every figure */
  discarded?: boolean;
}

/** The table's rows per workload; `ratio: false` for figures where a ratio to direct means nothing. */
const PRIMARY: Record<Workload, Array<{ metric: string; better: 'higher' | 'lower'; ratio?: false }>> = {
  'fetch-big': [{ metric: 'MB/s', better: 'higher' }],
  'fetch-small': [{ metric: 'MB/s', better: 'higher' }],
  'append-sync': [{ metric: 'MB/s', better: 'higher' }],
  'append-nonsync': [{ metric: 'MB/s', better: 'higher' }],
  noop: [
    { metric: 'p50 µs', better: 'lower' },
    { metric: 'p99 µs', better: 'lower' },
  ],
  'noop-pinned': [
    { metric: 'p50 µs', better: 'lower' },
    { metric: 'p99 µs', better: 'lower' },
  ],
  'login-churn': [{ metric: 'logins/s', better: 'higher' }],
  // direct has no proxy: its column shows Dovecot's figures only
  concurrency: [
    { metric: 'held', better: 'higher', ratio: false },
    { metric: 'RSS KiB/pre-auth', better: 'lower', ratio: false },
    { metric: 'RSS KiB/IDLE', better: 'lower', ratio: false },
    { metric: 'RSS KiB/conn, end of hold', better: 'lower', ratio: false },
    { metric: 'RSS KiB/pre-auth, as is', better: 'lower', ratio: false },
    { metric: 'JS heap KiB/pre-auth', better: 'lower', ratio: false },
    { metric: 'JS heap KiB/IDLE', better: 'lower', ratio: false },
    { metric: 'peak RSS MiB', better: 'lower', ratio: false },
    { metric: 'loop p99 ms', better: 'lower', ratio: false },
    { metric: 'loop max ms', better: 'lower', ratio: false },
    { metric: 'Dovecot PSS KiB/pre-auth', better: 'lower' },
    { metric: 'Dovecot PSS KiB/IDLE', better: 'lower' },
  ],
};

/** The issue's targets for the proxy in the concurrency workload. */
const CONCURRENCY_TARGETS = { rssPreauthKiB: 8, rssIdleKiB: 16, loopP99Ms: 20 };

/** The socat relay forks a process per connection: RSS per connection means nothing for it. */
const targetsFor = (w: Workload, targets: Target[]): Target[] => (w === 'concurrency' ? targets.filter((t) => t !== 'relay') : targets);

/** Workloads that repeat their unit `passes` times per run. */
const REPEATED: ReadonlySet<Workload> = new Set(['fetch-big', 'fetch-small', 'append-sync', 'append-nonsync']);

function label(w: Workload, o: Options, passes: Map<Workload, number>): string {
  const times = passes.has(w) ? ` ×${passes.get(w)}` : '';
  switch (w) {
    case 'fetch-big':
      return `FETCH ${o.bigCount} × 1 MiB${times}`;
    case 'fetch-small':
      return `FETCH ${o.smallCount} × 4 KiB${times}`;
    case 'append-sync':
      return `APPEND ${o.appendCount} × 1 MiB {n}${times}`;
    case 'append-nonsync':
      return `APPEND ${o.appendCount} × 1 MiB {n+}${times}`;
    case 'noop':
      return `NOOP × ${o.noopCount}`;
    case 'noop-pinned':
      return `NOOP × ${o.noopCount}, 1 CPU`;
    case 'login-churn':
      return `LOGIN churn × ${o.churnCount}, ${o.churnWorkers} workers`;
    case 'concurrency':
      return `${o.concPreauth} pre-auth + ${o.concIdle} IDLE, ${o.concHoldS} s`;
  }
}

function repsFor(w: Workload, o: Options): number {
  return w === 'concurrency' ? o.concReps : o.reps;
}

/** One line of progress for a concurrency run. */
function concurrencyLine(m: Record<string, number>): string {
  const parts = [`held ${m.held ?? '?'}/${m.of ?? '?'}`];
  if (m['RSS KiB/pre-auth'] !== undefined) parts.push(`RSS ${num(m['RSS KiB/pre-auth'])} KiB/pre-auth, ${num(m['RSS KiB/IDLE'] ?? NaN)} KiB/IDLE`);
  if (m['loop p99 ms'] !== undefined) parts.push(`loop p99 ${num(m['loop p99 ms'])} ms`);
  parts.push(`Dovecot ${num(m['Dovecot PSS KiB/pre-auth'] ?? NaN)} KiB/pre-auth, ${num(m['Dovecot PSS KiB/IDLE'] ?? NaN)} KiB/IDLE`);
  return parts.join(', ');
}

/** The concurrency workload's figures against the issue's targets (the worst run of each target counts). */
function concurrencyVerdict(runs: RunRecord[], o: Options): string[] {
  const out: string[] = [];
  const worst = (rs: RunRecord[], m: string, f: (...x: number[]) => number) => {
    const v = rs.map((r) => r.metrics[m]).filter((x): x is number => x !== undefined && Number.isFinite(x));
    return v.length ? f(...v) : NaN;
  };
  out.push(
    `concurrency: ${o.concPreauth} connections that never log in + ${o.concIdle} logged-in sessions in IDLE, held ${o.concHoldS} s ` +
      '(the relay is left out: socat forks a process per connection). RSS per connection = VmRSS growth of the proxy / count, ' +
      'after a full GC, settled: pre-auth = (end of hold − baseline − the IDLE ramp\'s growth) / count, with V8\'s young generation shrunk ' +
      'at both ends ("as is": right after the ramp, young generation grown by it); ' +
      'Dovecot = Pss growth of its process tree / count. loop delay = the largest p99 (and max) of the scrape windows of the hold, ' +
      'from monitorEventLoopDelay with a 10 ms resolution: an idle event loop reads ~10.1 ms.',
  );
  for (const t of ['direct', 'proxy'] as const) {
    const rs = runs.filter((r) => r.target === t);
    if (rs.length === 0) continue;
    const held = worst(rs, 'held', Math.min);
    const of = rs[0]?.metrics.of ?? NaN;
    const share = worst(
      rs.map((r) => ({ ...r, metrics: { s: r.clientCpuS / r.wallS } })),
      's',
      Math.max,
    );
    let line = `  ${t}: held ${held}/${of}; client CPU during the hold ${(share * 100).toFixed(1)} % of a core`;
    if (t === 'proxy') {
      const pre = worst(rs, 'RSS KiB/pre-auth', Math.max);
      const idle = worst(rs, 'RSS KiB/IDLE', Math.max);
      const p99 = worst(rs, 'loop p99 ms', Math.max);
      const T = CONCURRENCY_TARGETS;
      const mark = (okay: boolean) => (okay ? 'met' : 'NOT MET');
      line +=
        `; RSS ${num(pre)} KiB per pre-auth connection (target ≤ ${T.rssPreauthKiB}: ${mark(pre <= T.rssPreauthKiB)}), ` +
        (Number.isNaN(idle)
          ? 'RSS per IDLE session not measurable (the IDLE ramp grew V8\'s young generation), '
          : `${num(idle)} KiB per IDLE session (≤ ${T.rssIdleKiB}: ${mark(idle <= T.rssIdleKiB)}; ±5 KiB or so with 300), `) +
        `JS heap ${num(worst(rs, 'JS heap KiB/pre-auth', Math.max))} KiB per pre-auth connection and ${num(worst(rs, 'JS heap KiB/IDLE', Math.max))} per IDLE session, ` +
        `${num(worst(rs, 'RSS KiB/conn, end of hold', Math.max))} KiB per connection at the end of the hold, ` +
        `loop delay p99 ${num(p99)} ms (< ${T.loopP99Ms}: ${mark(p99 < T.loopP99Ms)}), ` +
        `scrape of /metrics up to ${num(worst(rs, 'scrape ms, max', Math.max))} ms`;
      const young = worst(rs, 'young generation MiB, end of hold', Math.max);
      if (young > 2) {
        line += `\n  NOTE: V8's young generation was still ${num(young)} MiB at the end of the hold (not shrunk yet): the settled figures include it; hold longer`;
      }
    }
    out.push(line);
  }
  return out;
}

function sh(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
  } catch {
    return '';
  }
}

function which(cmd: string): string | null {
  for (const dir of (process.env.PATH ?? '').split(':')) {
    if (dir && existsSync(`${dir}/${cmd}`)) return `${dir}/${cmd}`;
  }
  return null;
}

function log(text: string): void {
  process.stderr.write(`${text}\n`);
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

async function main(): Promise<number> {
  const o = parseArgs(process.argv.slice(2));
  const started = new Date();
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run npm run build (npm run bench does)`);

  await ensureDovecotInstalled();
  if (o.targets.includes('relay') && !which('socat')) {
    if (process.getuid?.() === 0) {
      log('socat is missing: installing it with apt-get (the relay baseline needs it)');
      await ensureDebianPackage('/usr/bin/socat', 'socat');
    } else {
      throw new Error(
        'socat (the TCP relay baseline) is missing and we are not root. Install it with\n' +
          '  sudo apt-get install -y --no-install-recommends socat\n' +
          'or run without the relay: npm run bench -- --targets direct,proxy',
      );
    }
  }
  const pinnable = o.workloads.includes('noop-pinned') && hasTaskset() && os.availableParallelism() > 1;
  if (o.workloads.includes('noop-pinned') && !pinnable) {
    log('noop-pinned skipped: needs taskset (util-linux) and more than one CPU');
    o.workloads = o.workloads.filter((w) => w !== 'noop-pinned');
  }
  const originalAffinity = hasTaskset() ? currentAffinity() : null;

  // Anything else running makes every figure noisy: look before starting.
  const idle0 = machineBusySeconds();
  await sleep(1000);
  const backgroundCores = machineBusySeconds() - idle0;
  if (backgroundCores > QUIET_CORES && !o.quietGuard) {
    log(`WARNING: ${backgroundCores.toFixed(2)} cores were busy before the benchmark started; the busiest processes:\n${indent(await busiestProcesses(500, 5))}`);
  }

  const children: Started[] = [];
  let dovecot: Dovecot | null = null;
  /** the concurrency workload's own Dovecot while it runs */
  let dovecot2: Dovecot | null = null;
  const killChildren = () => {
    for (const c of children) {
      try {
        c.child.kill('SIGKILL');
      } catch {
        /* gone */
      }
    }
  };
  process.on('exit', killChildren);
  process.once('SIGINT', () => {
    killChildren();
    process.exit(130);
  });

  try {
    // --- Dovecot with generated mail
    log(`starting Dovecot${o.quick ? ' (quick run)' : ''}`);
    dovecot = await startDovecot({
      compress: false,
      // No fsync per APPEND (this measures the path through the proxy, not the
      // disk); no per-user connection cap in the way of the login churn.
      extraConfig: 'mail_fsync = never\nmail_max_userip_connections = 10000\n',
    });
    const master = findDovecotMaster(`${dovecot.dir}/dovecot.conf`);
    if (master === null) throw new Error('cannot find the Dovecot master process');
    let owner: Owner | null = null;
    if (process.getuid?.() === 0) {
      owner = { uid: Number(sh('id', ['-u', 'mail']) || 8), gid: Number(sh('id', ['-g', 'mail']) || 8) };
    }
    const maildir = dovecot.maildir(USER);
    const t0 = Date.now();
    const bigBytes = await writeMailbox(maildir, 'big', o.bigCount, MiB, owner);
    const smallBytes = await writeMailbox(maildir, 'small', o.smallCount, 4096, owner);
    log(`wrote ${o.bigCount} × 1 MiB into "big" and ${o.smallCount} × 4 KiB into "small" in ${Date.now() - t0} ms`);

    // --- the relay and the proxy
    const ports: Record<Target, number> = { direct: dovecot.port, relay: 0, proxy: 0 };
    const commands: Record<string, string[]> = {};
    const middlePid: Record<Target, number | null> = { direct: null, relay: null, proxy: null };
    if (o.targets.includes('relay')) {
      ports.relay = await freePort();
      const args = ['-b', '65536', `TCP-LISTEN:${ports.relay},bind=127.0.0.1,fork,reuseaddr,backlog=1024`, `TCP:127.0.0.1:${dovecot.port}`];
      commands.relay = ['socat', ...args];
      const s = await startServer('socat', 'socat', args, ports.relay);
      children.push(s);
      middlePid.relay = s.child.pid ?? null;
    }
    let proxy: Started | null = null;
    if (o.targets.includes('proxy')) {
      ports.proxy = await freePort();
      const args = [
        CLI,
        '--listen',
        `127.0.0.1:${ports.proxy}`,
        '--upstream',
        `imap://127.0.0.1:${dovecot.port}`,
        '--jmap-url',
        'https://jmap.example.test/',
        '--log-level',
        'warn',
        '--no-compress',
        ...o.proxyArgs,
      ];
      commands.proxy = [
        ...Object.entries(o.proxyEnv).map(([k, v]) => `${k}=${v}`),
        'node',
        ...o.proxyNodeArgs,
        ...args.map((a) => (a === CLI ? 'dist/cli.js' : a)),
      ];
      proxy = await startServer('proxy', process.execPath, [...o.proxyNodeArgs, ...args], ports.proxy, { ...process.env, ...o.proxyEnv });
      children.push(proxy);
      middlePid.proxy = proxy.child.pid ?? null;
    }

    // --- what each target advertises after login (LITERAL+ matters for append-nonsync)
    const capabilities: Record<string, string> = {};
    for (const t of o.targets) {
      const c = await ImapClient.connect(ports[t]);
      await c.login(USER, PASSWORD);
      c.collect = [];
      await c.command('K', 'CAPABILITY');
      capabilities[t] = (c.collect.find((l) => l.startsWith('* CAPABILITY')) ?? '').slice(2);
      await c.logout();
    }
    for (const t of o.targets) {
      if (!/\bLITERAL\+/i.test(capabilities[t] ?? '')) log(`note: ${t} does not advertise LITERAL+ after login; append-nonsync sends {n+} anyway`);
    }

    // --- the concurrency workload's own Dovecot and proxy. Own Dovecot: it needs
    // Dovecot's high-performance login mode (one imap-login process holding
    // every pre-auth connection instead of a process each), which would change
    // login-churn's figures. Own proxy, started afresh for every run: its RSS
    // baseline is then a warmed-up proxy, not one whose heap the FETCH
    // workloads have grown.
    const concTotal = o.concPreauth + o.concIdle;
    const concDovecotConfig = [
      'mail_fsync = never',
      `mail_max_userip_connections = ${Math.max(10000, o.concIdle + 100)}`,
      // high-performance login mode: a login process serves many clients
      `service imap-login {\n  service_count = 0\n  client_limit = ${concTotal + 1000}\n  process_limit = 2\n  vsz_limit = 2G\n}`,
      // one imap process per logged-in session
      `service imap {\n  process_limit = ${Math.max(1000, o.concIdle + 100)}\n}`,
      // anvil, auth, stats and log get a connection from every imap process
      `default_client_limit = ${Math.max(1000, 2 * o.concIdle + 200)}`,
    ];
    /** the proxy may hold a client and an upstream socket per connection */
    const concProxyNofileNeed = 2 * concTotal + 500;
    let concProxyNofile: { soft: number; hard: number } | null = null;
    /**
     * Makes sure `pid` may open `need` files: Node raises its soft limit to the
     * hard one by itself; above the hard limit only root with CAP_SYS_RESOURCE
     * can go (not the case in every container: then we warn).
     */
    const ensureNofile = (pid: number, need: number, who: string): { soft: number; hard: number } | null => {
      const have = nofileLimit(pid);
      if (have && have.soft < need) {
        const n = Math.max(65536, need);
        try {
          execFileSync('prlimit', ['--pid', String(pid), `--nofile=${n}:${n}`], { stdio: ['ignore', 'ignore', 'pipe'] });
        } catch (err) {
          const why = err instanceof Error ? ((err as { stderr?: Buffer }).stderr?.toString().trim() ?? err.message) : String(err);
          log(`  concurrency: WARNING ${who} may open ${have.soft} files and may need ${need}; raising the limit failed (${why})`);
        }
      }
      return nofileLimit(pid);
    };
    const concPreauthTimeoutS = Math.max(600, o.concHoldS + 300);
    let concOwnNofile: { soft: number; hard: number } | null = null;
    let conc: { dovecot: Dovecot; master: number; proxy: Started | null; metricsPort: number; gcDone: number } | null = null;
    const startConc = async () => {
      // The client holds every connection (and Dovecot, started by us, inherits our limit).
      concOwnNofile = ensureNofile(process.pid, concTotal + 500, 'the load client (and Dovecot)');
      const d = await startDovecot({ compress: false, extraConfig: `${concDovecotConfig.join('\n')}\n` });
      dovecot2 = d;
      const m = findDovecotMaster(`${d.dir}/dovecot.conf`);
      if (m === null) throw new Error('cannot find the concurrency Dovecot master process');
      conc = { dovecot: d, master: m, proxy: null, metricsPort: 0, gcDone: 0 };
    };
    const stopConcProxy = async () => {
      if (!conc?.proxy) return;
      const p = conc.proxy;
      conc.proxy = null;
      await p.stop();
      children.splice(children.indexOf(p), 1);
    };
    const freshConcProxy = async () => {
      if (!conc) throw new Error('concurrency environment not started');
      await stopConcProxy();
      const port = await freePort();
      conc.metricsPort = await freePort();
      const has = (flag: string) => o.proxyArgs.some((a) => a === flag || a.startsWith(`${flag}=`));
      // the workload reads this proxy's /metrics: its own listener, always
      if (has('--metrics-listen')) throw new Error('concurrency sets --metrics-listen itself: leave it out of --proxy-arg');
      const extra = [
        '--metrics-listen',
        `127.0.0.1:${conc.metricsPort}`,
        // the proxy's own login timeout (60 s by default) would close the pre-auth connections during the hold
        ...(has('--preauth-timeout') ? [] : ['--preauth-timeout', `${concPreauthTimeoutS}s`]),
        ...(has('--shutdown-grace') ? [] : ['--shutdown-grace', '1s']),
        ...(has('--max-connections') || concTotal + 100 <= 10000 ? [] : ['--max-connections', String(concTotal + 100)]),
      ];
      const args = [
        CLI,
        '--listen',
        `127.0.0.1:${port}`,
        '--upstream',
        `imap://127.0.0.1:${conc.dovecot.port}`,
        '--jmap-url',
        'https://jmap.example.test/',
        '--log-level',
        'warn',
        '--no-compress',
        ...extra,
        ...o.proxyArgs,
      ];
      // --expose-gc and the SIGUSR2 hook: a full GC before each RSS reading (bench/lib/gc-on-signal.ts)
      const nodeArgs = ['--expose-gc', '--import', GC_HOOK, ...o.proxyNodeArgs];
      commands['proxy (concurrency)'] = [
        ...Object.entries(o.proxyEnv).map(([k, v]) => `${k}=${v}`),
        'node',
        ...nodeArgs.map((a) => (a === GC_HOOK ? 'build-dev/bench/lib/gc-on-signal.js' : a)),
        ...args.map((a) => (a === CLI ? 'dist/cli.js' : a)),
      ];
      const p = await startServer('proxy (concurrency)', process.execPath, [...nodeArgs, ...args], port, { ...process.env, ...o.proxyEnv });
      children.push(p);
      conc.proxy = p;
      conc.gcDone = 0;
      p.child.stderr?.on('data', (d: Buffer) => {
        if (conc) conc.gcDone += d.toString('latin1').split(GC_DONE_MARKER).length - 1;
      });
      if (p.child.pid !== undefined) concProxyNofile = ensureNofile(p.child.pid, concProxyNofileNeed, 'the proxy');
    };
    /** A fresh Dovecot for every concurrency run, and a fresh proxy in front of it for the proxy's. */
    const freshConc = async (t: Target) => {
      await stopConc();
      await startConc();
      if (t === 'proxy') await freshConcProxy();
    };
    const stopConc = async () => {
      await stopConcProxy();
      if (conc) await conc.dovecot.stop();
      conc = null;
      dovecot2 = null;
    };
    /** live imap (post-login) processes of a Dovecot */
    const imapProcesses = (master: number) =>
      descendants(master).filter((pid) => {
        try {
          return readFileSync(`/proc/${pid}/comm`, 'latin1').trim() === 'imap';
        } catch {
          return false;
        }
      }).length;

    // --- one run of one workload against one target
    const appendMessage = makeMessage(MiB, 'append', 0);
    let appendSerial = 0;
    const passes = new Map<Workload, number>();
    const runOne = async (w: Workload, t: Target, rep: number, warmup: boolean): Promise<RunRecord> => {
      const times = passes.get(w) ?? 1;
      // concurrency runs against its own Dovecot, and a proxy started afresh for each run
      const isConc = w === 'concurrency';
      if (isConc) await freshConc(t);
      const cenv = isConc ? conc : null;
      if (isConc && !cenv) throw new Error('concurrency environment not started');
      const dMaster = cenv ? cenv.master : master;
      const port = cenv ? (t === 'proxy' ? (cenv.proxy as Started).port : cenv.dovecot.port) : ports[t];
      const middle = cenv ? (t === 'proxy' ? ((cenv.proxy as Started).child.pid ?? null) : null) : middlePid[t];
      let wall0 = 0n;
      let wall1 = 0n;
      let cpu0: NodeJS.CpuUsage = { user: 0, system: 0 };
      let cpu1: NodeJS.CpuUsage = { user: 0, system: 0 };
      const roots = [dMaster, ...(middle !== null ? [middle] : [])];
      let proc0: Array<{ total: number; sys: number }> = [];
      let proc1: Array<{ total: number; sys: number }> = [];
      let busy0 = 0;
      let busy1 = 0;
      const win: Window = {
        start() {
          busy0 = machineBusySeconds();
          proc0 = treeCpuSeconds(roots);
          cpu0 = process.cpuUsage();
          wall0 = process.hrtime.bigint();
        },
        stop() {
          wall1 = process.hrtime.bigint();
          cpu1 = process.cpuUsage();
          proc1 = treeCpuSeconds(roots);
          busy1 = machineBusySeconds();
        },
      };
      const wallOf = () => Number(wall1 - wall0) / 1e9;
      const ctx: Ctx = { port, win, clients: new Set(), user: USER, password: PASSWORD };
      const scale = (n: number, min: number) => (warmup ? Math.max(min, Math.ceil(n / 10)) : n);
      const work = (): Promise<Outcome> => {
        switch (w) {
          case 'fetch-big':
            return fetchAll(ctx, 'big', times, o.bigCount, bigBytes, o.digest, wallOf);
          case 'fetch-small':
            return fetchAll(ctx, 'small', times, o.smallCount, smallBytes, o.digest, wallOf);
          case 'append-sync':
          case 'append-nonsync':
            return appendMany(ctx, `bench-append-${++appendSerial}`, appendMessage, o.appendCount * times, w === 'append-sync' ? 'sync' : 'nonsync', wallOf);
          case 'noop':
          case 'noop-pinned':
            return noops(ctx, scale(o.noopCount, 200), wallOf);
          case 'login-churn':
            return loginChurn(ctx, scale(o.churnCount, 20), o.churnWorkers, wallOf);
          case 'concurrency': {
            const metricsPort = cenv?.metricsPort ?? 0;
            const probe: ConcurrencyProbe = {
              middleMemory: () => (middle === null ? null : memoryKiB(middle)),
              collect: async () => {
                if (middle === null || !cenv) return;
                const before = cenv.gcDone;
                process.kill(middle, 'SIGUSR2');
                const deadline = Date.now() + 10_000;
                while (cenv.gcDone === before) {
                  if (Date.now() > deadline) throw new Error('the proxy did not report its garbage collection within 10 s');
                  await sleep(10);
                }
              },
              middleCpuS: () => (middle === null ? null : (treeCpuSeconds([middle])[0]?.total ?? 0)),
              dovecotMemory: () => treePssKiB(dMaster),
              scrape: () => (t === 'proxy' ? scrapeMetrics(metricsPort) : Promise.resolve(null)),
              drained: async () => {
                // the proxy's sessions gone, and Dovecot's imap processes (one per logged-in session)
                const deadline = Date.now() + 20_000;
                while (Date.now() < deadline) {
                  const open = t === 'proxy' ? ((await scrapeMetrics(metricsPort)).values.get('jmapaccess_proxy_connections_open') ?? 0) : 0;
                  if (open === 0 && imapProcesses(dMaster) === 0) return;
                  await sleep(200);
                }
                log(`  concurrency: ${t} still had sessions 20 s after the clients closed`);
              },
            };
            const preauth = warmup ? Math.min(o.concPreauth, Math.max(100, Math.ceil(o.concPreauth / 10))) : o.concPreauth;
            const idle = warmup ? Math.min(o.concIdle, Math.max(10, Math.ceil(o.concIdle / 10))) : o.concIdle;
            return concurrency(
              ctx,
              {
                preauth,
                idle,
                holdS: warmup ? Math.min(2, o.concHoldS) : o.concHoldS,
                warmPreauth: warmup ? 0 : Math.min(preauth, Math.max(50, Math.ceil(preauth / 20))),
                warmIdle: warmup ? 0 : Math.min(idle, Math.max(5, Math.ceil(idle / 20))),
                connectInFlight: CONC_CONNECT_IN_FLIGHT,
                loginInFlight: CONC_LOGIN_IN_FLIGHT,
                checkInFlight: CONC_CHECK_IN_FLIGHT,
                scrapeEveryS: CONC_SCRAPE_EVERY_S,
              },
              probe,
              wallOf,
            );
          }
        }
      };
      const record: RunRecord = {
        workload: w,
        rep,
        target: t,
        passes: times,
        wallS: 0,
        clientCpuS: 0,
        clientSysS: 0,
        middleCpuS: null,
        middleSysS: null,
        dovecotCpuS: 0,
        otherCpuS: 0,
        metrics: {},
      };
      let timer: NodeJS.Timeout | undefined;
      /** the workload measured, but what it checked failed: keep its CPU figures too */
      let measured = false;
      const timeoutMs = isConc ? Math.max(RUN_TIMEOUT_MS, (o.concHoldS + 300) * 1000) : RUN_TIMEOUT_MS;
      try {
        const outcome = await Promise.race([
          work(),
          new Promise<never>((_, reject) => {
            timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs / 1000} s`)), timeoutMs);
          }),
        ]);
        record.metrics = outcome.metrics;
        if (outcome.detail !== undefined) record.detail = outcome.detail;
        if (outcome.failure !== undefined) {
          record.error = outcome.failure;
          measured = true;
        }
        if (outcome.digest !== undefined) record.digest = outcome.digest;
        if (outcome.bytes !== undefined) record.bytes = outcome.bytes;
      } catch (err) {
        record.error = err instanceof Error ? err.message : String(err);
      } finally {
        clearTimeout(timer);
        for (const c of ctx.clients) c.close();
      }
      if (!record.error || measured) {
        record.wallS = wallOf();
        record.clientCpuS = (cpu1.user - cpu0.user + cpu1.system - cpu0.system) / 1e6;
        record.clientSysS = (cpu1.system - cpu0.system) / 1e6;
        record.dovecotCpuS = (proc1[0]?.total ?? 0) - (proc0[0]?.total ?? 0);
        record.middleCpuS = roots.length > 1 ? (proc1[1]?.total ?? 0) - (proc0[1]?.total ?? 0) : null;
        record.middleSysS = roots.length > 1 ? (proc1[1]?.sys ?? 0) - (proc0[1]?.sys ?? 0) : null;
        record.otherCpuS = Math.max(0, busy1 - busy0 - record.clientCpuS - record.dovecotCpuS - (record.middleCpuS ?? 0));
      }
      // Let connections wind down (socat children exit, Dovecot reaps imap processes).
      await sleep(50);
      return record;
    };

    // --- pinning for noop-pinned: every process on one CPU; children inherit it
    const everyPid = () => [
      process.pid,
      ...descendants(master),
      ...(middlePid.relay !== null ? descendants(middlePid.relay) : []),
      ...(middlePid.proxy !== null ? [middlePid.proxy] : []),
    ];

    // --- the quiet guard
    const quiet = new QuietGuard(o.quietGuard, o.quietWaitS);
    const isDisturbed = (r: RunRecord) => r.otherCpuS > Math.max(OTHER_LIMIT_CORES * r.wallS, 0.03);

    // --- the schedule: per workload, a warm-up pass, then reps × (direct, relay, proxy)
    const runs: RunRecord[] = [];
    for (const w of o.workloads) {
      const pinned = w === 'noop-pinned';
      if (pinned) setAffinity(everyPid(), o.pinCpu);
      const targets = targetsFor(w, o.targets);
      const reps = repsFor(w, o);
      try {
        if (w === 'concurrency') {
          if (o.targets.includes('relay')) log('concurrency: the relay is left out (socat forks a process per connection)');
          log('concurrency: every run gets a fresh Dovecot (high-performance login mode) and, for the proxy, a fresh proxy');
        }
        await quiet.wait();
        log(`${label(w, o, passes)}: warm-up`);
        let fastest = Infinity;
        for (const t of targets) {
          const r = await runOne(w, t, 0, true);
          if (r.error) throw new Error(`warm-up of ${w} against ${t} failed: ${r.error}`);
          fastest = Math.min(fastest, r.wallS);
        }
        if (REPEATED.has(w)) {
          passes.set(w, Math.max(1, Math.ceil(o.minTimeS / fastest)));
          log(`  ${label(w, o, passes)}: the unit took ${(fastest * 1000).toFixed(0)} ms at best, so each run repeats it ${passes.get(w)} times`);
        }
        for (let rep = 1; rep <= reps; rep++) {
          // A repetition is the pair (triple) of runs the ratios come from: if
          // anything else used the CPU during one of them, all of them are
          // run again, so every ratio compares runs made under the same load.
          for (let attempt = 1; ; attempt++) {
            await quiet.wait();
            const line: string[] = [];
            const set: RunRecord[] = [];
            for (const t of targets) {
              const r = await runOne(w, t, rep, false);
              set.push(r);
              const m = PRIMARY[w][0]?.metric ?? '';
              if (r.error) line.push(`${t} ERROR ${r.error}`);
              else if (w === 'concurrency') line.push(`${t} ${concurrencyLine(r.metrics)}`);
              else line.push(`${t} ${num(r.metrics[m] ?? NaN)} ${m}`);
            }
            const disturbed = set.filter((r) => !r.error && isDisturbed(r));
            const last = !o.quietGuard || disturbed.length === 0 || attempt > MAX_RETRIES;
            for (const r of set) {
              if (disturbed.includes(r)) r.disturbed = true;
              if (!last) r.discarded = true;
              runs.push(r);
            }
            const note = disturbed.length === 0 ? '' : ` — other load during ${disturbed.map((r) => r.target).join(', ')}`;
            log(`  rep ${rep}/${reps}${attempt > 1 ? ` (attempt ${attempt})` : ''}: ${line.join(', ')}${note}${last ? '' : ', running it again'}`);
            if (last) break;
          }
        }
      } finally {
        if (pinned && originalAffinity) setAffinity(everyPid(), originalAffinity);
        if (w === 'concurrency') await stopConc();
      }
    }

    // --- digests: every FETCH run must deliver the same bytes as direct did
    let digestFailures = 0;
    for (const r of runs) {
      if (r.digest === undefined) continue;
      const ref = runs.find((d) => d.workload === r.workload && d.target === 'direct' && d.digest !== undefined);
      r.digestOk = ref !== undefined && ref.digest === r.digest;
      if (!r.digestOk) digestFailures++;
    }
    const errors = runs.filter((r) => r.error).length;

    // --- summary
    // (a concurrency run whose check failed still measured: its figures are shown, and it counts as failed)
    const ok = (r: RunRecord) => !r.discarded && (!r.error || r.wallS > 0);
    const discarded = runs.filter((r) => r.discarded).length;
    const disturbedKept = runs.filter((r) => r.disturbed && !r.discarded).length;
    const summary: Array<Record<string, unknown>> = [];
    const rows: string[][] = [];
    for (const w of o.workloads) {
      for (const { metric, better, ratio } of PRIMARY[w]) {
        const per: Record<string, Spread | null> = {};
        for (const t of o.targets) {
          per[t] = spread(runs.filter((r) => r.workload === w && r.target === t && ok(r)).map((r) => r.metrics[metric] ?? NaN));
        }
        const ratios: Record<string, Spread | null> = {};
        for (const t of o.targets) {
          if (t === 'direct') continue;
          const pairs: number[] = [];
          for (let rep = 1; rep <= repsFor(w, o) && ratio !== false; rep++) {
            const d = runs.find((r) => r.workload === w && r.target === 'direct' && r.rep === rep && ok(r));
            const x = runs.find((r) => r.workload === w && r.target === t && r.rep === rep && ok(r));
            const dv = d?.metrics[metric];
            const xv = x?.metrics[metric];
            if (dv !== undefined && xv !== undefined && dv > 0) pairs.push(xv / dv);
          }
          ratios[t] = spread(pairs);
        }
        summary.push({ workload: w, label: label(w, o, passes), passes: passes.get(w) ?? 1, metric, better, targets: per, ratiosToDirect: ratios });
        rows.push([
          label(w, o, passes),
          metric,
          ...o.targets.map((t) => fmtSpread(per[t] ?? null)),
          ...o.targets.filter((t) => t !== 'direct').map((t) => fmtSpread(ratios[t] ?? null, (x) => x.toFixed(2))),
        ]);
      }
    }
    const ratioHeads = o.targets.filter((t) => t !== 'direct').map((t) => `${t}/direct`);
    const mainTable = table(
      ['workload', 'metric', ...o.targets, ...ratioHeads],
      rows,
      [false, false, ...o.targets.map(() => true), ...ratioHeads.map(() => true)],
    );

    let maxOtherShare = 0;
    const cpuRows: string[][] = [];
    const cpuSummary: Array<Record<string, unknown>> = [];
    for (const w of o.workloads) {
      for (const t of o.targets) {
        const rs = runs.filter((r) => r.workload === w && r.target === t && ok(r));
        if (rs.length === 0) continue;
        const wall = spread(rs.map((r) => r.wallS));
        const client = spread(rs.map((r) => r.clientCpuS));
        const clientShare = spread(rs.map((r) => r.clientCpuS / r.wallS));
        const middle = t === 'direct' ? null : spread(rs.map((r) => r.middleCpuS ?? NaN));
        const middleSys = t === 'direct' ? null : spread(rs.map((r) => r.middleSysS ?? NaN));
        const dove = spread(rs.map((r) => r.dovecotCpuS));
        const other = spread(rs.map((r) => r.otherCpuS));
        const busy = spread(rs.map((r) => (r.clientCpuS + (r.middleCpuS ?? 0) + r.dovecotCpuS + r.otherCpuS) / r.wallS));
        const otherShare = spread(rs.map((r) => r.otherCpuS / r.wallS));
        if (otherShare && otherShare.median > maxOtherShare) maxOtherShare = otherShare.median;
        cpuSummary.push({
          workload: w,
          target: t,
          wallS: wall,
          clientCpuS: client,
          clientCpuShare: clientShare,
          middleCpuS: middle,
          middleSysS: middleSys,
          dovecotCpuS: dove,
          otherCpuS: other,
          coresBusy: busy,
        });
        cpuRows.push([
          label(w, o, passes),
          t,
          wall ? wall.median.toFixed(3) : '-',
          client && clientShare ? `${client.median.toFixed(3)} (${(clientShare.median * 100).toFixed(0)}%)` : '-',
          middle ? `${middle.median.toFixed(2)}${middleSys ? ` (${middleSys.median.toFixed(2)} sys)` : ''}` : '-',
          dove ? dove.median.toFixed(2) : '-',
          other ? other.median.toFixed(2) : '-',
          busy ? busy.median.toFixed(2) : '-',
        ]);
      }
    }
    const cpuTable = table(
      ['workload', 'target', 'wall s', 'client CPU s (of wall)', 'relay/proxy CPU s (kernel part)', 'Dovecot CPU s', 'other CPU s', 'cores busy'],
      cpuRows,
      [false, false, true, true, true, true, true, true],
    );

    // --- machine and versions
    const cpus = os.cpus();
    const machine = {
      hostname: os.hostname(),
      cpuModel: cpus[0]?.model ?? 'unknown',
      cpus: cpus.length,
      availableParallelism: os.availableParallelism(),
      affinity: originalAffinity,
      memoryGiB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
      kernel: `${os.type()} ${os.release()}`,
      node: process.version,
      dovecot: sh('dovecot', ['--version']),
      socat: sh('socat', ['-V']).split('\n').find((l) => l.startsWith('socat version')) ?? '',
      gitCommit: sh('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD']),
      srcDirty: sh('git', ['-C', ROOT, 'status', '--porcelain', '--', 'src']) !== '',
    };
    let proxyPeakRssKiB: number | null = null;
    if (middlePid.proxy !== null) {
      try {
        const m = /VmHWM:\s+(\d+)/.exec(readFileSync(`/proc/${middlePid.proxy}/status`, 'latin1'));
        proxyPeakRssKiB = m ? Number(m[1]) : null;
      } catch {
        /* gone */
      }
    }
    const proxyLog = proxy?.output().trim() ?? '';

    const out = {
      benchmark: 'jmapaccess-proxy bench/run.ts',
      formatVersion: 1,
      date: started.toISOString(),
      durationS: Math.round((Date.now() - started.getTime()) / 100) / 10,
      mode: o.quick ? 'quick' : 'full',
      options: o,
      machine,
      setup: {
        mailboxes: { big: { count: o.bigCount, size: MiB }, small: { count: o.smallCount, size: 4096 } },
        dovecotExtraConfig: ['mail_fsync = never', 'mail_max_userip_connections = 10000'],
        commands,
        capabilitiesAfterLogin: capabilities,
        ...(o.workloads.includes('concurrency')
          ? {
              concurrency: {
                preauth: o.concPreauth,
                idle: o.concIdle,
                holdS: o.concHoldS,
                reps: o.concReps,
                targets: targetsFor('concurrency', o.targets),
                dovecotExtraConfig: concDovecotConfig,
                proxyNofile: concProxyNofile,
                clientNofile: concOwnNofile,
                proxyPreauthTimeoutS: concPreauthTimeoutS,
                connectInFlight: CONC_CONNECT_IN_FLIGHT,
                loginInFlight: CONC_LOGIN_IN_FLIGHT,
                checkInFlight: CONC_CHECK_IN_FLIGHT,
                scrapeEveryS: CONC_SCRAPE_EVERY_S,
                loopDelay:
                  'prom-client monitorEventLoopDelay histogram (resolution 10 ms; each sample is a full timer interval, so an idle loop reads ~10.1 ms), reset by every scrape; "loop p99 ms" is the largest p99 of the scrape windows of the hold',
                goals: CONCURRENCY_TARGETS,
              },
            }
          : {}),
      },
      backgroundLoadCores: Math.round(backgroundCores * 100) / 100,
      quietGuard: { enabled: o.quietGuard, waitedS: Math.round(quiet.waitedS), gaveUp: quiet.gaveUp, discardedRuns: discarded, disturbedKeptRuns: disturbedKept },
      proxyPeakRssKiB,
      proxyLogLines: proxyLog === '' ? 0 : proxyLog.split('\n').length,
      digestFailures,
      errors,
      summary,
      cpu: cpuSummary,
      runs,
    };
    const file = o.out ?? `${RESULTS}/${started.toISOString().replace(/\.\d+Z$/, 'Z').replace(/:/g, '-')}.json`;
    await mkdir(RESULTS, { recursive: true });
    await writeFile(`${file}.tmp`, `${JSON.stringify(out, null, 2)}\n`);
    await rename(`${file}.tmp`, file);

    const say = (s = '') => process.stdout.write(`${s}\n`);
    say();
    say(
      `jmapaccess-proxy benchmark, ${out.mode} run, ${o.workloads.every((w) => w === 'concurrency') ? o.concReps : o.reps} repetitions, ${started.toISOString()} — ` +
        `${machine.cpus} × ${machine.cpuModel}, ${machine.kernel}, Node ${machine.node}, Dovecot ${machine.dovecot.split(' ')[0]}, ` +
        `commit ${machine.gitCommit}${machine.srcDirty ? ' (src/ modified)' : ''}`,
    );
    say('median (min–max) over repetitions; ratios are taken per repetition, then the median of those');
    say('(MB/s and logins/s: higher is better, ratio < 1 = slower than direct; µs: lower is better, ratio > 1 = slower)');
    say();
    say(mainTable);
    say();
    say('CPU time during the timed part (medians): the load client (this process), the relay or proxy, Dovecot (all its');
    say('processes), other (machine busy time none of those account for: kernel softirq, other processes); cores busy = all of it / wall');
    say();
    say(cpuTable);
    say();
    const fetchRuns = runs.filter((r) => r.digest !== undefined);
    if (fetchRuns.length === 0) {
      /* no FETCH workload ran */
    } else if (o.digest === 'none') say('FETCH digests: off (--digest none); only response and byte counts were checked');
    else
      say(
        digestFailures === 0
          ? `FETCH digests: all ${fetchRuns.length} runs delivered exactly the bytes direct did (sha256 of every literal byte ` +
            `${o.digest === 'first' ? 'of an untimed pass of the whole mailbox; the timed passes checked response and byte counts' : 'of every pass'})`
          : `FETCH digests: ${digestFailures} of ${fetchRuns.length} runs DIFFER from direct`,
      );
    if (o.quietGuard) {
      say(
        `quiet guard: waited ${quiet.waitedS.toFixed(0)} s in all for an idle machine; ${discarded} runs discarded ` +
          `and run again because other processes used the CPU during their repetition`,
      );
    }
    if (disturbedKept > 0 || quiet.gaveUp > 0 || (!o.quietGuard && maxOtherShare > OTHER_LIMIT_CORES)) {
      say(
        `WARNING: ${disturbedKept} kept runs had other load (up to ${maxOtherShare.toFixed(2)} cores of "other" CPU): ` +
          'compare ratios, not absolute figures, or run again on a quiet machine',
      );
    }
    if (o.workloads.includes('concurrency')) for (const l of concurrencyVerdict(runs.filter((r) => r.workload === 'concurrency' && ok(r)), o)) say(l);
    if (proxyPeakRssKiB !== null && o.workloads.some((w) => w !== 'concurrency')) {
      say(`proxy peak RSS${o.workloads.includes('concurrency') ? ' (the proxy of the other workloads; concurrency has its own)' : ''}: ${(proxyPeakRssKiB / 1024).toFixed(1)} MiB`);
    }
    if (errors > 0) {
      say(`${errors} runs FAILED:`);
      for (const r of runs.filter((x) => x.error)) say(`  ${r.workload} rep ${r.rep} ${r.target}: ${r.error}`);
    }
    if (proxyLog) say(`proxy log (warn and above):\n${proxyLog.split('\n').slice(-10).join('\n')}`);
    say(`results: ${file}`);
    return digestFailures === 0 && errors === 0 ? 0 : 1;
  } finally {
    for (const c of children.reverse()) await c.stop();
    if (dovecot2) await dovecot2.stop();
    if (dovecot) await dovecot.stop();
  }
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`bench: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);
