/**
 * Robustness against arbitrary bytes: the framers on their own, then the
 * whole proxy with garbage from the client side and from the upstream side
 * (the upstream is the SCRIPTED FAKE SERVER of test/harness/scripted-upstream.ts,
 * answering every command it receives with BAD, as a real server would).
 */

import t, { type Test } from 'tap';
import fc from 'fast-check';
import { Framer, type LiteralRule } from '../src/imap/framer.js';
import { clientLiteralRule, parseCommandHead } from '../src/imap/command.js';
import { serverLiteralRule } from '../src/imap/response.js';
import { startProxy, type RunningProxy } from './harness/proxy.js';
import { RawClient } from './harness/raw-client.js';
import { startScriptedUpstream, type ScriptedConnection, type ScriptedUpstream } from './harness/scripted-upstream.js';
import { split } from './harness/chunks.js';

// Anything thrown from a socket callback would land here rather than crash
// the test process: every subtest asserts it stayed at zero.
let uncaught = 0;
const uncaughtErrors: unknown[] = [];
process.on('uncaughtException', (err) => {
  uncaught++;
  uncaughtErrors.push(err);
});
process.on('unhandledRejection', (err) => {
  uncaught++;
  uncaughtErrors.push(err);
});

function assertNoUncaught(t: Test): void {
  t.equal(uncaught, 0, 'no uncaught exception or unhandled rejection', { errors: uncaughtErrors.map(String) });
}

/** Runs per proxy property; FUZZ_RUNS raises it for a longer local search. */
const RUNS = Number(process.env.FUZZ_RUNS ?? 50);

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));
const tick = () => new Promise<void>((resolve) => setImmediate(resolve));

// ------------------------------------------------------------------ inputs

/** Bytes that matter to IMAP framing: CR, LF, braces, digits, `+`, `~`, SP, `*`. */
const specialByte = fc.constantFrom(0x0d, 0x0a, 0x7b, 0x7d, 0x2b, 0x7e, 0x20, 0x2a, 0x30, 0x31, 0x32, 0x33, 0x35, 0x39, 0x61);

/** Fragments that look like protocol. */
const clientToken = fc.constantFrom(
  'a NOOP\r\n',
  'b LOGIN alice secret\r\n',
  'c LOGIN {5}\r\n',
  'c LOGIN {5+}\r\nalice {3+}\r\npw!\r\n',
  'd GETJMAPACCESS\r\n',
  'd GETJMAPACCESS {3+}\r\nabc\r\n',
  'e STARTTLS\r\n',
  'f COMPRESS DEFLATE\r\n',
  'g IDLE\r\n',
  'DONE\r\n',
  'h AUTHENTICATE PLAIN\r\n',
  'h AUTHENTICATE PLAIN AGFsaWNlAHB3\r\n',
  'AGFsaWNlAHB3\r\n',
  '*\r\n',
  'i APPEND INBOX {10}\r\n',
  'j APPEND INBOX ~{4+}\r\n\0\0\0\0\r\n',
  'k SELECT INBOX\r\n',
  'l LOGOUT\r\n',
  '{3}\r\n',
  '{0}\r\n',
  '{99999999999999999999}\r\n',
  '(bad\r\n',
  '\r\n',
  '\n',
  'x'.repeat(1100),
);

const serverToken = fc.constantFrom(
  '* OK fine\r\n',
  '* OK [CAPABILITY IMAP4rev1 STARTTLS JMAPACCESS] x\r\n',
  '* CAPABILITY IMAP4rev1 OBJECTID\r\n',
  '* 3 EXISTS\r\n',
  '* 1 FETCH (BODY[] {5}\r\n',
  '* 1 FETCH (BODY[] {5}\r\nhello)\r\n',
  '* LIST () "/" {5}\r\n',
  '+ go ahead\r\n',
  '+\r\n',
  'a OK done\r\n',
  'a NO [CAPABILITY IMAP4rev1] nope\r\n',
  'a BAD {3}\r\n',
  '* BYE going\r\n',
  '* PREAUTH [CAPABILITY IMAP4rev1] hi\r\n',
  'jmapaccess-proxy.1 OK x\r\n',
  '* 1 FETCH (BINARY[] ~{99999999999999999999}\r\n',
  '{7}\r\n',
  '\r\n',
  'y'.repeat(1100),
);

