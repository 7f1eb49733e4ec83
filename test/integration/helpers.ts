/**
 * Shared helpers for the integration tests: a real upstream (Dovecot 2.3 or
 * Cyrus IMAP 3.6) behind the real proxy, driven by RawClient (bytes),
 * imapflow and Python's imaplib.
 *
 * Every resource a helper creates is released in a t.teardown of the test
 * that asked for it (tap runs teardowns last-in first-out, so clients close
 * before the proxy, and the proxy before the upstream).
 */

import { createHash, randomBytes } from 'node:crypto';
import net from 'node:net';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Test } from 'tap';
import { ImapFlow, type ImapFlowOptions } from 'imapflow';
import type { RawConfig } from '../../src/config.js';
import { ensureCyrusInstalled, startCyrus } from '../harness/cyrus.js';
import { ensureDovecotInstalled, startDovecot, type Dovecot, type DovecotOptions } from '../harness/dovecot.js';
import { startProxy, type RunningProxy } from '../harness/proxy.js';
import { RawClient } from '../harness/raw-client.js';

export { RawClient, type Dovecot, type RunningProxy };
export { IMAPLIB_CLIENT, runImaplib, type ImaplibResult } from '../harness/imaplib.js';

export const JMAP_URL = 'https://jmap.example.test/.well-known/jmap';
export const JMAP_URL_QUOTED = `"${JMAP_URL}"`;
/** What GETJMAPACCESS answers (before the tagged OK) when access is granted. */
export const JMAPACCESS_LINE = `* JMAPACCESS ${JMAP_URL_QUOTED}\r\n`;


export type ProxyOptions = Partial<RawConfig>;

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** A Dovecot for the whole test file (or one subtest), stopped in t.teardown. */
export async function dovecotFor(t: Test, options?: DovecotOptions): Promise<Dovecot> {
  await ensureDovecotInstalled();
  const dovecot = await startDovecot(options);
  t.teardown(() => dovecot.stop());
  return dovecot;
}

// ---------------------------------------------------------------------------
// Upstreams: the protocol tests run once per real server (see UPSTREAMS).

export type UpstreamKind = 'dovecot' | 'cyrus';

/** Every real server the protocol tests run against, in the order they run. */
export const UPSTREAMS: readonly UpstreamKind[] = ['dovecot', 'cyrus'];

/**
 * What the tests need to know about a server's own answers. Tests assert on
 * structure (tags, statuses, order, JMAPACCESS) and take whatever differs
 * between servers from here, never from the server's name.
 */
export interface UpstreamFacts {
  /**
   * The post-login capability list has OBJECTID, so under the default
   * --objectid require the proxy grants JMAPACCESS (Cyrus), or not, and
   * answers GETJMAPACCESS with BAD (Dovecot 2.3).
   */
  hasObjectId: boolean;
  /** The greeting's text after its `[CAPABILITY ...]` code. */
  greetingText: RegExp;
  /** The text of a successful LOGIN's tagged OK, after any response code. */
  loginOkText: RegExp;
  /** The text of the tagged NO to a LOGIN with a wrong password. */
  loginFailedText: RegExp;
  /**
   * How a LOGIN that follows a pre-login CAPABILITY command is answered.
   * true (Dovecot): the post-login list comes as an untagged
   * `* CAPABILITY` line and the tagged OK is bare (`a OK Logged in`);
   * false (Cyrus): as without the CAPABILITY, a tagged
   * `a OK [CAPABILITY ...]` and no untagged list.
   */
  untaggedListAfterCapability: boolean;
}

export const UPSTREAM_FACTS: Readonly<Record<UpstreamKind, UpstreamFacts>> = {
  dovecot: {
    hasObjectId: false,
    greetingText: /^Dovecot\b.* ready\.$/,
    loginOkText: /^Logged in$/,
    loginFailedText: /^\[AUTHENTICATIONFAILED\] /,
    untaggedListAfterCapability: true,
  },
  cyrus: {
    hasObjectId: true,
    greetingText: /\bCyrus IMAP .* server ready$/,
    loginOkText: /^User logged in SESSIONID=<[^>\s]+>$/,
    loginFailedText: /^Login failed: /,
    untaggedListAfterCapability: false,
  },
};

