/**
 * The proxy under TLS and COMPRESS=DEFLATE, next to Dovecot doing the same
 * itself (`npm run bench:transports [-- --quick]`).
 *
 * Six targets, one after another in each repetition:
 *   direct, direct-tls (Dovecot's imaps), direct-compress (Dovecot's own COMPRESS)
 *   proxy, proxy-tls (--listen-tls), proxy-compress (the proxy's COMPRESS)
 * and three workloads: bulk FETCH of 1 MiB and of 4 KiB messages (MB/s of
 * literal data) and sequential NOOPs (p50 µs). The ratios that matter are
 * pairwise: proxy-tls / direct-tls and proxy-compress / direct-compress (the
 * same work done by the proxy instead of Dovecot), and the proxy's CPU per
 * GB moved on each transport (what TLS and compression cost it).
 */

import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import os from 'node:os';
import { execFileSync } from 'node:child_process';
import { ensureDovecotInstalled, freePort, startDovecot } from '../test/harness/dovecot.js';
import { makeTestCa } from '../test/harness/pki.js';
import { ImapClient, type ClientTls } from './lib/imap.js';
import { writeMailbox, type Owner } from './lib/maildir.js';
import { findDovecotMaster, startServer, treeCpuSeconds } from './lib/procs.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const CLI = join(ROOT, 'dist', 'cli.js');
const USER = 'alice';
const PASSWORD = 'alicepw';
const MiB = 1024 * 1024;

const TARGETS = ['direct', 'direct-tls', 'direct-compress', 'proxy', 'proxy-tls', 'proxy-compress'] as const;
type Target = (typeof TARGETS)[number];
const WORKLOADS = ['fetch-big', 'fetch-small', 'noop'] as const;
type Workload = (typeof WORKLOADS)[number];

const quick = process.argv.includes('--quick');
const repsArg = process.argv.indexOf('--reps');
const REPS = repsArg > 0 ? Number(process.argv[repsArg + 1]) : quick ? 2 : 5;
const BIG = quick ? 40 : 100;
const SMALL = quick ? 300 : 1000;
const NOOPS = quick ? 1000 : 5000;
const MIN_TIME_S = quick ? 0.3 : 1;

const log = (text: string) => process.stderr.write(`${text}\n`);
const median = (values: number[]) => {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? (sorted[mid] as number) : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
};

interface Endpoint {
  port: number;
  tls?: ClientTls;
  compress: boolean;
  /** The process whose CPU is the middle's (the proxy), if any. */
  middle: boolean;
}

interface Run {
  rep: number;
  workload: Workload;
  target: Target;
  value: number;
  wallS: number;
  proxyCpuS: number | null;
  dovecotCpuS: number;
  bytes: number;
}

async function open(e: Endpoint): Promise<ImapClient> {
  const c = await ImapClient.connect(e.port, '127.0.0.1', 10_000, e.tls);
  await c.login(USER, PASSWORD);
  if (e.compress) await c.compress();
  return c;
}

/** FETCH every message `passes` times; checks counts; returns literal bytes and wall seconds. */
async function fetchAll(e: Endpoint, mailbox: string, count: number, size: number, passes: number, window: () => () => number) {
  const c = await open(e);
  await c.command('S', `EXAMINE ${mailbox}`);
  c.untaggedCount = 0;
  c.literalBytes = 0;
  const stop = window();
  for (let i = 0; i < passes; i++) await c.command(`F${i}`, 'UID FETCH 1:* BODY.PEEK[]');
  const wall = stop();
  if (c.untaggedCount !== count * passes || c.literalBytes !== count * size * passes) {
    throw new Error(`${mailbox}: ${c.untaggedCount} responses / ${c.literalBytes} bytes, expected ${count * passes} / ${count * size * passes}`);
  }
  await c.logout();
  return { bytes: count * size * passes, wall };
}

async function noops(e: Endpoint, window: () => () => number) {
  const c = await open(e);
  const lat = new Float64Array(NOOPS);
  const stop = window();
  for (let i = 0; i < NOOPS; i++) {
    const t0 = process.hrtime.bigint();
    await c.command(`N${i}`, 'NOOP');
    lat[i] = Number(process.hrtime.bigint() - t0) / 1000;
  }
  const wall = stop();
  await c.logout();
  lat.sort();
  return { p50: lat[NOOPS >> 1] as number, wall };
}

