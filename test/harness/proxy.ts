/**
 * Runs the proxy in-process for a test, on a free loopback port, with its
 * log lines captured in memory (as JSON objects and as the raw text).
 */

import { Writable } from 'node:stream';
import type { AddressInfo } from 'node:net';
import { validateConfig, type RawConfig } from '../../src/config.js';
import { createLogger } from '../../src/logger.js';
import { ProxyServer } from '../../src/server.js';

export interface RunningProxy {
  host: string;
  port: number;
  /** The implicit-TLS port, when the options asked for one (listenTls). */
  tlsPort: number | null;
  server: ProxyServer;
  /** Every log line written so far, parsed. */
  logs(): Array<Record<string, unknown>>;
  /** Every byte the logger wrote so far. */
  rawLog(): string;
  close(): Promise<void>;
}

export async function startProxy(options: Partial<RawConfig> & { upstreamPort: number; upstreamHost?: string }): Promise<RunningProxy> {
  const { upstreamPort, upstreamHost = '127.0.0.1', ...rest } = options;
  const config = validateConfig({
    listen: '127.0.0.1:0',
    upstream: `imap://${upstreamHost}:${upstreamPort}`,
    jmapUrl: 'https://jmap.example.test/.well-known/jmap',
    logLevel: 'trace',
    ...rest,
  } as RawConfig);
  let raw = '';
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      raw += chunk.toString('utf8');
      done();
    },
  });
  const log = createLogger(config.logLevel, sink);
  const server = new ProxyServer(
    {
      ...config,
      listen: { host: '127.0.0.1', port: 0 },
      listenTls: config.listenTls ? { host: '127.0.0.1', port: 0 } : null,
    },
    log,
  );
  const addresses = await server.listen();
  const address: AddressInfo = addresses.plain;
  return {
    host: '127.0.0.1',
    port: address.port,
    tlsPort: addresses.tls?.port ?? null,
    server,
    rawLog: () => raw,
    logs: () =>
      raw
        .split('\n')
        .filter((l) => l.trim() !== '')
        .map((l) => JSON.parse(l) as Record<string, unknown>),
    close: () => server.close(),
  };
}
