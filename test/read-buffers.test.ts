import t from 'tap';
import net from 'node:net';
import crypto from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { BULK_READ_THRESHOLD, pooledBuffers, pooledOnRead } from '../src/read-buffers.js';

/** A loopback server that sends `payload` in `pieces` writes, with pauses so reads come in all sizes. */
async function sender(payload: Buffer, pieces: number[]): Promise<{ port: number; close: () => void }> {
  const server = net.createServer(async (socket) => {
    let at = 0;
    for (const size of pieces) {
      socket.write(payload.subarray(at, at + size));
      at += size;
      if (size < 1000) await new Promise((r) => setTimeout(r, 1));
    }
    socket.end(payload.subarray(at));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { port: (server.address() as AddressInfo).port, close: () => server.close() };
}

interface Kept {
  view: Buffer;
  copy: Buffer;
}

/**
 * Reads `payload` through pooledOnRead while keeping some views alive for a
 * few reads (as a session does with bytes queued for a slow client), and
 * checks no kept view was overwritten by a later read.
 */
async function readThrough(payload: Buffer, pieces: number[], keepEvery: number) {
  const { port, close } = await sender(payload, pieces);
  const received: Buffer[] = [];
  let kept: Kept[] = [];
  const corrupted: number[] = [];
  const buffersSeen = new Set<ArrayBufferLike>();
  let reads = 0;
  const release = () => {
    for (const k of kept) if (!k.view.equals(k.copy)) corrupted.push(reads);
    kept = [];
  };
  await new Promise<void>((resolve, reject) => {
    const socket = net.connect({
      host: '127.0.0.1',
      port,
      onread: pooledOnRead({
        data(chunk) {
          reads++;
          buffersSeen.add(chunk.buffer);
          received.push(Buffer.from(chunk));
          if (reads % keepEvery === 0) kept.push({ view: chunk, copy: Buffer.from(chunk) });
          // Hold kept views across the next two reads, then check them.
          else if (reads % keepEvery === 2) release();
        },
        retained: () => kept.length > 0,
      }),
    });
    socket.on('end', () => {
      release();
      socket.destroy();
      resolve();
    });
    socket.on('error', reject);
  });
  close();
  return { received: Buffer.concat(received), corrupted, reads, buffers: buffersSeen.size };
}

t.test('bulk data arrives whole through reused buffers, and kept bytes are never overwritten', async (t) => {
  const payload = crypto.randomBytes(8 * 1024 * 1024);
  const pieces = [10, 200, 70_000, 5, 300_000, 1_000_000, 17, 2_000_000];
  const result = await readThrough(payload, pieces, 5);
  t.ok(result.received.equals(payload), 'every byte arrived, in order');
  t.same(result.corrupted, [], 'no view kept by the reader was overwritten');
  t.ok(result.reads > 50, `many reads (${result.reads})`);
  // Reused, not allocated per read: far fewer distinct buffers than reads.
  t.ok(result.buffers < result.reads / 4, `${result.buffers} buffers for ${result.reads} reads`);
  t.ok(pooledBuffers() > 0, 'private buffers went back to the pool');
});

t.test('bytes read into the shared buffer are copies: keeping every chunk loses nothing', async (t) => {
  // Small writes with pauses: reads stay under the bulk threshold and land in the shared buffer.
  const pieces = Array.from({ length: 200 }, (_, i) => 1 + ((i * 37) % 900));
  const total = pieces.reduce((a, b) => a + b, 0) + 100;
  const payload = crypto.randomBytes(total);
  const result = await readThrough(payload, pieces, 1);
  t.ok(result.received.equals(payload));
  t.same(result.corrupted, []);
  t.ok(BULK_READ_THRESHOLD > 900);
});

t.test('a reader that keeps everything never gets a buffer back while it holds it', async (t) => {
  const payload = crypto.randomBytes(4 * 1024 * 1024);
  const { port, close } = await sender(payload, [4 * 1024 * 1024]);
  const views: Array<{ view: Buffer; copy: Buffer }> = [];
  await new Promise<void>((resolve, reject) => {
    const socket = net.connect({
      host: '127.0.0.1',
      port,
      onread: pooledOnRead({
        data: (chunk) => views.push({ view: chunk, copy: Buffer.from(chunk) }),
        retained: () => true,
      }),
    });
    socket.on('end', () => {
      socket.destroy();
      resolve();
    });
    socket.on('error', reject);
  });
  close();
  t.ok(Buffer.concat(views.map((v) => v.view)).equals(payload), 'every kept view still holds its bytes');
  t.equal(views.filter((v) => !v.view.equals(v.copy)).length, 0);
});
