/**
 * Generated mail for the benchmark, written straight into a Dovecot Maildir
 * as Maildir++ folders (`.name/{cur,new,tmp}`): every message exactly `size`
 * bytes, CRLF line endings, already seen (`:2,S`), with S= and W= in the file
 * name so Dovecot needs not read a file to learn its size.
 */

import { randomBytes } from 'node:crypto';
import { chown, mkdir, writeFile } from 'node:fs/promises';
import os from 'node:os';

export interface Owner {
  uid: number;
  gid: number;
}

const LINE = 76; // characters of body text per line, before CRLF

/** One message of exactly `size` bytes; the body is random base64 text in 78-byte lines. */
export function makeMessage(size: number, label: string, index: number): Buffer {
  const header =
    `From: Bench Sender <sender@example.test>\r\n` +
    `To: Alice <alice@example.test>\r\n` +
    `Subject: bench ${label} message ${index}\r\n` +
    `Date: Wed, 26 Nov 2025 08:00:00 +0000\r\n` +
    `Message-ID: <${label}-${index}-${randomBytes(6).toString('hex')}@bench.example.test>\r\n` +
    `MIME-Version: 1.0\r\n` +
    `Content-Type: text/plain; charset=us-ascii\r\n` +
    `\r\n`;
  const out = Buffer.allocUnsafe(size);
  let pos = out.write(header, 0, 'latin1');
  if (pos + 2 > size) throw new Error(`message size ${size} is smaller than its header`);
  // Enough random text for every line (base64 of 3/4 as many random bytes).
  const text = Buffer.from(randomBytes(Math.ceil(((size - pos) * 3) / 4) + 3).toString('base64'), 'latin1');
  let t = 0;
  while (pos < size) {
    const remaining = size - pos;
    // A line is at least CRLF; never leave exactly 1 byte for the last line.
    let lineLength = remaining <= LINE + 2 ? remaining : LINE + 2;
    if (remaining - lineLength === 1) lineLength--;
    const chars = lineLength - 2;
    text.copy(out, pos, t, t + chars);
    t += chars;
    pos += chars;
    out[pos++] = 0x0d;
    out[pos++] = 0x0a;
  }
  return out;
}

/**
 * Creates Maildir++ folder `.name` under `maildir` holding `count` messages
 * of `size` bytes in cur/ (flag S). Returns the total bytes written.
 */
export async function writeMailbox(
  maildir: string,
  name: string,
  count: number,
  size: number,
  owner: Owner | null,
): Promise<number> {
  const folder = `${maildir}/.${name}`;
  for (const sub of ['cur', 'new', 'tmp']) await mkdir(`${folder}/${sub}`, { recursive: true });
  await writeFile(`${folder}/maildirfolder`, '');
  const host = os.hostname().replace(/[/:]/g, '_');
  const now = Math.floor(Date.now() / 1000);
  let total = 0;
  // A few files at a time: the disk is the limit, not the event loop.
  const batch = 8;
  for (let i = 0; i < count; i += batch) {
    const jobs: Promise<void>[] = [];
    for (let j = i; j < Math.min(count, i + batch); j++) {
      const msg = makeMessage(size, name, j + 1);
      total += msg.length;
      const file = `${folder}/cur/${now}.M${j + 1}P${process.pid}.${host},S=${size},W=${size}:2,S`;
      jobs.push(
        writeFile(file, msg).then(async () => {
          if (owner) await chown(file, owner.uid, owner.gid);
        }),
      );
    }
    await Promise.all(jobs);
  }
  if (owner) {
    for (const p of [folder, `${folder}/cur`, `${folder}/new`, `${folder}/tmp`, `${folder}/maildirfolder`]) {
      await chown(p, owner.uid, owner.gid);
    }
  }
  return total;
}