/** A running real IMAP server of either kind, with its facts. */
export interface Upstream extends UpstreamFacts {
  kind: UpstreamKind;
  host: string;
  port: number;
  /** user -> password */
  users: Record<string, string>;
  /** SIGKILL every process of the server (their connections drop); resolves once they are gone. */
  killAll(): Promise<void>;
  /** Stop the server cleanly (idempotent; also done in t.teardown). */
  stop(): Promise<void>;
  /** Everything the server logged so far (still available after stop()). */
  readLog(): Promise<string>;
}

export interface UpstreamOptions {
  /** user -> password; default { alice: 'alicepw', bob: 'bobpw' } */
  users?: Record<string, string>;
  /** Dovecot only: appended to dovecot.conf. */
  dovecotConfig?: string;
  /** Cyrus only: imapd.conf options. */
  cyrusConfig?: Record<string, string>;
}

/** A fresh server of the given kind for the test (or subtest), stopped in t.teardown. */
export async function upstreamFor(t: Test, kind: UpstreamKind, options: UpstreamOptions = {}): Promise<Upstream> {
  const { users, dovecotConfig, cyrusConfig } = options;
  let server: Omit<Upstream, keyof UpstreamFacts | 'kind'>;
  if (kind === 'dovecot') {
    server = await dovecotFor(t, { ...(users && { users }), ...(dovecotConfig !== undefined && { extraConfig: dovecotConfig }) });
  } else {
    await ensureCyrusInstalled();
    const cyrus = await startCyrus({ ...(users && { users }), ...(cyrusConfig && { extraConfig: cyrusConfig }) });
    t.teardown(() => cyrus.stop());
    server = cyrus;
  }
  return {
    ...UPSTREAM_FACTS[kind],
    kind,
    host: server.host,
    port: server.port,
    users: server.users,
    killAll: () => server.killAll(),
    stop: () => server.stop(),
    readLog: () => server.readLog(),
  };
}

/**
 * The proxy's whole answer to `tag GETJMAPACCESS` in the authenticated
 * state: `* JMAPACCESS <url>` and the tagged OK when the session was
 * granted JMAPACCESS, else the tagged BAD of --objectid require on a server
 * without OBJECTID.
 */
export function getJmapAccessAnswer(tag: string, granted: boolean): string {
  return granted
    ? `${JMAPACCESS_LINE}${tag} OK GETJMAPACCESS completed\r\n`
    : `${tag} BAD JMAP access is not available on this server\r\n`;
}

/** imapflow's exec() is internal API; this is the part of it the tests use. */
interface ExecCapable {
  exec(
    command: string,
    attributes: unknown,
    options?: { untagged?: Record<string, (untagged: { attributes?: Array<{ value?: unknown }> }) => Promise<void> | void> },
  ): Promise<{ response: { command: string }; next: () => void }>;
}

/**
 * GETJMAPACCESS through imapflow: the tagged status and every URL of the
 * `* JMAPACCESS` responses. imapflow rejects on NO/BAD; the status is then
 * taken from the rejection.
 */
export async function imapflowGetJmapAccess(client: ImapFlow): Promise<{ status: string; urls: unknown[] }> {
  const urls: unknown[] = [];
  try {
    const { response, next } = await (client as unknown as ExecCapable).exec('GETJMAPACCESS', false, {
      untagged: {
        JMAPACCESS: (untagged) => {
          urls.push(untagged.attributes?.[0]?.value);
        },
      },
    });
    next();
    return { status: response.command, urls };
  } catch (err) {
    const failed = err as { responseStatus?: string; response?: { command?: string }; message?: string };
    return { status: failed.responseStatus ?? failed.response?.command ?? `error: ${failed.message}`, urls };
  }
}

/** A status response line (`tag OK|NO|BAD|PREAUTH|BYE [code] text`, tag `*` for untagged) taken apart, or null. */
export function statusLine(line: string | undefined): { tag: string; status: string; code: string | null; text: string } | null {
  const m = /^(\S+) (OK|NO|BAD|PREAUTH|BYE)(?: \[([^\]]*)\])?(?: (.*))?$/i.exec(line ?? '');
  if (!m) return null;
  return { tag: m[1] as string, status: (m[2] as string).toUpperCase(), code: m[3] ?? null, text: m[4] ?? '' };
}

