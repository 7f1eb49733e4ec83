/**
 * Verified eligibility (--jmap-verify): after a login with an eligible
 * mechanism, check the client's credentials against the JMAP session
 * resource itself (RFC 8620 section 2) instead of assuming that IMAP and
 * JMAP share them.
 *
 * One probe is one GET of the session URL with `Authorization: Basic`
 * (LOGIN/PLAIN passwords) or `Authorization: Bearer` (OAUTHBEARER/XOAUTH2
 * tokens), following same-origin redirects (Cyrus answers /.well-known/jmap
 * with a 301 to /jmap/), and it counts as verified only on HTTP 200 with a
 * valid session object that names a primary mail account.
 *
 * Guarantees:
 *  - verify() never rejects and always ends within timeoutMs (plus a few
 *    milliseconds of event-loop latency): the deadline covers DNS, connect,
 *    TLS, every redirect and the body, and destroys the request when it
 *    fires.
 *  - Secrets live only in the caller's Credential and, during a probe, in
 *    the request's Authorization header. The Buffer this module builds for
 *    Basic is zeroed once encoded. Nothing derived from a secret other than
 *    the cache key (an HMAC-SHA256 under a per-verifier random key) is kept,
 *    logged, reported in an outcome or used as a metric label.
 *  - Definite answers are cached per (url, identity, credential) for ttlMs,
 *    so a client that reconnects often costs one probe; transient failures
 *    are not cached (see isCacheable). Concurrent calls with the same key
 *    share one probe.
 */

import { createHmac, randomBytes } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import { performance } from 'node:perf_hooks';
import type { Logger } from 'pino';
import type { Counter, Histogram } from 'prom-client';
import type { LoginSecret } from './imap/credentials.js';

/** What the JMAP server is asked with: HTTP Basic or a bearer token (read by imap/credentials.ts). */
export type Credential = LoginSecret;

export type VerifyReason =
  | 'unauthorized'
  | 'forbidden'
  | 'http-status'
  | 'bad-session'
  | 'no-mail-account'
  | 'timeout'
  | 'network'
  | 'redirect'
  | 'too-large';

export type VerifyOutcome =
  | { readonly ok: true; readonly cached: boolean; readonly ms: number }
  | {
      readonly ok: false;
      readonly reason: VerifyReason;
      /** Short, secret-free: an HTTP status, an origin, what was wrong with the JSON, a socket error code. */
      readonly detail?: string;
      readonly cached: boolean;
      readonly ms: number;
    };

/** What onProbe is told once per verify() call (a cache hit included). Secret-free. */
export interface ProbeEvent {
  readonly ok: boolean;
  readonly reason?: VerifyReason;
  readonly detail?: string;
  /** Time this call took (for a real probe: the probe's duration). */
  readonly ms: number;
  /** True when this call made no request of its own: a cache hit, or it joined a probe in flight. */
  readonly cached: boolean;
  readonly identity: string;
  readonly url: string;
}

export interface VerifierOptions {
  /** Deadline for one probe: DNS, connect, TLS, redirects and body. */
  timeoutMs: number;
  /** How long definite answers are cached. 0 disables the cache (in-flight sharing stays). */
  ttlMs: number;
  /** Trusted CA certificates (PEM) for https:// session URLs, instead of Node's list. */
  ca?: string | Buffer | null;
  /** Cache entries at most; the oldest go first. Default 100000. */
  maxEntries?: number;
  /** Largest session body accepted. Default 1 MiB. */
  maxBodyBytes?: number;
  /** Called once per verify() call, after the outcome is known (metrics, logging). Exceptions are swallowed. */
  onProbe?: (event: ProbeEvent) => void;
  /** Probes are logged here: definite answers at debug, transient failures at warn. */
  log?: Logger;
}

export const DEFAULT_MAX_ENTRIES = 100_000;
export const DEFAULT_MAX_BODY_BYTES = 1024 * 1024;
export const MAX_REDIRECTS = 5;

