/**
 * One client connection and its upstream connection: the two framers, the
 * session state, the commands in flight, and the points where the proxy
 * rewrites or answers instead of forwarding.
 *
 * Data flows through unchanged except for:
 *  - capability lists from the upstream (rewritten: see imap/capabilities.ts);
 *  - GETJMAPACCESS, STARTTLS and COMPRESS commands, answered here;
 *  - a CAPABILITY command of the proxy's own, sent only when GETJMAPACCESS
 *    needs to know whether the upstream has OBJECTID; its responses are
 *    hidden from the client.
 *
 * Replies the proxy writes itself go out only when every command the client
 * sent before them has completed and the upstream's response stream is
 * between two responses, so they reflect those commands' outcomes and never
 * land inside another response. Until then the client's input is held.
 */

import type { Socket } from 'node:net';
import net from 'node:net';
import tls from 'node:tls';
import zlib from 'node:zlib';
import type { Logger } from 'pino';
import type { Config } from './config.js';
import { Framer, type FramerError } from './imap/framer.js';
import type { LiteralAnnouncement } from './imap/literal.js';
import { atomsAfter, clientLiteralRule, isDone, parseCommandHead, readAstring, type CommandHead } from './imap/command.js';
import {
  capabilityAtoms,
  classifyResponse,
  findCapabilities,
  replaceCapabilities,
  serverLiteralRule,
  type CapabilitySpan,
} from './imap/response.js';
import { hasCapability, rewriteCapabilities } from './imap/capabilities.js';
import { saslIdentity } from './imap/sasl.js';
import { quoteImapString } from './imap/quote.js';
import {
  decide,
  getJmapAccessReply,
  needsObjectIdProbe,
  type Authentication,
  type Decision,
  type JmapPolicy,
  type JmapTarget,
  type ObjectIdKnowledge,
  type SessionFacts,
  type Verification,
  type VerifyResult,
} from './jmapaccess.js';
import { loginCredentials, saslCredentials, type LoginSecret } from './imap/credentials.js';
import { Outbox } from './outbox.js';
import type { Metrics } from './metrics.js';
import type { Endpoints } from './proxy-protocol.js';
import { openUpstream, type UpstreamError } from './upstream.js';
import { pooledOnRead } from './read-buffers.js';
import { GreetingCache } from './greeting.js';
import { TLS_HANDSHAKE_TIMEOUT_MS, type CertificateStore } from './tls.js';

export type SessionState = 'not-authenticated' | 'authenticated' | 'selected' | 'logout';

type CommandKind = 'plain' | 'login' | 'authenticate' | 'idle' | 'select' | 'deselect' | 'logout' | 'probe' | 'client-id';

/** A command sent upstream whose tagged completion has not arrived yet. */
interface InFlight {
  readonly tag: string;
  readonly name: string;
  readonly kind: CommandKind;
  /** For login/authenticate: `LOGIN` or the SASL mechanism, upper-cased. */
  readonly mechanism?: string;
  /** For login/authenticate: the identity, once known. */
  user?: string;
  /** For login/authenticate: this identity's JMAP server (jmapaccess.ts), once the identity is known. */
  jmap?: JmapTarget;
  /** For login/authenticate with --jmap-verify: the probe of the JMAP server. */
  verification?: Verification;
  /** For AUTHENTICATE with --jmap-verify: the SASL responses until the secret is read (at most two). */
  saslResponses?: string[];
}

/** The client command whose lines and literals are arriving now. */
interface CurrentCommand {
  readonly entry: InFlight | null;
  /** Bytes of this command are dropped, not forwarded (a refused local command). */
  readonly discard: boolean;
  /** The reply to write when a discarded command ends. */
  readonly replyAtEnd?: string;
  /**
   * LOGIN with literals: the command's bytes (lines and literals), up to
   * LOGIN_CAPTURE_LIMIT, read for the user (and the password, for
   * --jmap-verify) once the command is complete, then zeroed.
   */
  capture: Buffer[] | null;
  capturedLength?: number;
}

/** What the client's next line is, besides a command. */
type ClientMode = 'command' | 'authenticate' | 'idle';

/** Capability responses held while a login is in flight, until its outcome is known. */
interface HeldResponses {
  readonly loginTag: string;
  readonly lines: Buffer[];
  bytes: number;
}

const LOGIN_CAPTURE_LIMIT = 16 * 1024;
/** Invalid command lines in a row after which the client is disconnected. */
const MAX_INVALID_COMMANDS = 10;
/** How long a closing connection may take to flush before it is destroyed. */
const CLOSE_FLUSH_MS = 5000;
const LOCAL_COMMANDS = new Set(['GETJMAPACCESS', 'STARTTLS', 'COMPRESS']);
const LOGIN_COMMANDS = new Set(['LOGIN', 'AUTHENTICATE']);

export interface SessionSnapshot {
  readonly id: string;
  readonly state: SessionState;
  readonly user: string | undefined;
  readonly bytesFromClient: number;
  readonly bytesToClient: number;
  readonly bytesFromUpstream: number;
  readonly queuedToClient: number;
  readonly queuedToUpstream: number;
  readonly heldClientBytes: number;
}

/** How the client reached the proxy. */
export interface ClientTransport {
  /** The proxy's certificates, when it can do TLS toward clients. */
  readonly certificates: CertificateStore | null;
  /** True for the implicit-TLS listener: the link is encrypted from the first byte. */
  readonly secure: boolean;
  /** The client's real endpoints when a load balancer's PROXY header gave them. */
  readonly peer?: Endpoints;
}

export interface SessionEvents {
  /** Called once when both sockets are gone. */
  onClose(session: Session): void;
  readonly metrics: Metrics;
  /** The upstream's last greeting (shared by the server's sessions); null: always connect at once. */
  readonly greetings: GreetingCache | null;
  /** Per-user JMAP URLs and --jmap-verify (shared by the server's sessions). */
  readonly jmap: JmapPolicy;
}

export class Session {
  readonly id: string;
  /** The client link as the proxy reads and writes it (a TLSSocket after STARTTLS). */
  private client: Socket;
  private readonly transport: ClientTransport;
  /** Who the client is: from the PROXY header when there was one, else the socket. */
  private readonly peer: Endpoints;
  /** True once the client link is encrypted. */
  private secure: boolean;
  /** True between the STARTTLS reply and the end of the TLS handshake. */
  private upgrading = false;
  /** COMPRESS=DEFLATE (RFC 4978) on the client link, once the client asked for it. */
  private compression: { readonly inflate: zlib.InflateRaw; readonly deflate: zlib.DeflateRaw } | null = null;
  /** Set by the COMPRESS command; compression starts once its OK is written. */
  private compressionStarting = false;
  private upstream: Socket | null = null;
  private readonly config: Config;
  private readonly log: Logger;
  private readonly events: SessionEvents;
  private readonly startedAt = Date.now();

