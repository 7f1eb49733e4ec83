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
  hasTaskset,
  machineBusySeconds,
  setAffinity,
  busiestProcesses,
  startServer,
  treeCpuSeconds,
  type Started,
} from './lib/procs.js';
import { appendMany, fetchAll, loginChurn, noops, type Ctx, type DigestKind, type Outcome, type Window } from './lib/workloads.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
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

// ---------------------------------------------------------------------------
// options

type Target = 'direct' | 'relay' | 'proxy';
const ALL_TARGETS: Target[] = ['direct', 'relay', 'proxy'];
const WORKLOADS = ['fetch-big', 'fetch-small', 'append-sync', 'append-nonsync', 'noop', 'noop-pinned', 'login-churn'] as const;
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
  error?: string;
  /** other CPU above the limit during this run */
  disturbed?: boolean;
  /** run again because of other load; left out of every figure */
  discarded?: boolean;
}

const PRIMARY: Record<Workload, Array<{ metric: string; better: 'higher' | 'lower' }>> = {
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
};

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
  }
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

    // --- one run of one workload against one target
    const appendMessage = makeMessage(MiB, 'append', 0);
    let appendSerial = 0;
    const passes = new Map<Workload, number>();
    const runOne = async (w: Workload, t: Target, rep: number, warmup: boolean): Promise<RunRecord> => {
      const times = passes.get(w) ?? 1;
      let wall0 = 0n;
      let wall1 = 0n;
      let cpu0: NodeJS.CpuUsage = { user: 0, system: 0 };
      let cpu1: NodeJS.CpuUsage = { user: 0, system: 0 };
      const roots = [master, ...(middlePid[t] !== null ? [middlePid[t] as number] : [])];
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
      const ctx: Ctx = { port: ports[t], win, clients: new Set(), user: USER, password: PASSWORD };
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
      try {
        const outcome = await Promise.race([
          work(),
          new Promise<never>((_, reject) => {
            timer = setTimeout(() => reject(new Error(`timed out after ${RUN_TIMEOUT_MS / 1000} s`)), RUN_TIMEOUT_MS);
          }),
        ]);
        record.metrics = outcome.metrics;
        if (outcome.digest !== undefined) record.digest = outcome.digest;
        if (outcome.bytes !== undefined) record.bytes = outcome.bytes;
      } catch (err) {
        record.error = err instanceof Error ? err.message : String(err);
      } finally {
        clearTimeout(timer);
        for (const c of ctx.clients) c.close();
      }
      if (!record.error) {
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
      try {
        await quiet.wait();
        log(`${label(w, o, passes)}: warm-up`);
        let fastest = Infinity;
        for (const t of o.targets) {
          const r = await runOne(w, t, 0, true);
          if (r.error) throw new Error(`warm-up of ${w} against ${t} failed: ${r.error}`);
          fastest = Math.min(fastest, r.wallS);
        }
        if (REPEATED.has(w)) {
          passes.set(w, Math.max(1, Math.ceil(o.minTimeS / fastest)));
          log(`  ${label(w, o, passes)}: the unit took ${(fastest * 1000).toFixed(0)} ms at best, so each run repeats it ${passes.get(w)} times`);
        }
        for (let rep = 1; rep <= o.reps; rep++) {
          // A repetition is the pair (triple) of runs the ratios come from: if
          // anything else used the CPU during one of them, all of them are
          // run again, so every ratio compares runs made under the same load.
          for (let attempt = 1; ; attempt++) {
            await quiet.wait();
            const line: string[] = [];
            const set: RunRecord[] = [];
            for (const t of o.targets) {
              const r = await runOne(w, t, rep, false);
              set.push(r);
              const m = PRIMARY[w][0]?.metric ?? '';
              line.push(r.error ? `${t} ERROR ${r.error}` : `${t} ${num(r.metrics[m] ?? NaN)} ${m}`);
            }
            const disturbed = set.filter((r) => !r.error && isDisturbed(r));
            const last = !o.quietGuard || disturbed.length === 0 || attempt > MAX_RETRIES;
            for (const r of set) {
              if (disturbed.includes(r)) r.disturbed = true;
              if (!last) r.discarded = true;
              runs.push(r);
            }
            const note = disturbed.length === 0 ? '' : ` — other load during ${disturbed.map((r) => r.target).join(', ')}`;
            log(`  rep ${rep}/${o.reps}${attempt > 1 ? ` (attempt ${attempt})` : ''}: ${line.join(', ')}${note}${last ? '' : ', running it again'}`);
            if (last) break;
          }
        }
      } finally {
        if (pinned && originalAffinity) setAffinity(everyPid(), originalAffinity);
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
    const ok = (r: RunRecord) => !r.error && !r.discarded;
    const discarded = runs.filter((r) => r.discarded).length;
    const disturbedKept = runs.filter((r) => r.disturbed && !r.discarded).length;
    const summary: Array<Record<string, unknown>> = [];
    const rows: string[][] = [];
    for (const w of o.workloads) {
      for (const { metric, better } of PRIMARY[w]) {
        const per: Record<string, Spread | null> = {};
        for (const t of o.targets) {
          per[t] = spread(runs.filter((r) => r.workload === w && r.target === t && ok(r)).map((r) => r.metrics[metric] ?? NaN));
        }
        const ratios: Record<string, Spread | null> = {};
        for (const t of o.targets) {
          if (t === 'direct') continue;
          const pairs: number[] = [];
          for (let rep = 1; rep <= o.reps; rep++) {
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
      `jmapaccess-proxy benchmark, ${out.mode} run, ${o.reps} repetitions, ${started.toISOString()} — ` +
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
    if (o.digest === 'none') say('FETCH digests: off (--digest none); only response and byte counts were checked');
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
    if (proxyPeakRssKiB !== null) say(`proxy peak RSS: ${(proxyPeakRssKiB / 1024).toFixed(1)} MiB`);
    if (errors > 0) {
      say(`${errors} runs FAILED:`);
      for (const r of runs.filter((x) => x.error)) say(`  ${r.workload} rep ${r.rep} ${r.target}: ${r.error}`);
    }
    if (proxyLog) say(`proxy log (warn and above):\n${proxyLog.split('\n').slice(-10).join('\n')}`);
    say(`results: ${file}`);
    return digestFailures === 0 && errors === 0 ? 0 : 1;
  } finally {
    for (const c of children.reverse()) await c.stop();
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
