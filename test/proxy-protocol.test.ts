/**
 * The HAProxy PROXY protocol codec on its own (src/proxy-protocol.ts):
 * encode/parse round trips, exact bytes, `incomplete` for every strict
 * prefix, `invalid` for everything that is not a header.
 * https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt
 */

import t from 'tap';
import fc from 'fast-check';
import net from 'node:net';
import {
  encodeLocal,
  encodeV1,
  encodeV2,
  parseProxyHeader,
  V2_SIGNATURE,
  type Endpoints,
  type ParseResult,
} from '../src/proxy-protocol.js';

const latin1 = (text: string) => Buffer.from(text, 'latin1');

/** One form per IPv6 address (RFC 5952, as the WHATWG URL parser writes it), IPv4 unchanged. */
function canonical(address: string): string {
  return net.isIPv4(address) ? address : new URL(`http://[${address}]/`).hostname.slice(1, -1);
}

function canonicalEndpoints(e: Endpoints): Endpoints {
  return { ...e, sourceAddress: canonical(e.sourceAddress), destinationAddress: canonical(e.destinationAddress) };
}

function headerOf(result: ParseResult): { length: number; endpoints: Endpoints | null } {
  if (result.kind !== 'header') throw new Error(`expected a header, got ${JSON.stringify(result)}`);
  return { length: result.length, endpoints: result.endpoints };
}

// ---------------------------------------------------------------------------
// arbitraries

const port = fc.integer({ min: 0, max: 65535 });
const ipv4 = fc.ipV4();
/** IPv6 in plain hex groups (compressed the canonical way): fc.ipV6() also yields dotted tails, see below. */
const ipv6 = fc
  .array(fc.integer({ min: 0, max: 0xffff }), { minLength: 8, maxLength: 8 })
  .map((groups) => canonical(groups.map((g) => g.toString(16)).join(':')))
  .filter((a) => !/^::ffff:/.test(a) && !a.includes('.'));
const mapped = ipv4.map((a) => `::ffff:${a}`);

const endpointsOf = (address: fc.Arbitrary<string>) =>
  fc.record({ sourceAddress: address, sourcePort: port, destinationAddress: address, destinationPort: port });

const v4Endpoints = endpointsOf(ipv4);
const v6Endpoints = endpointsOf(ipv6);

/** Any valid header this module can write, with what it names. */
const anyHeader = fc.oneof(
  fc.tuple(fc.constantFrom(encodeV1, encodeV2), fc.oneof(v4Endpoints, v6Endpoints)).map(([encode, e]) => encode(e)),
  fc.constantFrom(encodeLocal('v1'), encodeLocal('v2')),
);

// ---------------------------------------------------------------------------

const CLIENT: Endpoints = { sourceAddress: '192.0.2.10', sourcePort: 40000, destinationAddress: '127.0.0.1', destinationPort: 143 };
const CLIENT6: Endpoints = { sourceAddress: '2001:db8::10', sourcePort: 40000, destinationAddress: '2001:db8::1', destinationPort: 993 };

t.test('v1: the exact line', async (t) => {
  t.equal(encodeV1(CLIENT).toString('latin1'), 'PROXY TCP4 192.0.2.10 127.0.0.1 40000 143\r\n');
  t.equal(encodeV1(CLIENT6).toString('latin1'), 'PROXY TCP6 2001:db8::10 2001:db8::1 40000 993\r\n');
  t.equal(
    encodeV1({ sourceAddress: '::ffff:192.0.2.10', sourcePort: 1, destinationAddress: '::ffff:127.0.0.1', destinationPort: 2 }).toString('latin1'),
    'PROXY TCP4 192.0.2.10 127.0.0.1 1 2\r\n',
    'IPv4-mapped addresses are written as IPv4',
  );
  t.equal(encodeLocal('v1').toString('latin1'), 'PROXY UNKNOWN\r\n');
});