  private readonly clientFramer: Framer;
  private readonly serverFramer: Framer;
  private readonly toClient = new Outbox();
  private readonly toUpstream = new Outbox();

  private state: SessionState = 'not-authenticated';
  private authentication: Authentication | null = null;
  private objectId: ObjectIdKnowledge = 'unknown';
  /** True once the client has its greeting (the upstream's, or the remembered one). */
  private greeted = false;
  /** True once the upstream itself greeted. */
  private upstreamGreeted = false;
  /**
   * Lazy upstream (greeting.ts): 'waiting' while the client has the
   * remembered greeting and has not sent a line yet; 'greeting' while the
   * upstream's own greeting is awaited, to be read and not shown.
   */
  private lazy: 'off' | 'waiting' | 'greeting' = 'off';
  /** True until the greeting's capability list (or the first tagged response) went by. */
  private greetingPhase = true;

  private readonly inFlight: InFlight[] = [];
  private current: CurrentCommand | null = null;
  private clientMode: ClientMode = 'command';
  /** The AUTHENTICATE in progress, while clientMode is 'authenticate'. */
  private authenticating: InFlight | null = null;
  /** Server challenges (`+`) the client has not answered yet. */
  private saslChallenges = 0;
  private saslResponses = 0;
  /** The command whose synchronizing literal waits for the server's `+`. */
  private awaitingGoAhead: InFlight | null = null;
  /** The login whose tagged OK waits for the JMAP server's answer (--jmap-verify). */
  private awaitingVerification: InFlight | null = null;
  private readonly jmapPolicy: JmapPolicy;
  private held: HeldResponses | null = null;
  private probeCounter = 0;
  private invalidCommands = 0;

  /** Client input is held until a local reply can be written or an AUTHENTICATE ends. */
  private clientHeld = false;
  private clientEnded = false;
  private upstreamEnded = false;
  private closing = false;
  private closed = false;
  private closeReason = 'client closed';
  /** When the client last sent a byte (the idle timeout counts from it). */
  private lastClientActivity = Date.now();
  private timeoutTimer: NodeJS.Timeout | null = null;

  constructor(id: string, client: Socket, config: Config, log: Logger, events: SessionEvents, transport: ClientTransport) {
    this.id = id;
    this.client = client;
    this.transport = transport;
    this.secure = transport.secure;
    this.peer = transport.peer ?? {
      sourceAddress: client.remoteAddress ?? '',
      sourcePort: client.remotePort ?? 0,
      destinationAddress: client.localAddress ?? '',
      destinationPort: client.localPort ?? 0,
    };
    this.config = config;
    this.events = events;
    this.jmapPolicy = events.jmap;
    this.log = log.child({ conn: id });
    this.clientFramer = new Framer(
      {
        line: (line, literal, first) => this.onClientLine(line, literal, first),
        literal: (chunk) => this.onClientLiteral(chunk),
        literalEnd: () => {},
        error: (kind) => this.onClientFramingError(kind),
      },
      clientLiteralRule,
      config.maxLineLength,
    );
    this.serverFramer = new Framer(
      {
        line: (line, _literal, first) => this.onServerLine(line, first),
        literal: (chunk) => this.onServerLiteral(chunk),
        literalEnd: () => {},
        error: (kind) => this.onServerFramingError(kind),
      },
      serverLiteralRule,
      config.maxLineLength,
    );
  }

  /** Counters for tests and operators: state, bytes moved, bytes queued for writing. */
  snapshot(): SessionSnapshot {
    return {
      id: this.id,
      state: this.state,
      user: this.authentication?.user,
      bytesFromClient: this.client.bytesRead,
      bytesToClient: this.client.bytesWritten,
      bytesFromUpstream: this.upstream?.bytesRead ?? 0,
      queuedToClient: this.client.writableLength,
      queuedToUpstream: this.upstream?.writableLength ?? 0,
      heldClientBytes: this.clientFramer.pendingBytes,
    };
  }

  /** Connects upstream and starts relaying. */
  start(): void {
    const client = this.client;
    client.setNoDelay(true);
    this.log.info(
      {
        peer: `${this.peer.sourceAddress}:${this.peer.sourcePort}`,
        via: this.transport.peer ? `${client.remoteAddress}:${client.remotePort}` : undefined,
        tls: this.secure,
      },
      'connection opened',
    );
    this.attachClient(client);
    this.armTimeout();
    const remembered = this.config.upstreamConnect === 'lazy' ? this.events.greetings?.get() : null;
    if (remembered) {
      this.lazy = 'waiting';
      this.onUpstreamData(remembered);
      return;
    }
    this.connectUpstream();
  }

  private connectUpstream(): void {
    if (this.config.forwardClientIp === 'id') this.sendClientIdentity();
    const connectStarted = Date.now();
    const opened = openUpstream(this.config, this.peer, this.upstreamReader());
    if (opened instanceof net.Socket) {
      this.attachUpstream(opened, connectStarted);
      return;
    }
    // STARTTLS toward the upstream: nothing is relayed until it is done.
    opened.then(
      ({ socket, preamble }) => {
        if (this.closing) return void socket.destroy();
        this.attachUpstream(socket, connectStarted, true);
        if (preamble) this.onUpstreamData(preamble);
        this.flush();
      },
      (err: UpstreamError) => {
        this.upstreamLost();
        this.events.metrics.upstreamConnectFailures.inc({ code: err.code ?? 'ERROR' });
        this.log.warn({ err: err.message, code: err.code, upstream: this.config.upstream }, 'upstream connect failed');
        this.close('upstream unavailable', '* BYE [UNAVAILABLE] The IMAP server is unavailable, try again later\r\n');
      },
    );
  }

  /** Upstream bytes are read into reused buffers (read-buffers.ts): this says when one is free again. */
  private upstreamReader(): net.OnReadOpts {
    return pooledOnRead({
      data: (chunk) => this.onUpstreamData(chunk),
      retained: () =>
        this.closing ||
        this.upgrading ||
        this.held !== null ||
        this.serverFramer.pendingBytes > 0 ||
        this.client.writableLength > 0 ||
        (this.compression !== null && this.compression.deflate.writableLength > 0),
    });
  }

  private upstreamName(): string {
    const { host, port } = this.config.upstream;
    return `${host}:${port}`;
  }

