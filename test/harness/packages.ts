/**
 * Installs a Debian package a test needs (a client binary such as mbsync)
 * when its binary is missing, so that `npm test` works on a fresh Debian 12
 * machine as root.
 */

import { execFile } from 'node:child_process';
import { access, constants as fsConstants } from 'node:fs/promises';

interface ExecResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** execFile that resolves with the exit status; rejects only if the command cannot be started. */
function run(cmd: string, args: string[], env: NodeJS.ProcessEnv): Promise<ExecResult> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { env, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err && typeof (err as NodeJS.ErrnoException).code === 'string') {
        reject(err);
        return;
      }
      const code = err ? ((err as { code?: number | null }).code ?? null) : 0;
      resolve({ code, stdout: String(stdout), stderr: String(stderr) });
    });
  });
}

async function isExecutable(path: string): Promise<boolean> {
  try {
    await access(path, fsConstants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/**
 * Make sure `binaryPath` exists, installing `packageName` with apt-get if it
 * does not (root only): `DEBIAN_FRONTEND=noninteractive apt-get install -y
 * --no-install-recommends`, running `apt-get update` first only if apt knows
 * no installable candidate. A no-op when the binary is already there.
 */
export async function ensureDebianPackage(binaryPath: string, packageName: string): Promise<void> {
  if (await isExecutable(binaryPath)) return;
  const hint = `DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${packageName}`;
  if (process.getuid?.() !== 0) {
    throw new Error(`${binaryPath} is missing and we are not root, so ${packageName} cannot be installed. Run as root: ${hint}`);
  }
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };

  const policy = await run('apt-cache', ['policy', packageName], env);
  if (policy.code !== 0 || !/Candidate:\s*(?!\(none\))\S+/.test(policy.stdout)) {
    const update = await run('apt-get', ['update', '-qq'], env);
    if (update.code !== 0) throw new Error(`apt-get update failed (exit ${update.code}):\n${update.stderr}`);
  }
  const install = await run('apt-get', ['install', '-y', '--no-install-recommends', packageName], env);
  if (install.code !== 0) {
    throw new Error(`apt-get install ${packageName} failed (exit ${install.code}):\n${install.stderr}\n${install.stdout}`);
  }
  if (!(await isExecutable(binaryPath))) {
    throw new Error(`apt-get install ${packageName} succeeded but ${binaryPath} is still missing`);
  }
}
