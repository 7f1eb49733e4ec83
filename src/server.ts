/**
 * The listener and the bookkeeping of live sessions.
 */

import net from 'node:net';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import type { Config } from './config.js';
import { Session, type SessionSnapshot } from './session.js';

export class ProxyServer {
  private readonly config: Config;
  private readonly log: Logger;
  private readonly server: net.Server;
  private readonly sessions = new Set<Session>();
  private nextId = 1;

  constructor(config: Config, log: Logger) {
    this.config = config;
    this.log = log;
    this.server = net.createServer({ noDelay: true, allowHalfOpen: true }, (socket) => this.onConnection(socket));
  }

  /** Resolves once listening; rejects if the address cannot be bound. */
  listen(): Promise<AddressInfo> {
    const { host, port } = this.config.listen;
    return new Promise((resolve, reject) => {
      const onError = (err: Error) => reject(err);
      this.server.once('error', onError);
      this.server.listen({ host, port, backlog: 1024 }, () => {
        this.server.off('error', onError);
        this.server.on('error', (err) => this.log.error({ err: err.message }, 'listener error'));
        const address = this.server.address() as AddressInfo;
        this.log.info(
          {
            listen: `${address.address}:${address.port}`,
            upstream: `${this.config.upstream.host}:${this.config.upstream.port}`,
            jmapUrl: this.config.jmapUrl,
            jmapMechanisms: [...this.config.jmapMechanisms],
            objectid: this.config.objectId,
          },
          'listening',
        );
        resolve(address);
      });
    });
  }

  get connectionCount(): number {
    return this.sessions.size;
  }

  snapshot(): SessionSnapshot[] {
    return [...this.sessions].map((session) => session.snapshot());
  }

  /** Stops accepting, says BYE to every client, and resolves when all are gone. */
  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const session of this.sessions) session.shutdown('Server shutting down');
    await closed;
  }

  private onConnection(socket: net.Socket): void {
    const session = new Session(String(this.nextId++), socket, this.config, this.log, {
      onClose: (ended) => this.sessions.delete(ended),
    });
    this.sessions.add(session);
    session.start();
  }
}