  /** Starts relaying from an upstream socket (still connecting, or ready when `ready`). */
  private attachUpstream(upstream: Socket, connectStarted: number, ready = false): void {
    this.upstream = upstream;
    upstream.setNoDelay(true);
    const secure = this.config.upstreamTls !== null;
    const onReady = () => {
      clearTimeout(timer);
      this.events.metrics.upstreamConnectSeconds.observe((Date.now() - connectStarted) / 1000);
      this.log.info(
        { upstream: this.upstreamName(), ms: Date.now() - connectStarted, tls: secure ? (upstream as tls.TLSSocket).getProtocol() : undefined },
        'upstream connected',
      );
    };
    const timer = setTimeout(() => {
      upstream.destroy(new Error(`no connection within ${this.config.upstreamConnectTimeoutMs} ms`));
    }, this.config.upstreamConnectTimeoutMs);
    timer.unref();
    if (ready) onReady();
    else upstream.once(secure ? 'secureConnect' : 'connect', onReady);
    upstream.on('data', (chunk: Buffer) => this.onUpstreamData(chunk));
    upstream.on('end', () => this.onUpstreamEnd());
    upstream.on('error', (err) => this.onSocketError('upstream', err));
    upstream.on('close', () => this.onUpstreamClose());
    upstream.on('drain', () => this.updateReading());
  }

  private attachClient(client: Socket): void {
    client.on('data', (chunk: Buffer) => this.onClientData(chunk));
    client.on('end', () => this.onClientEnd());
    client.on('error', (err) => this.onSocketError('client', err));
    client.on('close', () => this.onClientClose());
    client.on('drain', () => this.updateReading());
  }

  /**
   * One timer per session for both timeouts, re-armed only when it fires:
   * client input just records the time, which costs nothing per chunk.
   */
  private armTimeout(): void {
    const { preauthTimeoutMs, idleTimeoutMs } = this.config;
    const now = Date.now();
    const idleAt = this.lastClientActivity + idleTimeoutMs;
    const loginAt = this.state === 'not-authenticated' ? this.startedAt + preauthTimeoutMs : Infinity;
    if (now >= loginAt) {
      this.log.info({ seconds: preauthTimeoutMs / 1000 }, 'no login in time');
      this.close('login timeout', '* BYE [UNAVAILABLE] Timed out waiting for a login\r\n');
      return;
    }
    if (now >= idleAt) {
      this.log.info({ seconds: idleTimeoutMs / 1000 }, 'idle for too long');
      this.close('idle timeout', '* BYE Autologout; idle for too long\r\n');
      return;
    }
    this.timeoutTimer = setTimeout(() => this.armTimeout(), Math.min(idleAt, loginAt) - now);
  }

  /** Ends the session now (server shutdown). */
  shutdown(text: string): void {
    this.close('proxy shutting down', `* BYE [UNAVAILABLE] ${text}\r\n`);
  }

  // ---------------------------------------------------------------- I/O shell

  private onClientData(chunk: Buffer): void {
    if (this.closing) return;
    this.lastClientActivity = Date.now();
    if (this.compression) {
      this.compression.inflate.write(chunk);
      return;
    }
    this.clientFramer.push(chunk);
    this.flush();
  }

  /** Decompressed client input. */
  private onInflated(chunk: Buffer): void {
    if (this.closing) return;
    this.clientFramer.push(chunk);
    this.flush();
  }

  private onUpstreamData(chunk: Buffer): void {
    if (this.closing) return;
    this.serverFramer.push(chunk);
    this.afterServerInput();
  }

  /** Server responses went by: a held client line may now be answerable (commands completed, challenge arrived). */
  private afterServerInput(): void {
    if (this.clientHeld && !this.closing) {
      this.clientHeld = false;
      this.clientFramer.resume();
    }
    this.flush();
    this.passClientEnd();
  }

  private flush(): void {
    if (this.closed) return;
    if (this.compressionStarting) this.startCompression();
    this.flushToClient();
    if (this.upstream) this.toUpstream.flushTo(this.upstream);
    this.updateReading();
  }

  /**
   * Writes what is queued for the client. With compression, each flush ends
   * with a sync flush, so that every response leaves the proxy whole instead
   * of waiting in the compressor for more data.
   */
  private flushToClient(): void {
    const compression = this.compression;
    if (!compression) return void this.toClient.flushTo(this.client);
    if (this.toClient.flushTo(compression.deflate)) compression.deflate.flush(zlib.constants.Z_SYNC_FLUSH);
  }

  /** The client side's write buffers are full (the socket's, or the compressor's). */
  private clientOutputFull(): boolean {
    return this.client.writableNeedDrain || (this.compression?.deflate.writableNeedDrain ?? false);
  }

  /**
   * RFC 4978: the OK is the last uncompressed response, and every byte the
   * client sent after its COMPRESS command is already compressed.
   */
  private startCompression(): void {
    this.compressionStarting = false;
    this.toClient.flushTo(this.client);
    const inflate = zlib.createInflateRaw();
    // Level 1, as nginx's gzip default: on mail text it compresses as well as
    // the default level 6 at about 4 times the speed (1.3 GB/s against 0.3
    // here), and base64 attachments compress no better at any level.
    const deflate = zlib.createDeflateRaw({ level: 1 });
    this.compression = { inflate, deflate };
    deflate.pipe(this.client);
    deflate.on('drain', () => this.updateReading());
    inflate.on('data', (chunk: Buffer) => this.onInflated(chunk));
    for (const stream of [inflate, deflate]) {
      stream.on('error', (err) => {
        this.log.info({ err: err.message }, 'compression error');
        this.close('compression error');
        this.client.destroy();
      });
    }
    this.log.debug('COMPRESS=DEFLATE active');
    const rest = this.clientFramer.takePending();
    this.clientFramer.resume();
    if (rest) inflate.write(rest);
  }

  /**
   * Backpressure: read from a side only while the other side's socket is not
   * over its high-water mark, and read from the client only while its input
   * is not held.
   */
  private updateReading(): void {
    const upstream = this.upstream;
    if (this.closing) return;
    if (!upstream) {
      // Nothing can be relayed before the upstream link exists (STARTTLS
      // toward it), but a lazy session reads until the client's first line.
      const readClient = this.lazy === 'waiting' && !this.clientHeld;
      if (readClient === this.client.isPaused()) readClient ? this.client.resume() : this.client.pause();
      return;
    }
    if (this.upgrading) return; // the TLS handshake owns the client socket
    const readClient = !this.clientHeld && !upstream.writableNeedDrain;
    if (readClient === this.client.isPaused()) readClient ? this.client.resume() : this.client.pause();
    // A paused inflater also bounds what a small compressed input can expand to.
    const inflate = this.compression?.inflate;
    if (inflate && readClient === inflate.isPaused()) readClient ? inflate.resume() : inflate.pause();
    // A paused server framer (a login's OK waiting for --jmap-verify) stops reading too.
    const readUpstream = !this.clientOutputFull() && !this.serverFramer.isPaused;
    if (readUpstream === upstream.isPaused()) readUpstream ? upstream.resume() : upstream.pause();
  }

