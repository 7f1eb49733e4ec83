/**
 * A non-Node client through the proxy: mbsync (isync 1.4) pulls alice's
 * INBOX from a real Cyrus 3.6 into a local Maildir, once through the proxy
 * and once directly, and the two Maildirs must hold the same messages byte
 * for byte. The mailbox is filled directly on Cyrus with pipelined
 * LITERAL+ APPENDs: 220 messages, mostly a few KB, some 100 KB - 1 MB,
 * three over 5 MB, several with raw UTF-8 (8-bit) headers or bodies.
 */

import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { ensureCyrusInstalled, startCyrus } from '../harness/cyrus.js';
import { ensureDebianPackage } from '../harness/packages.js';
import { proxyFor, rawClient, rawLogin, sha256, waitFor } from './helpers.js';

const MBSYNC = '/usr/bin/mbsync';
const KB = 1024;
const MB = 1024 * KB;

// ---------------------------------------------------------------------------
// the messages

/** Base64 lines (76 characters, CRLF) of about `size` bytes of random data. */
function base64Lines(size: number): string {
  const lineCount = Math.max(1, Math.ceil(size / 78));
  const raw = randomBytes(lineCount * 57).toString('base64');
  const lines: string[] = [];
  for (let i = 0; i < lineCount; i++) lines.push(raw.slice(i * 76, (i + 1) * 76));
  return lines.join('\r\n') + '\r\n';
}

const ASCII_WORDS = ['lorem', 'ipsum', 'dolor', 'sit', 'amet', 'consectetur', 'adipiscing', 'elit', 'sed', 'do', 'eiusmod'];
const UTF8_WORDS = ['Grüße', 'naïve', 'façade', 'Ærøskøbing', 'señor', 'Zoë', 'Straße', 'Привет', '日本語', 'κόσμε', '€uro', '✓'];

/** Text lines (CRLF, under 78 characters) of about `size` bytes. */
function textLines(size: number, words: readonly string[]): string {
  const out: string[] = [];
  let total = 0;
  let n = 0;
  while (total < size) {
    let line = '';
    while (Buffer.byteLength(line) < 60) line += `${words[n++ % words.length]} `;
    line = line.trimEnd();
    out.push(line);
    total += Buffer.byteLength(line) + 2;
  }
  return out.join('\r\n') + '\r\n';
}

interface Spec {
  size: number;
  /** raw UTF-8 in Subject and From */
  utf8Headers: boolean;
  /** raw UTF-8 body (Content-Transfer-Encoding: 8bit) */
  utf8Body: boolean;
}

function buildMessage(index: number, spec: Spec): Buffer {
  const id = `<mbsync-${index}-${randomBytes(6).toString('hex')}@jmapaccess-proxy.test>`;
  const from = spec.utf8Headers ? 'Zoë Ærøskøbing <zoe@example.test>' : 'Alice <alice@example.test>';
  const subject = spec.utf8Headers ? `Grüße aus Köln — naïve façade ✓ 日本語 #${index}` : `mbsync test message #${index}`;
  let head =
    `From: ${from}\r\n` +
    'To: Alice <alice@example.test>\r\n' +
    `Subject: ${subject}\r\n` +
    `Message-ID: ${id}\r\n` +
    `Date: Mon, 01 Jan 2024 ${String(index % 24).padStart(2, '0')}:00:00 +0000\r\n` +
    'MIME-Version: 1.0\r\n';
  let body: string;
  if (spec.size >= 64 * KB) {
    head += 'Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n';
    body = base64Lines(spec.size);
  } else if (spec.utf8Body) {
    head += 'Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n';
    body = textLines(spec.size, UTF8_WORDS);
  } else {
    head += 'Content-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\n';
    body = textLines(spec.size, ASCII_WORDS);
  }
  return Buffer.from(`${head}\r\n${body}`, 'utf8');
}

