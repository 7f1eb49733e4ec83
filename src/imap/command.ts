/**
 * The client direction: which lines announce literals, and what the start of
 * a command says (tag, command name, the arguments the proxy cares about).
 */

import { contentEnd, literalAnnouncement } from './literal.js';
import type { LiteralRule } from './framer.js';

/**
 * Every client line may end in a literal announcement. SASL responses
 * (base64 or `*`) and IDLE's `DONE` cannot end in `}`, so one rule serves.
 */
export const clientLiteralRule: LiteralRule = (line) => literalAnnouncement(line);

export interface CommandHead {
  /** The tag as sent. */
  readonly tag: string;
  /** The command name, upper-cased (`UID` for UID commands). */
  readonly name: string;
  /** Offset of the first argument byte in the line, or the content end when there is none. */
  readonly argsStart: number;
  /** Offset where the line's content ends (before CRLF/LF). */
  readonly end: number;
}

const SP = 0x20;

/**
 * tag = 1*<any ASTRING-CHAR except "+">. ASTRING-CHAR is ATOM-CHAR or "]";
 * ATOM-CHAR excludes "(", ")", "{", SP, CTL, "%", "*", DQUOTE and "\".
 */
function isTagChar(c: number): boolean {
  if (c <= 0x20 || c >= 0x7f) return false;
  return (
    c !== 0x28 && c !== 0x29 && c !== 0x7b && c !== 0x25 && c !== 0x2a && c !== 0x22 && c !== 0x5c && c !== 0x2b
  );
}

/** Command names are atoms; in practice letters, digits, and `-`/`_`/`.`. */
function isAtomChar(c: number): boolean {
  return isTagChar(c) || c === 0x2b;
}

/** Parses `tag SP name [SP args]`; null when the line is not a command. */
export function parseCommandHead(line: Buffer): CommandHead | null {
  const end = contentEnd(line);
  let i = 0;
  while (i < end && isTagChar(line[i] as number)) i++;
  if (i === 0 || i >= end || line[i] !== SP) return null;
  const tag = line.toString('latin1', 0, i);
  const nameStart = ++i;
  while (i < end && isAtomChar(line[i] as number)) i++;
  if (i === nameStart) return null;
  if (i < end && line[i] !== SP) return null;
  const name = line.toString('latin1', nameStart, i).toUpperCase();
  const argsStart = i < end ? i + 1 : end;
  return { tag, name, argsStart, end };
}

/**
 * Reads one `astring` argument starting at `start` (an atom or a quoted
 * string). Returns the decoded value and the offset after it, or null for a
 * literal or anything else (the caller then reads the literal itself).
 */
export function readAstring(
  line: Buffer,
  start: number,
  end: number,
): { value: string; next: number } | null {
  if (start >= end) return null;
  if (line[start] === 0x22) {
    const bytes: number[] = [];
    for (let i = start + 1; i < end; i++) {
      const c = line[i] as number;
      if (c === 0x5c && i + 1 < end) {
        bytes.push(line[++i] as number);
      } else if (c === 0x22) {
        return { value: Buffer.from(bytes).toString('utf8'), next: i + 1 };
      } else {
        bytes.push(c);
      }
    }
    return null;
  }
  if (line[start] === 0x7b || line[start] === 0x7e) return null;
  let i = start;
  while (i < end && line[i] !== SP) i++;
  return { value: line.toString('utf8', start, i), next: i };
}

/** Splits the remaining arguments of a short line (AUTHENTICATE) on spaces. */
export function atomsAfter(line: Buffer, start: number, end: number): string[] {
  if (start >= end) return [];
  return line.toString('latin1', start, end).split(' ').filter((s) => s.length > 0);
}

/** True when the line is IDLE's `DONE` (case-insensitive). */
export function isDone(line: Buffer): boolean {
  const end = contentEnd(line);
  return end === 4 && line.toString('latin1', 0, 4).toUpperCase() === 'DONE';
}