  /**
   * The client half-closed. Commands it sent before may still be running
   * (`printf '... LOGOUT' | nc` is a legitimate client), so the FIN is passed
   * on once every byte before it has gone upstream, and the answers keep
   * flowing until the upstream closes.
   */
  private onClientEnd(): void {
    this.clientEnded = true;
    // Gone before its first command: there is no upstream to tell.
    if (this.lazy === 'waiting') return this.close('client closed');
    this.passClientEnd();
  }

  private passClientEnd(): void {
    const upstream = this.upstream;
    if (!this.clientEnded || this.upstreamEnded || this.closing || !upstream) return;
    if (this.clientFramer.isPaused) return; // held input still has to go first
    this.upstreamEnded = true;
    this.toUpstream.flushTo(upstream);
    upstream.end();
  }

  private onUpstreamEnd(): void {
    this.upstreamLost();
    this.close('upstream closed', this.byeIfUnannounced('Connection to the IMAP server was lost'));
  }

  /**
   * The upstream failed or went away unasked: until it greets again, new
   * clients are connected at once (and told BYE if it is down) rather than
   * greeted on its behalf.
   */
  private upstreamLost(): void {
    if (this.closing || this.state === 'logout' || this.clientEnded) return;
    this.events.greetings?.forget();
  }

  private onClientClose(): void {
    this.close(this.closing ? this.closeReason : 'client closed');
    this.upstream?.destroy();
    this.finish();
  }

  private onUpstreamClose(): void {
    this.upstreamLost();
    if (!this.upstreamGreeted) {
      this.close('upstream unavailable', '* BYE [UNAVAILABLE] The IMAP server is unavailable, try again later\r\n');
      return;
    }
    this.close('upstream closed', this.byeIfUnannounced('Connection to the IMAP server was lost'));
  }

  private onSocketError(side: 'client' | 'upstream', err: Error & { code?: string }): void {
    if (side === 'upstream' && !this.upstreamGreeted) {
      this.events.metrics.upstreamConnectFailures.inc({ code: err.code ?? 'ERROR' });
      this.log.warn({ err: err.message, code: err.code, upstream: this.config.upstream }, 'upstream connect failed');
    } else {
      this.log.debug({ side, err: err.message, code: err.code }, 'socket error');
    }
    if (side === 'client') {
      this.close('client error');
      this.client.destroy();
    }
    // Upstream errors are followed by 'close', which says BYE to the client.
  }

  /**
   * `* BYE` for the client unless the upstream already said BYE, or the
   * upstream only closed because the client half-closed first.
   */
  private byeIfUnannounced(text: string): string | undefined {
    return this.state === 'logout' || this.clientEnded ? undefined : `* BYE [UNAVAILABLE] ${text}\r\n`;
  }

  /**
   * Stops relaying. A BYE is written only between two responses, so that it
   * never lands inside one; then the client link is ended after pending bytes.
   */
  private close(reason: string, bye?: string): void {
    if (this.closing) return;
    this.closing = true;
    if (this.timeoutTimer) clearTimeout(this.timeoutTimer);
    this.closeReason = reason;
    this.clientFramer.stop();
    this.serverFramer.stop();
    // Reading may have been paused (held input, backpressure): resume so the
    // peers' FINs are seen and the sockets close now, not at the timeout.
    this.client.resume();
    this.upstream?.resume();
    if (bye && this.serverFramer.atMessageBoundary && !this.held) this.toClient.push(Buffer.from(bye, 'latin1'));
    if (!this.client.destroyed) {
      this.flushToClient();
      // With compression the deflater ends the client socket when it has written its last bytes.
      if (this.compression) this.compression.deflate.end();
      else this.client.end();
      setTimeout(() => this.client.destroy(), CLOSE_FLUSH_MS).unref();
    }
    if (this.upstream && !this.upstream.destroyed) {
      if (this.upstream.connecting) this.upstream.destroy();
      else this.upstream.end();
      const upstream = this.upstream;
      setTimeout(() => upstream.destroy(), CLOSE_FLUSH_MS).unref();
    }
  }

  private finish(): void {
    if (this.closed) return;
    this.closed = true;
    this.log.info(
      {
        reason: this.closeReason,
        bytesFromClient: this.client.bytesRead,
        bytesToClient: this.client.bytesWritten,
        ms: Date.now() - this.startedAt,
        user: this.authentication?.user,
      },
      'connection closed',
    );
    this.events.metrics.sessionsClosed.inc({ reason: this.closeReason });
    this.events.onClose(this);
  }

  // -------------------------------------------------------- client → upstream

  private onClientLine(line: Buffer, literal: LiteralAnnouncement | null, first: boolean): void {
    if (this.lazy !== 'off') {
      // The client spoke: connect now; its line waits for the upstream's greeting.
      if (this.lazy === 'waiting') {
        this.lazy = 'greeting';
        this.connectUpstream();
      }
      return this.holdClientLine();
    }
    if (!first) return this.onClientContinuationLine(line, literal);
    if (this.clientMode === 'idle') {
      // Whatever the client sends during IDLE ends it (the server reads it as
      // DONE or answers BAD); later lines are commands again.
      if (!isDone(line)) this.log.debug('line other than DONE during IDLE');
      this.clientMode = 'command';
      this.forwardLine(line, literal, null);
      return;
    }
    if (this.clientMode === 'authenticate') {
      if (this.saslChallenges > 0) return this.forwardSaslResponse(line);
      // No challenge is open: this is a command pipelined behind AUTHENTICATE.
      // It waits for the AUTHENTICATE to end (or for a challenge).
      return this.holdClientLine();
    }
    const head = parseCommandHead(line);
    if (!head) return this.onInvalidCommand(line, literal);
    this.invalidCommands = 0;
    if (LOCAL_COMMANDS.has(head.name)) return this.onLocalCommand(line, head, literal);
    if (LOGIN_COMMANDS.has(head.name) && this.config.requireTls && !this.secure) {
      return this.onLocalCommand(line, head, literal);
    }
    this.forwardCommand(line, head, literal);
  }