const CORE = 'urn:ietf:params:jmap:core';
const MAIL = 'urn:ietf:params:jmap:mail';
const REDIRECT_STATUSES = new Set([301, 302, 303, 307, 308]);
/** RFC 6750 b64token: what a Bearer credential may look like on the wire. */
const B64TOKEN = /^[A-Za-z0-9\-._~+/]+=*$/;

/** The outcome of one probe, before the per-call fields. */
export type ProbeResult = { ok: true } | { ok: false; reason: VerifyReason; detail?: string };

interface CacheEntry {
  readonly result: ProbeResult;
  readonly expires: number;
}

/**
 * Which answers are cached. Definite answers (the JMAP server said yes or
 * no, or is configured so that it never will: a cross-origin redirect, a
 * 404, an oversized session) are. Transient failures are not, so that the
 * next login tries again: a timeout, a network or TLS error, a 5xx, 408
 * (request timeout) and 429 (too many requests).
 */
export function isCacheable(result: ProbeResult, status?: number): boolean {
  if (result.ok) return true;
  switch (result.reason) {
    case 'timeout':
    case 'network':
      return false;
    case 'http-status':
      return status !== undefined && status < 500 && status !== 408 && status !== 429;
    default:
      return true;
  }
}

export class JmapVerifier {
  private readonly timeoutMs: number;
  private readonly ttlMs: number;
  private readonly ca: string | Buffer | undefined;
  private readonly maxEntries: number;
  private readonly maxBodyBytes: number;
  private readonly onProbe: ((event: ProbeEvent) => void) | undefined;
  private readonly log: Logger | undefined;
  /** Keys the cache; never leaves this object. */
  private readonly hmacKey = randomBytes(32);
  /**
   * Insertion order is expiry order (one ttl for all, a refreshed key is
   * deleted and re-added), so the oldest entry is the first and expired
   * entries are a prefix: eviction and the sweep both start at the front.
   */
  private readonly cache = new Map<string, CacheEntry>();
  private readonly inFlight = new Map<string, Promise<{ result: ProbeResult; status?: number }>>();

  constructor(options: VerifierOptions) {
    if (!(options.timeoutMs > 0)) throw new RangeError('JmapVerifier: timeoutMs must be > 0');
    if (!(options.ttlMs >= 0)) throw new RangeError('JmapVerifier: ttlMs must be >= 0');
    this.timeoutMs = options.timeoutMs;
    this.ttlMs = options.ttlMs;
    this.ca = options.ca ?? undefined;
    this.maxEntries = Math.max(1, Math.floor(options.maxEntries ?? DEFAULT_MAX_ENTRIES));
    this.maxBodyBytes = options.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES;
    this.onProbe = options.onProbe;
    this.log = options.log;
  }

  /** Cache entries held now (expired ones not yet swept included). */
  get size(): number {
    return this.cache.size;
  }

  /** Probes running now. */
  get pending(): number {
    return this.inFlight.size;
  }

  /** Forget every cached answer. */
  clear(): void {
    this.cache.clear();
  }

  /**
   * Never rejects. `identity` is the identity the session logged in as (used
   * in the cache key and logs). Not async on purpose: the credential is used
   * synchronously (cache key, Authorization header) and not kept in a
   * suspended frame while the probe runs.
   */
  verify(url: string, identity: string, credential: Credential): Promise<VerifyOutcome> {
    const started = performance.now();
    let key: string;
    try {
      this.sweep(started);
      key = this.cacheKey(url, identity, credential);
    } catch {
      // Only on a caller's type error (not strings): still an answer, not a rejection.
      return Promise.resolve(this.finish({ ok: false, reason: 'network', detail: 'invalid arguments' }, false, started, String(identity), String(url)));
    }

    const hit = this.cache.get(key);
    if (hit !== undefined && hit.expires > started) return Promise.resolve(this.finish(hit.result, true, started, identity, url));
    if (hit !== undefined) this.cache.delete(key);

    const running = this.inFlight.get(key);
    if (running !== undefined) return running.then(({ result }) => this.finish(result, true, started, identity, url));

    const probe = this.probe(url, credential).then((answer) => {
      this.inFlight.delete(key);
      if (this.ttlMs > 0 && isCacheable(answer.result, answer.status)) this.remember(key, answer.result);
      return answer;
    });
    this.inFlight.set(key, probe);
    return probe.then(({ result }) => this.finish(result, false, started, identity, url));
  }

