import t from 'tap';
import fc from 'fast-check';
import { atomsAfter, clientLiteralRule, isDone, parseCommandHead, readAstring } from '../../src/imap/command.js';
import { quoteImapString } from '../../src/imap/quote.js';

const b = (text: string) => Buffer.from(text, 'latin1');

t.test('parseCommandHead: valid commands', async (t) => {
  t.same(parseCommandHead(b('a1 NOOP\r\n')), { tag: 'a1', name: 'NOOP', argsStart: 7, end: 7 });
  t.same(parseCommandHead(b('a1 login alice secret\r\n')), { tag: 'a1', name: 'LOGIN', argsStart: 9, end: 21 }, 'name upper-cased');
  t.same(parseCommandHead(b('A003 UID FETCH 1:* (FLAGS)\r\n')), { tag: 'A003', name: 'UID', argsStart: 9, end: 26 });
  t.same(parseCommandHead(b('a NOOP\n')), { tag: 'a', name: 'NOOP', argsStart: 6, end: 6 }, 'bare LF');
  t.same(parseCommandHead(b('a NOOP')), { tag: 'a', name: 'NOOP', argsStart: 6, end: 6 }, 'no terminator');
  t.same(parseCommandHead(b('a] NOOP\r\n'))?.tag, 'a]', '"]" is an ASTRING-CHAR, so allowed in a tag');
  t.same(parseCommandHead(b('x.1-y_z!#$&\'/:;<=>?@^`|~ NOOP\r\n'))?.tag, 'x.1-y_z!#$&\'/:;<=>?@^`|~');
  t.same(parseCommandHead(b('a X+Y\r\n'))?.name, 'X+Y', '"+" is fine in the command name');
  t.same(parseCommandHead(b('a APPEND INBOX {5}\r\n')), { tag: 'a', name: 'APPEND', argsStart: 9, end: 18 });
  t.same(parseCommandHead(b('a NOOP \r\n')), { tag: 'a', name: 'NOOP', argsStart: 7, end: 7 }, 'a trailing space gives empty arguments');
});

t.test('parseCommandHead: lines that are not commands', async (t) => {
  for (const line of [
    '',
    '\r\n',
    '\n',
    '+a NOOP\r\n',
    '+ NOOP\r\n',
    'a+ NOOP\r\n',
    'a* NOOP\r\n',
    '* NOOP\r\n',
    'a( NOOP\r\n',
    'a) NOOP\r\n',
    'a{ NOOP\r\n',
    'a% NOOP\r\n',
    'a" NOOP\r\n',
    'a\\ NOOP\r\n',
    'a\tNOOP\r\n',
    'a\x01 NOOP\r\n',
    'a\x7f NOOP\r\n',
    'a\xe9 NOOP\r\n',
    ' NOOP\r\n',
    'a\r\n',
    'a',
    'a \r\n',
    'a  NOOP\r\n',
    'a NO(OP\r\n',
    'a NOOP(\r\n',
    'a NO\tOP\r\n',
    'a NOOP\x00\r\n',
    'a {5}\r\n',
    'a "NOOP"\r\n',
  ]) {
    t.equal(parseCommandHead(b(line)), null, JSON.stringify(line));
  }
});

t.test('parseCommandHead: property: any valid tag and name come back', async (t) => {
  const tagChar = fc.constantFrom(...'abcXYZ019.-_!#$&\'/:;<=>?@^`|~]'.split(''));
  const nameChar = fc.constantFrom(...'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.+'.split(''));
  fc.assert(
    fc.property(
      fc.array(tagChar, { minLength: 1, maxLength: 20 }).map((c) => c.join('')),
      fc.array(nameChar, { minLength: 1, maxLength: 20 }).map((c) => c.join('')),
      fc.constantFrom('', ' x', ' "a b" {3}'),
      fc.constantFrom('\r\n', '\n'),
      (tag, name, args, eol) => {
        const head = parseCommandHead(b(`${tag} ${name}${args}${eol}`));
        return (
          head !== null &&
          head.tag === tag &&
          head.name === name.toUpperCase() &&
          head.end === tag.length + 1 + name.length + args.length &&
          head.argsStart === (args === '' ? head.end : tag.length + name.length + 2)
        );
      },
    ),
    { numRuns: 300 },
  );
  t.pass();
});

