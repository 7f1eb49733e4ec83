/**
 * Runs the Python imaplib client (test/clients/imaplib_client.py), the
 * non-Node client of the test suite, and returns what it printed.
 */

import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export const IMAPLIB_CLIENT = fileURLToPath(new URL('../clients/imaplib_client.py', import.meta.url));

/** The JSON the imaplib client prints (see test/clients/imaplib_client.py). */
export interface ImaplibResult {
  greeting_caps: string[];
  login: string;
  login_error: string | null;
  caps_after: string[];
  getjmapaccess: { typ: string; data: string[] } | null;
  append_uid_ok: boolean;
  fetched_equal: boolean;
}

export function runImaplib(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn('python3', [IMAPLIB_CLIENT, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}
