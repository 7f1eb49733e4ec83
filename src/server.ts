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
  private nextId = 1;

  /** Throws CertificateError when a configured certificate cannot be used. */
  constructor(config: Config, log: Logger) {
    this.config = config;
    this.log = log;
    this.certificates = config.tls ? new CertificateStore(config.tls, log) : null;
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

  /** Re-reads the certificates (SIGHUP). */
  reloadCertificates(reason: string): boolean {
    return this.certificates?.reload(reason) ?? true;
  }

  /** Stops accepting, says BYE to every client, and resolves when all are gone. */
  async close(): Promise<void> {
    this.certificates?.unwatch();
    const servers = [this.plainServer, this.tlsServer].filter((s): s is net.Server => s !== null && s.listening);
    const closed = Promise.all(servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
    for (const session of this.sessions) session.shutdown('Server shutting down');
    await closed;
  }

  private onConnection(socket: net.Socket, secure: boolean): void {
    const session = new Session(
      String(this.nextId++),
      socket,
      this.config,
      this.log,
      { onClose: (ended) => this.sessions.delete(ended) },
      { certificates: this.certificates, secure },
    );
    this.sessions.add(session);
    session.start();
  }
}
