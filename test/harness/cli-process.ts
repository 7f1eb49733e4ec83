/**
 * The real CLI (`node dist/cli.js`) as a child process for a test: a clean
 * environment, its JSON log lines collected, stopped in t.teardown (SIGTERM,
 * then SIGKILL after 5 s).
 */

import { spawn, type ChildProcess } from 'node:child_process';
import type { Test } from 'tap';
import { CLI, ROOT } from './build.js';

/** A clean environment: no JMAPACCESS_PROXY_* from the caller, no test-runner loaders. */
export function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const base: NodeJS.ProcessEnv = { PATH: process.env.PATH ?? '/usr/bin:/bin' };
  if (process.env.HOME) base.HOME = process.env.HOME;
  return { ...base, ...extra };
}

/** The JSON log lines of a stdout text (complete lines only). */
export function logLines(stdout: string): Array<Record<string, unknown>> {
  return stdout
    .slice(0, stdout.lastIndexOf('\n') + 1)
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

export interface CliProcess {
  child: ChildProcess;
  /** Parsed log lines so far. */
  logs(): Array<Record<string, unknown>>;
  /** Waits (up to `timeoutMs`) for the `count`-th log line matching `match`, and returns it. */
  waitLog(match: (l: Record<string, unknown>) => boolean, what: string, count?: number, timeoutMs?: number): Promise<Record<string, unknown>>;
  stdout(): string;
  stderr(): string;
}

export function startCli(t: Test, args: string[], extraEnv: Record<string, string> = {}): CliProcess {
  const child = spawn(process.execPath, [CLI, ...args], { cwd: ROOT, env: cleanEnv(extraEnv), stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const exited = new Promise<void>((resolve) => child.once('close', () => resolve()));
  t.teardown(async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(timer);
  });
  const logs = () => logLines(stdout);
  const waitLog = async (match: (l: Record<string, unknown>) => boolean, what: string, count = 1, timeoutMs = 10_000) => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = logs().filter(match);
      if (found.length >= count) return found[count - 1] as Record<string, unknown>;
      if (Date.now() > deadline || child.exitCode !== null) throw new Error(`no ${what}; stdout ${stdout} stderr ${stderr}`);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  };
  return { child, logs, waitLog, stdout: () => stdout, stderr: () => stderr };
}
