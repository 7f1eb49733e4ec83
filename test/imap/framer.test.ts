import t from 'tap';
import fc from 'fast-check';
import { Framer, type FrameHandler, type FramerError, type LiteralRule } from '../../src/imap/framer.js';
import { clientLiteralRule } from '../../src/imap/command.js';
import { serverLiteralRule } from '../../src/imap/response.js';
import type { LiteralAnnouncement } from '../../src/imap/literal.js';
import { split } from '../harness/chunks.js';

/** What a framer reported, in order, with literal pieces merged per literal. */
type Frame =
  | { type: 'line'; text: string; first: boolean; literal: LiteralAnnouncement | null }
  | { type: 'literal'; bytes: string }
  | { type: 'error'; kind: FramerError };

function collect(rule: LiteralRule, chunks: Buffer[], maxLineLength = 65536) {
  const frames: Frame[] = [];
  const output: Buffer[] = [];
  let openLiteral: Buffer[] | null = null;
  const handler: FrameHandler = {
    line(line, literal, first) {
      frames.push({ type: 'line', text: line.toString('latin1'), first, literal });
      output.push(Buffer.from(line));
    },
    literal(chunk) {
      (openLiteral ??= []).push(Buffer.from(chunk));
      output.push(Buffer.from(chunk));
    },
    literalEnd() {
      frames.push({ type: 'literal', bytes: Buffer.concat(openLiteral ?? []).toString('latin1') });
      openLiteral = null;
    },
    error(kind) {
      frames.push({ type: 'error', kind });
    },
  };
  const framer = new Framer(handler, rule, maxLineLength);
  for (const chunk of chunks) framer.push(chunk);
  return { frames, output: Buffer.concat(output), framer };
}

/** Literal contents that look like protocol, plus arbitrary bytes. */
const literalData = fc.oneof(
  fc.constantFrom(
    'x GETJMAPACCESS\r\n',
    '* CAPABILITY IMAP4rev1\r\n',
    'a OK [CAPABILITY IMAP4rev1 JMAPACCESS] done\r\n',
    '{5}\r\n',
    '{5+}\r\nhello',
    '+ go ahead\r\n',
    'DONE\r\n',
    '',
  ),
  fc.uint8Array({ maxLength: 300 }).map((a) => Buffer.from(a).toString('latin1')),
);

/** Line text without CR, LF, braces or `~` (so it cannot end in, or change, an announcement by accident). */
const lineText = fc.stringMatching(/^[ -z|]{0,40}$/);

const announcement = fc.constantFrom('{N}', '{N+}', '~{N}', '~{N+}');

interface Segment {
  text: string;
  literal: { form: string; data: string } | null;
}

const message = fc
  .tuple(fc.array(fc.record({ text: lineText, form: announcement, data: literalData }), { maxLength: 3 }), lineText)
  .map(([withLiterals, last]): Segment[] => [
    ...withLiterals.map((s) => ({ text: s.text, literal: { form: s.form, data: s.data } })),
    { text: last, literal: null },
  ]);

function render(messages: Segment[][], prefix: (i: number) => string) {
  const parts: string[] = [];
  const expected: Frame[] = [];
  messages.forEach((segments, i) => {
    segments.forEach((segment, j) => {
      const text = (j === 0 ? prefix(i) : '') + segment.text;
      const form = segment.literal ? segment.literal.form.replace('N', String(Buffer.byteLength(segment.literal.data, 'latin1'))) : '';
      const line = `${text}${form}\r\n`;
      parts.push(line);
      const literal = segment.literal
        ? {
            size: Buffer.byteLength(segment.literal.data, 'latin1'),
            synchronizing: !form.includes('+'),
            binary: form.startsWith('~'),
          }
        : null;
      expected.push({ type: 'line', text: line, first: j === 0, literal });
      if (segment.literal) {
        parts.push(segment.literal.data);
        expected.push({ type: 'literal', bytes: segment.literal.data });
      }
    });
  });
  return { bytes: Buffer.from(parts.join(''), 'latin1'), expected };
}

t.test('client direction: any chunking gives the same frames and the same bytes', async (t) => {
  fc.assert(
    fc.property(fc.array(message, { minLength: 1, maxLength: 6 }), fc.array(fc.nat(), { maxLength: 40 }), (messages, cuts) => {
      const { bytes, expected } = render(messages, (i) => `a${i} APPEND INBOX `);
      const whole = collect(clientLiteralRule, [bytes]);
      const chunked = collect(clientLiteralRule, split(bytes, cuts));
      t.same(whole.frames, expected);
      t.same(chunked.frames, expected);
      t.ok(chunked.output.equals(bytes));
      t.ok(chunked.framer.atMessageBoundary);
    }),
    { numRuns: 300 },
  );
});

t.test('server direction: any chunking gives the same frames and the same bytes', async (t) => {
  fc.assert(
    fc.property(fc.array(message, { minLength: 1, maxLength: 6 }), fc.array(fc.nat(), { maxLength: 40 }), (messages, cuts) => {
      const { bytes, expected } = render(messages, (i) => `* ${i + 1} FETCH (BODY[] `);
      const chunked = collect(serverLiteralRule, split(bytes, cuts));
      t.same(chunked.frames, expected);
      t.ok(chunked.output.equals(bytes));
    }),
    { numRuns: 300 },
  );
});