t.test('readAstring: atoms', async (t) => {
  const line = b('a LOGIN alice secret\r\n');
  const head = parseCommandHead(line);
  if (!head) throw new Error('not a command');
  const user = readAstring(line, head.argsStart, head.end);
  t.same(user, { value: 'alice', next: 13 });
  t.same(readAstring(line, 14, head.end), { value: 'secret', next: head.end });
  t.same(readAstring(b('a LOGIN b\u00c3\u00b6b x'), 8, 12), { value: 'b\u00f6b', next: 12 }, 'atoms decode as UTF-8');
});

t.test('readAstring: quoted strings with escapes', async (t) => {
  const line = b('a LOGIN "al\\"ice" "p\\\\w d"\r\n');
  const head = parseCommandHead(line);
  if (!head) throw new Error('not a command');
  const user = readAstring(line, head.argsStart, head.end);
  t.same(user, { value: 'al"ice', next: 17 });
  t.same(readAstring(line, 18, head.end), { value: 'p\\w d', next: head.end }, 'spaces inside quotes are kept');
  t.same(readAstring(b('""'), 0, 2), { value: '', next: 2 }, 'empty quoted string');
  t.same(readAstring(b('"\u00c3\u00a9t\u00c3\u00a9"'), 0, 7), { value: '\u00e9t\u00e9', next: 7 }, 'UTF-8 inside quotes');
  t.equal(readAstring(b('"unterminated'), 0, 13), null);
  t.equal(readAstring(b('"ends in a backslash\\'), 0, 21), null);
  t.equal(readAstring(b('"abc" tail'), 0, 3), null, 'the closing quote beyond `end` does not count');
});

t.test('readAstring: literals and empty input are left to the caller', async (t) => {
  t.equal(readAstring(b('{5}'), 0, 3), null);
  t.equal(readAstring(b('{5+}'), 0, 4), null);
  t.equal(readAstring(b('~{5}'), 0, 4), null);
  t.equal(readAstring(b('abc'), 3, 3), null, 'start at the end');
  t.equal(readAstring(b('abc'), 5, 3), null, 'start beyond the end');
});

t.test('readAstring reads back what quoteImapString wrote', async (t) => {
  fc.assert(
    fc.property(fc.stringMatching(/^[\x01-\x09\x0b\x0c\x0e-\x7e]{0,60}$/), (value) => {
      const quoted = quoteImapString(value);
      if (quoted === null) return false;
      const line = b(`a LOGIN ${quoted} pw\r\n`);
      const head = parseCommandHead(line);
      const read = head && readAstring(line, head.argsStart, head.end);
      return read !== null && read.value === value && read.next === 8 + quoted.length;
    }),
    { numRuns: 500 },
  );
  t.pass();
});

t.test('atomsAfter and isDone', async (t) => {
  const line = b('a AUTHENTICATE PLAIN  AGFsaWNlAHB3\r\n');
  const head = parseCommandHead(line);
  if (!head) throw new Error('not a command');
  t.same(atomsAfter(line, head.argsStart, head.end), ['PLAIN', 'AGFsaWNlAHB3']);
  t.same(atomsAfter(line, head.end, head.end), []);
  for (const done of ['DONE\r\n', 'done\n', 'Done', 'DONE']) t.ok(isDone(b(done)), JSON.stringify(done));
  for (const other of ['DONE \r\n', ' DONE\r\n', 'DONEX\r\n', 'DON\r\n', 'a DONE\r\n', '\r\n']) t.notOk(isDone(b(other)), JSON.stringify(other));
});

t.test('clientLiteralRule: every literal form', async (t) => {
  t.same(clientLiteralRule(b('a LOGIN {5}\r\n'), true), { size: 5, synchronizing: true, binary: false });
  t.same(clientLiteralRule(b('a LOGIN {5+}\r\n'), true), { size: 5, synchronizing: false, binary: false });
  t.same(clientLiteralRule(b('a APPEND x ~{0}\r\n'), true), { size: 0, synchronizing: true, binary: true });
  t.same(clientLiteralRule(b(' {7+}\n'), false), { size: 7, synchronizing: false, binary: false });
  t.equal(clientLiteralRule(b('a NOOP\r\n'), true), null);
  t.equal(clientLiteralRule(b('a X {}\r\n'), true), null);
  t.equal(clientLiteralRule(b('a X {5 }\r\n'), true), null);
  t.equal(clientLiteralRule(b('a X 5}\r\n'), true), null);
});