  private onClientContinuationLine(line: Buffer, literal: LiteralAnnouncement | null): void {
    const current = this.current;
    if (current?.discard) {
      if (!literal) {
        this.current = null;
        if (current.replyAtEnd) this.toClient.push(Buffer.from(current.replyAtEnd, 'latin1'));
      }
      return;
    }
    this.forwardLine(line, literal, current?.entry ?? null);
  }

  private onClientLiteral(chunk: Buffer): void {
    const current = this.current;
    if (current?.discard) return;
    if (current?.capture) this.captureLogin(current, chunk);
    this.toUpstream.push(chunk);
  }

  /** Keeps a copy of LOGIN's bytes, bounded: a longer LOGIN is forwarded but not read. */
  private captureLogin(current: CurrentCommand, bytes: Buffer): void {
    const capture = current.capture as Buffer[];
    const have = current.capturedLength ?? 0;
    if (have + bytes.length > LOGIN_CAPTURE_LIMIT) {
      for (const piece of capture) piece.fill(0);
      current.capture = null;
      return;
    }
    capture.push(Buffer.from(bytes));
    current.capturedLength = have + bytes.length;
  }

  /** LOGIN's last line: read the user and password from the captured bytes, then zero them. */
  private endLoginCapture(current: CurrentCommand, lastLine: Buffer): void {
    this.captureLogin(current, lastLine);
    const capture = current.capture;
    current.capture = null;
    const entry = current.entry;
    if (!capture || !entry) return;
    const command = Buffer.concat(capture);
    for (const piece of capture) piece.fill(0);
    const credentials = loginCredentials(command);
    command.fill(0);
    if (!credentials) return;
    entry.user = credentials.user;
    this.startVerification(entry, { kind: 'password', user: credentials.user, secret: credentials.password });
  }

  /** Sends a line upstream as part of the current command. */
  private forwardLine(line: Buffer, literal: LiteralAnnouncement | null, entry: InFlight | null): void {
    this.toUpstream.push(line);
    const current = this.current;
    if (literal) {
      if (current?.capture) this.captureLogin(current, line);
      if (literal.synchronizing && entry) this.awaitingGoAhead = entry;
    } else {
      if (current?.capture) this.endLoginCapture(current, line);
      this.current = null;
    }
  }

  private forwardCommand(line: Buffer, head: CommandHead, literal: LiteralAnnouncement | null): void {
    const entry = this.commandEntry(line, head);
    // LOGIN with a literal (the user, or the password): read the whole
    // command once it is complete. Without one, the line has it all.
    const capture: Buffer[] | null = entry.kind === 'login' && literal ? [] : null;
    if (entry.kind === 'login' && !literal && this.jmapPolicy.verify) {
      // The password is read only to ask the JMAP server about it.
      const credentials = loginCredentials(line);
      if (credentials) this.startVerification(entry, { kind: 'password', user: credentials.user, secret: credentials.password });
    }
    if (entry.kind === 'authenticate') {
      const initialResponse = atomsAfter(line, head.argsStart, head.end)[1];
      if (initialResponse !== undefined) this.readSaslSecret(entry, initialResponse);
      this.clientMode = 'authenticate';
      this.authenticating = entry;
      this.saslChallenges = 0;
      this.saslResponses = entry.user === undefined ? 0 : 1;
    } else if (entry.kind === 'idle') {
      this.clientMode = 'idle';
    }
    this.inFlight.push(entry);
    this.log.trace({ tag: head.tag, command: head.name }, 'command');
    this.current = literal ? { entry, discard: false, capture, capturedLength: 0 } : null;
    this.forwardLine(line, literal, entry);
  }

  /** What the proxy tracks about a command; reads identities, never secrets. */
  private commandEntry(line: Buffer, head: CommandHead): InFlight {
    const { tag, name } = head;
    switch (name) {
      case 'LOGIN': {
        const user = readAstring(line, head.argsStart, head.end);
        return { tag, name, kind: 'login', mechanism: 'LOGIN', user: user?.value };
      }
      case 'AUTHENTICATE': {
        const [mechanismText, initialResponse] = atomsAfter(line, head.argsStart, head.end);
        const mechanism = (mechanismText ?? '').toUpperCase();
        const user = initialResponse === undefined ? undefined : saslIdentity(mechanism, initialResponse);
        return { tag, name, kind: 'authenticate', mechanism, user };
      }
      case 'IDLE':
        return { tag, name, kind: 'idle' };
      case 'SELECT':
      case 'EXAMINE':
        return { tag, name, kind: 'select' };
      case 'CLOSE':
      case 'UNSELECT':
        return { tag, name, kind: 'deselect' };
      case 'LOGOUT':
        return { tag, name, kind: 'logout' };
      default:
        return { tag, name, kind: 'plain' };
    }
  }

  private forwardSaslResponse(line: Buffer): void {
    this.saslChallenges--;
    const entry = this.authenticating;
    if (entry?.mechanism) {
      const response = line.toString('latin1');
      // The first response carries the identity (PLAIN, LOGIN, OAUTHBEARER, XOAUTH2).
      if (this.saslResponses === 0 && entry.user === undefined) entry.user = saslIdentity(entry.mechanism, response);
      this.readSaslSecret(entry, response);
    }
    this.saslResponses++;
    this.toUpstream.push(line);
  }

  /** --jmap-verify: the secret is in the first SASL response, or the second (LOGIN mechanism). */
  private readSaslSecret(entry: InFlight, response: string): void {
    if (!this.jmapPolicy.verify || entry.verification !== undefined || !entry.mechanism) return;
    // "=" is an empty initial response (RFC 4959): the mechanism's first response comes next.
    if (response.trim() === '=') return;
    const responses = (entry.saslResponses ??= []);
    responses.push(response);
    const secret = saslCredentials(entry.mechanism, responses);
    if (secret || responses.length >= 2) entry.saslResponses = undefined;
    if (secret) this.startVerification(entry, secret);
  }

  /** This login's JMAP server (per-user URLs, allow/deny), looked up once. */
  private jmapTarget(entry: InFlight): JmapTarget {
    return (entry.jmap ??= this.jmapPolicy.target(entry.user));
  }

