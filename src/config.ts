/**
 * The validated configuration of one proxy process. Everything the CLI (or
 * a test) hands in goes through validateConfig(): a Config is always valid.
 */

import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { availableParallelism } from 'node:os';
import { ConfigError } from './config-error.js';
import { JmapUrlResolver, validateJmapUrl } from './jmap-url.js';
import { JmapUserFilter } from './jmap-users.js';

export type ObjectIdMode = 'require' | 'assume';
export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';

export interface HostPort {
  readonly host: string;
  readonly port: number;
}

export interface Config {
  readonly listen: HostPort;
  readonly upstream: HostPort;
  /** TLS toward the upstream, or null for plain TCP. */
  readonly upstreamTls: UpstreamTls | null;
  /**
   * --jmap-url as given: the JMAP session resource URL (RFC 8620 section 2),
   * or a template with {user}/{localpart}/{domain}; '' when only
   * --jmap-url-map is given.
   */
  readonly jmapUrl: string;
  /**
   * The URL written as an IMAP `quoted` string when it is the same for every
   * session (jmapUrls.static); '' when it depends on the identity (a
   * template or a map): then use jmapUrls.resolve(user).
   */
  readonly jmapUrlQuoted: string;
  /** The JMAP URL of each identity (--jmap-url template, --jmap-url-map); map reloaded on SIGHUP. */
  readonly jmapUrls: JmapUrlResolver;
  /** --jmap-users-allow / --jmap-users-deny. */
  readonly jmapUsers: JmapUserFilter;
  /** --jmap-verify: grant only after checking the credentials against the JMAP server. */
  readonly jmapVerify: boolean;
  /** --jmap-verify-timeout, in milliseconds (above zero). */
  readonly jmapVerifyTimeoutMs: number;
  /** --jmap-verify-ttl, in milliseconds: how long a verification result is remembered (0: not at all). */
  readonly jmapVerifyTtlMs: number;
  /** --jmap-verify-ca: PEM CA certificates to verify the JMAP server with, instead of Node's list. */
  readonly jmapVerifyCa: Buffer | null;
  /** The --jmap-verify-ca file name (for logs), or null. */
  readonly jmapVerifyCaFile: string | null;
  /** Upper-cased; `LOGIN` covers both the LOGIN command and the SASL LOGIN mechanism. */
  readonly jmapMechanisms: ReadonlySet<string>;
  readonly objectId: ObjectIdMode;
  readonly allowInsecureJmapUrl: boolean;
  readonly maxLineLength: number;
  /** Milliseconds to wait for the upstream's TCP connection. */
  readonly upstreamConnectTimeoutMs: number;
  /**
   * lazy: greet clients with the upstream's last greeting and connect
   * upstream at the client's first line; eager: connect at once (greeting.ts).
   */
  readonly upstreamConnect: 'lazy' | 'eager';
  readonly logLevel: LogLevel;
  /** Implicit-TLS listener (993-style), or null. */
  readonly listenTls: HostPort | null;
  /** Certificates for the client side, or null when the proxy does no TLS toward clients. */
  readonly tls: ClientTlsConfig | null;
  /** Refuse LOGIN/AUTHENTICATE on a plain client link until STARTTLS. */
  readonly requireTls: boolean;
  /** Offer COMPRESS=DEFLATE to logged-in clients (RFC 4978). */
  readonly compress: boolean;
  /** Prometheus metrics and health endpoints, or null. */
  readonly metricsListen: HostPort | null;
  /** Client connections at once, in all (0: no limit). */
  readonly maxConnections: number;
  /** Client connections at once from one address (0: no limit). */
  readonly maxConnectionsPerIp: number;
  /** Time a client has to log in. */
  readonly preauthTimeoutMs: number;
  /** Time without a byte from the client before the session is closed. */
  readonly idleTimeoutMs: number;
  /** On SIGTERM/SIGINT, how long sessions may go on before they are told BYE. */
  readonly shutdownGraceMs: number;
  /** How the upstream learns the client's address: not at all, or an ID command (Dovecot). */
  readonly forwardClientIp: 'none' | 'id';
  /** Send a PROXY protocol header to the upstream first (Dovecot `haproxy = yes`). */
  readonly upstreamProxyProtocol: 'v1' | 'v2' | null;
  /** Read a PROXY header from connections coming from `trustedProxies`. */
  readonly acceptProxyProtocol: boolean;
  /** Addresses or CIDR ranges of load balancers (with --accept-proxy-protocol). */
  readonly trustedProxies: readonly string[];
  /**
   * Processes serving clients: 1 is a single process (no cluster); more
   * means a primary process and this many workers sharing the listeners.
   */
  readonly workers: number;
}

