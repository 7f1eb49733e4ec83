/**
 * A streaming IMAP framer: splits one direction of a connection into lines
 * and literals, at any chunk boundary, without copying literal bytes.
 *
 * Both directions share the same lexical shape: a message (a command, or a
 * response) is a line that may end in a literal announcement, followed by the
 * literal's raw bytes and another line, and so on until a line announces no
 * literal. What differs per direction is which lines may announce a literal
 * at all; that is the `announcesLiteral` strategy (see client.ts, server.ts).
 *
 * The framer knows nothing about sockets. Its handler receives:
 *  - `line(line, literal, first)`: one complete line, terminator included.
 *    `first` is true when the line starts a new message. Lines that fit in
 *    one input chunk are zero-copy views into that chunk.
 *  - `literal(chunk)`: literal bytes as they arrive (views into the input).
 *  - `literalEnd()`: the announced literal is complete.
 *  - `error(kind)`: over-long line or impossible literal; the framer stops.
 *
 * The handler can call `pause()` to stop after the current event (the rest
 * of the input is kept), `deferLine()` from inside `line` to hand the same
 * line back on `resume()`, and `cancelLiteral()` when the peer refused a
 * synchronizing literal (so its bytes will never come).
 */

import { INVALID_LITERAL, type LiteralAnnouncement } from './literal.js';

export type FramerError = 'line-too-long' | 'invalid-literal';

export interface FrameHandler {
  line(line: Buffer, literal: LiteralAnnouncement | null, first: boolean): void;
  literal(chunk: Buffer): void;
  literalEnd(): void;
  error(kind: FramerError): void;
}

/** Decides whether a complete line announces a literal. */
export type LiteralRule = (
  line: Buffer,
  first: boolean,
) => LiteralAnnouncement | null | typeof INVALID_LITERAL;

const LF = 0x0a;

export class Framer {
  private readonly handler: FrameHandler;
  private readonly rule: LiteralRule;
  private readonly maxLineLength: number;

  /** Pieces of a line that has not seen its LF yet. */
  private partial: Buffer[] = [];
  private partialLength = 0;
  /** Literal bytes still to come; 0 outside a literal. */
  private literalRemaining = 0;
  /** True when the framer waits for a literal that was announced, none of whose bytes came yet. */
  private literalUntouched = false;
  /** True when the next line starts a new message. */
  private nextIsFirst = true;

  private paused = false;
  private deferRequested = false;
  private discarding = false;
  private processing = false;
  private dead = false;
  /** Input received or left over while paused. */
  private pending: Buffer | null = null;

  constructor(handler: FrameHandler, rule: LiteralRule, maxLineLength: number) {
    this.handler = handler;
    this.rule = rule;
    this.maxLineLength = maxLineLength;
  }

  /** True between messages: nothing of a message has been passed on yet. */
  get atMessageBoundary(): boolean {
    return this.nextIsFirst && this.literalRemaining === 0;
  }

  /** True while inside a literal whose bytes have not started arriving. */
  get awaitingLiteral(): boolean {
    return this.literalRemaining > 0 && this.literalUntouched;
  }

  get isPaused(): boolean {
    return this.paused;
  }

  /** Bytes received but not yet framed because the framer is paused. */
  get pendingBytes(): number {
    return (this.pending?.length ?? 0) + this.partialLength;
  }

  push(chunk: Buffer): void {
    // Input arriving while discarding is dropped too: it was sent before the link changed.
    if (this.dead || chunk.length === 0 || this.discarding) return;
    if (this.paused || this.processing) {
      this.pending = this.pending ? Buffer.concat([this.pending, chunk]) : chunk;
      return;
    }
    this.process(chunk);
  }

  pause(): void {
    this.paused = true;
  }

  /**
   * Drops every byte received after the current event, and pauses. Used when
   * the link changes under the framer (STARTTLS): what came before the
   * change must not be read as if it came after.
   */
  discardBuffered(): void {
    this.discarding = true;
    this.paused = true;
    this.pending = null;
    this.partial = [];
    this.partialLength = 0;
  }

