/**
 * A byte-level IMAP client for tests: it sends exactly what it is told and
 * records exactly what it receives, so tests can assert on bytes.
 */

import net from 'node:net';

export class RawClient {
  readonly socket: net.Socket;
  private received = Buffer.alloc(0);
  private consumed = 0;
  private waiters: Array<() => void> = [];
  closed = false;

  private constructor(socket: net.Socket) {
    this.socket = socket;
    socket.on('data', (chunk: Buffer) => {
      this.received = Buffer.concat([this.received, chunk]);
      this.wake();
    });
    socket.on('close', () => {
      this.closed = true;
      this.wake();
    });
    socket.on('error', () => {});
  }

  /** Wraps an already connected socket. */
  static fromSocket(socket: net.Socket): RawClient {
    return new RawClient(socket);
  }

  static connect(port: number, host = '127.0.0.1'): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ port, host }, () => resolve(new RawClient(socket)));
      socket.once('error', reject);
    });
  }

  private wake(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }

  send(data: string | Buffer): void {
    this.socket.write(typeof data === 'string' ? Buffer.from(data, 'latin1') : data);
  }

  /** Everything received so far (including what was already read). */
  get all(): Buffer {
    return this.received;
  }

  /**
   * Waits until the unread input contains `marker` (a string or a regex
   * tested against the latin1 text), then returns the unread text up to and
   * including the end of the line that completes the match.
   */
  async readUntil(marker: string | RegExp, timeoutMs = 10_000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const text = this.received.toString('latin1', this.consumed);
      const index = typeof marker === 'string' ? text.indexOf(marker) : text.search(marker);
      if (index !== -1) {
        const matchLength = typeof marker === 'string' ? marker.length : (text.slice(index).match(marker)?.[0].length ?? 0);
        let end = text.indexOf('\n', index + Math.max(matchLength - 1, 0));
        end = end === -1 ? text.length : end + 1;
        this.consumed += end;
        return text.slice(0, end);
      }
      if (this.closed) throw new Error(`connection closed before ${String(marker)}; unread: ${JSON.stringify(text)}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${String(marker)}; unread: ${JSON.stringify(text)}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  /** Waits for the tagged response of `tag` and returns everything up to it. */
  response(tag: string, timeoutMs?: number): Promise<string> {
    return this.readUntil(new RegExp(`(^|\\n)${tag.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} (OK|NO|BAD)`), timeoutMs);
  }

  /** Resolves when the proxy closes the connection. */
  async waitClosed(timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error('connection still open');
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  unread(): string {
    return this.received.toString('latin1', this.consumed);
  }

  close(): void {
    this.socket.destroy();
  }
}