t.test('v2: signature, version/command, family, lengths, addresses and ports in network order', async (t) => {
  t.same([...V2_SIGNATURE], [0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
  const v4 = encodeV2(CLIENT);
  t.equal(v4.length, 16 + 12);
  t.same(v4.subarray(0, 12), V2_SIGNATURE, 'signature');
  t.same(
    [...v4.subarray(12)],
    [0x21, 0x11, 0x00, 0x0c, 192, 0, 2, 10, 127, 0, 0, 1, 0x9c, 0x40, 0x00, 0x8f],
    'v2 PROXY, TCP over IPv4, 12 address bytes: source, destination, source port 40000, destination port 143',
  );
  const v6 = encodeV2(CLIENT6);
  t.equal(v6.length, 16 + 36);
  t.same([...v6.subarray(12, 16)], [0x21, 0x21, 0x00, 0x24], 'v2 PROXY, TCP over IPv6, 36 address bytes');
  t.same(v6.subarray(16, 32), Buffer.from('20010db8000000000000000000000010', 'hex'), 'source address');
  t.same(v6.subarray(32, 48), Buffer.from('20010db8000000000000000000000001', 'hex'), 'destination address');
  t.same([...v6.subarray(48)], [0x9c, 0x40, 0x03, 0xe1], 'ports 40000 and 993');
  const mappedV2 = encodeV2({ ...CLIENT, sourceAddress: '::ffff:192.0.2.10', destinationAddress: '::ffff:127.0.0.1' });
  t.same(mappedV2, v4, 'IPv4-mapped addresses are written as IPv4');
  t.same([...encodeLocal('v2')], [...V2_SIGNATURE, 0x20, 0x00, 0x00, 0x00], 'LOCAL: v2, command 0, no addresses');
});

t.test('round trips', async (t) => {
  t.test('v1 and v2, IPv4', async (t) => {
    fc.assert(
      fc.property(v4Endpoints, (e) => {
        for (const encode of [encodeV1, encodeV2]) {
          const bytes = encode(e);
          const parsed = headerOf(parseProxyHeader(bytes));
          t.equal(parsed.length, bytes.length);
          t.same(parsed.endpoints, e);
        }
      }),
    );
  });

  t.test('v1: IPv6 addresses come back as written', async (t) => {
    fc.assert(
      fc.property(endpointsOf(fc.oneof(ipv6, fc.ipV6().filter((a) => !a.startsWith('::ffff:')))), (e) => {
        const bytes = encodeV1(e);
        t.same(headerOf(parseProxyHeader(bytes)), { length: bytes.length, endpoints: e });
      }),
    );
  });

  t.test('v2: IPv6, the same addresses (in whatever notation)', async (t) => {
    fc.assert(
      fc.property(v6Endpoints, (e) => {
        const bytes = encodeV2(e);
        const parsed = headerOf(parseProxyHeader(bytes));
        t.equal(parsed.length, bytes.length);
        t.ok(parsed.endpoints);
        t.same(canonicalEndpoints(parsed.endpoints as Endpoints), canonicalEndpoints(e));
      }),
    );
  });

  t.test('::ffff:1.2.3.4 comes back as 1.2.3.4 (v1 TCP4, v2 IPv4 family)', async (t) => {
    fc.assert(
      fc.property(endpointsOf(mapped), (e) => {
        const unmapped = { ...e, sourceAddress: e.sourceAddress.slice(7), destinationAddress: e.destinationAddress.slice(7) };
        const v1 = encodeV1(e);
        t.match(v1.toString('latin1'), /^PROXY TCP4 /);
        t.same(headerOf(parseProxyHeader(v1)).endpoints, unmapped);
        const v2 = encodeV2(e);
        t.equal(v2[13], 0x11);
        t.same(headerOf(parseProxyHeader(v2)).endpoints, unmapped);
      }),
    );
  });

  t.test('v2: one mapped address next to an IPv6 one keeps its IPv4 meaning', async (t) => {
    const e = { sourceAddress: '::ffff:192.0.2.10', sourcePort: 1, destinationAddress: '2001:db8::1', destinationPort: 2 };
    const bytes = encodeV2(e);
    t.equal(bytes[13], 0x21, 'IPv6 family');
    t.same(bytes.subarray(16, 32), Buffer.from('00000000000000000000ffffc000020a', 'hex'));
    const parsed = headerOf(parseProxyHeader(bytes)).endpoints as Endpoints;
    t.equal(parsed.sourceAddress, '192.0.2.10', 'an IPv4-mapped address is read back as the IPv4 address (as logs and Dovecot want it)');
    t.equal(canonical(parsed.destinationAddress), canonical(e.destinationAddress));
  });

  t.test('v2: IPv6 addresses written with a dotted IPv4 tail', async (t) => {
    // Legal IPv6 text (RFC 4291 2.2): NAT64 (64:ff9b::/96) clients, or what
    // a load balancer's v1 header carries, re-encoded as v2 toward Dovecot.
    for (const address of ['64:ff9b::192.0.2.1', '::192.0.2.1', '2001:db8:1:2:3:4:192.0.2.1']) {
      const e = { sourceAddress: address, sourcePort: 1, destinationAddress: '2001:db8::1', destinationPort: 2 };
      const parsed = headerOf(parseProxyHeader(encodeV2(e))).endpoints as Endpoints;
      t.equal(canonical(parsed.sourceAddress), canonical(address), `${address} is encoded as the same 16 bytes`);
    }
  });
});

t.test('LOCAL (v2) and UNKNOWN (v1) name no endpoints', async (t) => {
  t.same(parseProxyHeader(encodeLocal('v1')), { kind: 'header', length: 15, endpoints: null });
  t.same(parseProxyHeader(encodeLocal('v2')), { kind: 'header', length: 16, endpoints: null });
  const unknownWithAddresses = latin1('PROXY UNKNOWN 192.0.2.10 127.0.0.1 40000 143\r\n');
  t.same(parseProxyHeader(unknownWithAddresses), { kind: 'header', length: unknownWithAddresses.length, endpoints: null }, 'whatever follows UNKNOWN is ignored');
  // LOCAL with an address block (HAProxy's health checks may send one): skipped, not used.
  const local = Buffer.from(encodeV2(CLIENT));
  local[12] = 0x20;
  t.same(parseProxyHeader(local), { kind: 'header', length: 28, endpoints: null });
  // PROXY with AF_UNSPEC or AF_UNIX: no IP endpoints.
  t.same(parseProxyHeader(Buffer.concat([V2_SIGNATURE, Buffer.from([0x21, 0x00, 0x00, 0x00])])), { kind: 'header', length: 16, endpoints: null });
  const unix = Buffer.concat([V2_SIGNATURE, Buffer.from([0x21, 0x31, 0x00, 216]), Buffer.alloc(216)]);
  t.same(parseProxyHeader(unix), { kind: 'header', length: 232, endpoints: null });
});

t.test('v2: TLVs after the addresses are part of the header, and skipped', async (t) => {
  const plain = encodeV2(CLIENT);
  const tlv = Buffer.from([0x04, 0x00, 0x05, 0x61, 0x62, 0x63, 0x64, 0x65]); // PP2_TYPE_NOOP, 5 bytes
  const header = Buffer.concat([plain.subarray(0, 14), Buffer.from([0x00, 12 + tlv.length]), plain.subarray(16), tlv]);
  t.same(parseProxyHeader(Buffer.concat([header, latin1('a NOOP\r\n')])), { kind: 'header', length: header.length, endpoints: CLIENT });
  t.same(parseProxyHeader(header.subarray(0, header.length - 1)), { kind: 'incomplete' }, 'waits for the TLVs too');
});

t.test('a header followed by IMAP bytes: length is the header\'s alone', async (t) => {
  const imap = latin1('a LOGIN alice alicepw\r\nb NOOP\r\n');
  for (const header of [encodeV1(CLIENT), encodeV2(CLIENT), encodeV1(CLIENT6), encodeV2(CLIENT6), encodeLocal('v1'), encodeLocal('v2')]) {
    const result = headerOf(parseProxyHeader(Buffer.concat([header, imap])));
    t.equal(result.length, header.length);
  }
  fc.assert(
    fc.property(anyHeader, fc.uint8Array({ maxLength: 300 }), (header, rest) => {
      const result = parseProxyHeader(Buffer.concat([header, rest]));
      return result.kind === 'header' && result.length === header.length;
    }),
  );
});

t.test('incomplete: every strict prefix of a valid header', async (t) => {
  t.same(parseProxyHeader(Buffer.alloc(0)), { kind: 'incomplete' });
  t.same(parseProxyHeader(latin1('\r\n')), { kind: 'incomplete' }, 'CRLF: the start of the v2 signature');
  // Every prefix of a few fixed headers...
  for (const header of [encodeV1(CLIENT), encodeV2(CLIENT), encodeV1(CLIENT6), encodeV2(CLIENT6), encodeLocal('v1'), encodeLocal('v2')]) {
    const kinds = new Set<string>();
    for (let k = 0; k < header.length; k++) kinds.add(parseProxyHeader(header.subarray(0, k)).kind);
    t.same([...kinds], ['incomplete'], `${header.length}-byte header: all ${header.length} strict prefixes`);
  }
  // ...and an arbitrary split point of arbitrary ones.
  fc.assert(
    fc.property(anyHeader, fc.nat(), (header, n) => {
      const k = n % header.length;
      return parseProxyHeader(header.subarray(0, k)).kind === 'incomplete';
    }),
  );
});

t.test('fed in arbitrary chunks (as the listener reads it), the header is found once, the rest kept', async (t) => {
  fc.assert(
    fc.property(anyHeader, fc.uint8Array({ maxLength: 100 }), fc.array(fc.nat(), { maxLength: 6 }), (header, rest, cuts) => {
      const data = Buffer.concat([header, rest]);
      const points = [...new Set(cuts.map((c) => c % (data.length + 1)))].sort((a, b) => a - b);
      let buffered = Buffer.alloc(0);
      let start = 0;
      for (const end of [...points, data.length]) {
        buffered = Buffer.concat([buffered, data.subarray(start, end)]);
        start = end;
        const result = parseProxyHeader(buffered);
        if (result.kind === 'incomplete') continue;
        if (result.kind !== 'header' || result.length !== header.length) return false;
        return buffered.subarray(result.length).equals(data.subarray(header.length, end));
      }
      return false;
    }),
  );
});

t.test('invalid', async (t) => {
  const invalid = (bytes: Buffer | string, what: string) => {
    const result = parseProxyHeader(typeof bytes === 'string' ? latin1(bytes) : bytes);
    t.equal(result.kind, 'invalid', `${what}: ${JSON.stringify(typeof bytes === 'string' ? bytes : bytes.toString('hex'))}`);
  };

  t.test('garbage, and IMAP/TLS/HTTP that is not a header', async () => {
    invalid('a NOOP\r\n', 'an IMAP command');
    invalid('a', 'one byte that cannot start a header');
    invalid('PRX', 'a wrong start, known before any CRLF');
    invalid('proxy TCP4 192.0.2.10 127.0.0.1 40000 143\r\n', 'lower-case PROXY');
    invalid('PROXYTCP4 192.0.2.10 127.0.0.1 40000 143\r\n', 'no space after PROXY');
    invalid('GET / HTTP/1.1\r\n', 'HTTP');
    invalid(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01]), 'a TLS ClientHello');
    invalid(Buffer.from([0x00, 0x0d, 0x0a]), 'a NUL');
    invalid('\r\na NOOP\r\n', 'an empty line, then a command');
  });

  t.test('v2: wrong signature byte, at every position', async () => {
    for (let i = 0; i < 12; i++) {
      const header = Buffer.from(encodeV2(CLIENT));
      header[i] = (header[i] as number) ^ 0x40;
      invalid(header, `byte ${i} changed`);
      invalid(header.subarray(0, i + 1), `byte ${i} changed, only that far received`);
    }
  });

  t.test('v2: unsupported version, unknown command', async () => {
    for (const versionCommand of [0x11, 0x31, 0x01, 0xf1]) {
      const header = Buffer.from(encodeV2(CLIENT));
      header[12] = versionCommand;
      invalid(header, `version/command byte 0x${versionCommand.toString(16)}`);
    }
    for (const versionCommand of [0x22, 0x23, 0x2f]) {
      const header = Buffer.from(encodeV2(CLIENT));
      header[12] = versionCommand;
      invalid(header, `unknown command 0x${versionCommand.toString(16)}`);
    }
  });

  t.test('v1: no CRLF within 107 bytes', async (t) => {
    t.same(parseProxyHeader(latin1(`PROXY ${'A'.repeat(101)}`)), { kind: 'incomplete' }, '107 bytes, no CRLF yet: still waiting');
    invalid(`PROXY ${'A'.repeat(102)}`, '108 bytes without CRLF');
    invalid(`PROXY TCP4 192.0.2.10 127.0.0.1 40000 143\n${'a NOOP\n'.repeat(20)}`, 'LF-only line endings');
  });

  t.test('v1: bad protocol, addresses, ports, field counts', async () => {
    const line = (fields: string) => `PROXY ${fields}\r\n`;
    invalid(line('TCP5 192.0.2.10 127.0.0.1 40000 143'), 'protocol TCP5');
    invalid(line('UDP4 192.0.2.10 127.0.0.1 40000 143'), 'protocol UDP4');
    invalid(line('tcp4 192.0.2.10 127.0.0.1 40000 143'), 'lower-case protocol');
    invalid(line('TCP4 256.0.2.10 127.0.0.1 40000 143'), 'octet above 255');
    invalid(line('TCP4 192.0.2 127.0.0.1 40000 143'), 'three octets');
    invalid(line('TCP4 192.0.2.10 localhost 40000 143'), 'a host name');
    invalid(line('TCP4 2001:db8::1 127.0.0.1 40000 143'), 'IPv6 under TCP4');
    invalid(line('TCP6 192.0.2.10 2001:db8::1 40000 143'), 'IPv4 under TCP6');
    invalid(line('TCP6 2001:db8:::1 2001:db8::1 40000 143'), 'malformed IPv6');
    invalid(line('TCP4 192.0.2.10 127.0.0.1 -1 143'), 'negative port');
    invalid(line('TCP4 192.0.2.10 127.0.0.1 40000 0x8f'), 'hex port');
    invalid(line('TCP4 192.0.2.10 127.0.0.1 40000 143456'), 'six-digit port');
    invalid(line('TCP4 192.0.2.10 127.0.0.1 40000 '), 'empty port');
    invalid(line('TCP4 192.0.2.10 127.0.0.1 40000'), 'a field missing');
    invalid(line('TCP4 192.0.2.10 127.0.0.1 40000 143 extra'), 'a field too many');
    invalid(line('TCP4  192.0.2.10 127.0.0.1 40000 143'), 'two spaces');
    invalid(line(''), 'nothing after PROXY');
  });

  t.test('v1: ports above 65535', async () => {
    // The spec: "a decimal integer in the range [0..65535]".
    invalid('PROXY TCP4 192.0.2.10 127.0.0.1 65536 143\r\n', 'source port 65536');
    invalid('PROXY TCP4 192.0.2.10 127.0.0.1 40000 99999\r\n', 'destination port 99999');
  });

  t.test('arbitrary bytes: never throws, and a header is never longer than the input', async () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.uint8Array({ maxLength: 200 }).map((a) => Buffer.from(a)),
          fc.uint8Array({ maxLength: 60 }).map((a) => Buffer.concat([V2_SIGNATURE, Buffer.from(a)])),
          fc.string({ maxLength: 120 }).map((s) => latin1(`PROXY ${s}`)),
        ),
        (bytes) => {
          const result = parseProxyHeader(bytes);
          return result.kind !== 'header' || (result.length > 0 && result.length <= bytes.length);
        },
      ),
    );
  });
});