export interface UpstreamTls {
  /** `implicit`: imaps://; `starttls`: the proxy runs STARTTLS before relaying. */
  readonly mode: 'implicit' | 'starttls';
  /** Trusted CA certificates (PEM) instead of Node's bundled list. */
  readonly ca: Buffer | null;
  /** The name to verify and send as SNI; defaults to the upstream host when it is a name. */
  readonly servername: string | null;
  /** Skip certificate verification (self-signed labs only). */
  readonly insecure: boolean;
}

export type TlsVersion = 'TLSv1.2' | 'TLSv1.3';

export interface CertificateFiles {
  readonly certFile: string;
  readonly keyFile: string;
}

export interface ClientTlsConfig {
  /** The first pair is the default; the others are chosen by SNI. */
  readonly certificates: readonly CertificateFiles[];
  readonly minVersion: TlsVersion;
}

export { ConfigError };
export { validateJmapUrl };

export interface RawConfig {
  listen: string;
  upstream: string;
  /** A URL or a template; may be omitted (or '') when jmapUrlMap is given. */
  jmapUrl?: string;
  jmapUrlMap?: string;
  jmapUsersAllow?: string | readonly string[];
  jmapUsersDeny?: string | readonly string[];
  jmapVerify?: boolean;
  jmapVerifyTimeout?: string | number;
  jmapVerifyTtl?: string | number;
  jmapVerifyCa?: string;
  jmapMechanisms?: string | readonly string[];
  objectId?: string;
  allowInsecureJmapUrl?: boolean;
  maxLineLength?: number;
  upstreamConnectTimeout?: string | number;
  logLevel?: string;
  listenTls?: string;
  tlsCert?: string | readonly string[];
  tlsKey?: string | readonly string[];
  requireTls?: boolean;
  tlsMinVersion?: string;
  upstreamStarttls?: boolean;
  upstreamCa?: string;
  upstreamServername?: string;
  upstreamTlsInsecure?: boolean;
  compress?: boolean;
  metricsListen?: string;
  maxConnections?: number;
  maxConnectionsPerIp?: number;
  preauthTimeout?: string | number;
  idleTimeout?: string | number;
  shutdownGrace?: string | number;
  forwardClientIp?: string;
  upstreamConnect?: string;
  upstreamProxyProtocol?: string;
  acceptProxyProtocol?: boolean;
  trustedProxies?: string | readonly string[];
  /** A count, or `auto` for one per available CPU. */
  workers?: string | number;
}

