/**
 * A minimal line-at-a-time IMAP client for the harnesses and their
 * self-tests: greeting, simple commands, no literals.
 */

import net from 'node:net';

export class LineClient {
  private buf = '';
  private waiters: (() => void)[] = [];
  closed = false;

  private constructor(readonly sock: net.Socket) {
    sock.setEncoding('latin1');
    sock.on('data', (d: string) => {
      this.buf += d;
      this.wake();
    });
    sock.on('close', () => {
      this.closed = true;
      this.wake();
    });
    sock.on('error', () => {
      /* surfaced as 'close' */
    });
  }

  static connect(host: string, port: number): Promise<LineClient> {
    return new Promise((resolve, reject) => {
      const sock = net.connect({ host, port }, () => {
        sock.off('error', reject);
        resolve(new LineClient(sock));
      });
      sock.once('error', reject);
    });
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  /** Next CRLF-terminated line (without CRLF); rejects on close or timeout. */
  async line(timeoutMs = 5000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const nl = this.buf.indexOf('\r\n');
      if (nl >= 0) {
        const l = this.buf.slice(0, nl);
        this.buf = this.buf.slice(nl + 2);
        return l;
      }
      if (this.closed) throw new Error('connection closed');
      const left = deadline - Date.now();
      if (left <= 0) throw new Error('timeout waiting for a line');
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  /** Send a tagged command; return [untagged lines, tagged completion line]. */
  async command(tag: string, cmd: string): Promise<{ untagged: string[]; done: string }> {
    this.sock.write(`${tag} ${cmd}\r\n`);
    const untagged: string[] = [];
    for (;;) {
      const l = await this.line();
      if (l.startsWith(`${tag} `)) return { untagged, done: l };
      untagged.push(l);
    }
  }

  /** Resolves once the peer has closed the connection. */
  async waitClosed(timeoutMs = 5000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed) {
      if (Date.now() > deadline) throw new Error('connection still open');
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  close(): void {
    this.sock.destroy();
  }
}