t.test('byte-at-a-time input frames the same as whole input', async (t) => {
  const bytes = Buffer.from('a LOGIN {5+}\r\nalice {7+}\r\nalicepw\r\nb APPEND INBOX ~{3}\r\n\x00\r\n\r\nc NOOP\r\n', 'latin1');
  const whole = collect(clientLiteralRule, [bytes]);
  const bytewise = collect(clientLiteralRule, [...bytes].map((b) => Buffer.from([b])));
  t.same(bytewise.frames, whole.frames);
  t.equal(whole.frames.filter((f) => f.type === 'line' && f.first).length, 3);
});

t.test('literal bytes are handed on as views of the input, not copies', async (t) => {
  const views: Buffer[] = [];
  const input = Buffer.from('* 1 FETCH (BODY[] {10}\r\n0123456789)\r\n', 'latin1');
  const framer = new Framer(
    { line() {}, literal: (c) => views.push(c), literalEnd() {}, error() {} },
    serverLiteralRule,
    1024,
  );
  framer.push(input);
  t.equal(views.length, 1);
  t.equal(views[0]!.buffer, input.buffer);
});

t.test('server status responses ending in {n} announce no literal', async (t) => {
  for (const line of [
    '* OK text {5}\r\n',
    'a NO [TRYCREATE] cannot {12}\r\n',
    'a BAD {3}\r\n',
    '* BYE bye {1}\r\n',
    '* PREAUTH hi {2}\r\n',
    '+ send {9}\r\n',
  ]) {
    const { frames } = collect(serverLiteralRule, [Buffer.from(`${line}* 2 EXISTS\r\n`)]);
    t.same(
      frames.map((f) => f.type === 'line' && f.literal),
      [null, null],
      line,
    );
  }
  const { frames } = collect(serverLiteralRule, [Buffer.from('* LIST () "/" {5}\r\nINBOX\r\n')]);
  t.equal(frames.length, 3, 'a LIST with a literal mailbox name is framed as one response');
});

t.test('over-long lines stop the framer with an error, also across chunks', async (t) => {
  const long = Buffer.alloc(2000, 0x61);
  t.same(collect(clientLiteralRule, [long], 1024).frames, [{ type: 'error', kind: 'line-too-long' }]);
  const split2 = collect(clientLiteralRule, [long.subarray(0, 600), long.subarray(600, 1200)], 1024);
  t.same(split2.frames, [{ type: 'error', kind: 'line-too-long' }]);
  const ok = collect(clientLiteralRule, [Buffer.concat([Buffer.alloc(1000, 0x61), Buffer.from('\r\n')])], 1024);
  t.equal(ok.frames.length, 1, 'a line of exactly the limit is fine');
});

t.test('an impossible literal size is an error, not a hang', async (t) => {
  const { frames } = collect(clientLiteralRule, [Buffer.from('a APPEND x {99999999999999999999}\r\n')]);
  t.same(frames, [{ type: 'error', kind: 'invalid-literal' }]);
});

t.test('bare LF ends a line too', async (t) => {
  const { frames } = collect(clientLiteralRule, [Buffer.from('a LOGIN {3}\nabc\nb NOOP\n')]);
  t.same(
    frames.map((f) => f.type),
    ['line', 'literal', 'line', 'line'],
  );
});

t.test('deferLine replays the same line on resume, and pause keeps the rest', async (t) => {
  const seen: string[] = [];
  let deferOnce = true;
  const framer: Framer = new Framer(
    {
      line(line) {
        const text = line.toString().trim();
        if (text === 'b GETJMAPACCESS' && deferOnce) {
          deferOnce = false;
          framer.deferLine();
          return;
        }
        seen.push(text);
      },
      literal() {},
      literalEnd() {},
      error() {},
    },
    clientLiteralRule,
    1024,
  );
  framer.push(Buffer.from('a LOGIN x y\r\nb GETJMAPACCESS\r\nc NOOP\r\n'));
  t.same(seen, ['a LOGIN x y']);
  t.ok(framer.isPaused);
  framer.push(Buffer.from('d NOOP\r\n'));
  t.same(seen, ['a LOGIN x y'], 'input while paused is kept, not framed');
  framer.resume();
  t.same(seen, ['a LOGIN x y', 'b GETJMAPACCESS', 'c NOOP', 'd NOOP']);
});

t.test('cancelLiteral: a refused synchronizing literal is not waited for', async (t) => {
  const lines: string[] = [];
  const framer = new Framer(
    { line: (l) => lines.push(l.toString().trim()), literal() {}, literalEnd() {}, error() {} },
    clientLiteralRule,
    1024,
  );
  framer.push(Buffer.from('a APPEND nobox {10}\r\n'));
  t.ok(framer.awaitingLiteral);
  framer.cancelLiteral();
  t.ok(framer.atMessageBoundary);
  framer.push(Buffer.from('b NOOP\r\n'));
  t.same(lines, ['a APPEND nobox {10}', 'b NOOP']);
});
