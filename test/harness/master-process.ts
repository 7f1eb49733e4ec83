/**
 * What the Dovecot and Cyrus harnesses share about a server's master
 * process: tracking its exit, stopping once, and a last-resort cleanup when
 * the test process itself ends (crash, Ctrl-C, tap's timeout), so that no
 * test ever leaves a server running.
 */

import type { ChildProcess } from 'node:child_process';

/** Masters not stopped yet, for the emergency hooks. */
const live = new Set<MasterProcess>();
/** Extra emergency clean-ups (a harness's helper processes). */
const extraCleanups: Array<() => void> = [];
let hooksInstalled = false;

/** Registers something more to do when the test process ends abruptly. */
export function onHarnessExit(cleanup: () => void): void {
  extraCleanups.push(cleanup);
}

function installExitHooks(): void {
  if (hooksInstalled) return;
  hooksInstalled = true;
  // 'exit' handlers must be synchronous: each master kills itself and its
  // children with signals and sync calls only.
  const cleanup = () => {
    for (const master of live) master.killSync();
    live.clear();
    for (const extra of extraCleanups) extra();
  };
  process.on('exit', cleanup);
  // A process ended by a signal runs no 'exit' handlers. Clean up, then
  // re-raise the signal if nobody else handles it (the signal-exit idiom),
  // so the default behaviour (terminate) is unchanged.
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(sig, () => {
      cleanup();
      if (process.listenerCount(sig) === 0) process.kill(process.pid, sig);
    });
  }
}

export abstract class MasterProcess {
  protected child: ChildProcess | null = null;
  protected exitPromise: Promise<void> = Promise.resolve();
  protected exited = true;
  private stopping: Promise<void> | null = null;

  /**
   * Follows a freshly spawned master. It stays registered for the emergency
   * hooks until stop() calls untrack(): children (and the directory) can
   * outlive the master, and the hooks must still clean them up.
   */
  protected track(child: ChildProcess): void {
    this.child = child;
    this.exited = false;
    this.exitPromise = new Promise<void>((resolve) => {
      const onGone = () => {
        this.exited = true;
        resolve();
      };
      child.once('exit', onGone);
      child.once('error', onGone);
    });
    live.add(this);
    installExitHooks();
  }

  protected untrack(): void {
    live.delete(this);
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  get isRunning(): boolean {
    return !this.exited;
  }

  /** Waits until the master has exited, or `ms` elapsed. Returns true if it exited. */
  async waitExit(ms: number): Promise<boolean> {
    if (this.exited) return true;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<false>((r) => (timer = setTimeout(() => r(false), ms)));
    const res = await Promise.race([this.exitPromise.then(() => true as const), timeout]);
    clearTimeout(timer);
    return res;
  }

  /** Sends a signal to the master only, without waiting. */
  kill(signal: NodeJS.Signals = 'SIGTERM'): void {
    if (!this.exited && this.child) this.child.kill(signal);
  }

  /** Stops the server and removes its files; idempotent. */
  stop(): Promise<void> {
    this.stopping ??= this.doStop();
    return this.stopping;
  }

  /** Kills a master that could not listen (its port was taken), keeping its directory for another attempt. */
  async abandon(): Promise<void> {
    await this.killAll();
    this.untrack();
  }

  /** SIGKILLs the master and every process of the instance; resolves once they are gone. */
  abstract killAll(): Promise<void>;

  protected abstract doStop(): Promise<void>;

  /** Synchronous last-resort cleanup for the emergency hooks, where nothing async can run. */
  abstract killSync(): void;
}