function garbage(tokens: fc.Arbitrary<string>, maxTotal: number): fc.Arbitrary<Buffer> {
  const piece = fc.oneof(
    tokens.map((s) => Buffer.from(s, 'latin1')),
    fc.uint8Array({ maxLength: 40 }).map((a) => Buffer.from(a)),
    fc.array(specialByte, { maxLength: 40 }).map((a) => Buffer.from(a)),
  );
  return fc.oneof(
    fc.uint8Array({ maxLength: maxTotal }).map((a) => Buffer.from(a)),
    fc.array(specialByte, { maxLength: maxTotal }).map((a) => Buffer.from(a)),
    fc.array(piece, { maxLength: 40 }).map((pieces) => Buffer.concat(pieces).subarray(0, maxTotal)),
  );
}

// -------------------------------------------------------- (a) the framers

type Event = { type: 'line'; size: number | null } | { type: 'literal'; bytes: number } | { type: 'literalEnd' } | { type: 'error' };

function runFramer(rule: LiteralRule, input: Buffer, cuts: readonly number[], pauseEvery: number) {
  const delivered: Buffer[] = [];
  const events: Event[] = [];
  let lines = 0;
  const framer: Framer = new Framer(
    {
      line(line, literal) {
        delivered.push(Buffer.from(line));
        events.push({ type: 'line', size: literal ? literal.size : null });
        if (pauseEvery > 0 && ++lines % pauseEvery === 0) framer.pause();
      },
      literal(chunk) {
        delivered.push(Buffer.from(chunk));
        events.push({ type: 'literal', bytes: chunk.length });
      },
      literalEnd() {
        events.push({ type: 'literalEnd' });
      },
      error() {
        events.push({ type: 'error' });
      },
    },
    rule,
    1024,
  );
  for (const chunk of split(input, cuts)) {
    framer.push(chunk);
    while (framer.isPaused) framer.resume();
  }
  return { delivered: Buffer.concat(delivered), events, framer };
}

/** Literal bytes follow exactly the line that announced them; an error is the last event. */
function checkEventOrder(events: readonly Event[]): string | null {
  let owed = 0;
  let inLiteral = false;
  for (let i = 0; i < events.length; i++) {
    const e = events[i] as Event;
    if (e.type === 'error') return i === events.length - 1 ? null : 'events after an error';
    if (e.type === 'line') {
      if (inLiteral) return 'a line inside a literal';
      if (e.size !== null) {
        owed = e.size;
        inLiteral = true;
        if (owed === 0 && events[i + 1]?.type !== 'literalEnd' && i + 1 < events.length) return 'no literalEnd after {0}';
      }
    } else if (e.type === 'literal') {
      if (!inLiteral || e.bytes === 0 || e.bytes > owed) return 'unannounced or oversized literal bytes';
      owed -= e.bytes;
    } else {
      if (!inLiteral || owed !== 0) return 'literalEnd before the literal was complete';
      inLiteral = false;
    }
  }
  return null;
}

t.test('(a) framers: arbitrary bytes in arbitrary chunks: no exception, nothing invented or reordered', async (t) => {
  for (const [name, rule] of [
    ['client', clientLiteralRule],
    ['server', serverLiteralRule],
  ] as const) {
    let errors = 0;
    let literals = 0;
    fc.assert(
      fc.property(
        fc.oneof(garbage(clientToken, 3000), garbage(serverToken, 3000)),
        fc.array(fc.nat(), { maxLength: 30 }),
        fc.constantFrom(0, 1, 3),
        (input, cuts, pauseEvery) => {
          const { delivered, events, framer } = runFramer(rule, input, cuts, pauseEvery);
          if (!input.subarray(0, delivered.length).equals(delivered)) throw new Error('delivered bytes are not a prefix of the input');
          const order = checkEventOrder(events);
          if (order) throw new Error(order);
          const failed = events.some((e) => e.type === 'error');
          if (failed) errors++;
          if (events.some((e) => e.type === 'literalEnd')) literals++;
          if (!failed && delivered.length + framer.pendingBytes !== input.length) {
            throw new Error(`bytes lost: ${delivered.length} delivered + ${framer.pendingBytes} pending of ${input.length}`);
          }
        },
      ),
      { numRuns: 1500 },
    );
    t.ok(errors > 0, `${name}: some inputs hit a framing error (${errors})`);
    t.ok(literals > 0, `${name}: some inputs carried literals (${literals})`);
  }
  assertNoUncaught(t);
});