function buildMailbox(): Buffer[] {
  const specs: Spec[] = [];
  // 200 small ones (1-8 KB); every 10th with 8-bit headers, every 7th with an 8-bit body.
  for (let i = 0; i < 200; i++) {
    specs.push({ size: 1 * KB + ((i * 379) % (7 * KB)), utf8Headers: i % 10 === 3, utf8Body: i % 7 === 5 });
  }
  // 12 medium ones, 100 KB - 1 MB.
  for (let i = 0; i < 12; i++) {
    specs.push({ size: 100 * KB + Math.floor((i * (924 * KB)) / 11), utf8Headers: i % 4 === 1, utf8Body: false });
  }
  // 3 over 5 MB.
  for (const size of [5.2 * MB, 6 * MB, 7 * MB]) specs.push({ size: Math.floor(size), utf8Headers: size === 6 * MB, utf8Body: false });
  // Interleave the big ones with the small ones rather than putting them last.
  const order = specs.map((_, i) => i).sort((a, b) => ((a * 7919) % 215) - ((b * 7919) % 215));
  return order.map((i, index) => buildMessage(index, specs[i] as Spec));
}

// ---------------------------------------------------------------------------
// mbsync and Maildirs

interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}

function runMbsync(config: string): Promise<RunResult> {
  const start = Date.now();
  return new Promise((resolve, reject) => {
    execFile(MBSYNC, ['-c', config, '-a'], { maxBuffer: 16 * MB, timeout: 60_000 }, (err, stdout, stderr) => {
      if (err && typeof (err as NodeJS.ErrnoException).code === 'string') {
        reject(err);
        return;
      }
      const code = err ? ((err as { code?: number | null }).code ?? null) : 0;
      resolve({ code, stdout: String(stdout), stderr: String(stderr), ms: Date.now() - start });
    });
  });
}

/** An mbsync configuration pulling alice's INBOX from host:port into `maildir`. */
function mbsyncConfig(port: number, maildir: string, user: string, pass: string): string {
  return [
    'IMAPAccount cyrus',
    'Host 127.0.0.1',
    `Port ${port}`,
    `User ${user}`,
    `Pass ${pass}`,
    // Plain IMAP, no STARTTLS; LOGIN is the IMAP LOGIN command. mbsync only
    // warns that the password goes in the clear.
    'SSLType None',
    'AuthMechs LOGIN',
    '',
    'IMAPStore remote',
    'Account cyrus',
    '',
    'MaildirStore local',
    `Path ${maildir}/`,
    `Inbox ${maildir}/INBOX`,
    '',
    'Channel inbox',
    'Far :remote:INBOX',
    'Near :local:',
    'Sync Pull',
    'Create Near',
    // Keep the sync state inside the Maildir, not in ~/.mbsync.
    'SyncState *',
    '',
  ].join('\n');
}

/** Every message file of a Maildir folder (new/ and cur/), read. */
async function readMaildir(folder: string): Promise<Array<{ name: string; data: Buffer }>> {
  const out: Array<{ name: string; data: Buffer }> = [];
  for (const sub of ['new', 'cur']) {
    for (const name of (await readdir(join(folder, sub))).sort()) {
      out.push({ name: `${sub}/${name}`, data: await readFile(join(folder, sub, name)) });
    }
  }
  return out;
}

/** The Message-ID header of a message (CRLF or LF line endings). */
function messageId(data: Buffer): string | undefined {
  const headerEnd = data.indexOf('\n\n') === -1 ? data.length : data.indexOf('\n\n');
  const crlfEnd = data.indexOf('\r\n\r\n');
  const end = crlfEnd !== -1 && crlfEnd < headerEnd ? crlfEnd : headerEnd;
  return /^Message-ID:\s*(<[^>\r\n]+>)/im.exec(data.toString('latin1', 0, end))?.[1];
}

/**
 * mbsync (1.4) writes every message it stores in a Maildir with LF line
 * endings and adds one header of its own as the last header line,
 * `X-TUID: <12 random characters>` (its transaction id, used to find the
 * message again after an interrupted run). Different in every run by
 * design, so it is taken out before comparing; `tuid` is null if the
 * message did not have exactly that line there.
 */
const TUID_LINE = /\nX-TUID: [A-Za-z0-9+/]{12}\n$/;

function withoutTuid(data: Buffer): { body: Buffer; tuid: string | null } {
  const headerEnd = data.indexOf('\n\n');
  if (headerEnd === -1) return { body: data, tuid: null };
  const header = data.toString('latin1', 0, headerEnd + 1);
  const match = TUID_LINE.exec(header);
  if (!match || header.split('\nX-TUID:').length !== 2) return { body: data, tuid: null };
  const start = match.index + 1;
  return {
    body: Buffer.concat([data.subarray(0, start), data.subarray(headerEnd + 1)]),
    tuid: data.toString('latin1', start, headerEnd),
  };
}

