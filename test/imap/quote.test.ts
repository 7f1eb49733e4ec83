import t from 'tap';
import fc from 'fast-check';
import { quoteImapString } from '../../src/imap/quote.js';

t.test('quoteImapString: plain text and escapes', async (t) => {
  t.equal(quoteImapString(''), '""');
  t.equal(quoteImapString('https://jmap.example.test/jmap'), '"https://jmap.example.test/jmap"');
  t.equal(quoteImapString('a"b'), '"a\\"b"');
  t.equal(quoteImapString('a\\b'), '"a\\\\b"');
  t.equal(quoteImapString('"\\"'), '"\\"\\\\\\""');
  t.equal(quoteImapString(' ~%*(){}'), '" ~%*(){}"', 'other specials need no escape');
  t.equal(quoteImapString('a\tb'), '"a\tb"', 'TAB is a TEXT-CHAR');
});

t.test('quoteImapString: refuses what `quoted` cannot carry', async (t) => {
  for (const bad of ['a\rb', 'a\nb', '\r\n', 'a\0b', '\u00e9', 'caf\u00e9', '\u{1F4E7}', '\u0080', '\u007f']) {
    t.equal(quoteImapString(bad), null, JSON.stringify(bad));
  }
});

t.test('quoteImapString: property', async (t) => {
  fc.assert(
    fc.property(fc.string({ unit: 'binary', maxLength: 40 }), (value) => {
      const quoted = quoteImapString(value);
      const quotable = /^[\x01-\x09\x0b\x0c\x0e-\x7e]*$/.test(value);
      if (!quotable) return quoted === null;
      if (quoted === null || !quoted.startsWith('"') || !quoted.endsWith('"')) return false;
      // Unescaping gives the value back, and no unescaped `"` or `\` is left inside.
      const inner = quoted.slice(1, -1);
      if (/(^|[^\\])(\\\\)*"/.test(inner)) return false;
      return inner.replace(/\\(["\\])/g, '$1') === value;
    }),
    { numRuns: 1000 },
  );
  t.pass();
});