  private finish(result: ProbeResult, cached: boolean, started: number, identity: string, url: string): VerifyOutcome {
    const ms = Math.round((performance.now() - started) * 10) / 10;
    const outcome: VerifyOutcome = result.ok
      ? { ok: true, cached, ms }
      : result.detail === undefined
        ? { ok: false, reason: result.reason, cached, ms }
        : { ok: false, reason: result.reason, detail: result.detail, cached, ms };
    if (!cached && this.log) {
      try {
        const fields = { url, user: identity, ms, ...(result.ok ? { result: 'verified' } : { result: 'refused', reason: result.reason, detail: result.detail }) };
        if (!result.ok && (result.reason === 'timeout' || result.reason === 'network' || (result.reason === 'http-status' && /^5/.test(result.detail ?? '')))) {
          this.log.warn(fields, 'JMAP verification probe failed');
        } else {
          this.log.debug(fields, 'JMAP verification probe');
        }
      } catch {
        /* logging must not break verification */
      }
    }
    if (this.onProbe) {
      try {
        this.onProbe({
          ok: result.ok,
          ...(result.ok ? {} : { reason: result.reason, ...(result.detail === undefined ? {} : { detail: result.detail }) }),
          ms,
          cached,
          identity,
          url,
        });
      } catch {
        /* a hook must not break verification */
      }
    }
    return outcome;
  }

  /** HMAC-SHA256 over length-prefixed fields: no two different inputs share a byte string. */
  private cacheKey(url: string, identity: string, credential: Credential): string {
    const h = createHmac('sha256', this.hmacKey);
    const field = (value: string) => {
      const bytes = Buffer.from(value, 'utf8');
      const length = Buffer.alloc(4);
      length.writeUInt32BE(bytes.length);
      h.update(length);
      h.update(bytes);
      bytes.fill(0);
    };
    field(url);
    field(identity);
    field(credential.kind);
    field(credential.kind === 'password' ? credential.user : '');
    field(credential.secret);
    return h.digest('base64');
  }

  private remember(key: string, result: ProbeResult): void {
    this.cache.delete(key);
    while (this.cache.size >= this.maxEntries) {
      const oldest = this.cache.keys().next();
      if (oldest.done) break;
      this.cache.delete(oldest.value);
    }
    this.cache.set(key, { result, expires: performance.now() + this.ttlMs });
  }

  /** Drops expired entries from the front; stops at the first live one (see `cache`). O(expired). */
  private sweep(now: number): void {
    for (const [key, entry] of this.cache) {
      if (entry.expires > now) break;
      this.cache.delete(key);
    }
  }

