/**
 * Literal announcements at the end of an IMAP line: `{n}` (synchronizing),
 * `{n+}` (non-synchronizing, RFC 7888 LITERAL+/LITERAL-) and `~{n}` / `~{n+}`
 * (literal8, RFC 3516 BINARY). After the line's CRLF come exactly n raw bytes,
 * then the same command or response continues on a new line.
 */

export interface LiteralAnnouncement {
  /** Number of raw bytes that follow the line. */
  readonly size: number;
  /** True for `{n}` sent by a client: it waits for the server's `+` first. */
  readonly synchronizing: boolean;
  /** True for `~{n}` (literal8: may contain NUL). */
  readonly binary: boolean;
}

/** Returned when a line ends in what is clearly a literal whose size is unusable. */
export const INVALID_LITERAL = Symbol('invalid literal');

const LF = 0x0a;
const CR = 0x0d;
const OPEN = 0x7b; // {
const CLOSE = 0x7d; // }
const PLUS = 0x2b;
const TILDE = 0x7e;
const ZERO = 0x30;
const NINE = 0x39;

/** Digits beyond this cannot be represented exactly as a JS number. */
const MAX_DIGITS = 15;

/**
 * Index of the line's content end: the position of CRLF, or of a bare LF
 * (servers such as Dovecot accept LF alone, so a proxy must frame on it too).
 */
export function contentEnd(line: Uint8Array): number {
  let end = line.length;
  if (end > 0 && line[end - 1] === LF) end--;
  if (end > 0 && line[end - 1] === CR) end--;
  return end;
}

/**
 * Looks at the end of one complete line (terminator included) and returns the
 * literal it announces, null when it announces none, or INVALID_LITERAL for a
 * `{digits}` too long to be a real size. Only the last few bytes are read.
 */
export function literalAnnouncement(
  line: Uint8Array,
): LiteralAnnouncement | null | typeof INVALID_LITERAL {
  const end = contentEnd(line);
  if (end < 3 || line[end - 1] !== CLOSE) return null;
  let i = end - 2;
  let synchronizing = true;
  if (line[i] === PLUS) {
    synchronizing = false;
    i--;
  }
  const lastDigit = i;
  while (i >= 0 && (line[i] as number) >= ZERO && (line[i] as number) <= NINE) i--;
  const digits = lastDigit - i;
  if (digits === 0 || i < 0 || line[i] !== OPEN) return null;
  if (digits > MAX_DIGITS) return INVALID_LITERAL;
  let size = 0;
  for (let d = i + 1; d <= lastDigit; d++) size = size * 10 + ((line[d] as number) - ZERO);
  const binary = i > 0 && line[i - 1] === TILDE;
  return { size, synchronizing, binary };
}
