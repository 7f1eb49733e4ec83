/**
 * Bytes waiting to be written to one socket during one event-loop turn.
 *
 * Adjacent views of the same input buffer are merged back into one view, so
 * a chunk that passes through unchanged (the common case: literal data,
 * FETCH responses) is written as a single buffer, without copying. Several
 * buffers are written under cork() so they leave in as few packets as
 * possible.
 */

import type { Socket } from 'node:net';

export class Outbox {
  private buffers: Buffer[] = [];

  get isEmpty(): boolean {
    return this.buffers.length === 0;
  }

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

  /** Writes everything queued to `socket` (if it is still writable) and empties the box. */
  flushTo(socket: Socket): void {
    const buffers = this.buffers;
    if (buffers.length === 0) return;
    this.buffers = [];
    if (socket.destroyed || socket.writableEnded) return;
    if (buffers.length === 1) {
      socket.write(buffers[0] as Buffer);
      return;
    }
    socket.cork();
    for (const buffer of buffers) socket.write(buffer);
    socket.uncork();
  }
}
