/**
 * The benchmark's load client: a deliberately small IMAP client on a raw
 * socket. It frames responses into lines and literals on Buffers (no regex,
 * no string conversion of literal data or of untagged lines), hands literal
 * bytes to an optional sink (the FETCH digest), and resolves one tagged
 * completion or one `+` continuation at a time. It is cheap so that what the
 * benchmark measures is the server side, not the client; run.ts records the
 * client's CPU time to show it.
 */

import net from 'node:net';
import tls from 'node:tls';
import zlib from 'node:zlib';

const LF = 0x0a;
const CR = 0x0d;
const STAR = 0x2a;
const PLUS = 0x2b;
const OPEN_BRACE = 0x7b;
const CLOSE_BRACE = 0x7d;

export class ImapError extends Error {}

export interface ClientTls {
  ca: Buffer | string;
  servername?: string;
}

/**
 * One read buffer for every connection of the process (net's `onread`):
 * reads land in it and are consumed synchronously, so nothing is allocated
 * per read. Anything kept past the callback (a partial line) is copied.
 */
const READ_BUFFER = Buffer.allocUnsafe(256 * 1024);

/** Size of the literal a response line announces (`{123}` or `{123+}` before CRLF), or -1. */
function announcedLiteral(line: Buffer): number {
  let end = line.length - 1; // the LF
  if (end > 0 && line[end - 1] === CR) end--;
  if (end < 3 || line[end - 1] !== CLOSE_BRACE) return -1;
  let i = end - 2;
  if (line[i] === PLUS) i--;
  let size = 0;
  let mul = 1;
  let digits = 0;
  for (; i >= 0; i--) {
    const c = line[i] as number;
    if (c === OPEN_BRACE) break;
    if (c < 0x30 || c > 0x39) return -1;
    size += (c - 0x30) * mul;
    mul *= 10;
    digits++;
  }
  return i >= 0 && digits > 0 ? size : -1;
}

export class ImapClient {
  readonly socket: net.Socket;
  /** Receives every literal byte of every response (views into the input chunks). */
  literalSink: ((chunk: Buffer) => void) | null = null;
  /** Literal bytes received so far. */
  literalBytes = 0;
  /** Untagged response lines (`* ...`) received so far. */
  untaggedCount = 0;
  /** When set, untagged first lines are also kept here as text (for CAPABILITY etc.). */
  collect: string[] | null = null;

  private partial: Buffer | null = null;
  private literalLeft = 0;
  /** True when the next line starts a new response (not the rest of one after a literal). */
  private atResponseStart = true;
  private tagBytes: Buffer | null = null;
  private onTagged: ((line: string) => void) | null = null;
  private onContinuation: (() => void) | null = null;
  private onFail: ((err: Error) => void) | null = null;
  private failure: Error | null = null;
  private greetingWaiter: ((line: string) => void) | null = null;
  private greeting: string | null = null;

  private deflate: zlib.DeflateRaw | null = null;
  /** After COMPRESS: received bytes go through this first. */
  private inflate: zlib.InflateRaw | null = null;

  private constructor(host: string, port: number, tlsOptions?: ClientTls) {
    // TLS reads into its own buffers; plain TCP reads into the shared one.
    const socket = tlsOptions
      ? tls.connect({ host, port, ca: tlsOptions.ca, servername: tlsOptions.servername })
      : net.connect({
          host,
          port,
          onread: {
            buffer: READ_BUFFER,
            callback: (n: number, buf: Uint8Array) => {
              this.received(Buffer.from(buf.buffer, buf.byteOffset, n), true);
              return true;
            },
          },
        });
    if (tlsOptions) socket.on('data', (chunk: Buffer) => this.received(chunk, false));
    this.socket = socket;
    socket.setNoDelay(true);
    socket.on('error', (err) => this.fail(err));
    socket.on('close', () => {
      // After COMPRESS the last responses may still be in the inflater.
      const inflate = this.inflate;
      if (!inflate) return this.fail(new ImapError('connection closed'));
      inflate.once('end', () => this.fail(new ImapError('connection closed')));
      inflate.end();
    });
  }

