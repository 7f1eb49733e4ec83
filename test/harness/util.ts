/**
 * Small helpers shared by the real-server harnesses (dovecot.ts, cyrus.ts).
 */

import { access, chown, constants as fsConstants, readdir } from 'node:fs/promises';

export async function exists(path: string, mode: number = fsConstants.F_OK): Promise<boolean> {
  try {
    await access(path, mode);
    return true;
  } catch {
    return false;
  }
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export const isRoot = (): boolean => process.getuid?.() === 0;

export function tailLines(text: string, n: number): string {
  return text.split('\n').filter((l) => l.length > 0).slice(-n).join('\n');
}

export function signalPid(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    /* already gone */
  }
}

export async function chownTree(path: string, uid: number, gid: number): Promise<void> {
  await chown(path, uid, gid);
  for (const ent of await readdir(path, { withFileTypes: true })) {
    const p = `${path}/${ent.name}`;
    if (ent.isDirectory()) await chownTree(p, uid, gid);
    else await chown(p, uid, gid);
  }
}
