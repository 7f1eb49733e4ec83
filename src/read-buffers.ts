/**
 * Read buffers for upstream sockets, reused instead of allocated per read.
 *
 * Why: by default Node mallocs a fresh 64 KiB buffer for every read and frees
 * it at the next garbage collection. On a bulk FETCH that is thousands of
 * malloc/free pairs a second, and glibc hands the freed heap top back to the
 * kernel, so every read also page-faults its buffer in again: measured, this
 * cost more CPU than the copying itself (bench/README.md).
 *
 * How, using `net.connect({ onread })` (Node reads into a buffer we choose):
 * - Every upstream socket starts on one process-wide shared buffer. Bytes
 *   read into it are copied out before anyone sees them (small reads: the
 *   copy is cheap and comes from Node's pool), so an idle session holds no
 *   read buffer of its own.
 * - After a large read (bulk data is flowing) the socket gets a private
 *   buffer from a small pool, and what it reads is handed on in place,
 *   without copying: literal bytes go to the client as views of it.
 * - After each read the session says whether it still holds any of the bytes
 *   it was given (queued for writing, kept by the framer, held responses).
 *   If not, the buffer is reused for the next read; if so, it is lent out
 *   and only returned to the pool once the session holds nothing again.
 */

import type net from 'node:net';

/** Read size, as Node's own default. */
export const READ_BUFFER_SIZE = 64 * 1024;
/** A read larger than this moves the socket to a private buffer; smaller reads move it back. */
export const BULK_READ_THRESHOLD = 16 * 1024;
/** Free private buffers kept for reuse (2 MiB); more are left to the garbage collector. */
const POOL_LIMIT = 32;

const shared: Buffer = Buffer.allocUnsafeSlow(READ_BUFFER_SIZE);
const pool: Buffer[] = [];

function take(): Buffer {
  return pool.pop() ?? Buffer.allocUnsafeSlow(READ_BUFFER_SIZE);
}

function give(buffer: Buffer): void {
  if (pool.length < POOL_LIMIT) pool.push(buffer);
}

export interface ReadSink {
  /** Bytes read. Valid after the call only if `retained()` says so. */
  data(chunk: Buffer): void;
  /** Whether any bytes given to `data` are still referenced (queued, buffered, held). */
  retained(): boolean;
}

/** The `onread` option for `net.connect`, feeding `sink`. */
export function pooledOnRead(sink: ReadSink): net.OnReadOpts {
  let current: Buffer = shared;
  /** Private buffers whose bytes the sink still held when they were replaced. */
  let lent: Buffer[] = [];
  let lastRead = 0;
  return {
    // Called once when the socket is set up, then after every read.
    buffer: (): Buffer => {
      if (lastRead === 0) return shared;
      if (sink.retained()) {
        if (current !== shared) lent.push(current);
      } else {
        if (current !== shared) give(current);
        for (const buffer of lent) give(buffer);
        if (lent.length > 0) lent = [];
      }
      current = lastRead > BULK_READ_THRESHOLD ? take() : shared;
      return current;
    },
    callback: (bytes: number, buffer: Uint8Array): boolean => {
      lastRead = bytes;
      const view = buffer as Buffer;
      // Bytes in the shared buffer are overwritten by the next read of any socket.
      sink.data(view === shared ? Buffer.from(view.subarray(0, bytes)) : view.subarray(0, bytes));
      return true;
    },
  };
}

/** For tests: how many free private buffers the pool holds. */
export function pooledBuffers(): number {
  return pool.length;
}
