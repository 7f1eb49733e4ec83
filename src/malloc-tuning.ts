/**
 * Keeps glibc from handing freed heap back to the kernel after every burst
 * of reads.
 *
 * Why: Node reads every socket chunk into a freshly malloc'd 64 KiB buffer
 * and frees it at the next garbage collection. glibc returns the top of the
 * heap to the kernel once more than M_TRIM_THRESHOLD (128 KiB) is free
 * there, so a bulk transfer page-faults every buffer in again: measured on
 * APPEND through the proxy, twice the system time of a plain relay. (The
 * upstream direction avoids this with reused buffers, read-buffers.ts; the
 * client direction cannot, net.Server has no `onread`.)
 *
 * How: glibc's documented dynamic threshold (mallopt(3)): freeing a block
 * that was mmap'd because it was larger than M_MMAP_THRESHOLD raises that
 * threshold to the block's size and M_TRIM_THRESHOLD to twice it. One scrypt
 * run allocates and frees 16 MiB inside OpenSSL, synchronously, so the heap
 * keeps up to 32 MiB of free memory for reuse. Nothing happens on other C
 * libraries; MALLOC_TOP_PAD_ / MALLOC_TRIM_THRESHOLD_ in the environment
 * still take precedence (glibc stops adjusting once they are set).
 */

import { scryptSync } from 'node:crypto';

/** scrypt's working memory is 128 · r · N bytes: 16 MiB. */
const N = 16384;
const R = 8;

export function raiseMallocTrimThreshold(): void {
  scryptSync('jmapaccess-proxy', 'malloc-tuning', 16, { N, r: R, p: 1, maxmem: 64 * 1024 * 1024 });
}