  /** Connects (over TLS with `tlsOptions`) and waits for the `* OK` greeting. */
  static connect(port: number, host = '127.0.0.1', timeoutMs = 10_000, tlsOptions?: ClientTls): Promise<ImapClient> {
    return new Promise((resolve, reject) => {
      const client = new ImapClient(host, port, tlsOptions);
      const socket = client.socket;
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new ImapError(`no greeting from ${host}:${port} within ${timeoutMs} ms`));
      }, timeoutMs);
      client.onFail = (err) => {
        clearTimeout(timer);
        reject(err);
      };
      client.greetingWaiter = (line) => {
        clearTimeout(timer);
        client.onFail = null;
        if (line.startsWith('* OK')) resolve(client);
        else {
          socket.destroy();
          reject(new ImapError(`bad greeting: ${line}`));
        }
      };
    });
  }

  get greetingLine(): string | null {
    return this.greeting;
  }

  /** Sends `tag text` and resolves with the tagged OK line (rejects on NO/BAD/close). */
  command(tag: string, text: string): Promise<string> {
    const done = this.expectTagged(tag);
    this.write(`${tag} ${text}\r\n`);
    return done;
  }

  /** Writes raw bytes (through the compressor after COMPRESS, flushed at once). */
  write(data: string | Buffer): void {
    if (this.deflate) {
      this.deflate.write(typeof data === 'string' ? Buffer.from(data, 'latin1') : data);
      this.deflate.flush(zlib.constants.Z_SYNC_FLUSH);
    } else {
      this.socket.write(typeof data === 'string' ? Buffer.from(data, 'latin1') : data);
    }
  }

  /** COMPRESS DEFLATE (RFC 4978): both directions compressed from the next byte on. */
  async compress(): Promise<void> {
    await this.command('C', 'COMPRESS DEFLATE');
    const inflate = zlib.createInflateRaw();
    const deflate = zlib.createDeflateRaw();
    deflate.pipe(this.socket);
    inflate.on('data', (chunk: Buffer) => this.onData(chunk));
    inflate.on('error', (err) => this.fail(err));
    this.inflate = inflate;
    this.deflate = deflate;
  }

  private received(chunk: Buffer, shared: boolean): void {
    const inflate = this.inflate;
    if (!inflate) return this.onData(chunk);
    // The inflater works asynchronously: the shared read buffer must be copied.
    inflate.write(shared ? Buffer.from(chunk) : chunk);
  }

  /** Resolves with the tagged OK line for `tag` (sent by the caller). */
  expectTagged(tag: string): Promise<string> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      this.tagBytes = Buffer.from(`${tag} `, 'latin1');
      this.onFail = reject;
      this.onTagged = (line) => {
        this.onFail = null;
        if (line.startsWith(`${tag} OK`)) resolve(line);
        else reject(new ImapError(`command ${tag} failed: ${line.trimEnd()}`));
      };
    });
  }

  /** Resolves at the next `+` continuation request. */
  expectContinuation(): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      const previousFail = this.onFail;
      this.onFail = (err) => {
        reject(err);
        previousFail?.(err);
      };
      this.onContinuation = () => {
        this.onFail = previousFail;
        resolve();
      };
    });
  }

  async login(user: string, password: string): Promise<void> {
    await this.command('L', `LOGIN ${user} ${password}`);
  }

  /** LOGOUT, wait for its tagged OK, then drop the socket. */
  async logout(): Promise<void> {
    try {
      await this.command('Z', 'LOGOUT');
    } finally {
      this.socket.destroy();
    }
  }

  close(): void {
    this.socket.destroy();
  }

  private fail(err: Error): void {
    if (this.failure) return;
    this.failure = err;
    const f = this.onFail;
    this.onFail = null;
    this.onTagged = null;
    this.onContinuation = null;
    f?.(err);
  }

  private onData(chunk: Buffer): void {
    let pos = 0;
    const length = chunk.length;
    while (pos < length) {
      if (this.literalLeft > 0) {
        const take = this.literalLeft < length - pos ? this.literalLeft : length - pos;
        if (this.literalSink) this.literalSink(pos === 0 && take === length ? chunk : chunk.subarray(pos, pos + take));
        this.literalLeft -= take;
        this.literalBytes += take;
        pos += take;
        continue;
      }
      const lf = chunk.indexOf(LF, pos);
      if (lf === -1) {
        // Copied: the read buffer is reused for the next read.
        const rest = chunk.subarray(pos);
        this.partial = this.partial ? Buffer.concat([this.partial, rest]) : Buffer.from(rest);
        return;
      }
      let line = chunk.subarray(pos, lf + 1);
      if (this.partial) {
        line = Buffer.concat([this.partial, line]);
        this.partial = null;
      }
      pos = lf + 1;
      this.onLine(line);
    }
  }

  private onLine(line: Buffer): void {
    const literal = announcedLiteral(line);
    const first = this.atResponseStart;
    if (literal >= 0) {
      this.literalLeft = literal;
      this.atResponseStart = false;
    } else {
      this.atResponseStart = true;
    }
    if (!first) return; // the rest of a response after a literal
    const c0 = line[0];
    if (this.greetingWaiter) {
      const w = this.greetingWaiter;
      this.greetingWaiter = null;
      this.greeting = line.toString('latin1').trimEnd();
      w(this.greeting);
      return;
    }
    if (c0 === STAR) {
      this.untaggedCount++;
      if (this.collect) this.collect.push(line.toString('latin1').trimEnd());
      return;
    }
    if (c0 === PLUS) {
      const w = this.onContinuation;
      this.onContinuation = null;
      w?.();
      return;
    }
    const tagBytes = this.tagBytes;
    if (tagBytes && line.length > tagBytes.length && line.compare(tagBytes, 0, tagBytes.length, 0, tagBytes.length) === 0) {
      const w = this.onTagged;
      this.onTagged = null;
      this.tagBytes = null;
      w?.(line.toString('latin1'));
    }
  }
}

/** Connects once and reads the greeting; true if it is `* OK`. */
export async function greets(port: number, host = '127.0.0.1'): Promise<boolean> {
  try {
    const c = await ImapClient.connect(port, host, 2000);
    c.close();
    return true;
  } catch {
    return false;
  }
}