export const DEFAULT_MECHANISMS = ['LOGIN', 'PLAIN', 'OAUTHBEARER', 'XOAUTH2'] as const;
export const DEFAULT_MAX_LINE_LENGTH = 65536;
const MIN_LINE_LENGTH = 1024;
const MAX_LINE_LENGTH = 16 * 1024 * 1024;
/** Sanity bound for --workers (and the cap of `auto`). */
export const MAX_WORKERS = 64;
const LOG_LEVELS: readonly LogLevel[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

/** `HOST:PORT`, `[v6]:PORT`, or `:PORT` / `PORT` meaning all interfaces. */
export function parseHostPort(text: string, what: string): HostPort {
  const value = text.trim();
  let host: string;
  let portText: string;
  const v6 = /^\[([^\]]+)\]:(\d+)$/.exec(value);
  if (v6) {
    host = v6[1] as string;
    portText = v6[2] as string;
  } else if (/^\d+$/.test(value)) {
    host = '0.0.0.0';
    portText = value;
  } else {
    const colon = value.lastIndexOf(':');
    if (colon === -1) throw new ConfigError(`${what}: expected HOST:PORT, got "${text}"`);
    host = value.slice(0, colon) || '0.0.0.0';
    portText = value.slice(colon + 1);
    if (host.includes(':')) throw new ConfigError(`${what}: write IPv6 addresses in brackets, as [::1]:143`);
  }
  if (!/^\d+$/.test(portText)) throw new ConfigError(`${what}: port must be a number, got "${portText}"`);
  const port = Number(portText);
  // Port 0 asks the system for a free port (useful for tests and --check-style runs).
  if (port > 65535) throw new ConfigError(`${what}: port ${port} is out of range 0-65535`);
  return { host, port };
}

/** `imap://HOST:PORT` (the port defaults to 143). */
export function parseUpstream(text: string): HostPort {
  return parseUpstreamUrl(text).address;
}

/**
 * `imap://HOST:PORT` (default port 143), `imap://HOST:PORT?starttls`, or
 * `imaps://HOST:PORT` (default port 993).
 */
export function parseUpstreamUrl(text: string): { address: HostPort; tls: 'implicit' | 'starttls' | null } {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new ConfigError(`--upstream: "${text}" is not a URL; expected imap://HOST:PORT`);
  }
  if (url.protocol !== 'imap:' && url.protocol !== 'imaps:') {
    throw new ConfigError(`--upstream: scheme must be imap:// or imaps://, got "${url.protocol}//"`);
  }
  if (url.username || url.password) throw new ConfigError('--upstream: must not contain credentials');
  const starttls = url.search === '?starttls' && url.protocol === 'imap:';
  if ((url.pathname && url.pathname !== '/') || (url.search && !starttls) || url.hash) {
    throw new ConfigError(
      `--upstream: expected imap://HOST:PORT, imap://HOST:PORT?starttls or imaps://HOST:PORT, got "${text}"`,
    );
  }
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
  if (!host) throw new ConfigError('--upstream: missing host');
  const implicit = url.protocol === 'imaps:';
  const port = url.port ? Number(url.port) : implicit ? 993 : 143;
  if (port < 1) throw new ConfigError('--upstream: port must be 1-65535');
  return { address: { host, port }, tls: implicit ? 'implicit' : starttls ? 'starttls' : null };
}

/** Plain seconds (`2.5`) or a number with a unit: `500ms`, `30s`, `31m`, `2h`. */
export function parseDuration(value: string | number, what: string): number {
  if (typeof value === 'number') {
    if (!Number.isFinite(value) || value < 0) throw new ConfigError(`${what}: must be a non-negative number of seconds`);
    return Math.round(value * 1000);
  }
  const match = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$/.exec(value);
  if (!match) throw new ConfigError(`${what}: expected seconds or a duration such as 500ms, 30s, 31m; got "${value}"`);
  const amount = Number(match[1]);
  const unit = match[2] ?? 's';
  const factor = unit === 'ms' ? 1 : unit === 's' ? 1000 : unit === 'm' ? 60_000 : 3_600_000;
  return Math.round(amount * factor);
}

function parseMechanisms(value: string | readonly string[] | undefined): Set<string> {
  const items = value === undefined ? [...DEFAULT_MECHANISMS] : typeof value === 'string' ? [value] : [...value];
  const mechanisms = new Set<string>();
  for (const item of items) {
    for (const part of item.split(',')) {
      const mechanism = part.trim().toUpperCase();
      if (mechanism === '') continue;
      if (!/^[A-Z0-9_-]{1,20}$/.test(mechanism)) {
        throw new ConfigError(`--jmap-mechanisms: "${part.trim()}" is not a SASL mechanism name`);
      }
      mechanisms.add(mechanism);
    }
  }
  return mechanisms;
}

