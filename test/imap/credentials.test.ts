import t from 'tap';
import fc from 'fast-check';
import { loginCredentials, saslCredentials } from '../../src/imap/credentials.js';

const b64 = (s: string) => Buffer.from(s, 'utf8').toString('base64');

t.test('LOGIN: atoms, quoted strings and literals, in any mix', async (t) => {
  const cases: Array<[string, { user: string; password: string } | null]> = [
    ['a LOGIN alice secret\r\n', { user: 'alice', password: 'secret' }],
    ['a login "alice@example.com" "p a\\"s\\\\s"\r\n', { user: 'alice@example.com', password: 'p a"s\\s' }],
    ['a LOGIN {5}\r\nalice {6}\r\nsecret\r\n', { user: 'alice', password: 'secret' }],
    ['a LOGIN {5+}\r\nalice "pw"\r\n', { user: 'alice', password: 'pw' }],
    ['a LOGIN alice {3}\r\n{x}\r\n', { user: 'alice', password: '{x}' }],
    ['a LOGIN alice\r\n', null],
    ['a LOGIN alice "unterminated\r\n', null],
    ['a SELECT alice secret\r\n', null],
    ['a LOGIN {9}\r\nshort\r\n', null],
  ];
  for (const [command, expected] of cases) {
    t.same(loginCredentials(Buffer.from(command, 'utf8')), expected, JSON.stringify(command));
  }
});

/** An astring as a client may send it: an atom when it can be one, else quoted or a literal. */
function encodeAstring(value: string, form: 'quoted' | 'literal' | 'literal+'): string {
  if (form === 'quoted') return `"${value.replace(/[\\"]/g, (c) => `\\${c}`)}"`;
  return `{${Buffer.byteLength(value, 'utf8')}${form === 'literal+' ? '+' : ''}}\r\n${value}`;
}

t.test('LOGIN: any user and password round-trip in every form (property)', async (t) => {
  const text = fc.string({ unit: 'grapheme', minLength: 1, maxLength: 20 });
  const quotable = text.filter((s) => !/[\r\n\0]/.test(s));
  const form = fc.constantFrom('quoted' as const, 'literal' as const, 'literal+' as const);
  fc.assert(
    fc.property(quotable, quotable, form, form, (user, password, userForm, passwordForm) => {
      const command = `t1 LOGIN ${encodeAstring(user, userForm)} ${encodeAstring(password, passwordForm)}\r\n`;
      const got = loginCredentials(Buffer.from(command, 'utf8'));
      return got !== null && got.user === user && got.password === password;
    }),
  );
  t.pass('every generated command read back');
});

t.test('SASL PLAIN, LOGIN, OAUTHBEARER, XOAUTH2', async (t) => {
  t.same(saslCredentials('PLAIN', [b64('\0alice\0secret')]), { kind: 'password', user: 'alice', secret: 'secret' });
  t.same(
    saslCredentials('PLAIN', [b64('admin\0alice\0secret')]),
    { kind: 'password', user: 'alice', secret: 'secret' },
    'the password is the authentication identity\'s, whatever the authorization identity',
  );
  t.equal(saslCredentials('PLAIN', [b64('alice\0secret')]), null, 'one NUL: not PLAIN');
  t.equal(saslCredentials('LOGIN', [b64('alice')]), null, 'LOGIN: nothing until the password');
  t.same(saslCredentials('LOGIN', [b64('alice'), b64('secret')]), { kind: 'password', user: 'alice', secret: 'secret' });
  t.same(
    saslCredentials('OAUTHBEARER', [b64('n,a=alice@example.com,\x01host=imap.example.com\x01port=143\x01auth=Bearer tok.en-1\x01\x01')]),
    { kind: 'bearer', secret: 'tok.en-1' },
  );
  t.same(saslCredentials('XOAUTH2', [b64('user=alice\x01auth=Bearer abc\x01\x01')]), { kind: 'bearer', secret: 'abc' });
  t.equal(saslCredentials('XOAUTH2', [b64('user=alice\x01\x01')]), null, 'no token');
  t.equal(saslCredentials('CRAM-MD5', [b64('alice 0123')]), null, 'no usable secret');
  t.equal(saslCredentials('PLAIN', ['*']), null, 'a cancelled exchange');
  t.equal(saslCredentials('PLAIN', ['not base64!']), null);
  t.equal(saslCredentials('PLAIN', []), null);
});
