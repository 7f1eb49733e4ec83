/**
 * The listeners (plain, and implicit TLS) and the bookkeeping of live sessions.
 */

import net from 'node:net';
import tls from 'node:tls';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import type { Config, HostPort } from './config.js';
import { Session, type SessionSnapshot } from './session.js';
import { CertificateStore, TLS_HANDSHAKE_TIMEOUT_MS } from './tls.js';
import { Metrics, type Readiness } from './metrics.js';

export interface ListeningAddresses {
  readonly plain: AddressInfo;
  readonly tls: AddressInfo | null;
}

export class ProxyServer {
  private readonly config: Config;
  private readonly log: Logger;
  /** The proxy's certificates toward clients; null without --tls-cert. */
  readonly certificates: CertificateStore | null;
  private readonly plainServer: net.Server;
  private readonly tlsServer: tls.Server | null;
  private readonly sessions = new Set<Session>();
  /** Open connections per client address, for --max-connections-per-ip. */
  private readonly perIp = new Map<string, number>();
  private nextId = 1;
  private draining = false;
  /** Bytes of sessions that have ended (live sessions are summed at scrape time). */
  private readonly endedBytes = { fromClient: 0, toClient: 0 };
  readonly metrics: Metrics;

  /** Throws CertificateError when a configured certificate cannot be used. */
  constructor(config: Config, log: Logger) {
    this.config = config;
    this.log = log;
    this.certificates = config.tls ? new CertificateStore(config.tls, log) : null;
    this.metrics = new Metrics(() => {
      const totals = { ...this.endedBytes };
      for (const session of this.sessions) {
        const snapshot = session.snapshot();
        totals.fromClient += snapshot.bytesFromClient;
        totals.toClient += snapshot.bytesToClient;
      }
      return totals;
    });
    this.plainServer = net.createServer({ noDelay: true, allowHalfOpen: true }, (socket) =>
      this.onConnection(socket, false),
    );
    const certificates = this.certificates;
    if (config.listenTls && certificates) {
      // Not allowHalfOpen: a client that closes during the handshake would
      // otherwise leave a socket waiting until the handshake timeout.
      const server = tls.createServer(
        { ...certificates.serverOptions(), handshakeTimeout: TLS_HANDSHAKE_TIMEOUT_MS },
        (socket) => this.onConnection(socket, true),
      );
      // A failed handshake is the client's problem, not the listener's.
      server.on('tlsClientError', (err, socket) => {
        this.log.debug({ err: err.message, peer: socket.remoteAddress }, 'TLS handshake failed');
        socket.destroy();
      });
      certificates.onReload(() => server.setSecureContext(certificates.serverOptions()));
      this.tlsServer = server;
    } else {
      this.tlsServer = null;
    }
  }

  /** Resolves once every listener is bound; rejects if one cannot be. */
  async listen(): Promise<ListeningAddresses> {
    const plain = await this.bind(this.plainServer, this.config.listen);
    const secure = this.tlsServer && this.config.listenTls ? await this.bind(this.tlsServer, this.config.listenTls) : null;
    this.certificates?.watch();
    this.log.info(
      {
        listen: `${plain.address}:${plain.port}`,
        listenTls: secure ? `${secure.address}:${secure.port}` : undefined,
        certificates: this.certificates?.describe(),
        requireTls: this.config.requireTls,
        upstream: `${this.config.upstream.host}:${this.config.upstream.port}`,
        upstreamTls: this.config.upstreamTls?.mode ?? 'none',
        jmapUrl: this.config.jmapUrl,
        jmapMechanisms: [...this.config.jmapMechanisms],
        objectid: this.config.objectId,
      },
      'listening',
    );
    return { plain, tls: secure };
  }

  private bind(server: net.Server, { host, port }: HostPort): Promise<AddressInfo> {
    return new Promise((resolve, reject) => {
      const onError = (err: Error) => reject(err);
      server.once('error', onError);
      server.listen({ host, port, backlog: 1024 }, () => {
        server.off('error', onError);
        server.on('error', (err) => this.log.error({ err: err.message }, 'listener error'));
        resolve(server.address() as AddressInfo);
      });
    });
  }

  get connectionCount(): number {
    return this.sessions.size;
  }

