/**
 * The upstream's greeting, remembered so that clients can be greeted before
 * the proxy connects upstream (`--upstream-connect lazy`).
 *
 * Why: a connection that never sends a command (a port scan, a health
 * check, a client waiting on a slow network, a slowloris attack) then costs
 * the proxy one socket and the IMAP server nothing. The upstream is
 * connected when the client sends its first line; its own greeting is read
 * then, kept here, and not shown again.
 *
 * Only a plain `* OK [CAPABILITY ...]` greeting is kept: a greeting without
 * a list cannot be told apart from Dovecot's "Waiting for authentication
 * process" line, and PREAUTH or BYE must reach the client as they are. When
 * the upstream greets otherwise, the remembered greeting is dropped and new
 * sessions connect at once again, until it greets normally.
 */

import { classifyResponse, findCapabilities } from './imap/response.js';

export class GreetingCache {
  private greeting: Buffer | null = null;

  /** The greeting to send a new client, or null when the session must connect upstream first. */
  get(): Buffer | null {
    return this.greeting;
  }

  /** Records the greeting line an upstream connection opened with. */
  record(line: Buffer): void {
    this.greeting = GreetingCache.usable(line) ? Buffer.from(line) : null;
  }

  forget(): void {
    this.greeting = null;
  }

  /** Whether `line` is an OK greeting with a capability list. */
  static usable(line: Buffer): boolean {
    const response = classifyResponse(line);
    return response.kind === 'untagged' && response.status === 'OK' && findCapabilities(line, response) !== null;
  }
}