  /** One probe: the session GET with redirects, under one deadline. Never rejects. */
  private probe(url: string, credential: Credential): Promise<{ result: ProbeResult; status?: number }> {
    let authorization: string;
    if (credential.kind === 'password') {
      // RFC 7617: the user-id cannot contain a colon.
      if (credential.user.includes(':')) {
        return Promise.resolve({ result: { ok: false, reason: 'unauthorized', detail: 'user name contains ":" (not expressible in HTTP Basic)' } });
      }
      const plain = Buffer.alloc(Buffer.byteLength(credential.user) + 1 + Buffer.byteLength(credential.secret));
      const n = plain.write(credential.user, 0, 'utf8');
      plain[n] = 0x3a; // ':'
      plain.write(credential.secret, n + 1, 'utf8');
      authorization = `Basic ${plain.toString('base64')}`;
      plain.fill(0);
    } else {
      if (!B64TOKEN.test(credential.secret)) {
        return Promise.resolve({ result: { ok: false, reason: 'unauthorized', detail: 'token is not a valid Bearer credential (RFC 6750 b64token)' } });
      }
      authorization = `Bearer ${credential.secret}`;
    }

    return new Promise((resolve) => {
      let done = false;
      let request: http.ClientRequest | undefined;
      let current: URL;
      let hops = 0;

      const end = (result: ProbeResult, status?: number) => {
        if (done) return;
        done = true;
        clearTimeout(deadline);
        request?.destroy();
        request = undefined;
        authorization = '';
        resolve(status === undefined ? { result } : { result, status });
      };
      const deadline = setTimeout(() => end({ ok: false, reason: 'timeout', detail: `no answer within ${this.timeoutMs} ms` }), this.timeoutMs);

      try {
        current = new URL(url);
      } catch {
        end({ ok: false, reason: 'network', detail: 'invalid URL' });
        return;
      }

      const get = () => {
        if (current.protocol !== 'https:' && current.protocol !== 'http:') {
          end({ ok: false, reason: 'network', detail: `unsupported scheme ${current.protocol}` });
          return;
        }
        const secure = current.protocol === 'https:';
        // Built field by field: userinfo in a URL is never used.
        const options: https.RequestOptions = {
          method: 'GET',
          hostname: current.hostname.replace(/^\[(.*)\]$/, '$1'),
          port: current.port || (secure ? 443 : 80),
          path: `${current.pathname}${current.search}`,
          headers: { authorization, accept: 'application/json', 'user-agent': 'jmapaccess-proxy' },
          // One connection per probe: probes are rare (cached), and no pooled socket outlives them.
          agent: false,
        };
        if (secure && this.ca !== undefined) options.ca = this.ca;
        let req: http.ClientRequest;
        try {
          req = secure ? https.request(options) : http.request(options);
        } catch (err) {
          end({ ok: false, reason: 'network', detail: errorDetail(err) });
          return;
        }
        request = req;
        req.on('error', (err) => end({ ok: false, reason: 'network', detail: errorDetail(err) }));
        req.on('response', (res) => onResponse(req, res));
        req.end();
      };

      const onResponse = (req: http.ClientRequest, res: http.IncomingMessage) => {
        if (done || req !== request) return;
        const status = res.statusCode ?? 0;
        if (REDIRECT_STATUSES.has(status)) {
          res.resume();
          req.destroy();
          const location = res.headers.location;
          let target: URL | undefined;
          try {
            target = location === undefined ? undefined : new URL(location, current);
          } catch {
            target = undefined;
          }
          if (target === undefined) {
            end({ ok: false, reason: 'redirect', detail: `${status} without a usable Location` }, status);
          } else if (target.origin !== current.origin || target.origin === 'null') {
            end({ ok: false, reason: 'redirect', detail: `${status} to another origin (${target.origin})` }, status);
          } else if (++hops > MAX_REDIRECTS) {
            end({ ok: false, reason: 'redirect', detail: `more than ${MAX_REDIRECTS} redirects` }, status);
          } else {
            current = target;
            get();
          }
          return;
        }
        if (status !== 200) {
          res.resume();
          if (status === 401) end({ ok: false, reason: 'unauthorized', detail: '401' }, status);
          else if (status === 403) end({ ok: false, reason: 'forbidden', detail: '403' }, status);
          else end({ ok: false, reason: 'http-status', detail: String(status) }, status);
          return;
        }
        const declared = Number(res.headers['content-length']);
        if (Number.isFinite(declared) && declared > this.maxBodyBytes) {
          end({ ok: false, reason: 'too-large', detail: `Content-Length ${declared} > ${this.maxBodyBytes}` }, status);
          return;
        }
        const chunks: Buffer[] = [];
        let length = 0;
        res.on('data', (chunk: Buffer) => {
          length += chunk.length;
          if (length > this.maxBodyBytes) end({ ok: false, reason: 'too-large', detail: `body over ${this.maxBodyBytes} bytes` }, status);
          else chunks.push(chunk);
        });
        res.on('end', () => end(checkSession(Buffer.concat(chunks, length).toString('utf8')), status));
        res.on('close', () => {
          if (!res.complete) end({ ok: false, reason: 'network', detail: 'response cut short' }, status);
        });
        res.on('error', (err) => end({ ok: false, reason: 'network', detail: errorDetail(err) }, status));
      };

      get();
    });
  }
}

