/**
 * `--check`: for CI pipelines and container start-up. Connects to the
 * upstream the way sessions do (TLS and STARTTLS included), reads its
 * greeting and pre-login capabilities, and says whether JMAPACCESS can be
 * granted. Exit 0 when the upstream answered properly, 1 otherwise.
 */

import net from 'node:net';
import type { Config } from './config.js';
import { hasCapability } from './imap/capabilities.js';
import { capabilityAtoms, classifyResponse, findCapabilities } from './imap/response.js';
import { openUpstream, readLines, UpstreamError } from './upstream.js';

export interface CheckReport {
  ok: boolean;
  upstream: string;
  tls: string;
  error?: string;
  greeting?: string;
  capabilities?: string[];
  jmapaccess?: string;
}

function whenConnected(socket: net.Socket, secure: boolean): Promise<void> {
  return new Promise((resolve, reject) => {
    socket.once(secure ? 'secureConnect' : 'connect', () => resolve());
    socket.once('error', (err: Error & { code?: string }) => reject(new UpstreamError(err.message, err.code)));
  });
}

export async function checkUpstream(config: Config): Promise<CheckReport> {
  const upstream = `${config.upstream.host}:${config.upstream.port}`;
  const report: CheckReport = { ok: false, upstream, tls: config.upstreamTls?.mode ?? 'none' };
  let socket: net.Socket | null = null;
  const timer = setTimeout(() => socket?.destroy(new Error(`no answer within ${config.upstreamConnectTimeoutMs} ms`)), config.upstreamConnectTimeoutMs);
  try {
    const opened = openUpstream(config);
    let greeting: string | undefined;
    if (opened instanceof net.Socket) {
      socket = opened;
      await whenConnected(opened, config.upstreamTls !== null);
      await readLines(opened, config.maxLineLength, (line) => {
        const response = classifyResponse(line);
        if (response.kind !== 'untagged' || response.status === null) return false;
        greeting = line.toString('latin1').trimEnd();
        return true;
      });
    } else {
      const ready = await opened;
      socket = ready.socket;
      greeting = ready.preamble?.toString('latin1').trimEnd();
    }
    report.greeting = greeting;
    if (!greeting?.startsWith('* OK')) throw new UpstreamError(`the upstream greeted with: ${greeting}`);
    socket.write('check CAPABILITY\r\n');
    let capabilities: string[] = [];
    await readLines(socket, config.maxLineLength, (line) => {
      const response = classifyResponse(line);
      const span = findCapabilities(line, response);
      if (span) capabilities = capabilityAtoms(line, span);
      return response.kind === 'tagged' && response.tag === 'check';
    });
    socket.write('logout LOGOUT\r\n');
    report.capabilities = capabilities;
    report.jmapaccess =
      config.objectId === 'assume'
        ? 'granted after login with an eligible mechanism (--objectid assume)'
        : hasCapability(capabilities, 'OBJECTID')
          ? 'granted after login with an eligible mechanism (OBJECTID offered)'
          : 'granted only if the upstream offers OBJECTID after login (many servers list it only then; Dovecot 2.3 never does)';
    report.ok = true;
  } catch (err) {
    report.error = `${(err as UpstreamError).code ? `${(err as UpstreamError).code}: ` : ''}${(err as Error).message}`;
  } finally {
    clearTimeout(timer);
    socket?.destroy();
  }
  return report;
}