  /**
   * --jmap-verify: asks the JMAP server about the credentials while the
   * upstream checks them; the login's tagged OK waits for the answer.
   */
  private startVerification(entry: InFlight, secret: LoginSecret): void {
    const verify = this.jmapPolicy.verify;
    if (!verify || entry.verification !== undefined) return;
    if (!this.config.jmapMechanisms.has(entry.mechanism ?? '')) return;
    const target = this.jmapTarget(entry);
    if (!target.ok) return;
    entry.verification = 'pending';
    verify(target.url, entry.user ?? '', secret).then(
      (result) => this.onVerified(entry, result),
      () => this.onVerified(entry, { ok: false, reason: 'error' }),
    );
  }

  private onVerified(entry: InFlight, result: VerifyResult): void {
    entry.verification = result;
    if (this.closed || this.awaitingVerification !== entry) return;
    this.awaitingVerification = null;
    this.serverFramer.resume(); // replays the login's tagged OK, and what came after it
    this.afterServerInput();
  }

  private holdClientLine(): void {
    this.clientFramer.deferLine();
    this.clientHeld = true;
  }

  /** True when a reply written now follows every earlier command's responses. */
  private canReplyLocally(): boolean {
    return this.greeted && this.inFlight.length === 0 && this.serverFramer.atMessageBoundary && this.held === null;
  }

  private onLocalCommand(line: Buffer, head: CommandHead, literal: LiteralAnnouncement | null): void {
    if (!this.canReplyLocally()) return this.holdClientLine();
    const hasArguments = literal !== null || head.argsStart < head.end;
    let reply: string;
    if (head.name === 'GETJMAPACCESS') {
      if (hasArguments) {
        reply = `${head.tag} BAD GETJMAPACCESS takes no arguments\r\n`;
      } else if (needsObjectIdProbe(this.facts(), this.config)) {
        this.sendObjectIdProbe();
        return this.holdClientLine();
      } else {
        const decision = decide(this.facts(), this.config);
        reply = getJmapAccessReply(head.tag, decision);
        this.log.info(
          { tag: head.tag, user: this.authentication?.user, answered: decision.grant ? 'OK' : 'BAD', reason: decision.reason },
          'GETJMAPACCESS',
        );
        this.events.metrics.getJmapAccess.inc({ answer: decision.grant ? 'OK' : 'BAD' });
      }
    } else if (head.name === 'STARTTLS') {
      const refusal = this.startTlsRefusal(hasArguments);
      if (refusal === null) return this.startTls(head.tag);
      reply = `${head.tag} ${refusal}\r\n`;
    } else if (LOGIN_COMMANDS.has(head.name)) {
      // Credentials never cross a plain link when TLS is required (and the
      // upstream never sees them): RFC 9051's LOGINDISABLED.
      reply = `${head.tag} NO [PRIVACYREQUIRED] Use STARTTLS before logging in\r\n`;
      this.log.info({ tag: head.tag, command: head.name }, 'login refused before STARTTLS');
    } else {
      // COMPRESS: the proxy compresses the client link itself; the upstream
      // link stays as it is and never sees the command.
      const refusal = this.compressRefusal(line, head, literal);
      if (refusal === null) {
        this.toClient.push(Buffer.from(`${head.tag} OK DEFLATE active\r\n`, 'latin1'));
        this.compressionStarting = true;
        this.clientFramer.pause();
        return;
      }
      reply = `${head.tag} ${refusal}\r\n`;
    }
    if (literal && !literal.synchronizing) {
      // The client sends the rest of the command without waiting: drop it, then reply.
      this.current = { entry: null, discard: true, replyAtEnd: reply, capture: null };
      return;
    }
    this.toClient.push(Buffer.from(reply, 'latin1'));
    // A refused synchronizing literal is never sent.
    if (literal) this.clientFramer.cancelLiteral();
  }

  private compressRefusal(line: Buffer, head: CommandHead, literal: LiteralAnnouncement | null): string | null {
    if (!this.config.compress) return 'NO COMPRESS is not available through this proxy';
    if (this.compression) return 'NO [COMPRESSIONACTIVE] DEFLATE is already active';
    if (this.state !== 'authenticated' && this.state !== 'selected') return 'BAD COMPRESS is valid only after login';
    const mechanism = literal ? '' : atomsAfter(line, head.argsStart, head.end).join(' ').toUpperCase();
    if (mechanism !== 'DEFLATE') return 'BAD Unsupported compression mechanism; use COMPRESS DEFLATE';
    return null;
  }

  private startTlsRefusal(hasArguments: boolean): string | null {
    if (hasArguments) return 'BAD STARTTLS takes no arguments';
    if (!this.transport.certificates) return 'NO STARTTLS is not available through this proxy';
    if (this.secure) return 'BAD TLS is already active';
    if (this.state !== 'not-authenticated') return 'BAD STARTTLS is valid only before login';
    return null;
  }

  /**
   * RFC 9051 6.2.1: after the OK, TLS starts on the same socket. Whatever the
   * client sent after STARTTLS in plaintext is dropped unread (CVE-2011-0411:
   * commands injected before the handshake must not run inside the TLS
   * session). The upstream never sees STARTTLS.
   */
  private startTls(tag: string): void {
    const certificates = this.transport.certificates as CertificateStore;
    const raw = this.client;
    this.clientFramer.discardBuffered();
    this.upgrading = true;
    raw.pause();
    this.toClient.flushTo(raw);
    raw.write(Buffer.from(`${tag} OK Begin TLS negotiation now\r\n`, 'latin1'), () => {
      if (this.closing) return;
      for (const event of ['data', 'end', 'close', 'drain'] as const) raw.removeAllListeners(event);
      const secure = new tls.TLSSocket(raw, {
        isServer: true,
        secureContext: certificates.defaultContext,
        SNICallback: certificates.sniCallback,
      });
      this.client = secure;
      this.attachClient(secure);
      // A client that goes quiet or away mid-handshake is not waited for.
      raw.once('end', () => this.upgrading && secure.destroy());
      const timer = setTimeout(() => {
        if (this.upgrading) secure.destroy(new Error('TLS handshake timed out'));
      }, TLS_HANDSHAKE_TIMEOUT_MS);
      timer.unref();
      secure.once('secure', () => {
        clearTimeout(timer);
        this.secure = true;
        this.upgrading = false;
        this.log.info({ protocol: secure.getProtocol(), servername: (secure as { servername?: string }).servername || undefined }, 'STARTTLS done');
        this.clientFramer.resume();
        this.updateReading();
      });
    });
  }