export function validateConfig(raw: RawConfig): Config {
  if (!raw.upstream) throw new ConfigError('--upstream is required (imap://HOST:PORT)');
  if (!raw.jmapUrl && !raw.jmapUrlMap) {
    throw new ConfigError('--jmap-url is required (the JMAP session resource URL), unless --jmap-url-map is given');
  }
  const objectId = raw.objectId ?? 'require';
  if (objectId !== 'require' && objectId !== 'assume') {
    throw new ConfigError(`--objectid: must be "require" or "assume", got "${objectId}"`);
  }
  const maxLineLength = raw.maxLineLength ?? DEFAULT_MAX_LINE_LENGTH;
  if (!Number.isInteger(maxLineLength) || maxLineLength < MIN_LINE_LENGTH || maxLineLength > MAX_LINE_LENGTH) {
    throw new ConfigError(`--max-line-length: must be an integer from ${MIN_LINE_LENGTH} to ${MAX_LINE_LENGTH}`);
  }
  const logLevel = (raw.logLevel ?? 'info') as LogLevel;
  if (!LOG_LEVELS.includes(logLevel)) throw new ConfigError(`--log-level: must be one of ${LOG_LEVELS.join(', ')}`);
  const allowInsecureJmapUrl = raw.allowInsecureJmapUrl ?? false;
  const jmapUrls = new JmapUrlResolver({ jmapUrl: raw.jmapUrl, mapFile: raw.jmapUrlMap, allowInsecure: allowInsecureJmapUrl });
  const jmapStatic = jmapUrls.static;
  const upstreamConnectTimeoutMs = parseDuration(raw.upstreamConnectTimeout ?? '10s', '--upstream-connect-timeout');
  if (upstreamConnectTimeoutMs < 1) throw new ConfigError('--upstream-connect-timeout: must be above zero');
  return {
    listen: parseHostPort(raw.listen, '--listen'),
    ...validateUpstream(raw),
    jmapUrl: raw.jmapUrl ?? '',
    jmapUrlQuoted: jmapStatic?.quoted ?? '',
    jmapUrls,
    jmapUsers: JmapUserFilter.fromFlags(raw.jmapUsersAllow, raw.jmapUsersDeny),
    ...validateJmapVerify(raw),
    jmapMechanisms: parseMechanisms(raw.jmapMechanisms),
    objectId,
    allowInsecureJmapUrl,
    maxLineLength,
    upstreamConnectTimeoutMs,
    upstreamConnect: oneOf(raw.upstreamConnect ?? 'lazy', ['lazy', 'eager'] as const, '--upstream-connect'),
    logLevel,
    ...validateClientTls(raw),
    compress: raw.compress ?? true,
    metricsListen: raw.metricsListen ? parseHostPort(raw.metricsListen, '--metrics-listen') : null,
    maxConnections: count(raw.maxConnections ?? 10_000, '--max-connections'),
    maxConnectionsPerIp: count(raw.maxConnectionsPerIp ?? 0, '--max-connections-per-ip'),
    preauthTimeoutMs: positiveDuration(raw.preauthTimeout ?? '60s', '--preauth-timeout'),
    idleTimeoutMs: positiveDuration(raw.idleTimeout ?? '31m', '--idle-timeout'),
    shutdownGraceMs: parseDuration(raw.shutdownGrace ?? '30s', '--shutdown-grace'),
    forwardClientIp: oneOf(raw.forwardClientIp ?? 'none', ['none', 'id'] as const, '--forward-client-ip'),
    upstreamProxyProtocol: raw.upstreamProxyProtocol
      ? oneOf(raw.upstreamProxyProtocol, ['v1', 'v2'] as const, '--upstream-proxy-protocol')
      : null,
    ...validateProxyProtocol(raw),
    workers: parseWorkers(raw.workers ?? 1),
  };
}

