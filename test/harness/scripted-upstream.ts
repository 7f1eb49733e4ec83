/**
 * A SCRIPTED FAKE IMAP SERVER, for byte-level edge cases that a real server
 * cannot be made to produce on demand (the RFC 9698 example's response
 * shape, a refused synchronizing literal, a server that never lists its
 * capabilities, a response with a literal in progress). Everything else is
 * tested against a real Dovecot.
 *
 * Each test scripts the server's side: it reads the lines the proxy sends
 * and writes exact bytes back.
 */

import net from 'node:net';
import type { AddressInfo } from 'node:net';

export class ScriptedConnection {
  readonly socket: net.Socket;
  private buffer = Buffer.alloc(0);
  private waiters: Array<() => void> = [];
  closed = false;

  constructor(socket: net.Socket) {
    this.socket = socket;
    socket.on('data', (chunk: Buffer) => {
      this.buffer = Buffer.concat([this.buffer, chunk]);
      this.wake();
    });
    socket.on('close', () => {
      this.closed = true;
      this.wake();
    });
    socket.on('error', () => {});
  }

  private wake(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }

  private async waitFor<T>(take: () => T | undefined, what: string, timeoutMs: number): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const value = take();
      if (value !== undefined) return value;
      if (this.closed) throw new Error(`scripted upstream: closed while waiting for ${what}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`scripted upstream: timed out waiting for ${what}; have ${JSON.stringify(this.buffer.toString('latin1'))}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  /** The next line the proxy sent, without its CRLF. */
  line(timeoutMs = 5000): Promise<string> {
    return this.waitFor(
      () => {
        const lf = this.buffer.indexOf(0x0a);
        if (lf === -1) return undefined;
        const text = this.buffer.toString('latin1', 0, lf).replace(/\r$/, '');
        this.buffer = this.buffer.subarray(lf + 1);
        return text;
      },
      'a line',
      timeoutMs,
    );
  }

  /** Exactly n raw bytes. */
  bytes(n: number, timeoutMs = 5000): Promise<Buffer> {
    return this.waitFor(
      () => {
        if (this.buffer.length < n) return undefined;
        const out = Buffer.from(this.buffer.subarray(0, n));
        this.buffer = this.buffer.subarray(n);
        return out;
      },
      `${n} bytes`,
      timeoutMs,
    );
  }

  /** Whatever arrived and was not read yet. */
  pending(): string {
    return this.buffer.toString('latin1');
  }

  send(text: string | Buffer): void {
    this.socket.write(typeof text === 'string' ? Buffer.from(text, 'latin1') : text);
  }
}

export interface ScriptedUpstream {
  port: number;
  /** The next connection the proxy makes. */
  accept(timeoutMs?: number): Promise<ScriptedConnection>;
  close(): Promise<void>;
}

export async function startScriptedUpstream(): Promise<ScriptedUpstream> {
  const queue: ScriptedConnection[] = [];
  const waiting: Array<(c: ScriptedConnection) => void> = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    const connection = new ScriptedConnection(socket);
    const waiter = waiting.shift();
    if (waiter) waiter(connection);
    else queue.push(connection);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as AddressInfo).port,
    accept(timeoutMs = 5000) {
      const ready = queue.shift();
      if (ready) return Promise.resolve(ready);
      return new Promise((resolve, reject) => {
        const waiter = (c: ScriptedConnection) => {
          clearTimeout(timer);
          resolve(c);
        };
        const timer = setTimeout(() => {
          // A later connection must not go to a caller that gave up.
          waiting.splice(waiting.indexOf(waiter), 1);
          reject(new Error('scripted upstream: no connection'));
        }, timeoutMs);
        waiting.push(waiter);
      });
    },
    close() {
      for (const s of sockets) s.destroy();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}