/** A proxy in front of the given upstream port, closed in t.teardown. */
export async function proxyFor(t: Test, upstreamPort: number, options: ProxyOptions = {}): Promise<RunningProxy> {
  // These tests are about framing and the RFC 9698 decision, and assert on
  // exact capability lists: the proxy's own COMPRESS=DEFLATE offer is off
  // unless a test turns it on (test/integration/compress.test.ts, mbsync).
  const proxy = await startProxy({ upstreamPort, compress: false, ...options });
  t.teardown(() => proxy.close());
  return proxy;
}

/**
 * Dovecot's imap-login says this (an untagged OK) before its greeting when
 * its auth process is slow to answer, as happens on a loaded machine.
 */
export const AUTH_WAIT_LINE = /^\* OK Waiting for authentication process to respond/;

/**
 * A RawClient connected to the port, with the greeting read (skipping
 * Dovecot's "Waiting for authentication process" notice); closed in t.teardown.
 */
export async function rawClient(t: Test, port: number): Promise<{ client: RawClient; greeting: string }> {
  const client = await RawClient.connect(port);
  t.teardown(() => client.close());
  let greeting = await client.readUntil('\n');
  while (AUTH_WAIT_LINE.test(greeting)) greeting = await client.readUntil('\n');
  return { client, greeting };
}

/**
 * An imapflow client, connected (and logged in) through `port`; logged out
 * (or closed, if logout fails) in t.teardown.
 */
export async function imapflowFor(
  t: Test,
  port: number,
  user: string,
  pass: string,
  extra: Partial<ImapFlowOptions> = {},
): Promise<ImapFlow> {
  const client = new ImapFlow({
    host: '127.0.0.1',
    port,
    secure: false,
    doSTARTTLS: false,
    auth: { user, pass },
    logger: false,
    disableAutoIdle: true,
    ...extra,
  });
  // A dropped connection must not become an unhandled 'error' event.
  client.on('error', () => {});
  t.teardown(async () => {
    if (client.usable) {
      await client.logout().catch(() => client.close());
    } else {
      client.close();
    }
  });
  await client.connect();
  return client;
}

/** Upper-cased capability lists found in a response text: `* CAPABILITY` lines and `[CAPABILITY ...]` codes. */
export function capabilityLists(text: string): string[][] {
  const lists: string[][] = [];
  for (const line of text.split('\r\n')) {
    const untagged = /^\* CAPABILITY (.*)$/i.exec(line);
    if (untagged?.[1] !== undefined) {
      lists.push(untagged[1].trim().toUpperCase().split(/\s+/));
      continue;
    }
    const code = /^\S+ (?:OK|NO|BAD|PREAUTH|BYE) \[CAPABILITY ([^\]]*)\]/i.exec(line);
    if (code?.[1] !== undefined) lists.push(code[1].trim().toUpperCase().split(/\s+/));
  }
  return lists;
}

export function countAtom(list: readonly string[], atom: string): number {
  return list.filter((a) => a === atom.toUpperCase()).length;
}

/** Lines of a response text (CRLF-split, without the empty tail). */
export function lines(text: string): string[] {
  return text.split('\r\n').filter((l) => l !== '');
}

export function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

/**
 * A valid RFC 5322 message of about `size` bytes: CRLF line endings only,
 * 76-character base64 body lines (so both servers store and return it byte for
 * byte), with a unique Message-ID.
 */
