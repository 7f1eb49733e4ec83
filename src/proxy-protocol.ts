/**
 * HAProxy PROXY protocol headers (v1 text, v2 binary): written toward the
 * upstream so it learns the client's address (Dovecot `haproxy = yes`
 * listeners), and read from load balancers in front of the proxy.
 * https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt
 */

import net from 'node:net';

export interface Endpoints {
  readonly sourceAddress: string;
  readonly sourcePort: number;
  readonly destinationAddress: string;
  readonly destinationPort: number;
}

/** The v2 signature: CR LF CR LF NUL CR LF "QUIT" LF. */
export const V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);

/** An IPv4 address mapped into IPv6 (`::ffff:1.2.3.4`) is written as IPv4. */
function unmap(address: string): string {
  return address.startsWith('::ffff:') && net.isIPv4(address.slice(7)) ? address.slice(7) : address;
}

function familyOf(endpoints: Endpoints): 4 | 6 {
  const source = unmap(endpoints.sourceAddress);
  const destination = unmap(endpoints.destinationAddress);
  return net.isIPv4(source) && net.isIPv4(destination) ? 4 : 6;
}

function ipv6Bytes(address: string): Buffer {
  const unmapped = unmap(address);
  if (net.isIPv4(unmapped)) return Buffer.from([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, ...unmapped.split('.').map(Number)]);
  // A dotted IPv4 tail (`64:ff9b::192.0.2.1`) stands for the last two groups.
  const dotted = /^(.*:)(\d+\.\d+\.\d+\.\d+)$/.exec(unmapped);
  const text = dotted
    ? `${dotted[1]}${(() => {
        const [a = 0, b = 0, c = 0, d = 0] = (dotted[2] as string).split('.').map(Number);
        return `${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
      })()}`
    : unmapped;
  const [head = '', tail = ''] = text.split('::');
  const parts = (s: string) => (s === '' ? [] : s.split(':'));
  const groups = [...parts(head), ...Array(8 - parts(head).length - parts(tail).length).fill('0'), ...parts(tail)];
  const out = Buffer.alloc(16);
  groups.forEach((g, i) => out.writeUInt16BE(parseInt(g, 16), i * 2));
  return out;
}

export function encodeV1(endpoints: Endpoints): Buffer {
  const family = familyOf(endpoints);
  const source = family === 4 ? unmap(endpoints.sourceAddress) : endpoints.sourceAddress;
  const destination = family === 4 ? unmap(endpoints.destinationAddress) : endpoints.destinationAddress;
  return Buffer.from(`PROXY TCP${family} ${source} ${destination} ${endpoints.sourcePort} ${endpoints.destinationPort}\r\n`, 'latin1');
}

export function encodeV2(endpoints: Endpoints): Buffer {
  const family = familyOf(endpoints);
  const addresses =
    family === 4
      ? Buffer.concat([
          Buffer.from(unmap(endpoints.sourceAddress).split('.').map(Number)),
          Buffer.from(unmap(endpoints.destinationAddress).split('.').map(Number)),
          Buffer.alloc(4),
        ])
      : Buffer.concat([ipv6Bytes(endpoints.sourceAddress), ipv6Bytes(endpoints.destinationAddress), Buffer.alloc(4)]);
  const ports = addresses.length - 4;
  addresses.writeUInt16BE(endpoints.sourcePort, ports);
  addresses.writeUInt16BE(endpoints.destinationPort, ports + 2);
  const header = Buffer.alloc(4);
  header[0] = 0x21; // version 2, PROXY command
  header[1] = family === 4 ? 0x11 : 0x21; // TCP over IPv4 / IPv6
  header.writeUInt16BE(addresses.length, 2);
  return Buffer.concat([V2_SIGNATURE, header, addresses]);
}

/** A header that carries no client (health checks, --check): v1 UNKNOWN, v2 LOCAL. */
export function encodeLocal(version: 'v1' | 'v2'): Buffer {
  if (version === 'v1') return Buffer.from('PROXY UNKNOWN\r\n', 'latin1');
  return Buffer.concat([V2_SIGNATURE, Buffer.from([0x20, 0x00, 0x00, 0x00])]);
}

export type ParseResult =
  /** More bytes are needed. */
  | { readonly kind: 'incomplete' }
  | { readonly kind: 'invalid'; readonly reason: string }
  /** `endpoints` is null for LOCAL (v2) or UNKNOWN (v1): use the connection's own addresses. */
  | { readonly kind: 'header'; readonly length: number; readonly endpoints: Endpoints | null };

const V1_MAX = 107;

const isPort = (text: string | undefined): boolean => /^\d{1,5}$/.test(text ?? '') && Number(text) <= 65535;
const V2_MAX = 16 + 65535;

/** Parses a PROXY header at the start of `data`. */
export function parseProxyHeader(data: Buffer): ParseResult {
  if (data.length === 0) return { kind: 'incomplete' };
  if (data[0] === 0x0d) {
    const have = Math.min(data.length, V2_SIGNATURE.length);
    if (!data.subarray(0, have).equals(V2_SIGNATURE.subarray(0, have))) return { kind: 'invalid', reason: 'not a PROXY header' };
    if (data.length < 16) return { kind: 'incomplete' };
    const versionCommand = data[12] as number;
    if (versionCommand >> 4 !== 2) return { kind: 'invalid', reason: 'unsupported PROXY v2 version' };
    const length = 16 + data.readUInt16BE(14);
    if (length > V2_MAX) return { kind: 'invalid', reason: 'PROXY v2 header too long' };
    if (data.length < length) return { kind: 'incomplete' };
    const command = versionCommand & 0x0f;
    if (command === 0) return { kind: 'header', length, endpoints: null }; // LOCAL: health checks
    if (command !== 1) return { kind: 'invalid', reason: 'unknown PROXY v2 command' };
    const family = (data[13] as number) >> 4;
    const body = data.subarray(16, length);
    if (family === 1 && body.length >= 12) {
      return {
        kind: 'header',
        length,
        endpoints: {
          sourceAddress: [...body.subarray(0, 4)].join('.'),
          destinationAddress: [...body.subarray(4, 8)].join('.'),
          sourcePort: body.readUInt16BE(8),
          destinationPort: body.readUInt16BE(10),
        },
      };
    }
    if (family === 2 && body.length >= 36) {
      const v6 = (b: Buffer) =>
        b.subarray(0, 10).every((x) => x === 0) && b[10] === 0xff && b[11] === 0xff
          ? [...b.subarray(12, 16)].join('.') // IPv4-mapped: the IPv4 address itself
          : [...Array(8).keys()].map((i) => b.readUInt16BE(i * 2).toString(16)).join(':');
      return {
        kind: 'header',
        length,
        endpoints: {
          sourceAddress: v6(body.subarray(0, 16)),
          destinationAddress: v6(body.subarray(16, 32)),
          sourcePort: body.readUInt16BE(32),
          destinationPort: body.readUInt16BE(34),
        },
      };
    }
    return { kind: 'header', length, endpoints: null }; // UNSPEC or unix sockets: keep the connection's addresses
  }
  const prefix = 'PROXY ';
  const have = Math.min(data.length, prefix.length);
  if (data.toString('latin1', 0, have) !== prefix.slice(0, have)) return { kind: 'invalid', reason: 'not a PROXY header' };
  const end = data.indexOf('\r\n');
  if (end === -1) return data.length > V1_MAX ? { kind: 'invalid', reason: 'PROXY v1 header too long' } : { kind: 'incomplete' };
  const parts = data.toString('latin1', 0, end).split(' ');
  if (parts[1] === 'UNKNOWN') return { kind: 'header', length: end + 2, endpoints: null };
  const [, proto, source, destination, sourcePort, destinationPort] = parts;
  const valid =
    parts.length === 6 &&
    ((proto === 'TCP4' && net.isIPv4(source ?? '') && net.isIPv4(destination ?? '')) ||
      (proto === 'TCP6' && net.isIPv6(source ?? '') && net.isIPv6(destination ?? ''))) &&
    isPort(sourcePort) &&
    isPort(destinationPort);
  if (!valid) return { kind: 'invalid', reason: 'malformed PROXY v1 header' };
  return {
    kind: 'header',
    length: end + 2,
    endpoints: {
      sourceAddress: source as string,
      destinationAddress: destination as string,
      sourcePort: Number(sourcePort),
      destinationPort: Number(destinationPort),
    },
  };
}
