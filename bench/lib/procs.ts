/**
 * Processes around the benchmark: starting the proxy and the socat relay,
 * reading CPU time of a process tree from /proc, and CPU pinning (taskset).
 */

import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { greets } from './imap.js';

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export interface Started {
  name: string;
  child: ChildProcess;
  port: number;
  /** Last output of the process (bounded). */
  output(): string;
  stop(): Promise<void>;
}

/** Spawns a server process and waits until `port` answers with an IMAP `* OK` greeting. */
export async function startServer(
  name: string,
  cmd: string,
  args: string[],
  port: number,
  env: NodeJS.ProcessEnv = process.env,
  timeoutMs = 15_000,
): Promise<Started> {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
  let out = '';
  const keep = (d: Buffer) => {
    out += d.toString('utf8');
    if (out.length > 64 * 1024) out = out.slice(-32 * 1024);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  let exited = false;
  const exit = new Promise<void>((resolve) => {
    child.once('exit', () => {
      exited = true;
      resolve();
    });
    child.once('error', (err) => {
      out += `\nspawn error: ${err.message}`;
      exited = true;
      resolve();
    });
  });
  const stop = async () => {
    if (exited) return;
    child.kill('SIGTERM');
    // Time for a clean exit (a --cpu-prof profile is written then).
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    await exit;
    clearTimeout(timer);
  };
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (exited) throw new Error(`${name} exited before it was ready:\n${out}`);
    if (await greets(port)) break;
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`${name} did not greet on 127.0.0.1:${port} within ${timeoutMs} ms:\n${out}`);
    }
    await sleep(50);
  }
  return { name, child, port, output: () => out, stop };
}

// ---------------------------------------------------------------------------
// CPU time from /proc

let clockTicks = 100;
try {
  clockTicks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
} catch {
  /* keep 100 */
}

interface ProcStat {
  ppid: number;
  /** utime + stime + cutime + cstime, in clock ticks */
  ticks: number;
  /** stime + cstime: the kernel part */
  sysTicks: number;
}

function readStats(): Map<number, ProcStat> {
  const stats = new Map<number, ProcStat>();
  for (const e of readdirSync('/proc')) {
    if (e.charCodeAt(0) < 0x30 || e.charCodeAt(0) > 0x39) continue;
    let s: string;
    try {
      s = readFileSync(`/proc/${e}/stat`, 'latin1');
    } catch {
      continue;
    }
    // "pid (comm) state ppid ..." -- comm may contain spaces and parentheses.
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    // after comm: [0]=state [1]=ppid ... [11]=utime [12]=stime [13]=cutime [14]=cstime
    const sysTicks = Number(f[12]) + Number(f[14]);
    const ticks = Number(f[11]) + Number(f[13]) + sysTicks;
    stats.set(Number(e), { ppid: Number(f[1]), ticks, sysTicks });
  }
  return stats;
}

/**
 * CPU seconds used so far by each root's process tree: the root's own time
 * plus that of its reaped children (cutime/cstime), plus, recursively, the
 * trees of its live children. Dead-and-reaped children are counted once
 * (in the parent's cutime), live ones by their own counters.
 */
export function treeCpuSeconds(roots: number[]): Array<{ total: number; sys: number }> {
  const stats = readStats();
  const children = new Map<number, number[]>();
  for (const [pid, st] of stats) {
    const list = children.get(st.ppid);
    if (list) list.push(pid);
    else children.set(st.ppid, [pid]);
  }
  const tree = (pid: number): [number, number] => {
    const st = stats.get(pid);
    let t = st?.ticks ?? 0;
    let k = st?.sysTicks ?? 0;
    for (const c of children.get(pid) ?? []) {
      const [ct, ck] = tree(c);
      t += ct;
      k += ck;
    }
    return [t, k];
  };
  return roots.map((r) => {
    const [t, k] = tree(r);
    return { total: t / clockTicks, sys: k / clockTicks };
  });
}

/**
 * CPU seconds the whole machine has spent busy so far, summed over CPUs
 * (/proc/stat: everything but idle and iowait; steal included, since a
 * stolen vCPU is just as unavailable).
 */
export function machineBusySeconds(): number {
  const line = readFileSync('/proc/stat', 'latin1').split('\n', 1)[0] ?? '';
  // cpu user nice system idle iowait irq softirq steal guest guest_nice
  const f = line.trim().split(/\s+/).slice(1).map(Number);
  const busy = (f[0] ?? 0) + (f[1] ?? 0) + (f[2] ?? 0) + (f[5] ?? 0) + (f[6] ?? 0) + (f[7] ?? 0);
  return busy / clockTicks;
}