  snapshot(): SessionSnapshot[] {
    return [...this.sessions].map((session) => session.snapshot());
  }

  /** For /readyz: not draining, and the upstream accepts a TCP connection. */
  async readiness(): Promise<Readiness> {
    if (this.draining) return { ready: false, reason: 'draining' };
    const { host, port } = this.config.upstream;
    return new Promise((resolve) => {
      const socket = net.connect({ host, port });
      const done = (readiness: Readiness) => {
        socket.destroy();
        resolve(readiness);
      };
      socket.setTimeout(2000, () => done({ ready: false, reason: `upstream ${host}:${port}: no answer within 2 s` }));
      socket.once('connect', () => done({ ready: true, reason: 'ready' }));
      socket.once('error', (err) => done({ ready: false, reason: `upstream ${host}:${port}: ${err.message}` }));
    });
  }

  /**
   * Graceful stop: stop accepting, let sessions finish for `graceMs`, then
   * say BYE to those left. Resolves when every session is gone.
   */
  async drain(graceMs: number): Promise<void> {
    this.draining = true;
    const servers = [this.plainServer, this.tlsServer].filter((s): s is net.Server => s !== null && s.listening);
    for (const server of servers) server.close();
    this.certificates?.unwatch();
    const deadline = Date.now() + graceMs;
    while (this.sessions.size > 0 && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, Math.min(100, deadline - Date.now())));
    }
    await this.close();
  }

  /** Re-reads the certificates (SIGHUP). */
  reloadCertificates(reason: string): boolean {
    return this.certificates?.reload(reason) ?? true;
  }

  /** Stops accepting, says BYE to every client, and resolves when all are gone. */
  async close(): Promise<void> {
    this.certificates?.unwatch();
    const servers = [this.plainServer, this.tlsServer].filter((s): s is net.Server => s !== null && s.listening);
    const closed = Promise.all(servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
    const sessionsGone = new Promise<void>((resolve) => {
      this.allGone = resolve;
      if (this.sessions.size === 0) resolve();
    });
    for (const session of this.sessions) session.shutdown('Server shutting down');
    await Promise.all([closed, sessionsGone]);
  }

  private allGone: (() => void) | null = null;

  private onConnection(socket: net.Socket, secure: boolean): void {
    const ip = socket.remoteAddress ?? '';
    const refusal = this.limitReached(ip);
    if (refusal) {
      this.metrics.connectionsRefused.inc({ reason: refusal });
      this.log.warn({ peer: ip, limit: refusal }, 'connection refused');
      socket.on('error', () => {});
      socket.end('* BYE [UNAVAILABLE] Too many connections, try again later\r\n');
      setTimeout(() => socket.destroy(), 2000).unref();
      return;
    }
    this.perIp.set(ip, (this.perIp.get(ip) ?? 0) + 1);
    this.metrics.connectionsTotal.inc({ listener: secure ? 'tls' : 'plain' });
    this.metrics.connectionsOpen.inc();
    const session = new Session(
      String(this.nextId++),
      socket,
      this.config,
      this.log,
      { onClose: (ended) => this.onSessionClosed(ended, ip), metrics: this.metrics },
      { certificates: this.certificates, secure },
    );
    this.sessions.add(session);
    session.start();
  }

  private limitReached(ip: string): 'max-connections' | 'max-connections-per-ip' | null {
    const { maxConnections, maxConnectionsPerIp } = this.config;
    if (maxConnections > 0 && this.sessions.size >= maxConnections) return 'max-connections';
    if (maxConnectionsPerIp > 0 && (this.perIp.get(ip) ?? 0) >= maxConnectionsPerIp) return 'max-connections-per-ip';
    return null;
  }

  private onSessionClosed(session: Session, ip: string): void {
    if (!this.sessions.delete(session)) return;
    const left = (this.perIp.get(ip) ?? 1) - 1;
    if (left > 0) this.perIp.set(ip, left);
    else this.perIp.delete(ip);
    const snapshot = session.snapshot();
    this.endedBytes.fromClient += snapshot.bytesFromClient;
    this.endedBytes.toClient += snapshot.bytesToClient;
    this.metrics.connectionsOpen.dec();
    if (this.sessions.size === 0) this.allGone?.();
  }
}
