/**
 * The listeners (plain, and implicit TLS) and the bookkeeping of live sessions.
 */

import net from 'node:net';
import tls from 'node:tls';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import type { Config, HostPort } from './config.js';
import { Session, type SessionSnapshot } from './session.js';
import { GreetingCache } from './greeting.js';
import type { JmapPolicy } from './jmapaccess.js';
import { jmapPolicyFor } from './jmap-policy.js';
import { CertificateStore, TLS_HANDSHAKE_TIMEOUT_MS } from './tls.js';
import { Metrics, probeUpstream, type Readiness } from './metrics.js';
import { parseProxyHeader, type Endpoints } from './proxy-protocol.js';

/** How long a trusted load balancer has to send its PROXY header. */
const PROXY_HEADER_TIMEOUT_MS = 5000;

function blockListOf(cidrs: readonly string[]): net.BlockList {
  const list = new net.BlockList();
  for (const cidr of cidrs) {
    const [address = '', prefix] = cidr.split('/');
    const type = net.isIPv6(address) ? 'ipv6' : 'ipv4';
    if (prefix === undefined) list.addAddress(address, type);
    else list.addSubnet(address, Number(prefix), type);
  }
  return list;
}

/**
 * Reads a PROXY v1/v2 header from the start of the connection, then puts
 * back whatever came after it. Null endpoints: a LOCAL/UNKNOWN header.
 */
function readProxyHeader(socket: net.Socket): Promise<Endpoints | null> {
  return new Promise((resolve, reject) => {
    let buffered = Buffer.alloc(0);
    const finish = (err: Error | null, endpoints?: Endpoints | null, rest?: Buffer) => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('end', onEnd);
      socket.pause();
      if (err) return reject(err);
      if (rest && rest.length > 0) socket.unshift(rest);
      resolve(endpoints ?? null);
    };
    const onData = (chunk: Buffer) => {
      buffered = Buffer.concat([buffered, chunk]);
      const result = parseProxyHeader(buffered);
      if (result.kind === 'invalid') finish(new Error(result.reason));
      else if (result.kind === 'header') finish(null, result.endpoints, buffered.subarray(result.length));
    };
    const onEnd = () => finish(new Error('closed before a PROXY header'));
    const timer = setTimeout(() => finish(new Error('no PROXY header in time')), PROXY_HEADER_TIMEOUT_MS);
    socket.on('data', onData);
    socket.once('end', onEnd);
  });
}

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
  /** The implicit-TLS listener: plain TCP, so a PROXY header can come before the TLS handshake. */
  private readonly tlsServer: net.Server | null;
  /** Sources allowed (and required) to send a PROXY header; null without --accept-proxy-protocol. */
  private readonly trustedProxies: net.BlockList | null;
  private readonly sessions = new Set<Session>();
  /** The upstream's last greeting, for --upstream-connect lazy. */
  private readonly greetings = new GreetingCache();
  /** Per-user JMAP URLs and --jmap-verify, for every session. */
  private readonly jmap: JmapPolicy;
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
    this.jmap = jmapPolicyFor(config, this.metrics, log);
    this.trustedProxies = config.acceptProxyProtocol ? blockListOf(config.trustedProxies) : null;
    this.plainServer = net.createServer({ noDelay: true, allowHalfOpen: true }, (socket) =>
      this.onTcpConnection(socket, false),
    );
    // Not allowHalfOpen: a client that closes during the handshake would
    // otherwise leave a socket waiting until the handshake timeout.
    this.tlsServer =
      config.listenTls && this.certificates
        ? net.createServer({ noDelay: true }, (socket) => this.onTcpConnection(socket, true))
        : null;
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
        ...this.config.jmapUrls.describe(),
        jmapUsers: this.config.jmapUsers.empty ? undefined : this.config.jmapUsers.describe(),
        jmapVerify: this.config.jmapVerify || undefined,
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
    return probeUpstream(this.config.upstream);
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

  /** A TCP connection: the load balancer's PROXY header first if trusted, then TLS if implicit, then the session. */
  private onTcpConnection(socket: net.Socket, implicitTls: boolean): void {
    socket.on('error', () => {}); // until a session owns the socket
    const proceed = (peer: Endpoints | undefined) => {
      if (implicitTls) return this.startTls(socket, peer);
      this.onConnection(socket, false, peer);
      socket.resume(); // paused while its PROXY header was read; the session listens now
    };
    const source = socket.remoteAddress ?? '';
    const trusted = this.trustedProxies?.check(source, net.isIPv6(source) ? 'ipv6' : 'ipv4') ?? false;
    if (!trusted) return proceed(undefined);
    readProxyHeader(socket).then(
      (peer) => {
        if (!this.draining) proceed(peer ?? undefined);
        else socket.destroy();
      },
      (err: Error) => {
        this.metrics.protocolErrors.inc({ side: 'client', kind: 'proxy-header' });
        this.log.warn({ peer: source, err: err.message }, 'connection from a trusted proxy without a valid PROXY header');
        socket.destroy();
      },
    );
  }

  private startTls(socket: net.Socket, peer: Endpoints | undefined): void {
    const certificates = this.certificates as CertificateStore;
    const secure = new tls.TLSSocket(socket, {
      isServer: true,
      secureContext: certificates.defaultContext,
      SNICallback: certificates.sniCallback,
    });
    const timer = setTimeout(() => secure.destroy(new Error('TLS handshake timed out')), TLS_HANDSHAKE_TIMEOUT_MS);
    const onError = (err: Error) => {
      clearTimeout(timer);
      // A failed handshake is the client's problem, not the listener's.
      this.log.debug({ err: err.message, peer: socket.remoteAddress }, 'TLS handshake failed');
      secure.destroy();
    };
    secure.once('error', onError);
    secure.once('secure', () => {
      clearTimeout(timer);
      secure.off('error', onError);
      this.onConnection(secure, true, peer);
    });
  }

  private onConnection(socket: net.Socket, secure: boolean, peer?: Endpoints): void {
    // Behind a load balancer the limit is per client, not per balancer.
    const ip = peer?.sourceAddress || socket.remoteAddress || '';
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
      { onClose: (ended) => this.onSessionClosed(ended, ip), metrics: this.metrics, greetings: this.greetings, jmap: this.jmap },
      { certificates: this.certificates, secure, peer },
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