async function main(): Promise<number> {
  await ensureDovecotInstalled();
  const ca = makeTestCa();
  const cert = ca.issue('bench', ['localhost', '127.0.0.1']);
  const tlsClient: ClientTls = { ca: ca.ca, servername: 'localhost' };
  const imapsPort = await freePort();
  const dovecot = await startDovecot({
    compress: true,
    extraConfig: [
      'mail_fsync = never',
      'mail_max_userip_connections = 10000',
      'ssl = yes',
      `ssl_cert = <${cert.certFile}`,
      `ssl_key = <${cert.keyFile}`,
      // The same cipher choice on both sides: OpenSSL's defaults (TLS 1.3, AES-GCM here).
      'service imap-login {',
      '  inet_listener imaps {',
      '    address = 127.0.0.1',
      `    port = ${imapsPort}`,
      '    ssl = yes',
      '  }',
      '}',
    ].join('\n'),
  });
  let proxy: Awaited<ReturnType<typeof startServer>> | null = null;
  try {
    const master = findDovecotMaster(`${dovecot.dir}/dovecot.conf`);
    if (master === null) throw new Error('no Dovecot master');
    const owner: Owner | null = process.getuid?.() === 0 ? { uid: Number(execFileSync('id', ['-u', 'mail']).toString()), gid: Number(execFileSync('id', ['-g', 'mail']).toString()) } : null;
    await writeMailbox(dovecot.maildir(USER), 'big', BIG, MiB, owner);
    await writeMailbox(dovecot.maildir(USER), 'small', SMALL, 4096, owner);

    const proxyPort = await freePort();
    const proxyTlsPort = await freePort();
    const args = [
      CLI,
      '--listen', `127.0.0.1:${proxyPort}`,
      '--listen-tls', `127.0.0.1:${proxyTlsPort}`,
      '--tls-cert', cert.certFile,
      '--tls-key', cert.keyFile,
      '--no-require-tls', // the plain target logs in over the plain port
      '--upstream', `imap://127.0.0.1:${dovecot.port}`,
      '--jmap-url', 'https://jmap.example.test/',
      '--log-level', 'warn',
    ];
    proxy = await startServer('proxy', process.execPath, args, proxyPort);
    const proxyPid = proxy.child.pid as number;

    const endpoints: Record<Target, Endpoint> = {
      direct: { port: dovecot.port, compress: false, middle: false },
      'direct-tls': { port: imapsPort, tls: tlsClient, compress: false, middle: false },
      'direct-compress': { port: dovecot.port, compress: true, middle: false },
      proxy: { port: proxyPort, compress: false, middle: true },
      'proxy-tls': { port: proxyTlsPort, tls: tlsClient, compress: false, middle: true },
      'proxy-compress': { port: proxyPort, compress: true, middle: true },
    };

    const runs: Run[] = [];
    const passes: Partial<Record<Workload, number>> = {};
    const one = async (rep: number, workload: Workload, target: Target): Promise<Run> => {
      try {
        return await measure(rep, workload, target);
      } catch (err) {
        throw new Error(`${workload} on ${target}: ${(err as Error).message}`);
      }
    };
    const measure = async (rep: number, workload: Workload, target: Target): Promise<Run> => {
      const e = endpoints[target];
      let cpu0 = 0;
      let dcpu0 = 0;
      let t0 = 0n;
      let proxyCpuS: number | null = null;
      let dovecotCpuS = 0;
      const window = () => {
        cpu0 = treeCpuSeconds([proxyPid])[0]?.total ?? 0;
        dcpu0 = treeCpuSeconds([master])[0]?.total ?? 0;
        t0 = process.hrtime.bigint();
        return () => {
          const wall = Number(process.hrtime.bigint() - t0) / 1e9;
          if (e.middle) proxyCpuS = (treeCpuSeconds([proxyPid])[0]?.total ?? 0) - cpu0;
          dovecotCpuS = (treeCpuSeconds([master])[0]?.total ?? 0) - dcpu0;
          return wall;
        };
      };
      if (workload === 'noop') {
        const r = await noops(e, window);
        return { rep, workload, target, value: r.p50, wallS: r.wall, proxyCpuS, dovecotCpuS, bytes: 0 };
      }
      const [box, count, size] = workload === 'fetch-big' ? ['big', BIG, MiB] : ['small', SMALL, 4096];
      const r = await fetchAll(e, box, count, size, passes[workload] ?? 1, window);
      return { rep, workload, target, value: r.bytes / 1e6 / r.wall, wallS: r.wall, proxyCpuS, dovecotCpuS, bytes: r.bytes };
    };

    for (const workload of WORKLOADS) {
      if (workload !== 'noop') {
        // Warm-up (not counted) that also sets the pass count from the slowest target.
        passes[workload] = 1;
        let slowest = 0;
        for (const target of TARGETS) slowest = Math.max(slowest, (await one(-1, workload, target)).wallS);
        passes[workload] = Math.max(1, Math.ceil(MIN_TIME_S / slowest));
      } else {
        for (const target of TARGETS) await one(-1, workload, target);
      }
      for (let rep = 0; rep < REPS; rep++) {
        for (const target of TARGETS) {
          const run = await one(rep, workload, target);
          runs.push(run);
          log(`${workload} rep ${rep} ${target}: ${run.value.toFixed(1)}`);
        }
      }
    }

    // --- tables
    const lines: string[] = [];
    const metricName = (w: Workload) => (w === 'noop' ? 'p50 µs' : 'MB/s');
    const title = (w: Workload) =>
      w === 'fetch-big' ? `FETCH ${BIG} × 1 MiB ×${passes[w]}` : w === 'fetch-small' ? `FETCH ${SMALL} × 4 KiB ×${passes[w]}` : `NOOP × ${NOOPS}`;
    const value = (w: Workload, t: Target) => median(runs.filter((r) => r.workload === w && r.target === t).map((r) => r.value));
    const ratio = (w: Workload, a: Target, b: Target) =>
      median(
        [...Array(REPS).keys()].map((rep) => {
          const ra = runs.find((r) => r.workload === w && r.target === a && r.rep === rep) as Run;
          const rb = runs.find((r) => r.workload === w && r.target === b && r.rep === rep) as Run;
          return ra.value / rb.value;
        }),
      );
    const pad = (s: string, n: number) => s.padStart(n);
    lines.push(`${'workload'.padEnd(26)}${'metric'.padEnd(8)}${TARGETS.map((t) => pad(t, 16)).join('')}${['proxy/direct', 'tls: proxy/direct', 'compress: proxy/direct'].map((h) => pad(h, 24)).join('')}`);
    const summary: Record<string, unknown>[] = [];
    for (const w of WORKLOADS) {
      const values = TARGETS.map((t) => value(w, t));
      const ratios = [ratio(w, 'proxy', 'direct'), ratio(w, 'proxy-tls', 'direct-tls'), ratio(w, 'proxy-compress', 'direct-compress')];
      lines.push(
        `${title(w).padEnd(26)}${metricName(w).padEnd(8)}${values.map((v) => pad(v.toFixed(w === 'noop' ? 1 : 0), 16)).join('')}${ratios.map((r) => pad(r.toFixed(2), 24)).join('')}`,
      );
      summary.push({ workload: w, metric: metricName(w), values: Object.fromEntries(TARGETS.map((t, i) => [t, values[i]])), ratios: { proxy: ratios[0], tls: ratios[1], compress: ratios[2] } });
    }
    lines.push('');
    lines.push('the proxy\'s CPU (user + system) per GB of literal data, and Dovecot\'s, medians:');
    lines.push(`${'workload'.padEnd(26)}${['target', 'proxy CPU s/GB', 'Dovecot CPU s/GB'].map((h) => pad(h, 18)).join('')}`);
    const cpu: Record<string, unknown>[] = [];
    for (const w of ['fetch-big', 'fetch-small'] as const) {
      for (const t of TARGETS) {
        const rs = runs.filter((r) => r.workload === w && r.target === t);
        const proxyPerGb = t.startsWith('proxy') ? median(rs.map((r) => ((r.proxyCpuS ?? 0) / r.bytes) * 1e9)) : null;
        const dovecotPerGb = median(rs.map((r) => (r.dovecotCpuS / r.bytes) * 1e9));
        lines.push(`${title(w).padEnd(26)}${pad(t, 18)}${pad(proxyPerGb === null ? '-' : proxyPerGb.toFixed(2), 18)}${pad(dovecotPerGb.toFixed(2), 18)}`);
        cpu.push({ workload: w, target: t, proxyCpuSPerGB: proxyPerGb, dovecotCpuSPerGB: dovecotPerGb });
      }
    }
    const head = `jmapaccess-proxy transports benchmark, ${quick ? 'quick' : 'full'} run, ${REPS} repetitions, ${new Date().toISOString()} — ${os.cpus().length} × ${os.cpus()[0]?.model.trim()}, Node ${process.version}`;
    process.stdout.write(`${head}\n(MB/s: higher is better; µs: lower is better; ratios per repetition, then the median)\n\n${lines.join('\n')}\n`);
    const dir = join(ROOT, 'bench', 'results');
    mkdirSync(dir, { recursive: true });
    const file = join(dir, `transports-${new Date().toISOString().replace(/[:.]/g, '-').replace(/-\d+Z$/, 'Z')}.json`);
    writeFileSync(file, JSON.stringify({ head, quick, reps: REPS, passes, summary, cpu, runs, proxyCommand: ['node', ...args.map((a) => (a === CLI ? 'dist/cli.js' : a))] }, null, 2));
    process.stdout.write(`\nresults: ${file}\n`);
    return 0;
  } finally {
    await proxy?.stop();
    await dovecot.stop();
    ca.remove();
  }
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`bench: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);
