/**
 * The workloads. Each one connects to a target port with the raw client,
 * does its set-up untimed, and brackets exactly the measured part with
 * win.start() / win.stop() (run.ts samples wall time and CPU time there).
 */

import { createHash } from 'node:crypto';
import { ImapClient, ImapError } from './imap.js';

export interface Window {
  start(): void;
  stop(): void;
}

export interface Ctx {
  port: number;
  win: Window;
  /** Every client a workload opens is registered here, so a timeout can drop them all. */
  clients: Set<ImapClient>;
  user: string;
  password: string;
}

export type DigestKind = 'first' | 'all' | 'none';

export interface Outcome {
  metrics: Record<string, number>;
  /** sha256 of all literal bytes received (FETCH), to compare between targets */
  digest?: string;
  bytes?: number;
  /** anything worth keeping in the JSON beyond the numbers (time series, raw readings) */
  detail?: Record<string, unknown>;
  /** the workload finished and measured, but what it checked failed (the run counts as failed, its metrics are kept) */
  failure?: string;
}

async function open(ctx: Ctx): Promise<ImapClient> {
  const c = await ImapClient.connect(ctx.port);
  ctx.clients.add(c);
  c.socket.once('close', () => ctx.clients.delete(c));
  return c;
}

async function session(ctx: Ctx): Promise<ImapClient> {
  const c = await open(ctx);
  await c.login(ctx.user, ctx.password);
  return c;
}

/**
 * `UID FETCH 1:* BODY.PEEK[]` of a whole mailbox, `passes` times one after
 * the other on one connection (the timed part), every pass checked for its
 * response count and literal byte count.
 *
 * digest 'first': before the timed passes, one untimed pass whose every
 * literal byte goes through sha256 (compared with direct's by run.ts);
 * 'all': the timed passes are hashed too (then sha256 costs the client
 * ~0.55 s of CPU per GB, inside the measurement); 'none': counts only.
 */
export async function fetchAll(
  ctx: Ctx,
  mailbox: string,
  passes: number,
  count: number,
  mailboxBytes: number,
  digest: DigestKind,
  wallOf: () => number,
): Promise<Outcome> {
  const c = await session(ctx);
  await c.command('S', `EXAMINE ${mailbox}`);
  const hash = digest === 'none' ? null : createHash('sha256');
  const check = (what: string) => {
    if (c.untaggedCount !== count || c.literalBytes !== mailboxBytes) {
      throw new ImapError(`${what} returned ${c.untaggedCount} responses / ${c.literalBytes} literal bytes, expected ${count} / ${mailboxBytes}`);
    }
    c.untaggedCount = 0;
    c.literalBytes = 0;
  };
  c.untaggedCount = 0;
  c.literalBytes = 0;
  if (hash && digest === 'first') {
    c.literalSink = (chunk) => hash.update(chunk);
    await c.command('V', 'UID FETCH 1:* BODY.PEEK[]');
    check('the verification FETCH');
    c.literalSink = null;
  }
  if (hash && digest === 'all') c.literalSink = (chunk) => hash.update(chunk);
  ctx.win.start();
  for (let i = 0; i < passes; i++) {
    await c.command(`F${i}`, 'UID FETCH 1:* BODY.PEEK[]');
    check(`FETCH pass ${i + 1}`);
  }
  ctx.win.stop();
  c.literalSink = null;
  await c.logout();
  const s = wallOf();
  const bytes = mailboxBytes * passes;
  return {
    metrics: { 'MB/s': bytes / 1e6 / s, 'msgs/s': (count * passes) / s },
    ...(hash ? { digest: hash.digest('hex') } : {}),
    bytes,
  };
}

/**
 * `count` APPENDs of `message`, one after the other, each waiting for its
 * tagged OK. sync: `{n}` then wait for `+` before the literal; nonsync:
 * `{n+}` with the literal in the same write.
 */
export async function appendMany(
  ctx: Ctx,
  mailbox: string,
  message: Buffer,
  count: number,
  mode: 'sync' | 'nonsync',
  wallOf: () => number,
): Promise<Outcome> {
  const c = await session(ctx);
  await c.command('C', `CREATE ${mailbox}`);
  const sock = c.socket;
  const crlf = Buffer.from('\r\n');
  const marker = mode === 'sync' ? `{${message.length}}` : `{${message.length}+}`;
  ctx.win.start();
  for (let i = 0; i < count; i++) {
    const tag = `A${i}`;
    const head = `${tag} APPEND ${mailbox} (\\Seen) ${marker}\r\n`;
    const done = c.expectTagged(tag);
    if (mode === 'sync') {
      const go = c.expectContinuation();
      sock.write(head, 'latin1');
      await Promise.race([go, done]);
      sock.cork();
      sock.write(message);
      sock.write(crlf);
      sock.uncork();
    } else {
      sock.cork();
      sock.write(head, 'latin1');
      sock.write(message);
      sock.write(crlf);
      sock.uncork();
    }
    await done;
  }
  ctx.win.stop();
  await c.command('D', `DELETE ${mailbox}`);
  await c.logout();
  const s = wallOf();
  return { metrics: { 'MB/s': (count * message.length) / 1e6 / s, 'msgs/s': count / s }, bytes: count * message.length };
}

function percentile(sorted: Float64Array, p: number): number {
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i] as number;
}

/** `count` sequential NOOPs on one logged-in connection; round-trip percentiles in µs. */
export async function noops(ctx: Ctx, count: number, wallOf: () => number): Promise<Outcome> {
  const c = await session(ctx);
  const tags: string[] = [];
  for (let i = 0; i < count; i++) tags.push(`N${i}`);
  const lat = new Float64Array(count);
  ctx.win.start();
  for (let i = 0; i < count; i++) {
    const t0 = process.hrtime.bigint();
    await c.command(tags[i] as string, 'NOOP');
    lat[i] = Number(process.hrtime.bigint() - t0) / 1000;
  }
  ctx.win.stop();
  await c.logout();
  lat.sort();
  let sum = 0;
  for (const v of lat) sum += v;
  return {
    metrics: {
      'p50 µs': percentile(lat, 50),
      'p99 µs': percentile(lat, 99),
      'mean µs': sum / count,
      'NOOP/s': count / wallOf(),
    },
  };
}

/** `total` connect + LOGIN + LOGOUT cycles by `workers` parallel workers. */
export async function loginChurn(ctx: Ctx, total: number, workers: number, wallOf: () => number): Promise<Outcome> {
  let next = 0;
  const worker = async () => {
    while (next < total) {
      next++;
      const c = await session(ctx);
      await c.logout();
    }
  };
  ctx.win.start();
  await Promise.all(Array.from({ length: workers }, worker));
  ctx.win.stop();
  return { metrics: { 'logins/s': total / wallOf() } };
}
