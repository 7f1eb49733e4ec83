/**
 * Loaded into the concurrency workload's proxy with `node --expose-gc
 * --import .../gc-on-signal.js dist/cli.js ...` (bench instrumentation, not
 * part of the proxy): on SIGUSR2 it runs a full garbage collection and then
 * writes a marker line to stderr, so the benchmark can read the proxy's RSS
 * without the garbage a ramp of thousands of connections left behind (V8
 * collects it whenever it likes; a young generation alone can hold 16 MiB,
 * more than 300 IDLE sessions' worth at the target).
 */

// bench/run.ts waits for this line (it does not import this file: that would install the handler there too)
const GC_DONE_MARKER = 'bench-gc-done';

const gc = (globalThis as { gc?: () => void }).gc;
process.on('SIGUSR2', () => {
  if (gc) gc();
  process.stderr.write(`${GC_DONE_MARKER} ${gc ? 'full' : 'unavailable'}\n`);
});