/** Stored messages by Message-ID, without mbsync's X-TUID line; `noTuid` lists the files that lacked it. */
function byMessageId(files: Array<{ name: string; data: Buffer }>): { map: Map<string, Buffer>; noTuid: string[] } {
  const map = new Map<string, Buffer>();
  const noTuid: string[] = [];
  for (const f of files) {
    const { body, tuid } = withoutTuid(f.data);
    if (tuid === null) noTuid.push(f.name);
    const id = messageId(body);
    if (id !== undefined) map.set(id, body);
  }
  return { map, noTuid };
}

/** Where two buffers first differ, with a little context, for failure messages. */
function firstDifference(a: Buffer, b: Buffer): string {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  const show = (x: Buffer) => JSON.stringify(x.toString('latin1', Math.max(0, i - 40), i + 40));
  return `lengths ${a.length} vs ${b.length}, first difference at byte ${i}: ${show(a)} vs ${show(b)}`;
}

// ---------------------------------------------------------------------------

await ensureDebianPackage(MBSYNC, 'isync');
await ensureCyrusInstalled();
// By default Cyrus replaces 8-bit bytes in headers with 'X' when it stores
// a message (APPEND included, not only lmtpd); keep them, so that the raw
// UTF-8 headers really travel through the proxy.
const cyrus = await startCyrus({ extraConfig: { munge8bit: 'no' } });
t.teardown(() => cyrus.stop());
const work = await mkdtemp(join(tmpdir(), 'mbsync-test-'));
t.teardown(() => rm(work, { recursive: true, force: true }));

