/**
 * The server direction: which lines announce literals, what kind of response
 * a line starts, and where a capability list sits inside it.
 */

import { contentEnd, literalAnnouncement } from './literal.js';
import type { LiteralRule } from './framer.js';

const SP = 0x20;
const STAR = 0x2a;
const PLUS = 0x2b;
const OPEN_BRACKET = 0x5b;
const CLOSE_BRACKET = 0x5d;

export type Status = 'OK' | 'NO' | 'BAD' | 'PREAUTH' | 'BYE';

export type Response =
  /** `+ ...`: the server waits for more from the client. */
  | { readonly kind: 'continuation' }
  /** `* <number> ...` (EXISTS, EXPUNGE, FETCH...): never interesting to the proxy. */
  | { readonly kind: 'message-data' }
  /** `* WORD ...`, with the word upper-cased; status is set for OK/NO/BAD/PREAUTH/BYE. */
  | { readonly kind: 'untagged'; readonly word: string; readonly status: Status | null; readonly textStart: number }
  /** `tag OK|NO|BAD ...`; status null when the word after the tag is none of those. */
  | { readonly kind: 'tagged'; readonly tag: string; readonly status: 'OK' | 'NO' | 'BAD' | null; readonly textStart: number }
  | { readonly kind: 'unparsable' };

const CONTINUATION: Response = { kind: 'continuation' };
const MESSAGE_DATA: Response = { kind: 'message-data' };
const UNPARSABLE: Response = { kind: 'unparsable' };

function statusOf(word: string): Status | null {
  switch (word) {
    case 'OK':
    case 'NO':
    case 'BAD':
    case 'PREAUTH':
    case 'BYE':
      return word;
    default:
      return null;
  }
}

/** Reads the word that starts at `start`, up to SP or the content end. */
function wordAt(line: Buffer, start: number, end: number): { word: string; next: number } {
  let i = start;
  while (i < end && line[i] !== SP) i++;
  return { word: line.toString('latin1', start, i).toUpperCase(), next: i < end ? i + 1 : end };
}

/** Classifies the first line of a server response. */
export function classifyResponse(line: Buffer): Response {
  const end = contentEnd(line);
  if (end === 0) return UNPARSABLE;
  const c0 = line[0];
  if (c0 === PLUS) return CONTINUATION;
  if (c0 === STAR) {
    if (end < 3 || line[1] !== SP) return UNPARSABLE;
    const c2 = line[2] as number;
    if (c2 >= 0x30 && c2 <= 0x39) return MESSAGE_DATA;
    const { word, next } = wordAt(line, 2, end);
    return { kind: 'untagged', word, status: statusOf(word), textStart: next };
  }
  let i = 0;
  while (i < end && line[i] !== SP) i++;
  if (i === 0 || i >= end) return UNPARSABLE;
  const tag = line.toString('latin1', 0, i);
  const { word, next } = wordAt(line, i + 1, end);
  const status = word === 'OK' || word === 'NO' || word === 'BAD' ? word : null;
  return { kind: 'tagged', tag, status, textStart: next };
}

/**
 * A server line announces a literal unless it is the first line of a
 * response whose remainder is human-readable text: continuation requests and
 * status responses (OK/NO/BAD/PREAUTH/BYE, tagged or not) end in `resp-text`,
 * which may legitimately end in `{5}` without any literal following.
 */
export const serverLiteralRule: LiteralRule = (line, first) => {
  const announced = literalAnnouncement(line);
  if (announced === null || !first) return announced;
  const response = classifyResponse(line);
  if (response.kind === 'continuation') return null;
  if ((response.kind === 'untagged' || response.kind === 'tagged') && response.status !== null) return null;
  return announced;
};

/** Where, inside a line, the space-separated capability atoms are. */
export interface CapabilitySpan {
  readonly start: number;
  readonly end: number;
}

const CAPABILITY = 'CAPABILITY';

/**
 * Finds the capability list in `* CAPABILITY ...` or in a `[CAPABILITY ...]`
 * response code of a status response. Null when the line carries none.
 */
export function findCapabilities(line: Buffer, response: Response): CapabilitySpan | null {
  const end = contentEnd(line);
  if (response.kind === 'untagged' && response.word === CAPABILITY) {
    return { start: response.textStart, end };
  }
  if ((response.kind === 'untagged' || response.kind === 'tagged') && response.status !== null) {
    const open = response.textStart;
    const codeStart = open + 1;
    if (line[open] !== OPEN_BRACKET || end - codeStart < CAPABILITY.length + 1) return null;
    const code = line.toString('latin1', codeStart, codeStart + CAPABILITY.length).toUpperCase();
    if (code !== CAPABILITY || line[codeStart + CAPABILITY.length] !== SP) return null;
    const start = codeStart + CAPABILITY.length + 1;
    const close = line.indexOf(CLOSE_BRACKET, start);
    if (close === -1 || close > end) return null;
    return { start, end: close };
  }
  return null;
}

/** The atoms of a capability list, as sent. */
export function capabilityAtoms(line: Buffer, span: CapabilitySpan): string[] {
  return line
    .toString('latin1', span.start, span.end)
    .split(' ')
    .filter((atom) => atom.length > 0);
}

/** The same line with the capability list replaced. */
export function replaceCapabilities(line: Buffer, span: CapabilitySpan, atoms: readonly string[]): Buffer {
  return Buffer.concat([
    line.subarray(0, span.start),
    Buffer.from(atoms.join(' '), 'latin1'),
    line.subarray(span.end),
  ]);
}
