import t from 'tap';
import fc from 'fast-check';
import { saslIdentity } from '../../src/imap/sasl.js';

const b64 = (text: string) => Buffer.from(text, 'utf8').toString('base64');

t.test('PLAIN: the authorization identity wins, the authentication identity otherwise', async (t) => {
  t.equal(saslIdentity('PLAIN', b64('\0alice\0secret')), 'alice');
  t.equal(saslIdentity('PLAIN', b64('admin\0alice\0secret')), 'admin');
  t.equal(saslIdentity('PLAIN', b64('\0al\u00efce@example.test\0pw')), 'al\u00efce@example.test', 'UTF-8 identities');
  t.equal(saslIdentity('PLAIN', b64('\0\0secret')), undefined, 'both empty');
  t.equal(saslIdentity('PLAIN', b64('alice')), undefined, 'no NUL');
  t.equal(saslIdentity('PLAIN', b64('alice\0secret')), undefined, 'one NUL only');
  t.equal(saslIdentity('PLAIN', `${b64('\0alice\0secret')}\r\n`), 'alice', 'a response line with its CRLF');
  t.equal(saslIdentity('PLAIN', ` ${b64('\0bob\0x')} `), 'bob', 'surrounding space');
});

t.test('PLAIN never returns the password', async (t) => {
  fc.assert(
    fc.property(
      fc.stringMatching(/^[a-z]{0,8}$/),
      fc.stringMatching(/^[a-z]{1,8}$/),
      fc.stringMatching(/^[A-Z0-9]{1,16}$/),
      (authz, authc, password) => saslIdentity('PLAIN', b64(`${authz}\0${authc}\0${password}`)) === (authz || authc),
    ),
    { numRuns: 200 },
  );
  t.pass();
});

t.test('LOGIN: the first response is the user name', async (t) => {
  t.equal(saslIdentity('LOGIN', b64('alice@example.test')), 'alice@example.test');
  t.equal(saslIdentity('LOGIN', `${b64('bob')}\r\n`), 'bob');
});

t.test('OAUTHBEARER: the a= field of the GS2 header, with =2C and =3D decoded', async (t) => {
  const tail = '\x01host=imap.example.test\x01port=143\x01auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01';
  t.equal(saslIdentity('OAUTHBEARER', b64(`n,a=user@example.test,${tail}`)), 'user@example.test');
  t.equal(saslIdentity('OAUTHBEARER', b64(`n,a=a=2Cb=3Dc,${tail}`)), 'a,b=c');
  t.equal(saslIdentity('OAUTHBEARER', b64(`n,a=x=3D2Cy,${tail}`)), 'x=2Cy', '=3D2C decodes to "=2C", not ","');
  t.equal(saslIdentity('OAUTHBEARER', b64(`y,a=user@x,${tail}`)), 'user@x', 'channel-binding flag y');
  t.equal(saslIdentity('OAUTHBEARER', b64(`n,,${tail}`)), undefined, 'no authorization identity');
  t.equal(saslIdentity('OAUTHBEARER', b64(`n,a=,${tail}`)), undefined, 'empty authorization identity');
  t.equal(saslIdentity('OAUTHBEARER', b64('n,,\x01auth=Bearer a=notme\x01\x01')), undefined, 'a= after the header is not read');
});

t.test('XOAUTH2: the user= field', async (t) => {
  t.equal(saslIdentity('XOAUTH2', b64('user=someuser@example.com\x01auth=Bearer ya29.vF9dft4qmTc2\x01\x01')), 'someuser@example.com');
  t.equal(saslIdentity('XOAUTH2', b64('user=\x01auth=Bearer x\x01\x01')), undefined, 'empty user');
  t.equal(saslIdentity('XOAUTH2', b64('auth=Bearer x\x01\x01')), undefined, 'no user field');
});

t.test('garbage, empty and cancelled responses give no identity', async (t) => {
  for (const mechanism of ['PLAIN', 'LOGIN', 'OAUTHBEARER', 'XOAUTH2']) {
    for (const response of ['', '=', '*', '*\r\n', '=\r\n', '   ', 'not base64!', 'AB=CD', 'YWxpY2U===', '\u00e9']) {
      t.equal(saslIdentity(mechanism, response), undefined, `${mechanism} ${JSON.stringify(response)}`);
    }
  }
});

t.test('unknown mechanisms give no identity', async (t) => {
  t.equal(saslIdentity('SCRAM-SHA-256', b64('n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL')), undefined);
  t.equal(saslIdentity('EXTERNAL', b64('alice')), undefined);
  t.equal(saslIdentity('plain', b64('\0alice\0pw')), undefined, 'mechanism names are matched upper-case (callers upper-case them)');
});

t.test('never throws on arbitrary input', async (t) => {
  fc.assert(
    fc.property(
      fc.constantFrom('PLAIN', 'LOGIN', 'OAUTHBEARER', 'XOAUTH2', 'OTHER'),
      fc.oneof(fc.string(), fc.uint8Array({ maxLength: 100 }).map((a) => Buffer.from(a).toString('base64'))),
      (mechanism, response) => {
        const id = saslIdentity(mechanism, response);
        return id === undefined || (typeof id === 'string' && id.length > 0);
      },
    ),
    { numRuns: 500 },
  );
  t.pass();
});