/** `auto` (one per available CPU, at most MAX_WORKERS) or a whole number from 1 to MAX_WORKERS. */
export function parseWorkers(value: string | number, cpus: () => number = availableParallelism): number {
  const text = String(value).trim().toLowerCase();
  if (text === 'auto') return Math.max(1, Math.min(MAX_WORKERS, cpus()));
  const n = /^\d+$/.test(text) ? Number(text) : NaN;
  if (!Number.isInteger(n) || n < 1 || n > MAX_WORKERS) {
    throw new ConfigError(`--workers: must be a whole number from 1 to ${MAX_WORKERS}, or auto; got "${String(value)}"`);
  }
  return n;
}

function asList(value: string | readonly string[] | undefined): string[] {
  if (value === undefined) return [];
  return (typeof value === 'string' ? [value] : [...value]).filter((v) => v !== '');
}

/**
 * `--tls-cert` and `--tls-key` are repeatable and paired in order; the
 * first pair is the default certificate, the others are picked by SNI.
 * The files themselves are read (and checked) when the server starts.
 */
function validateClientTls(raw: RawConfig): Pick<Config, 'listenTls' | 'tls' | 'requireTls'> {
  const certs = asList(raw.tlsCert);
  const keys = asList(raw.tlsKey);
  if (certs.length !== keys.length) {
    throw new ConfigError(`--tls-cert and --tls-key come in pairs: got ${certs.length} certificate(s) and ${keys.length} key(s)`);
  }
  const minVersion = raw.tlsMinVersion ?? 'TLSv1.2';
  if (minVersion !== 'TLSv1.2' && minVersion !== 'TLSv1.3') {
    throw new ConfigError(`--tls-min-version: must be TLSv1.2 or TLSv1.3, got "${minVersion}"`);
  }
  const tls: ClientTlsConfig | null =
    certs.length === 0
      ? null
      : { certificates: certs.map((certFile, i) => ({ certFile, keyFile: keys[i] as string })), minVersion };
  const listenTls = raw.listenTls ? parseHostPort(raw.listenTls, '--listen-tls') : null;
  if (listenTls && !tls) throw new ConfigError('--listen-tls needs a certificate: add --tls-cert FILE --tls-key FILE');
  if (raw.requireTls && !tls) throw new ConfigError('--require-tls needs a certificate: add --tls-cert FILE --tls-key FILE');
  // With a certificate, plaintext logins are refused unless explicitly allowed.
  const requireTls = tls !== null && (raw.requireTls ?? true);
  return { listenTls, tls, requireTls };
}

/** The upstream address and how to secure the link to it. */
function validateUpstream(raw: RawConfig): Pick<Config, 'upstream' | 'upstreamTls'> {
  const { address, tls } = parseUpstreamUrl(raw.upstream);
  if (tls === 'implicit' && raw.upstreamStarttls) {
    throw new ConfigError('--upstream-starttls does not go with imaps:// (which is TLS from the first byte)');
  }
  const mode = tls ?? (raw.upstreamStarttls ? 'starttls' : null);
  if (!mode) {
    for (const [flag, value] of [
      ['--upstream-ca', raw.upstreamCa],
      ['--upstream-servername', raw.upstreamServername],
      ['--upstream-tls-insecure', raw.upstreamTlsInsecure],
    ] as const) {
      if (value) throw new ConfigError(`${flag} needs TLS to the upstream: imaps://, ?starttls or --upstream-starttls`);
    }
    return { upstream: address, upstreamTls: null };
  }
  let ca: Buffer | null = null;
  if (raw.upstreamCa) {
    try {
      ca = readFileSync(raw.upstreamCa);
    } catch (err) {
      throw new ConfigError(`--upstream-ca: cannot read ${raw.upstreamCa}: ${(err as Error).message}`);
    }
    if (!ca.includes('-----BEGIN CERTIFICATE-----')) throw new ConfigError(`--upstream-ca: ${raw.upstreamCa} holds no PEM certificate`);
  }
  return {
    upstream: address,
    upstreamTls: { mode, ca, servername: raw.upstreamServername || null, insecure: raw.upstreamTlsInsecure ?? false },
  };
}