// ------------------------------------------------------ the proxy under fire

/** The fake upstream as a minimal real server: `+` for synchronizing literals, BAD for every command. */
function answerEverythingBad(conn: ScriptedConnection): void {
  let tag: string | null = null;
  const framer = new Framer(
    {
      line(line, literal, first) {
        if (first) tag = parseCommandHead(line)?.tag ?? null;
        if (literal?.synchronizing) conn.send('+ go ahead\r\n');
        if (!literal) conn.send(tag === null ? '* BAD fake server: not a command\r\n' : `${tag} BAD fake server: unknown command\r\n`);
      },
      literal() {},
      literalEnd() {},
      error() {
        conn.socket.destroy();
      },
    },
    clientLiteralRule,
    1 << 20,
  );
  conn.socket.on('data', (chunk: Buffer) => framer.push(chunk));
}

interface Rig {
  proxy: RunningProxy;
  upstream: ScriptedUpstream;
}

async function rig(t: Test, maxLineLength = 1024): Promise<Rig> {
  const upstream = await startScriptedUpstream();
  // Eager: every client connection has its scripted upstream connection at once,
  // which connect() below relies on (the lazy path has its own tests).
  const proxy = await startProxy({ upstreamPort: upstream.port, maxLineLength, logLevel: 'warn', upstreamConnect: 'eager' });
  t.teardown(async () => {
    await proxy.close();
    await upstream.close();
  });
  return { proxy, upstream };
}

const GREETING_IN = '* OK [CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN] fake ready\r\n';
const GREETING_OUT = '* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] fake ready\r\n';

async function connect(r: Rig, answer: boolean): Promise<{ client: RawClient; server: ScriptedConnection }> {
  const client = await RawClient.connect(r.proxy.port);
  const server = await r.upstream.accept();
  if (answer) answerEverythingBad(server);
  server.send(GREETING_IN);
  const greeting = await client.readUntil('\n', 3000);
  if (greeting !== GREETING_OUT) throw new Error(`unexpected greeting ${JSON.stringify(greeting)}`);
  return { client, server };
}

/**
 * Waits until the proxy has no session left (it noticed the connection
 * ended) and returns how long that took. Sessions run one at a time here.
 */
async function sessionsGone(r: Rig, timeoutMs: number): Promise<number> {
  const started = Date.now();
  while (r.proxy.server.connectionCount > 0) {
    if (Date.now() - started > timeoutMs) {
      throw new Error(`the proxy still has ${r.proxy.server.connectionCount} session(s) ${timeoutMs} ms after the peer saw the connection close`);
    }
    await sleep(5);
  }
  return Date.now() - started;
}

/** The proxy still accepts connections and relays, and no session is left behind. */
async function checkAlive(t: Test, r: Rig): Promise<void> {
  const { client } = await connect(r, true);
  client.send('z NOOP\r\n');
  t.equal(await client.response('z', 3000), 'z BAD fake server: unknown command\r\n', 'a new connection still works');
  client.close();
  const deadline = Date.now() + 3000;
  while (r.proxy.server.connectionCount > 0 && Date.now() < deadline) await sleep(10);
  t.equal(r.proxy.server.connectionCount, 0, 'every session ended');
}

/** What the proxy or the fake server may say to a client sending garbage. */
const CLIENT_SIDE_LINE =
  /^(\+ go ahead|\* BAD \[CLIENTBUG\] Invalid command line: expected "tag command"|\* BAD fake server: not a command|\* BYE \[(CLIENTBUG|LIMIT|UNAVAILABLE)\] [^\r\n]*|\S+ BAD fake server: unknown command|\S+ NO (STARTTLS|COMPRESS) is not available through this proxy|\S+ BAD COMPRESS is valid only after login|\S+ BAD GETJMAPACCESS (takes no arguments|is valid only after authentication))\r\n$/;