  /**
   * Tells the upstream who the client really is, the way Dovecot's own
   * proxy does (honoured from Dovecot's login_trusted_networks), before any
   * command of the client's. The exchange is hidden from the client, whose
   * own ID command still works afterwards; the upstream heeds the first ID.
   */
  private sendClientIdentity(): void {
    const peer = this.peer;
    const fields: Array<[string, string | number | undefined]> = [
      ['x-originating-ip', peer.sourceAddress.replace(/^::ffff:/, '')],
      ['x-originating-port', peer.sourcePort],
      ['x-connected-ip', peer.destinationAddress.replace(/^::ffff:/, '')],
      ['x-connected-port', peer.destinationPort],
      ['x-session-ext-id', `jap${process.pid}-${this.id}`],
    ];
    const list = fields
      .filter(([, value]) => value !== undefined)
      .map(([key, value]) => `${quoteImapString(key)} ${quoteImapString(String(value))}`)
      .join(' ');
    const tag = 'jmapaccess-proxy.id';
    this.inFlight.push({ tag, name: 'ID', kind: 'client-id' });
    this.toUpstream.push(Buffer.from(`${tag} ID (${list})\r\n`, 'latin1'));
  }

  /** Asks the upstream for its capabilities; the client never sees the exchange. */
  private sendObjectIdProbe(): void {
    const tag = `jmapaccess-proxy.${++this.probeCounter}`;
    this.inFlight.push({ tag, name: 'CAPABILITY', kind: 'probe' });
    this.toUpstream.push(Buffer.from(`${tag} CAPABILITY\r\n`, 'latin1'));
    this.log.debug('asking the upstream for its post-login capabilities');
  }

  private onInvalidCommand(line: Buffer, literal: LiteralAnnouncement | null): void {
    if (line.length <= 2 && !literal && (line[0] === 0x0a || line[0] === 0x0d)) return; // stray empty line
    if (literal) {
      // Where its literal ends cannot be known for a line that is not a command.
      this.close('invalid command', '* BYE [CLIENTBUG] Invalid command line\r\n');
      return;
    }
    if (!this.canReplyLocally()) return this.holdClientLine();
    this.events.metrics.protocolErrors.inc({ side: 'client', kind: 'invalid-command' });
    if (++this.invalidCommands >= MAX_INVALID_COMMANDS) {
      this.close('too many invalid commands', '* BYE [CLIENTBUG] Too many invalid commands\r\n');
      return;
    }
    this.toClient.push(Buffer.from('* BAD [CLIENTBUG] Invalid command line: expected "tag command"\r\n', 'latin1'));
  }

  private onClientFramingError(kind: FramerError): void {
    this.events.metrics.protocolErrors.inc({ side: 'client', kind });
    if (kind === 'line-too-long') {
      this.log.warn({ limit: this.config.maxLineLength }, 'client line too long');
      this.close('client line too long', `* BYE [LIMIT] Line longer than ${this.config.maxLineLength} bytes\r\n`);
    } else {
      this.log.warn('client announced an impossible literal');
      this.close('invalid literal', '* BYE [CLIENTBUG] Invalid literal size\r\n');
    }
  }

  // -------------------------------------------------------- upstream → client

  private onServerLine(line: Buffer, first: boolean): void {
    if (this.lazy === 'greeting') return this.onLazyGreeting(line);
    if (!first) return this.emit(line);
    const response = classifyResponse(line);
    switch (response.kind) {
      case 'message-data':
      case 'unparsable':
        return this.emit(line);
      case 'continuation':
        if (this.awaitingGoAhead) this.awaitingGoAhead = null;
        else if (this.clientMode === 'authenticate') this.saslChallenges++;
        // The client must see the continuation now: nothing may stay held.
        this.releaseHeld();
        return this.emit(line);
      case 'untagged': {
        if (response.status !== null) {
          this.greeted = true;
          if (this.lazy === 'off') this.upstreamGreeted = true;
        }
        if (response.status === 'PREAUTH') this.setAuthenticated(null);
        else if (response.status === 'BYE') this.state = 'logout';
        if (response.word === 'ID' && this.inFlight[0]?.kind === 'client-id') return; // the answer to the proxy's own ID
        const span = findCapabilities(line, response);
        // The greeting is never a login's answer, even when the client
        // pipelined LOGIN before it arrived. It is the first status response
        // with a capability list (Dovecot may send a plain "* OK Waiting for
        // authentication process" first), or anything up to the first tagged
        // response when the greeting carries no list.
        const greeting = this.greetingPhase;
        if (greeting && response.status !== null && (span || response.status !== 'OK')) {
          this.greetingPhase = false;
          if (this.lazy === 'off') this.events.greetings?.record(line);
        }
        if (!span) return this.emit(line);
        if (response.word === 'CAPABILITY' && this.probeInFlight()) {
          this.objectId = hasCapability(capabilityAtoms(line, span), 'OBJECTID') ? 'present' : 'absent';
          return; // the proxy's own question: hidden from the client
        }
        const oldest = this.inFlight[0];
        if (
          !greeting &&
          oldest &&
          (oldest.kind === 'login' || oldest.kind === 'authenticate') &&
          this.state === 'not-authenticated' &&
          !this.held
        ) {
          // The login is the oldest command still running, so this list is
          // its answer, and whether it gains JMAPACCESS depends on the
          // login's outcome. (A list arriving while an earlier command still
          // runs, such as a pipelined CAPABILITY, belongs to that command.)
          this.held = { loginTag: oldest.tag, lines: [], bytes: 0 };
        }
        if (this.held) return this.emit(line);
        return this.emit(this.rewriteCapabilityLine(line, span));
      }
      case 'tagged':
        return this.onTaggedResponse(line, response.tag, response.status, response);
    }
  }

  /**
   * The upstream's own greeting, on a lazy session whose client already has
   * the remembered one: read and not shown, unless it says something else.
   */
  private onLazyGreeting(line: Buffer): void {
    this.upstreamGreeted = true;
    if (GreetingCache.usable(line)) {
      this.events.greetings?.record(line);
      this.lazy = 'off';
      return; // onUpstreamData lets the held client line go
    }
    const response = classifyResponse(line);
    // Dovecot's "* OK Waiting for authentication process to respond..": the greeting follows.
    if (response.kind === 'untagged' && response.status === 'OK') return;
    this.events.greetings?.forget();
    this.lazy = 'off';
    if (response.kind === 'untagged' && response.status === 'BYE') {
      this.state = 'logout';
      this.emit(line); // the server's own reason; it closes the link next
      return;
    }
    this.log.warn({ greeting: response.kind === 'untagged' ? response.status : response.kind }, 'the upstream greeted differently than before');
    this.close('upstream greeting changed', '* BYE [UNAVAILABLE] The IMAP server is unavailable, try again later\r\n');
  }