/** A socket/TLS error's code, or its message: neither contains request headers. */
function errorDetail(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  const text = typeof e?.code === 'string' ? e.code : e instanceof Error ? e.message : String(err);
  return text.slice(0, 120);
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * RFC 8620 section 2 session object with a usable mail account (RFC 8621):
 * capabilities with urn:ietf:params:jmap:core, accounts, primaryAccounts,
 * username and apiUrl; primaryAccounts[urn:ietf:params:jmap:mail] names an
 * account in accounts whose accountCapabilities include mail.
 */
export function checkSession(body: string): ProbeResult {
  let session: unknown;
  try {
    session = JSON.parse(body);
  } catch {
    return { ok: false, reason: 'bad-session', detail: 'not JSON' };
  }
  if (!isObject(session)) return { ok: false, reason: 'bad-session', detail: 'not a JSON object' };
  const { capabilities, accounts, primaryAccounts, username, apiUrl } = session;
  if (!isObject(capabilities)) return { ok: false, reason: 'bad-session', detail: 'no capabilities object' };
  if (!Object.hasOwn(capabilities, CORE) || !isObject(capabilities[CORE])) {
    return { ok: false, reason: 'bad-session', detail: `no ${CORE} capability` };
  }
  if (!isObject(accounts)) return { ok: false, reason: 'bad-session', detail: 'no accounts object' };
  if (!isObject(primaryAccounts)) return { ok: false, reason: 'bad-session', detail: 'no primaryAccounts object' };
  if (typeof username !== 'string') return { ok: false, reason: 'bad-session', detail: 'no username string' };
  if (typeof apiUrl !== 'string') return { ok: false, reason: 'bad-session', detail: 'no apiUrl string' };
  const id = Object.hasOwn(primaryAccounts, MAIL) ? primaryAccounts[MAIL] : undefined;
  if (typeof id !== 'string') return { ok: false, reason: 'no-mail-account', detail: 'no primary mail account' };
  const account = Object.hasOwn(accounts, id) ? accounts[id] : undefined;
  if (!isObject(account)) return { ok: false, reason: 'no-mail-account', detail: 'the primary mail account is not in accounts' };
  const accountCapabilities = account.accountCapabilities;
  if (!isObject(accountCapabilities) || !Object.hasOwn(accountCapabilities, MAIL)) {
    return { ok: false, reason: 'no-mail-account', detail: 'the primary mail account has no mail capability' };
  }
  return { ok: true };
}

/** The metrics Metrics has for verification (src/metrics.ts). */
export interface VerifyMetrics {
  readonly jmapVerify: Counter<'result' | 'reason' | 'cache'>;
  readonly jmapVerifySeconds: Histogram;
}

/** An onProbe hook that counts into Metrics: every call by result/reason/cache, real probes' durations. */
export function metricsHook(metrics: VerifyMetrics): (event: ProbeEvent) => void {
  return (event) => {
    metrics.jmapVerify.inc({
      result: event.ok ? 'verified' : 'refused',
      reason: event.ok ? 'ok' : (event.reason ?? 'unknown'),
      cache: event.cached ? 'hit' : 'miss',
    });
    if (!event.cached) metrics.jmapVerifySeconds.observe(event.ms / 1000);
  };
}
