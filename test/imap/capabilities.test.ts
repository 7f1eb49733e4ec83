import t from 'tap';
import fc from 'fast-check';
import { hasCapability, isProxyOwned, JMAPACCESS, rewriteCapabilities, type CapabilityOffer } from '../../src/imap/capabilities.js';

/** The offer of a plain-text link without TLS support: only the JMAPACCESS decision varies. */
const jmapOnly = (jmapAccess: boolean): CapabilityOffer => ({ jmapAccess, startTls: false, loginDisabled: false, compress: false });

t.test('isProxyOwned: JMAPACCESS, STARTTLS and COMPRESS=*, in any case', async (t) => {
  for (const atom of ['JMAPACCESS', 'jmapaccess', 'JmapAccess', 'STARTTLS', 'starttls', 'COMPRESS=DEFLATE', 'compress=deflate', 'COMPRESS=ZSTD']) {
    t.ok(isProxyOwned(atom), atom);
  }
  for (const atom of ['IMAP4rev1', 'IDLE', 'OBJECTID', 'COMPRESS', 'STARTTLSX', 'XSTARTTLS', 'JMAPACCESS2', 'LOGINDISABLED', 'AUTH=PLAIN', '']) {
    t.notOk(isProxyOwned(atom), JSON.stringify(atom));
  }
});

t.test('hasCapability is case-insensitive and exact', async (t) => {
  t.ok(hasCapability(['IMAP4rev1', 'objectid'], 'OBJECTID'));
  t.ok(hasCapability(['IMAP4rev1', 'OBJECTID'], 'objectid'));
  t.notOk(hasCapability(['IMAP4rev1', 'OBJECTIDS'], 'OBJECTID'));
  t.notOk(hasCapability([], 'OBJECTID'));
});

t.test('rewriteCapabilities: examples', async (t) => {
  const upstream = ['IMAP4rev1', 'STARTTLS', 'AUTH=PLAIN', 'COMPRESS=DEFLATE', 'jmapaccess', 'IDLE', 'starttls', 'Compress=Deflate'];
  t.same(rewriteCapabilities(upstream, jmapOnly(false)), ['IMAP4rev1', 'AUTH=PLAIN', 'IDLE']);
  t.same(rewriteCapabilities(upstream, jmapOnly(true)), ['IMAP4rev1', 'AUTH=PLAIN', 'IDLE', 'JMAPACCESS']);
  t.same(rewriteCapabilities(['IMAP4rev1', 'JMAPACCESS', 'JMAPACCESS'], jmapOnly(true)), ['IMAP4rev1', 'JMAPACCESS'], 'added exactly once');
  t.same(rewriteCapabilities([], jmapOnly(true)), ['JMAPACCESS']);
  t.same(rewriteCapabilities([], jmapOnly(false)), []);
  const input = ['IMAP4rev1', 'STARTTLS'];
  rewriteCapabilities(input, jmapOnly(true));
  t.same(input, ['IMAP4rev1', 'STARTTLS'], 'the input list is not modified');
});

const atom = fc.oneof(
  fc.constantFrom(
    'IMAP4rev1',
    'IMAP4rev2',
    'IDLE',
    'OBJECTID',
    'LITERAL+',
    'AUTH=PLAIN',
    'STARTTLS',
    'starttls',
    'StartTLS',
    'COMPRESS=DEFLATE',
    'compress=deflate',
    'COMPRESS=X',
    'COMPRESS',
    'JMAPACCESS',
    'jmapaccess',
    'JmApAcCeSs',
  ),
  fc.stringMatching(/^[A-Za-z0-9=+.-]{1,12}$/),
);

t.test('rewriteCapabilities: property', async (t) => {
  fc.assert(
    fc.property(fc.array(atom, { maxLength: 20 }), fc.boolean(), (atoms, grant) => {
      const out = rewriteCapabilities(atoms, jmapOnly(grant));
      const owned = out.filter((a) => isProxyOwned(a));
      // Only the proxy's own JMAPACCESS, exactly once when granted, last.
      if (grant) {
        if (owned.length !== 1 || owned[0] !== JMAPACCESS || out[out.length - 1] !== JMAPACCESS) return false;
      } else if (owned.length !== 0) {
        return false;
      }
      // Everything else is kept, in order.
      const kept = atoms.filter((a) => !isProxyOwned(a));
      return JSON.stringify(out.slice(0, kept.length)) === JSON.stringify(kept) && out.length === kept.length + (grant ? 1 : 0);
    }),
    { numRuns: 500 },
  );
  t.pass('rewriteCapabilities keeps everything not proxy-owned, in order, and adds JMAPACCESS only when granted');
});

t.test('rewriteCapabilities: STARTTLS and LOGINDISABLED are the proxy\'s offer, not the upstream\'s', async (t) => {
  const upstream = ['IMAP4rev1', 'STARTTLS', 'AUTH=PLAIN', 'AUTH=LOGIN', 'SASL-IR', 'LOGINDISABLED'];
  t.same(
    rewriteCapabilities(upstream, { jmapAccess: false, startTls: true, loginDisabled: true, compress: false }),
    ['IMAP4rev1', 'SASL-IR', 'STARTTLS', 'LOGINDISABLED'],
    'TLS required and possible: AUTH= hidden, LOGINDISABLED once, STARTTLS offered',
  );
  t.same(
    rewriteCapabilities(upstream, { jmapAccess: false, startTls: false, loginDisabled: false, compress: false }),
    ['IMAP4rev1', 'AUTH=PLAIN', 'AUTH=LOGIN', 'SASL-IR', 'LOGINDISABLED'],
    'without TLS duties the upstream\'s own LOGINDISABLED passes through',
  );
  t.same(rewriteCapabilities(['IMAP4rev1'], { jmapAccess: true, startTls: true, loginDisabled: false, compress: false }), ['IMAP4rev1', 'STARTTLS', 'JMAPACCESS']);
});

t.test('rewriteCapabilities: COMPRESS=DEFLATE is the proxy\'s own offer', async (t) => {
  t.same(
    rewriteCapabilities(['IMAP4rev1', 'COMPRESS=DEFLATE', 'COMPRESS=ZSTD', 'IDLE'], { jmapAccess: true, startTls: false, loginDisabled: false, compress: true }),
    ['IMAP4rev1', 'IDLE', 'COMPRESS=DEFLATE', 'JMAPACCESS'],
    'the upstream\'s offers are replaced by exactly one COMPRESS=DEFLATE',
  );
});
