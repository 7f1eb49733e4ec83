/**
 * The credentials of a login, for `--jmap-verify` only: the proxy asks the
 * JMAP server whether they work there too (jmap-verify.ts). They are read
 * from the bytes the client sent, handed to the verifier, and dropped; the
 * buffers they came from are zeroed by the caller. Nothing here logs.
 */

import { parseCommandHead } from './command.js';
import { decodeBase64 } from './sasl.js';

/** What a JMAP server can be asked with: HTTP Basic or a bearer token. */
export type LoginSecret =
  | { readonly kind: 'password'; readonly user: string; readonly secret: string }
  | { readonly kind: 'bearer'; readonly secret: string };

const SP = 0x20;
const CR = 0x0d;
const LF = 0x0a;

/**
 * Reads one IMAP astring (atom, quoted string or literal) from a whole
 * command as sent: lines and literal bytes in order, so a literal's bytes
 * follow its `{n}` CRLF. Returns the value and the offset after it.
 */
function readArgument(bytes: Buffer, start: number): { value: Buffer; next: number } | null {
  if (start >= bytes.length) return null;
  const first = bytes[start] as number;
  if (first === 0x7b) {
    const close = bytes.indexOf(0x7d, start);
    if (close === -1) return null;
    const digits = bytes.toString('latin1', start + 1, bytes[close - 1] === 0x2b ? close - 1 : close);
    if (!/^\d{1,9}$/.test(digits)) return null;
    let at = close + 1;
    if (bytes[at] === CR) at++;
    if (bytes[at] !== LF) return null;
    at++;
    const size = Number(digits);
    if (at + size > bytes.length) return null;
    return { value: bytes.subarray(at, at + size), next: at + size };
  }
  if (first === 0x22) {
    const out: number[] = [];
    for (let i = start + 1; i < bytes.length; i++) {
      const c = bytes[i] as number;
      if (c === CR || c === LF) return null;
      if (c === 0x5c) {
        const escaped = bytes[++i];
        if (escaped !== 0x22 && escaped !== 0x5c) return null;
        out.push(escaped);
      } else if (c === 0x22) {
        return { value: Buffer.from(out), next: i + 1 };
      } else {
        out.push(c);
      }
    }
    return null;
  }
  let i = start;
  while (i < bytes.length && bytes[i] !== SP && bytes[i] !== CR && bytes[i] !== LF) i++;
  if (i === start) return null;
  return { value: bytes.subarray(start, i), next: i };
}

/** `tag LOGIN user password`, from the whole command; null if it cannot be read. */
export function loginCredentials(command: Buffer): { user: string; password: string } | null {
  const lf = command.indexOf(LF);
  const head = parseCommandHead(lf === -1 ? command : command.subarray(0, lf + 1));
  if (!head || head.name !== 'LOGIN') return null;
  const user = readArgument(command, head.argsStart);
  if (!user || command[user.next] !== SP) return null;
  const password = readArgument(command, user.next + 1);
  if (!password) return null;
  return { user: user.value.toString('utf8'), password: password.value.toString('utf8') };
}

/** `auth=Bearer TOKEN` among 0x01-separated fields (OAUTHBEARER, XOAUTH2). */
function bearerToken(text: string): string | null {
  for (const field of text.split('\x01')) {
    const m = /^auth=Bearer +(\S+)$/i.exec(field);
    if (m) return m[1] as string;
  }
  return null;
}

/**
 * The secret in a SASL response. `responses` are the client's base64
 * responses so far (the SASL-IR argument counts as the first); returns null
 * until the mechanism's secret has been sent (LOGIN sends it second).
 */
export function saslCredentials(mechanism: string, responses: readonly string[]): LoginSecret | null {
  const payload = responses[0] === undefined ? null : decodeBase64(responses[0]);
  if (!payload) return null;
  try {
    switch (mechanism) {
      case 'PLAIN': {
        // authzid NUL authcid NUL passwd: the password belongs to the authentication identity.
        const first = payload.indexOf(0);
        const second = first === -1 ? -1 : payload.indexOf(0, first + 1);
        if (second === -1) return null;
        const user = payload.toString('utf8', first + 1, second);
        const secret = payload.toString('utf8', second + 1);
        return user && secret ? { kind: 'password', user, secret } : null;
      }
      case 'LOGIN': {
        const password = responses[1] === undefined ? null : decodeBase64(responses[1]);
        if (!password) return null;
        try {
          const user = payload.toString('utf8');
          const secret = password.toString('utf8');
          return user && secret ? { kind: 'password', user, secret } : null;
        } finally {
          password.fill(0);
        }
      }
      case 'OAUTHBEARER':
      case 'XOAUTH2': {
        const secret = bearerToken(payload.toString('utf8'));
        return secret ? { kind: 'bearer', secret } : null;
      }
      default:
        return null;
    }
  } finally {
    payload.fill(0);
  }
}