t.test('(b) garbage from the client: forwarded, BAD, or BYE; always ends; the proxy lives on', async (t) => {
  const r = await rig(t);
  const durations: number[] = [];
  const lingers: number[] = [];
  const outcomes = { bye: 0, bad: 0, quiet: 0 };
  await fc.assert(
    fc.asyncProperty(garbage(clientToken, 4000), fc.array(fc.nat(), { maxLength: 8 }), async (input, cuts) => {
      const { client } = await connect(r, true);
      try {
        for (const piece of split(input, cuts)) {
          client.send(piece);
          await tick();
        }
        const halfClosed = Date.now();
        client.socket.end();
        await client.waitClosed(3000);
        durations.push(Date.now() - halfClosed);
        lingers.push(await sessionsGone(r, 7000));
        const text = client.unread();
        const lines = text.split(/(?<=\n)/).filter((l) => l !== '');
        for (const line of lines) {
          if (!CLIENT_SIDE_LINE.test(line)) throw new Error(`unexpected line to the client: ${JSON.stringify(line)}`);
        }
        if (lines.some((l) => l.startsWith('* BYE'))) outcomes.bye++;
        else if (lines.some((l) => / BAD /.test(l))) outcomes.bad++;
        else outcomes.quiet++;
      } finally {
        client.close();
      }
    }),
    { numRuns: RUNS },
  );
  t.ok(Math.max(...durations) < 3000, `each connection closed soon after the client half-closed (max ${Math.max(...durations)} ms)`);
  // Bounded by the proxy's 5 s flush timer; see the regression test below for the prompt case.
  t.ok(Math.max(...lingers) < 7000, `each session ended on the proxy's side too (max ${Math.max(...lingers)} ms later)`);
  t.ok(outcomes.bye > 0 && outcomes.bad > 0, `outcomes seen: ${JSON.stringify(outcomes)}`);
  await checkAlive(t, r);
  assertNoUncaught(t);
});

t.test('(b2) found by (b): a session closed while client input is held ends promptly on the proxy side too', async (t) => {
  // The proxy pauses the client socket while a line waits for the upstream.
  // When the session is then closed, whatever the client sent meanwhile
  // (and its FIN) must still be read, or the socket only goes away when the
  // 5 s flush timer destroys it, and the session lingers until then.
  const r = await rig(t);
  const cases: Array<{ name: string; end: (server: ScriptedConnection) => void; expect: RegExp }> = [
    {
      name: 'BYE for an invalid line with a literal, replayed after the AUTHENTICATE it waited for',
      end: (server) => server.send('h BAD no\r\n'),
      expect: /\* BYE \[CLIENTBUG\] Invalid command line\r\n$/,
    },
    {
      name: 'upstream lost while a line waits for it',
      end: (server) => server.socket.destroy(),
      expect: /\* BYE \[UNAVAILABLE\] Connection to the IMAP server was lost\r\n$/,
    },
  ];
  for (const c of cases) {
    const { client, server } = await connect(r, false);
    client.send('h AUTHENTICATE PLAIN\r\n(x {3+}\r\n');
    t.equal(await server.line(3000), 'h AUTHENTICATE PLAIN');
    await sleep(50); // the second line is held: the proxy stops reading the client
    client.send('abc\r\nz NOOP\r\n');
    await sleep(50);
    c.end(server);
    await client.waitClosed(3000);
    t.match(client.all.toString('latin1'), c.expect, `${c.name}: the client is told`);
    const linger = await sessionsGone(r, 7000);
    t.ok(linger < 1000, `${c.name}: the proxy's session ended ${linger} ms after the client saw the close`);
  }
  assertNoUncaught(t);
});

/** Splits off a final BYE the proxy added, if any. */
const PROXY_BYE = /\* BYE \[UNAVAILABLE\] (Connection to the IMAP server was lost|The IMAP server sent an invalid response)\r\n$/;