export function makeMessage(size: number, subject = 'integration test'): Buffer {
  const id = randomBytes(8).toString('hex');
  const head =
    'From: Alice <alice@example.test>\r\n' +
    'To: Bob <bob@example.test>\r\n' +
    `Subject: ${subject}\r\n` +
    `Message-ID: <${id}@jmapaccess-proxy.test>\r\n` +
    'Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n' +
    'MIME-Version: 1.0\r\n' +
    'Content-Type: application/octet-stream\r\n' +
    'Content-Transfer-Encoding: base64\r\n' +
    '\r\n';
  const bodyBytes = Math.max(0, size - head.length);
  const lineCount = Math.max(1, Math.ceil(bodyBytes / 78));
  const raw = randomBytes(lineCount * 57).toString('base64'); // 57 bytes -> 76 characters
  const body: string[] = [];
  for (let i = 0; i < lineCount; i++) body.push(raw.slice(i * 76, (i + 1) * 76));
  return Buffer.from(head + body.join('\r\n') + '\r\n', 'latin1');
}

/** Polls `condition` every 20 ms until it holds; throws after `timeoutMs`. */
export async function waitFor(condition: () => boolean, what: string, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

/**
 * The bytes of the first literal announced after `marker` in `data`
 * (`marker ... {n}\r\n<n bytes>`), or null if it has not fully arrived.
 * `rest` is what follows the literal in `data`.
 */
export function literalAfter(data: Buffer, marker: string): { bytes: Buffer; rest: Buffer } | null {
  const at = data.indexOf(marker, 0, 'latin1');
  if (at === -1) return null;
  const open = data.indexOf('{', at, 'latin1');
  const close = data.indexOf('}\r\n', open, 'latin1');
  if (open === -1 || close === -1) return null;
  const length = Number(data.toString('latin1', open + 1, close));
  const start = close + 3;
  if (data.length < start + length) return null;
  return { bytes: data.subarray(start, start + length), rest: data.subarray(start + length) };
}

/** Sends `tag LOGIN user pass` (quoted) and returns the response text up to the tagged line. */
export async function rawLogin(client: RawClient, user: string, pass: string, tag = 'a'): Promise<string> {
  client.send(`${tag} LOGIN ${user} "${pass}"\r\n`);
  return client.response(tag);
}

/**
 * A TCP relay in front of the Dovecot that removes the `[CAPABILITY ...]`
 * response code from tagged OK responses (Dovecot puts one on its login
 * OK), so the proxy sees a login completed by a bare `tag OK Logged in`
 * with no capability list anywhere: the shape of servers that never
 * volunteer their post-login capabilities. Everything else passes through
 * unchanged; after the first rewritten line the relay is transparent.
 */
export interface StrippingRelay {
  port: number;
  /** Tagged lines that were rewritten, as they arrived. */
  stripped: string[];
  close(): Promise<void>;
}

export async function capabilityStrippingRelay(t: Test, upstreamPort: number): Promise<StrippingRelay> {
  const stripped: string[] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect({ host: '127.0.0.1', port: upstreamPort });
    sockets.add(client);
    sockets.add(upstream);
    for (const s of [client, upstream]) {
      s.on('error', () => {});
      s.on('close', () => {
        sockets.delete(s);
        client.destroy();
        upstream.destroy();
      });
    }
    client.pipe(upstream);
    let transparent = false;
    let pending = '';
    upstream.on('data', (chunk: Buffer) => {
      if (transparent) {
        client.write(chunk);
        return;
      }
      pending += chunk.toString('latin1');
      let out = '';
      for (;;) {
        const nl = pending.indexOf('\r\n');
        if (nl === -1) break;
        const line = pending.slice(0, nl);
        pending = pending.slice(nl + 2);
        const match = /^([^*+\s]\S*) OK \[CAPABILITY [^\]]*\] ?(.*)$/.exec(line);
        if (match && !transparent) {
          stripped.push(line);
          out += `${match[1]} OK ${match[2]}\r\n`;
          transparent = true;
        } else {
          out += `${line}\r\n`;
        }
      }
      if (transparent && pending) {
        out += pending;
        pending = '';
      }
      if (out) client.write(Buffer.from(out, 'latin1'));
    });
  });
  await new Promise<void>((resolve) => server.listen({ host: '127.0.0.1', port: 0 }, resolve));
  const port = (server.address() as net.AddressInfo).port;
  const close = async (): Promise<void> => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };
  t.teardown(close);
  return { port, stripped, close };
}