t.test('mbsync through the proxy fetches exactly what it fetches directly from Cyrus', async (t) => {
  const messages = buildMailbox();
  const total = messages.reduce((n, m) => n + m.length, 0);
  t.comment(`${messages.length} messages, ${(total / MB).toFixed(1)} MB`);
  t.ok(messages.length >= 200, 'at least 200 messages');
  t.ok(messages.filter((m) => m.length > 5 * MB).length >= 3, 'at least three over 5 MB');
  t.ok(messages.filter((m) => m.length >= 100 * KB && m.length <= MB).length >= 10, 'some between 100 KB and 1 MB');
  t.ok(messages.filter((m) => m.some((b) => b >= 0x80)).length >= 20, 'several with 8-bit bytes');

  // Fill alice's INBOX directly on Cyrus: every APPEND pipelined, LITERAL+.
  let started = Date.now();
  const { client } = await rawClient(t, cyrus.port);
  t.match(await rawLogin(client, 'alice', 'alicepw'), /^a OK /m, 'logged in to Cyrus');
  messages.forEach((m, i) => {
    client.send(`p${i} APPEND INBOX {${m.length}+}\r\n`);
    client.send(m);
    client.send('\r\n');
  });
  const appended = await client.response(`p${messages.length - 1}`, 60_000);
  const failed = appended.split('\r\n').filter((l) => /^p\d+ (NO|BAD)/.test(l));
  t.same(failed, [], 'Cyrus accepted every APPEND');
  t.equal(appended.split('\r\n').filter((l) => /^p\d+ OK/.test(l)).length, messages.length, 'one OK per APPEND');
  client.send('z LOGOUT\r\n');
  t.comment(`APPEND: ${Date.now() - started} ms`);

  // Sync through the proxy and directly, one after the other. mbsync turns
  // on COMPRESS=DEFLATE in both runs: directly, Cyrus's; through the proxy,
  // the proxy's own (the upstream link stays uncompressed).
  const proxy = await proxyFor(t, cyrus.port, { compress: true });
  const viaProxyDir = join(work, 'via-proxy');
  const directDir = join(work, 'direct');
  // mbsync creates the INBOX folder (Create Near) but not the store's Path.
  await mkdir(viaProxyDir);
  await mkdir(directDir);
  await writeFile(join(work, 'via-proxy.conf'), mbsyncConfig(proxy.port, viaProxyDir, 'alice', 'alicepw'));
  await writeFile(join(work, 'direct.conf'), mbsyncConfig(cyrus.port, directDir, 'alice', 'alicepw'));

  const viaProxy = await runMbsync(join(work, 'via-proxy.conf'));
  t.equal(viaProxy.code, 0, `mbsync through the proxy exits 0 (${viaProxy.ms} ms)`, { stderr: viaProxy.stderr, stdout: viaProxy.stdout });
  const direct = await runMbsync(join(work, 'direct.conf'));
  t.equal(direct.code, 0, `mbsync directly exits 0 (${direct.ms} ms)`, { stderr: direct.stderr, stdout: direct.stdout });
  t.comment(`mbsync via the proxy: ${viaProxy.ms} ms, directly: ${direct.ms} ms`);
  t.ok(proxy.logs().some((l) => l.msg === 'COMPRESS=DEFLATE active'), 'mbsync compressed its link to the proxy');
  for (const [what, r] of [['via proxy', viaProxy], ['direct', direct]] as const) {
    if (r.stderr.trim() !== '') t.comment(`mbsync ${what} stderr: ${r.stderr.trim()}`);
  }

  t.match(
    proxy.logs().find((l) => l.msg === 'login succeeded'),
    { user: 'alice', mechanism: 'LOGIN', result: 'OK' },
    'the proxy logged a successful login for alice',
  );
  await waitFor(() => proxy.logs().some((l) => l.msg === 'connection closed'), 'the proxy to log the closed connection');
  const closed = proxy.logs().find((l) => l.msg === 'connection closed');
  t.match(closed, { user: 'alice' }, 'the proxy logged the end of the session');
  // Compressed on the wire: fewer bytes than the mailbox holds (the Maildir comparison below checks every byte).
  const wire = Number(closed?.bytesToClient);
  t.ok(wire > 0 && wire < total, `the messages went through the proxy compressed (${wire} bytes on the wire for ${total})`);

  // Compare the two Maildirs message for message.
  started = Date.now();
  const viaProxyFiles = await readMaildir(join(viaProxyDir, 'INBOX'));
  const directFiles = await readMaildir(join(directDir, 'INBOX'));
  t.equal(directFiles.length, messages.length, 'the direct sync stored every message');
  t.equal(viaProxyFiles.length, directFiles.length, 'the sync through the proxy stored as many messages');

  const { map: viaProxyById, noTuid: viaProxyNoTuid } = byMessageId(viaProxyFiles);
  const { map: directById, noTuid: directNoTuid } = byMessageId(directFiles);
  t.same(directNoTuid, [], 'mbsync added its X-TUID line to every message (direct)');
  t.same(viaProxyNoTuid, [], 'and to every message (via proxy)');
  t.equal(directById.size, messages.length, 'every stored message (direct) has its own Message-ID');
  t.equal(viaProxyById.size, messages.length, 'every stored message (via proxy) has its own Message-ID');

  const differing: string[] = [];
  const missing: string[] = [];
  for (const [id, expected] of directById) {
    const got = viaProxyById.get(id);
    if (got === undefined) missing.push(id);
    else if (!got.equals(expected)) differing.push(`${id}: ${firstDifference(got, expected)}`);
  }
  t.same(missing, [], 'no message missing from the sync through the proxy');
  t.same(differing, [], 'every message synced through the proxy is byte-identical to the directly synced one (bar X-TUID)');
  t.same(
    [...viaProxyById.values()].map(sha256).sort(),
    [...directById.values()].map(sha256).sort(),
    'the two Maildirs hold the same multiset of message contents',
  );

  // And the originals arrived: bar mbsync's LF line endings and X-TUID
  // line, each stored message is the appended message.
  const notOriginal: string[] = [];
  for (const m of messages) {
    const id = messageId(m) ?? '';
    const stored = directById.get(id);
    const expected = Buffer.from(m.toString('latin1').replace(/\r\n/g, '\n'), 'latin1');
    if (stored === undefined) notOriginal.push(`${id}: not stored`);
    else if (!stored.equals(expected)) notOriginal.push(`${id}: ${firstDifference(stored, expected)}`);
  }
  t.same(notOriginal, [], 'every appended message is stored as appended (bar CRLF -> LF and X-TUID)');
  t.comment(`compare: ${Date.now() - started} ms`);
});