  /**
   * Takes the input received but not framed yet, while paused: the link
   * changed under it (COMPRESS), and those bytes must be decoded first.
   */
  takePending(): Buffer | null {
    const pending = this.pending;
    this.pending = null;
    return pending;
  }

  /** From inside `line()`: do not consume this line; pause and replay it on resume(). */
  deferLine(): void {
    this.deferRequested = true;
    this.paused = true;
  }

  resume(): void {
    if (!this.paused || this.dead) return;
    this.paused = false;
    this.discarding = false;
    if (this.processing) return; // the running loop picks the pending input up
    this.drainPending();
  }

  /**
   * The synchronizing literal the framer waits for will never come: the
   * server refused the command, so the client sends a new command instead.
   */
  cancelLiteral(): void {
    if (!this.awaitingLiteral) return;
    this.literalRemaining = 0;
    this.literalUntouched = false;
    this.nextIsFirst = true;
  }

  /** Stops framing for good (the connection is going away). */
  stop(): void {
    this.dead = true;
    this.pending = null;
    this.partial = [];
    this.partialLength = 0;
  }

  private drainPending(): void {
    while (!this.paused && !this.dead && this.pending) {
      const chunk = this.pending;
      this.pending = null;
      this.process(chunk);
    }
  }

  private process(chunk: Buffer): void {
    this.processing = true;
    try {
      this.processChunk(chunk);
    } finally {
      this.processing = false;
    }
    if (!this.paused && this.pending) this.drainPending();
  }

  private processChunk(chunk: Buffer): void {
    const handler = this.handler;
    let pos = 0;
    const length = chunk.length;
    while (pos < length) {
      if (this.dead) return;
      if (this.paused) {
        this.keep(chunk.subarray(pos));
        return;
      }
      if (this.literalRemaining > 0) {
        const take = Math.min(this.literalRemaining, length - pos);
        this.literalRemaining -= take;
        this.literalUntouched = false;
        handler.literal(pos === 0 && take === length ? chunk : chunk.subarray(pos, pos + take));
        pos += take;
        if (this.literalRemaining === 0) handler.literalEnd();
        continue;
      }
      const lf = chunk.indexOf(LF, pos);
      if (lf === -1) {
        const rest = length - pos;
        if (this.partialLength + rest > this.maxLineLength) return this.fail('line-too-long');
        this.partial.push(chunk.subarray(pos));
        this.partialLength += rest;
        return;
      }
      const lineStart = pos;
      const pieceLength = lf + 1 - pos;
      if (this.partialLength + pieceLength > this.maxLineLength) return this.fail('line-too-long');
      let line: Buffer;
      if (this.partialLength > 0) {
        this.partial.push(chunk.subarray(pos, lf + 1));
        line = Buffer.concat(this.partial, this.partialLength + pieceLength);
        this.partial = [];
        this.partialLength = 0;
      } else {
        line = chunk.subarray(pos, lf + 1);
      }
      pos = lf + 1;
      const first = this.nextIsFirst;
      const announced = this.rule(line, first);
      if (announced === INVALID_LITERAL) return this.fail('invalid-literal');
      if (announced) {
        this.nextIsFirst = false;
        this.literalRemaining = announced.size;
        this.literalUntouched = announced.size > 0;
      } else {
        this.nextIsFirst = true;
      }
      handler.line(line, announced, first);
      if (this.deferRequested) {
        // Undo this line: it is replayed, whole, when the framer resumes.
        this.deferRequested = false;
        this.nextIsFirst = first;
        this.literalRemaining = 0;
        this.literalUntouched = false;
        const replay =
          line.buffer === chunk.buffer && line.byteOffset === chunk.byteOffset + lineStart
            ? chunk.subarray(lineStart)
            : Buffer.concat([line, chunk.subarray(pos)]);
        this.keep(replay);
        return;
      }
      if (announced && announced.size === 0) handler.literalEnd();
    }
  }

  /** Keeps unprocessed input ahead of anything already pending. */
  private keep(rest: Buffer): void {
    if (this.discarding) return;
    if (rest.length === 0) return;
    this.pending = this.pending ? Buffer.concat([rest, this.pending]) : rest;
  }

  private fail(kind: FramerError): void {
    this.stop();
    this.handler.error(kind);
  }
}
