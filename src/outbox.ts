/**
 * Bytes waiting to be written to one socket during one event-loop turn.
 *
 * Adjacent views of the same input buffer are merged back into one view, so
 * a chunk that passes through unchanged (the common case: literal data,
 * FETCH responses) is written as a single buffer, without copying. Several
 * buffers are written under cork() so they leave in as few packets as
 * possible.
 */

import type { Writable } from 'node:stream';

export class Outbox {
  private buffers: Buffer[] = [];

  push(buffer: Buffer): void {
    if (buffer.length === 0) return;
    const last = this.buffers.length - 1;
    const previous = this.buffers[last];
    if (
      previous !== undefined &&
      previous.buffer === buffer.buffer &&
      previous.byteOffset + previous.length === buffer.byteOffset
    ) {
      this.buffers[last] = Buffer.from(previous.buffer, previous.byteOffset, previous.length + buffer.length);
      return;
    }
    this.buffers.push(buffer);
  }

  /**
   * Writes everything queued to `target` (a socket, or the compressor in
   * front of one) if it is still writable, and empties the box. Returns
   * whether anything was written.
   */
  flushTo(target: Writable): boolean {
    const buffers = this.buffers;
    if (buffers.length === 0) return false;
    this.buffers = [];
    if (target.destroyed || target.writableEnded) return false;
    if (buffers.length === 1) {
      target.write(buffers[0] as Buffer);
      return true;
    }
    target.cork();
    for (const buffer of buffers) target.write(buffer);
    target.uncork();
    return true;
  }
}