  private onTaggedResponse(
    line: Buffer,
    tag: string,
    status: 'OK' | 'NO' | 'BAD' | null,
    response: ReturnType<typeof classifyResponse>,
  ): void {
    this.greetingPhase = false;
    const index = this.inFlight.findIndex((entry) => entry.tag === tag);
    if (index === -1) return this.emit(line);
    if (status === 'OK' && this.inFlight[index]?.verification === 'pending') {
      // The login worked upstream; whether JMAPACCESS comes with it waits
      // for the JMAP server. Everything after this line waits too.
      this.awaitingVerification = this.inFlight[index] as InFlight;
      this.serverFramer.deferLine();
      return;
    }
    const [entry] = this.inFlight.splice(index, 1) as [InFlight];

    if (entry === this.awaitingGoAhead) {
      // The server finished the command instead of saying `+`: the client
      // will not send the literal it announced.
      this.awaitingGoAhead = null;
      this.clientFramer.cancelLiteral();
      if (this.current?.entry === entry) this.current = null;
    }

    switch (entry.kind) {
      case 'probe':
        if (this.objectId === 'unknown') this.objectId = 'absent';
        return; // hidden from the client
      case 'client-id':
        if (status !== 'OK') this.log.warn({ status }, 'the upstream refused the client-address ID');
        return; // hidden from the client
      case 'login':
      case 'authenticate':
        if (entry === this.authenticating) {
          this.authenticating = null;
          this.clientMode = 'command';
          this.saslChallenges = 0;
        }
        if (status === 'OK') {
          this.setAuthenticated({
            mechanism: entry.mechanism ?? 'UNKNOWN',
            user: entry.user,
            jmap: this.jmapTarget(entry),
            // With --jmap-verify, a login whose credentials the proxy could not
            // read (an over-long LOGIN, an odd SASL exchange) was never checked.
            verification: entry.verification ?? (this.jmapPolicy.verify ? { ok: false, reason: 'no-credentials' } : 'off'),
          });
        }
        break;
      case 'idle':
        if (this.clientMode === 'idle') this.clientMode = 'command'; // refused before DONE
        break;
      case 'select':
        if (status === 'OK') this.state = 'selected';
        else if (this.state === 'selected') this.state = 'authenticated';
        break;
      case 'deselect':
        if (status === 'OK' && this.state === 'selected') this.state = 'authenticated';
        break;
      case 'logout':
        if (status === 'OK') this.state = 'logout';
        break;
      case 'plain':
        break;
    }

    const span = findCapabilities(line, response);
    const out = span ? this.rewriteCapabilityLine(line, span) : line;
    if (this.held?.loginTag === tag) this.releaseHeld();
    this.emit(out);
    if (entry.kind === 'login' || entry.kind === 'authenticate') this.logLogin(entry, status);
  }

  private onServerLiteral(chunk: Buffer): void {
    // Held responses are capability lines, which carry no literals; anything
    // else arriving means the hold is over.
    this.releaseHeld();
    this.toClient.push(chunk);
  }

  private onServerFramingError(kind: FramerError): void {
    this.events.metrics.protocolErrors.inc({ side: 'upstream', kind });
    this.log.warn({ kind, limit: this.config.maxLineLength }, 'upstream sent an invalid response');
    this.close('upstream protocol error', '* BYE [UNAVAILABLE] The IMAP server sent an invalid response\r\n');
  }

  /** Writes a server line to the client, or keeps it while responses are held. */
  private emit(line: Buffer): void {
    const held = this.held;
    if (held) {
      held.lines.push(line);
      held.bytes += line.length;
      if (held.bytes > this.config.maxLineLength) this.releaseHeld();
      return;
    }
    this.toClient.push(line);
  }

  /** Lets held responses go, each capability list rewritten for the state as it is now. */
  private releaseHeld(): void {
    const held = this.held;
    if (!held) return;
    this.held = null;
    for (const line of held.lines) {
      const response = classifyResponse(line);
      const span = findCapabilities(line, response);
      this.toClient.push(span ? this.rewriteCapabilityLine(line, span) : line);
    }
  }

  private rewriteCapabilityLine(line: Buffer, span: CapabilitySpan): Buffer {
    const atoms = capabilityAtoms(line, span);
    if (this.state !== 'not-authenticated') {
      // Only lists sent after authentication tell what the upstream offers logged in.
      this.objectId = hasCapability(atoms, 'OBJECTID') ? 'present' : 'absent';
    }
    const decision = decide(this.facts(), this.config);
    const tlsPossible = this.transport.certificates !== null && !this.secure;
    return replaceCapabilities(
      line,
      span,
      rewriteCapabilities(atoms, {
        jmapAccess: decision.grant,
        startTls: tlsPossible && this.state === 'not-authenticated',
        loginDisabled: tlsPossible && this.config.requireTls,
        compress: this.config.compress && this.state !== 'not-authenticated' && this.compression === null,
      }),
    );
  }

  // -------------------------------------------------------------------- state

  private setAuthenticated(authentication: Authentication | null): void {
    this.state = 'authenticated';
    this.authentication = authentication;
    this.objectId = 'unknown';
  }

  private facts(): SessionFacts {
    return {
      authenticated: this.state === 'authenticated' || this.state === 'selected',
      authentication: this.authentication,
      objectId: this.objectId,
    };
  }

  private probeInFlight(): boolean {
    return this.inFlight.some((entry) => entry.kind === 'probe');
  }

  private logLogin(entry: InFlight, status: string | null): void {
    const fields: Record<string, unknown> = { tag: entry.tag, user: entry.user, mechanism: entry.mechanism, result: status };
    if (status === 'OK') {
      const decision: Decision = decide(this.facts(), this.config);
      fields.jmapaccess = decision.grant ? 'granted' : needsObjectIdProbe(this.facts(), this.config) ? 'pending' : 'refused';
      fields.reason = this.objectId === 'unknown' && decision.reason === 'no-objectid' ? 'objectid-not-yet-known' : decision.reason;
      if (!decision.grant && decision.detail) fields.detail = decision.detail;
      if (decision.grant && decision.reason === 'objectid-assumed' && this.objectId !== 'present') {
        this.log.warn({ user: entry.user }, 'JMAPACCESS granted without OBJECTID in the upstream capabilities (--objectid assume)');
      }
      this.log.info(fields, 'login succeeded');
      this.events.metrics.jmapAccessDecisions.inc({ decision: String(fields.jmapaccess), reason: String(fields.reason) });
    } else {
      this.log.info(fields, 'login failed');
    }
    this.events.metrics.logins.inc({ mechanism: entry.mechanism ?? 'UNKNOWN', result: status ?? 'other' });
  }
}