// ---------------------------------------------------------------------------
// Self-check. `tap test/integration/` runs every .ts file in the directory,
// this one included: when it is the file being run, check the helpers' own
// invariants (the byte-identity tests rely on makeMessage's output surviving
// the servers unchanged: CRLF only, short lines).

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === resolve(process.argv[1])) {
  const { default: t } = await import('tap');

  t.test('makeMessage: about the asked size, CRLF line endings only, short lines, unique', async (t) => {
    for (const size of [2000, 5000, 1024 * 1024]) {
      const message = makeMessage(size);
      t.ok(message.length >= size && message.length < size + 80, `${size}: ${message.length} bytes`);
      const text = message.toString('latin1');
      t.notMatch(text, /\r(?!\n)|(?<!\r)\n/, `${size}: no bare CR or LF`);
      t.ok(text.endsWith('\r\n'), `${size}: ends with CRLF`);
      t.ok(text.split('\r\n').every((l) => l.length <= 78), `${size}: lines of at most 78 characters`);
      t.notMatch(text, /[^\x20-\x7e\r\n]/, `${size}: printable ASCII only`);
    }
    t.not(sha256(makeMessage(1000)), sha256(makeMessage(1000)), 'two messages differ');
  });

  t.test('capabilityLists and countAtom', async (t) => {
    t.same(
      capabilityLists('* CAPABILITY IMAP4rev1 IDLE\r\na OK [CAPABILITY IMAP4rev1 jmapaccess] Logged in\r\n* OK [CAPABILITY X] hi\r\nb OK done\r\n'),
      [['IMAP4REV1', 'IDLE'], ['IMAP4REV1', 'JMAPACCESS'], ['X']],
    );
    t.same(capabilityLists('* OK hello\r\na OK Logged in\r\n'), []);
    t.equal(countAtom(['A', 'JMAPACCESS', 'JMAPACCESS'], 'jmapaccess'), 2);
  });

  t.test('statusLine and getJmapAccessAnswer', async (t) => {
    t.same(statusLine('a OK [CAPABILITY IMAP4rev1 X] Logged in'), { tag: 'a', status: 'OK', code: 'CAPABILITY IMAP4rev1 X', text: 'Logged in' });
    t.same(statusLine('* bye Logging out'), { tag: '*', status: 'BYE', code: null, text: 'Logging out' });
    t.same(statusLine('c OK'), { tag: 'c', status: 'OK', code: null, text: '' });
    t.equal(statusLine('* 1 EXISTS'), null);
    t.equal(statusLine(undefined), null);
    t.equal(getJmapAccessAnswer('b', true), `${JMAPACCESS_LINE}b OK GETJMAPACCESS completed\r\n`);
    t.equal(getJmapAccessAnswer('b', false), 'b BAD JMAP access is not available on this server\r\n');
  });

  t.test('upstream facts match real greetings and login answers', async (t) => {
    t.match('Dovecot ready.', UPSTREAM_FACTS.dovecot.greetingText);
    t.match('Dovecot (Debian) ready.', UPSTREAM_FACTS.dovecot.greetingText);
    t.match('localhost Cyrus IMAP 3.6.1-Debian-3.6.1-4+deb12u5 server ready', UPSTREAM_FACTS.cyrus.greetingText);
    t.match('User logged in SESSIONID=<cyt-KrD3X7-1795678392-30518-1-14820470146141754897>', UPSTREAM_FACTS.cyrus.loginOkText);
    t.same(Object.keys(UPSTREAM_FACTS).sort(), [...UPSTREAMS].sort(), 'facts for every upstream');
  });

  t.test('literalAfter', async (t) => {
    const data = Buffer.from('* 1 FETCH (BODY[] {5}\r\nab)\r\n)\r\nf OK done\r\n', 'latin1');
    const found = literalAfter(data, '* 1 FETCH');
    t.equal(found?.bytes.toString('latin1'), 'ab)\r\n');
    t.equal(found?.rest.toString('latin1'), ')\r\nf OK done\r\n');
    t.equal(literalAfter(data.subarray(0, 25), '* 1 FETCH'), null, 'incomplete literal');
    t.equal(literalAfter(data, '* 2 FETCH'), null, 'no such marker');
  });
}
