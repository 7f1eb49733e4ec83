/**
 * Opening the link to the upstream IMAP server: plain TCP, implicit TLS
 * (imaps://), or STARTTLS run by the proxy before anything is relayed.
 *
 * With STARTTLS the client must not see the plaintext greeting: its
 * capability list is the pre-TLS one (with STARTTLS, often LOGINDISABLED).
 * The proxy reads it, upgrades the link, asks for the capabilities again
 * inside TLS, and hands the session a greeting carrying the post-TLS list
 * and the server's original greeting text.
 */

import net from 'node:net';
import tls from 'node:tls';
import type { Config, UpstreamTls } from './config.js';
import { contentEnd } from './imap/literal.js';
import { capabilityAtoms, classifyResponse, findCapabilities } from './imap/response.js';
import { encodeLocal, encodeV1, encodeV2, type Endpoints } from './proxy-protocol.js';

export class UpstreamError extends Error {
  override readonly name = 'UpstreamError';
  readonly code: string | undefined;
  constructor(message: string, code?: string) {
    super(message);
    this.code = code;
  }
}

export interface OpenedUpstream {
  readonly socket: net.Socket;
  /** Bytes to treat as the first bytes the upstream sent (the rebuilt greeting after STARTTLS). */
  readonly preamble: Buffer | null;
}

type UpstreamConfig = Pick<Config, 'upstream' | 'upstreamTls' | 'upstreamConnectTimeoutMs' | 'maxLineLength'> &
  Partial<Pick<Config, 'upstreamProxyProtocol'>>;

/** The PROXY header to send first, when configured; without a client (--check) one that names none. */
function proxyHeader(config: UpstreamConfig, client: Endpoints | undefined): Buffer | null {
  if (!config.upstreamProxyProtocol) return null;
  if (!client) return encodeLocal(config.upstreamProxyProtocol);
  return config.upstreamProxyProtocol === 'v2' ? encodeV2(client) : encodeV1(client);
}

function tlsOptions(config: UpstreamConfig, upstreamTls: UpstreamTls): tls.ConnectionOptions {
  const { host } = config.upstream;
  const servername = upstreamTls.servername ?? (net.isIP(host) ? undefined : host);
  return {
    // `host` matters even over an existing socket (STARTTLS): without it Node
    // verifies the certificate against "localhost".
    host,
    ca: upstreamTls.ca ?? undefined,
    servername,
    // Without a servername (an IP address upstream), Node checks the IP against the certificate's IP SANs.
    rejectUnauthorized: !upstreamTls.insecure,
    minVersion: 'TLSv1.2',
  };
}

/**
 * A socket for a plain or implicit-TLS upstream, returned at once (writes
 * queue until it connects), or a promise for a STARTTLS upstream. With
 * `onread`, a plain TCP upstream delivers its bytes there instead of as
 * 'data' events (see read-buffers.ts).
 */
export function openUpstream(
  config: UpstreamConfig,
  client?: Endpoints,
  onread?: net.OnReadOpts,
): net.Socket | Promise<OpenedUpstream> {
  const { host, port } = config.upstream;
  const upstreamTls = config.upstreamTls;
  const header = proxyHeader(config, client);
  if (upstreamTls?.mode === 'starttls') return startTlsUpstream(config, upstreamTls, header);
  // `onread` only where the proxy reads the TCP socket itself: TLS reads its own buffers.
  if (!upstreamTls && !header) return net.connect({ host, port, onread });
  if (!header && upstreamTls) return tls.connect({ host, port, ...tlsOptions(config, upstreamTls) });
  // The PROXY header goes first on the TCP connection, before any TLS.
  const plain = net.connect({ host, port, onread: upstreamTls ? undefined : onread });
  plain.write(header as Buffer);
  return upstreamTls ? tls.connect({ socket: plain, ...tlsOptions(config, upstreamTls) }) : plain;
}