/**
 * The processes that used the most CPU over the last `ms` milliseconds (for
 * the "machine is not idle" message), as "cores  pid  command" lines.
 */
export async function busiestProcesses(ms: number, n: number): Promise<string> {
  const a = readStats();
  await new Promise<void>((r) => setTimeout(r, ms));
  const b = readStats();
  const used: Array<[number, number]> = [];
  for (const [pid, st] of b) {
    const before = a.get(pid);
    // Without a sample before, the process was born in the window: all its time is in it.
    const d = st.ticks - (before?.ticks ?? 0);
    if (d > 0) used.push([pid, d]);
  }
  used.sort((x, y) => y[1] - x[1]);
  return used
    .slice(0, n)
    .map(([pid, d]) => {
      let cmd = '';
      try {
        cmd = readFileSync(`/proc/${pid}/cmdline`, 'latin1').replace(/\0/g, ' ').trim();
      } catch {
        /* gone */
      }
      return `${((d / clockTicks) * (1000 / ms)).toFixed(2)} cores  ${pid}  ${cmd.slice(0, 120)}`;
    })
    .join('\n');
}

/** The pid and every live descendant of it. */
export function descendants(root: number): number[] {
  const stats = readStats();
  const out: number[] = [];
  const walk = (pid: number) => {
    out.push(pid);
    for (const [p, st] of stats) if (st.ppid === pid) walk(p);
  };
  if (stats.has(root)) walk(root);
  return out;
}

/** Pid of the Dovecot master started with config `confPath`. */
export function findDovecotMaster(confPath: string): number | null {
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const cmd = readFileSync(`/proc/${e}/cmdline`, 'latin1').split('\0');
      if (/(^|\/)dovecot$/.test(cmd[0] ?? '') && cmd.includes(confPath)) return Number(e);
    } catch {
      /* gone */
    }
  }
  return null;
}

// ---------------------------------------------------------------------------
// pinning

export function hasTaskset(): boolean {
  try {
    execFileSync('taskset', ['-V'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** The CPU list this process may run on now, e.g. "0,1" or "0-3". */
export function currentAffinity(pid = process.pid): string {
  const out = execFileSync('taskset', ['-pc', String(pid)], { encoding: 'utf8' });
  return out.slice(out.lastIndexOf(':') + 1).trim();
}

/** Sets the CPU list of every thread of every pid (processes that vanished are skipped). */
export function setAffinity(pids: number[], cpus: string): void {
  for (const pid of pids) {
    try {
      execFileSync('taskset', ['-a', '-pc', cpus, String(pid)], { stdio: 'ignore' });
    } catch {
      /* gone, or not allowed */
    }
  }
}

// ---------------------------------------------------------------------------
// memory

/** VmRSS and VmHWM (peak RSS) of a process from /proc/<pid>/status, in KiB; null if it is gone. */
export function memoryKiB(pid: number): { rss: number; hwm: number } | null {
  let s: string;
  try {
    s = readFileSync(`/proc/${pid}/status`, 'latin1');
  } catch {
    return null;
  }
  const rss = /VmRSS:\s+(\d+)/.exec(s);
  const hwm = /VmHWM:\s+(\d+)/.exec(s);
  return rss && hwm ? { rss: Number(rss[1]), hwm: Number(hwm[1]) } : null;
}

/**
 * Memory of a process tree (the root and every live descendant), in KiB:
 * the sum of Pss (/proc/<pid>/smaps_rollup: each shared page divided among
 * the processes that map it, so shared libraries are not counted once per
 * process as summed RSS would) and the number of processes.
 */
export function treePssKiB(root: number): { pss: number; processes: number } {
  let pss = 0;
  let processes = 0;
  for (const pid of descendants(root)) {
    try {
      const m = /^Pss:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'latin1'));
      if (m) {
        pss += Number(m[1]);
        processes++;
      }
    } catch {
      /* gone */
    }
  }
  return { pss, processes };
}

/** Soft and hard RLIMIT_NOFILE of a process (/proc/<pid>/limits), or null. */
export function nofileLimit(pid: number): { soft: number; hard: number } | null {
  try {
    const m = /^Max open files\s+(\d+|unlimited)\s+(\d+|unlimited)/m.exec(readFileSync(`/proc/${pid}/limits`, 'latin1'));
    if (!m) return null;
    const n = (x: string | undefined) => (x === 'unlimited' ? Infinity : Number(x));
    return { soft: n(m[1]), hard: n(m[2]) };
  } catch {
    return null;
  }
}