/** --jmap-verify and its settings; the CA file is read (and checked) now. */
function validateJmapVerify(raw: RawConfig): Pick<Config, 'jmapVerify' | 'jmapVerifyTimeoutMs' | 'jmapVerifyTtlMs' | 'jmapVerifyCa' | 'jmapVerifyCaFile'> {
  const jmapVerify = raw.jmapVerify ?? false;
  const jmapVerifyTimeoutMs = positiveDuration(raw.jmapVerifyTimeout ?? '2s', '--jmap-verify-timeout');
  const jmapVerifyTtlMs = parseDuration(raw.jmapVerifyTtl ?? '10m', '--jmap-verify-ttl');
  let jmapVerifyCa: Buffer | null = null;
  if (raw.jmapVerifyCa) {
    if (!jmapVerify) throw new ConfigError('--jmap-verify-ca needs --jmap-verify');
    try {
      jmapVerifyCa = readFileSync(raw.jmapVerifyCa);
    } catch (err) {
      throw new ConfigError(`--jmap-verify-ca: cannot read ${raw.jmapVerifyCa}: ${(err as Error).message}`);
    }
    if (!jmapVerifyCa.includes('-----BEGIN CERTIFICATE-----')) {
      throw new ConfigError(`--jmap-verify-ca: ${raw.jmapVerifyCa} holds no PEM certificate`);
    }
  }
  return { jmapVerify, jmapVerifyTimeoutMs, jmapVerifyTtlMs, jmapVerifyCa, jmapVerifyCaFile: raw.jmapVerifyCa || null };
}

/** The configuration as logged (at start-up and on SIGHUP): no key material, sets as lists. */
export function describeConfig(config: Config): Record<string, unknown> {
  return {
    ...config,
    jmapMechanisms: [...config.jmapMechanisms],
    jmapUrls: config.jmapUrls.describe(),
    jmapUsers: config.jmapUsers.describe(),
    jmapVerifyCa: config.jmapVerifyCa ? 'from --jmap-verify-ca' : 'system',
    upstreamTls: config.upstreamTls && { ...config.upstreamTls, ca: config.upstreamTls.ca ? 'from --upstream-ca' : 'system' },
  };
}

function count(value: number, what: string): number {
  if (!Number.isInteger(value) || value < 0) throw new ConfigError(`${what}: must be a whole number, 0 for no limit`);
  return value;
}

function positiveDuration(value: string | number, what: string): number {
  const ms = parseDuration(value, what);
  if (ms < 1) throw new ConfigError(`${what}: must be above zero`);
  return ms;
}

function oneOf<T extends string>(value: string, choices: readonly T[], what: string): T {
  if (!(choices as readonly string[]).includes(value)) throw new ConfigError(`${what}: must be one of ${choices.join(', ')}, got "${value}"`);
  return value as T;
}

function validateProxyProtocol(raw: RawConfig): Pick<Config, 'acceptProxyProtocol' | 'trustedProxies'> {
  const trustedProxies = asList(raw.trustedProxies).flatMap((item) => item.split(',').map((s) => s.trim()).filter(Boolean));
  for (const cidr of trustedProxies) {
    const [address = '', prefix, extra] = cidr.split('/');
    const version = isIP(address);
    const bits = version === 4 ? 32 : 128;
    if (!version || extra !== undefined || (prefix !== undefined && !(/^\d+$/.test(prefix) && Number(prefix) <= bits))) {
      throw new ConfigError(`--trusted-proxies: "${cidr}" is not an address or CIDR range`);
    }
  }
  const acceptProxyProtocol = raw.acceptProxyProtocol ?? false;
  if (acceptProxyProtocol && trustedProxies.length === 0) {
    throw new ConfigError('--accept-proxy-protocol needs --trusted-proxies CIDR,... (the load balancers allowed to send PROXY headers)');
  }
  return { acceptProxyProtocol, trustedProxies };
}