/** Reads whole lines from a socket until `done` says stop; for the short STARTTLS exchange only. */
export function readLines(socket: net.Socket, maxLineLength: number, done: (line: Buffer) => boolean): Promise<void> {
  return new Promise((resolve, reject) => {
    let buffered = Buffer.alloc(0);
    const cleanup = () => {
      socket.off('data', onData);
      socket.off('error', onError);
      socket.off('close', onClose);
    };
    const onData = (chunk: Buffer) => {
      buffered = Buffer.concat([buffered, chunk]);
      for (;;) {
        const lf = buffered.indexOf(0x0a);
        if (lf === -1) break;
        const line = buffered.subarray(0, lf + 1);
        buffered = buffered.subarray(lf + 1);
        let finished: boolean;
        try {
          finished = done(line);
        } catch (err) {
          cleanup();
          reject(err);
          return;
        }
        if (finished) {
          cleanup();
          socket.pause();
          if (buffered.length > 0) {
            reject(new UpstreamError('the IMAP server sent data the proxy did not ask for'));
          } else {
            resolve();
          }
          return;
        }
      }
      if (buffered.length > maxLineLength) {
        cleanup();
        reject(new UpstreamError('the IMAP server sent an over-long line'));
      }
    };
    const onError = (err: Error & { code?: string }) => {
      cleanup();
      reject(new UpstreamError(err.message, err.code));
    };
    const onClose = () => {
      cleanup();
      reject(new UpstreamError('the IMAP server closed the connection'));
    };
    socket.on('data', onData);
    socket.on('error', onError);
    socket.on('close', onClose);
    socket.resume();
  });
}

const text = (line: Buffer) => line.toString('latin1', 0, contentEnd(line));

async function startTlsUpstream(config: UpstreamConfig, upstreamTls: UpstreamTls, header: Buffer | null): Promise<OpenedUpstream> {
  const { host, port } = config.upstream;
  const plain = net.connect({ host, port });
  if (header) plain.write(header);
  const timer = setTimeout(
    () => plain.destroy(new Error(`no TLS connection within ${config.upstreamConnectTimeoutMs} ms`)),
    config.upstreamConnectTimeoutMs,
  );
  try {
    let greetingText = '';
    await readLines(plain, config.maxLineLength, (line) => {
      const response = classifyResponse(line);
      if (response.kind !== 'untagged' || response.status === null) return false; // e.g. Dovecot's "Waiting for authentication"
      if (response.status !== 'OK') throw new UpstreamError(`the IMAP server greeted with ${response.status}: ${text(line)}`);
      // Keep the human-readable part, without any response code.
      greetingText = text(line).slice(response.textStart).replace(/^\[[^\]]*\]\s*/, '');
      return response.status === 'OK';
    });
    plain.write('jmapaccess-proxy.starttls STARTTLS\r\n');
    await readLines(plain, config.maxLineLength, (line) => {
      const response = classifyResponse(line);
      if (response.kind !== 'tagged' || response.tag !== 'jmapaccess-proxy.starttls') return false;
      if (response.status !== 'OK') throw new UpstreamError(`the IMAP server refused STARTTLS: ${text(line)}`);
      return true;
    });
    const secure = await new Promise<tls.TLSSocket>((resolve, reject) => {
      const socket = tls.connect({ socket: plain, ...tlsOptions(config, upstreamTls) }, () => resolve(socket));
      socket.once('error', (err: Error & { code?: string }) => reject(new UpstreamError(err.message, err.code)));
    });
    secure.write('jmapaccess-proxy.capability CAPABILITY\r\n');
    let capabilities: string[] = [];
    await readLines(secure, config.maxLineLength, (line) => {
      const response = classifyResponse(line);
      const span = findCapabilities(line, response);
      if (span) capabilities = capabilityAtoms(line, span);
      if (response.kind !== 'tagged' || response.tag !== 'jmapaccess-proxy.capability') return false;
      if (response.status !== 'OK') throw new UpstreamError(`the IMAP server refused CAPABILITY after STARTTLS: ${text(line)}`);
      return true;
    });
    secure.removeAllListeners('error');
    const greeting = `* OK [CAPABILITY ${capabilities.join(' ')}] ${greetingText}\r\n`;
    return { socket: secure, preamble: Buffer.from(greeting, 'latin1') };
  } catch (err) {
    plain.destroy();
    throw err instanceof UpstreamError ? err : new UpstreamError((err as Error).message, (err as { code?: string }).code);
  } finally {
    clearTimeout(timer);
  }
}