t.test('(c) garbage from the upstream after the greeting: relayed as a prefix, always ends; the proxy lives on', async (t) => {
  const r = await rig(t);
  const durations: number[] = [];
  const lingers: number[] = [];
  let checkedPrefix = 0;
  await fc.assert(
    fc.asyncProperty(
      fc.constantFrom('', 'a NOOP\r\n', 'a LOGIN alice pw\r\n', 'a IDLE\r\n', 'a AUTHENTICATE PLAIN\r\n', 'a APPEND INBOX {5}\r\n'),
      garbage(serverToken, 4000),
      fc.array(fc.nat(), { maxLength: 8 }),
      async (command, input, cuts) => {
        const { client, server } = await connect(r, false);
        try {
          if (command) {
            client.send(command);
            await server.line(3000);
          }
          for (const piece of split(input, cuts)) {
            server.send(piece);
            await tick();
          }
          const halfClosed = Date.now();
          server.socket.end();
          await client.waitClosed(3000);
          durations.push(Date.now() - halfClosed);
          lingers.push(await sessionsGone(r, 7000));
          if (/capability/i.test(input.toString('latin1'))) return; // capability lists are rewritten
          // Nothing but the upstream's own bytes, in order, then perhaps the proxy's BYE.
          const got = client.all.subarray(GREETING_OUT.length);
          const isPrefix = (b: Buffer) => input.subarray(0, b.length).equals(b);
          const text = got.toString('latin1');
          const bye = PROXY_BYE.exec(text);
          const ok = isPrefix(got) || (bye !== null && isPrefix(got.subarray(0, got.length - Buffer.byteLength(bye[0], 'latin1'))));
          if (!ok) throw new Error(`client got ${JSON.stringify(text)} for upstream input ${JSON.stringify(input.toString('latin1'))}`);
          checkedPrefix++;
        } finally {
          client.close();
        }
      },
    ),
    { numRuns: RUNS },
  );
  t.ok(Math.max(...durations) < 3000, `each connection closed soon after the upstream half-closed (max ${Math.max(...durations)} ms)`);
  t.ok(Math.max(...lingers) < 7000, `each session ended on the proxy's side too (max ${Math.max(...lingers)} ms later)`);
  t.ok(checkedPrefix > 0, `relayed bytes checked in ${checkedPrefix} runs`);
  await checkAlive(t, r);
  assertNoUncaught(t);
});

t.test('(d) a client line with no newline beyond the limit: BYE [LIMIT] and close', async (t) => {
  const r = await rig(t, 1024);

  // Exactly the limit, CRLF included, is still a line.
  const atLimit = await connect(r, false);
  const line = `a NOOP ${'x'.repeat(1024 - 9)}\r\n`;
  t.equal(line.length, 1024);
  atLimit.client.send(line);
  t.equal((await atLimit.server.line(3000)).length, 1022, 'a line of exactly the limit is forwarded');
  atLimit.client.close();

  // The limit without a newline is kept waiting; one more byte is too many.
  const { client, server } = await connect(r, false);
  client.send(`a NOOP ${'x'.repeat(1024 - 7)}`);
  await sleep(150);
  t.equal(client.unread(), '', 'nothing said at the limit');
  t.notOk(client.closed, 'still open at the limit');
  client.send('x');
  t.equal(await client.readUntil('\n', 3000), '* BYE [LIMIT] Line longer than 1024 bytes\r\n');
  await client.waitClosed(3000);
  t.equal(server.pending(), '', 'no part of the line reached the upstream');

  // The same in small pieces, far beyond the limit.
  const chunked = await connect(r, false);
  for (let i = 0; i < 50; i++) {
    if (chunked.client.closed) break;
    chunked.client.send('y'.repeat(100));
    await tick();
  }
  t.match(await chunked.client.readUntil('\n', 3000), /^\* BYE \[LIMIT\] /);
  await chunked.client.waitClosed(3000);
  t.equal(chunked.server.pending(), '');

  await checkAlive(t, r);
  assertNoUncaught(t);
});
