/**
 * Per-user and per-domain JMAP URLs: `--jmap-url` templates with {user},
 * {localpart} and {domain}, and the `--jmap-url-map` file that picks a URL
 * (or template) by the domain of the authenticated identity.
 *
 * Everything that can be checked is checked at start-up (ConfigError, exit
 * 2). What depends on the identity is checked for each identity by
 * JmapUrlResolver.resolve(), which never throws and never returns a URL
 * that a static --jmap-url would not have been allowed to be: an identity
 * that cannot give such a URL makes the session ineligible, with a reason.
 *
 * The only I/O here is reading the map file (loadUrlMap, reload).
 */

import { readFileSync } from 'node:fs';
import { ConfigError } from './config-error.js';
import { quoteImapString } from './imap/quote.js';

export type Placeholder = 'user' | 'localpart' | 'domain';
const PLACEHOLDERS: readonly Placeholder[] = ['user', 'localpart', 'domain'];

export type TemplatePart = { readonly literal: string } | { readonly placeholder: Placeholder };

export interface JmapUrlTemplate {
  /** The text as written (for logs). */
  readonly source: string;
  readonly parts: readonly TemplatePart[];
  /** The placeholders the template uses; empty for a plain URL. */
  readonly placeholders: ReadonlySet<Placeholder>;
  /** A placeholder stands in the authority (host), so each expansion's host is checked. */
  readonly inAuthority: boolean;
  /** The validated URL and its quoted form when the template has no placeholder. */
  readonly static: { readonly url: string; readonly quoted: string } | null;
  /** http:// (only with --allow-insecure-jmap-url). */
  readonly insecure: boolean;
}

/** Why an identity has no JMAP URL; the session is then not eligible for JMAPACCESS. */
export type UrlRefusalReason =
  /** The template or map needs an identity and the session has none. */
  | 'no-identity'
  /** The identity is not well-formed Unicode (a lone UTF-16 surrogate) and cannot be percent-encoded. */
  | 'invalid-identity'
  /** {domain} is needed and the identity has no `@`, or nothing after its last `@`. */
  | 'no-domain'
  /** {localpart} is needed and the identity has nothing before its last `@`. */
  | 'no-localpart'
  /** The map has no entry for the domain, no `*`, and there is no --jmap-url. */
  | 'no-url'
  /** A placeholder in the host gave something that is not a DNS name. */
  | 'invalid-host'
  /** The expanded URL is longer than MAX_URL_LENGTH. */
  | 'url-too-long'
  /** The expanded URL fails the checks a static --jmap-url must pass. */
  | 'invalid-url';

export type UrlResolution =
  | { readonly ok: true; readonly url: string; readonly quoted: string }
  | { readonly ok: false; readonly reason: UrlRefusalReason };

/** Longest URL an identity may produce (RFC 9110 section 4.1 recommends supporting 8000 octets). */
export const MAX_URL_LENGTH = 8000;

/** The identity used to try a template at start-up (and each map entry, with the entry's domain). */
export const SAMPLE_LOCALPART = 'alice';
export const SAMPLE_DOMAIN = 'example.com';

/** Characters RFC 3986 allows anywhere in a URI (the same set validateJmapUrl enforces). */
const URI_CHARS = /[^A-Za-z0-9\-._~:/?#[\]@!$&'()*+,;=%]/;
const DNS_LABEL = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/i;

/**
 * The JMAP session URL must be absolute, https (unless explicitly allowed),
 * and writable as an IMAP quoted string: RFC 9698 puts it in `quoted`, and a
 * URL that cannot be written so is refused now rather than at run time.
 */
export function validateJmapUrl(text: string, allowInsecure: boolean): { url: string; quoted: string } {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new ConfigError(`--jmap-url: "${text}" is not an absolute URL`);
  }
  if (url.protocol !== 'https:' && !(allowInsecure && url.protocol === 'http:')) {
    const hint = url.protocol === 'http:' ? ' (use --allow-insecure-jmap-url for a lab or test setup)' : '';
    throw new ConfigError(`--jmap-url: must be an https:// URL, got "${url.protocol}//"${hint}`);
  }
  if (url.username || url.password) throw new ConfigError('--jmap-url: must not contain credentials');
  if (url.hash) throw new ConfigError('--jmap-url: must not contain a #fragment');
  // The URL is sent as given (operators expect their exact string back), so
  // the given text itself must be a plain RFC 3986 URI, not merely something
  // the WHATWG parser repairs: a client's parser could read a backslash,
  // a space or a control character differently from ours.
  const bad = URI_CHARS.exec(text);
  if (bad) {
    const shown = JSON.stringify(bad[0]);
    throw new ConfigError(`--jmap-url: ${shown} is not allowed in a URL (RFC 3986); percent-encode it`);
  }
  if (/%(?![0-9A-Fa-f]{2})/.test(text)) throw new ConfigError('--jmap-url: "%" must start a %XX escape');
  const quoted = quoteImapString(text);
  if (quoted === null) throw new ConfigError('--jmap-url: cannot be written as an IMAP quoted string');
  return { url: text, quoted };
}

/**
 * Parses `text` as a template. A text with no placeholder is a plain URL and
 * is validated exactly as validateJmapUrl does. `what` prefixes messages
 * (`--jmap-url`, or `map.txt:3` for a map line).
 */
export function parseTemplate(
  text: string,
  allowInsecure: boolean,
  what = '--jmap-url',
  sample: string = `${SAMPLE_LOCALPART}@${SAMPLE_DOMAIN}`,
): JmapUrlTemplate {
  const parts: TemplatePart[] = [];
  const placeholders = new Set<Placeholder>();
  let literal = '';
  for (let i = 0; i < text.length; i++) {
    const ch = text[i] as string;
    if (ch === '}') throw new ConfigError(`${what}: "}" without "{" at position ${i + 1}`);
    if (ch !== '{') {
      literal += ch;
      continue;
    }
    const end = text.indexOf('}', i + 1);
    const open = text.indexOf('{', i + 1);
    if (end === -1 || (open !== -1 && open < end)) throw new ConfigError(`${what}: "{" without "}" at position ${i + 1}`);
    const name = text.slice(i + 1, end);
    if (!(PLACEHOLDERS as readonly string[]).includes(name)) {
      throw new ConfigError(`${what}: unknown placeholder {${name}}; use {user}, {localpart} or {domain}`);
    }
    if (literal) parts.push({ literal });
    literal = '';
    parts.push({ placeholder: name as Placeholder });
    placeholders.add(name as Placeholder);
    i = end;
  }
  if (literal) parts.push({ literal });

  if (placeholders.size === 0) {
    const checked = rethrowAs(what, () => validateJmapUrl(text, allowInsecure));
    return {
      source: text,
      parts,
      placeholders,
      inAuthority: false,
      static: checked,
      insecure: /^http:/i.test(text),
    };
  }

  // The scheme and the `//` before the authority must be literal text.
  const first = parts[0];
  const head = first && 'literal' in first ? first.literal : '';
  const scheme = /^([A-Za-z][A-Za-z0-9+.-]*):\/\//.exec(head);
  if (!scheme) throw new ConfigError(`${what}: must start with https:// before any placeholder, got "${text}"`);
  const protocol = (scheme[1] as string).toLowerCase();
  if (protocol !== 'https' && !(allowInsecure && protocol === 'http')) {
    const hint = protocol === 'http' ? ' (use --allow-insecure-jmap-url for a lab or test setup)' : '';
    throw new ConfigError(`${what}: must be an https:// URL, got "${protocol}://"${hint}`);
  }
  for (const part of parts) {
    if (!('literal' in part)) continue;
    const bad = URI_CHARS.exec(part.literal);
    if (bad) throw new ConfigError(`${what}: ${JSON.stringify(bad[0])} is not allowed in a URL (RFC 3986); percent-encode it`);
    if (part.literal.includes('#')) throw new ConfigError(`${what}: must not contain a #fragment`);
  }
  if (/%(?![0-9A-Fa-f]{2})/.test(parts.map((p) => ('literal' in p ? p.literal : 'x')).join(''))) {
    throw new ConfigError(`${what}: "%" must start a %XX escape`);
  }
  const template: JmapUrlTemplate = {
    source: text,
    parts,
    placeholders,
    inAuthority: placeholderInAuthority(parts, scheme[0].length),
    static: null,
    insecure: protocol === 'http',
  };
  // What is left depends on the values: try it with a sample identity.
  const tried = expandTemplate(template, sample, allowInsecure);
  if (!tried.ok) {
    const detail =
      tried.reason === 'invalid-url'
        ? explainInvalid(template, sample, allowInsecure)
        : tried.reason === 'invalid-host'
          ? `the host of ${substituteFor(template, sample)} is not a DNS name (placeholders are percent-encoded)`
          : tried.reason;
    throw new ConfigError(`${what}: the template gives no valid URL for the identity ${sample}: ${detail}`);
  }
  return template;
}

function rethrowAs<T>(what: string, fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    if (err instanceof ConfigError && what !== '--jmap-url') {
      throw new ConfigError(err.message.replace(/^--jmap-url: ?/, `${what}: `));
    }
    throw err;
  }
}

function substituteFor(template: JmapUrlTemplate, identity: string): string {
  const values = identityValues(identity);
  return values.ok ? substitute(template, values) : template.source;
}

function explainInvalid(template: JmapUrlTemplate, identity: string, allowInsecure: boolean): string {
  const url = substituteFor(template, identity);
  try {
    validateJmapUrl(url, allowInsecure);
    return 'invalid-url';
  } catch (err) {
    return `${url}: ${(err as Error).message.replace(/^--jmap-url: /, '')}`;
  }
}

/** True when a placeholder comes before the end of the authority (the first `/`, `?` or `#` after `scheme://`). */
function placeholderInAuthority(parts: readonly TemplatePart[], authorityStart: number): boolean {
  let offset = 0;
  for (const part of parts) {
    if (!('literal' in part)) return true;
    const from = Math.max(0, authorityStart - offset);
    if (/[/?#]/.test(part.literal.slice(from)) && offset + part.literal.length > authorityStart) return false;
    offset += part.literal.length;
  }
  return false;
}

/**
 * Percent-encodes `value` as an RFC 3986 component: every UTF-8 byte except
 * the unreserved characters (ALPHA DIGIT - . _ ~) becomes %XX (upper case).
 * Null when `value` is not well-formed Unicode (a lone surrogate).
 */
export function encodeComponent(value: string): string | null {
  let encoded: string;
  try {
    encoded = encodeURIComponent(value);
  } catch {
    return null;
  }
  // encodeURIComponent leaves ! ' ( ) * as they are; RFC 3986 reserves them.
  return encoded.replace(/[!'()*]/g, (c) => `%${(c.codePointAt(0) as number).toString(16).toUpperCase()}`);
}

export interface IdentityParts {
  /** The identity as given. */
  readonly user: string;
  /** Before the last `@` (the whole identity when there is none). */
  readonly localpart: string;
  /** After the last `@`, lower-cased; null when there is no `@` or nothing after it. */
  readonly domain: string | null;
}

/** Splits an identity at its LAST `@` (a quoted localpart may hold `@`). */
export function splitIdentity(identity: string): IdentityParts {
  const at = identity.lastIndexOf('@');
  if (at === -1) return { user: identity, localpart: identity, domain: null };
  const domain = identity.slice(at + 1).toLowerCase();
  return { user: identity, localpart: identity.slice(0, at), domain: domain === '' ? null : domain };
}

type Values = { ok: true; values: Record<Placeholder, string | null> } | { ok: false; reason: UrlRefusalReason };

function identityValues(identity: string): Values {
  const { user, localpart, domain } = splitIdentity(identity);
  const encode = (v: string) => encodeComponent(v);
  const encUser = encode(user);
  const encLocal = encode(localpart);
  const encDomain = domain === null ? null : encode(domain);
  if (encUser === null || encLocal === null || (domain !== null && encDomain === null)) {
    return { ok: false, reason: 'invalid-identity' };
  }
  return { ok: true, values: { user: encUser, localpart: encLocal, domain: encDomain } };
}

function substitute(template: JmapUrlTemplate, values: Extract<Values, { ok: true }>): string {
  return template.parts.map((p) => ('literal' in p ? p.literal : (values.values[p.placeholder] ?? ''))).join('');
}

/** The host of an absolute URL written `scheme://[userinfo@]host[:port]...` (the text, not normalised). */
function hostOf(url: string): string {
  const start = url.indexOf('//') + 2;
  const rest = url.slice(start);
  const authority = rest.slice(0, rest.search(/[/?#]|$/));
  const hostPort = authority.slice(authority.lastIndexOf('@') + 1);
  if (hostPort.startsWith('[')) return hostPort.slice(0, hostPort.indexOf(']') + 1);
  const colon = hostPort.lastIndexOf(':');
  return colon === -1 ? hostPort : hostPort.slice(0, colon);
}

/** A host name usable in DNS: LDH labels of 1-63 characters, 253 at most, not all-numeric at the end. */
export function isDnsName(host: string): boolean {
  if (host.length === 0 || host.length > 253) return false;
  const labels = host.split('.');
  if (!labels.every((l) => DNS_LABEL.test(l))) return false;
  // A numeric last label would read as (part of) an IPv4 address.
  return !/^\d+$/.test(labels[labels.length - 1] as string);
}

/**
 * The URL `template` gives for `identity`, checked as a static --jmap-url
 * would be. Never throws.
 */
export function expandTemplate(template: JmapUrlTemplate, identity: string | undefined, allowInsecure: boolean): UrlResolution {
  if (template.static) return { ok: true, url: template.static.url, quoted: template.static.quoted };
  if (identity === undefined || identity === '') return { ok: false, reason: 'no-identity' };
  const values = identityValues(identity);
  if (!values.ok) return values;
  if (template.placeholders.has('domain') && values.values.domain === null) return { ok: false, reason: 'no-domain' };
  if (template.placeholders.has('localpart') && values.values.localpart === '') return { ok: false, reason: 'no-localpart' };
  const url = substitute(template, values);
  if (url.length > MAX_URL_LENGTH) return { ok: false, reason: 'url-too-long' };
  if (template.inAuthority && !isDnsName(hostOf(url))) return { ok: false, reason: 'invalid-host' };
  try {
    const checked = validateJmapUrl(url, allowInsecure);
    return { ok: true, url: checked.url, quoted: checked.quoted };
  } catch {
    return { ok: false, reason: 'invalid-url' };
  }
}

// ---------------------------------------------------------------------------
// The map file.

export interface JmapUrlMap {
  readonly file: string;
  /** Exact domains (lower-cased) to templates. */
  readonly domains: ReadonlyMap<string, JmapUrlTemplate>;
  /** `*.example.com` entries, keyed by the suffix without `*.` (lower-cased). */
  readonly subdomains: ReadonlyMap<string, JmapUrlTemplate>;
  /** The `*` entry. */
  readonly fallback: JmapUrlTemplate | null;
  /** Entries in all. */
  readonly size: number;
}

export type MapLoad = { readonly ok: true; readonly map: JmapUrlMap } | { readonly ok: false; readonly errors: readonly string[] };

const DOMAIN_KEY = /^(\*\.)?([^\s.*@/\\{}:]+(?:\.[^\s.*@/\\{}:]+)*)$/u;

/**
 * Parses a map file's text. Format: one entry per line, `DOMAIN URL`
 * (whitespace between), where DOMAIN is a domain (case-insensitive, exact),
 * `*.example.com` (any subdomain of example.com, not example.com itself) or
 * `*` (every other identity, including one with no domain), and URL is a
 * URL or a template as --jmap-url takes. `#` starts a comment (a whole line,
 * or from a field starting with `#`); blank lines are ignored. A domain
 * listed twice, an unknown placeholder, a bad URL, or a file with no entry
 * is an error, reported as `FILE:LINE: message`.
 */
export function parseUrlMap(text: string, file: string, allowInsecure: boolean): MapLoad {
  const errors: string[] = [];
  const domains = new Map<string, JmapUrlTemplate>();
  const subdomains = new Map<string, JmapUrlTemplate>();
  let fallback: JmapUrlTemplate | null = null;
  const firstLine = new Map<string, number>();
  const lines = text.replace(/^\uFEFF/, '').split(/\r?\n/);
  lines.forEach((raw, index) => {
    const lineNo = index + 1;
    const where = `${file}:${lineNo}`;
    const fields = raw.trim().split(/\s+/).filter((f) => f !== '');
    const comment = fields.findIndex((f) => f.startsWith('#'));
    if (comment !== -1) fields.length = comment;
    if (fields.length === 0) return;
    if (fields.length !== 2) {
      errors.push(`${where}: expected "DOMAIN URL" (or "* URL"), got ${fields.length === 1 ? 'one field' : `${fields.length} fields`}`);
      return;
    }
    const [keyText, urlText] = fields as [string, string];
    const key = keyText.toLowerCase();
    let sample = `${SAMPLE_LOCALPART}@${SAMPLE_DOMAIN}`;
    if (key !== '*') {
      const m = DOMAIN_KEY.exec(key);
      if (!m) {
        errors.push(`${where}: "${keyText}" is not a domain, *.domain or *`);
        return;
      }
      sample = `${SAMPLE_LOCALPART}@${m[1] ? 'sub.' : ''}${m[2] as string}`;
    }
    const earlier = firstLine.get(key);
    if (earlier !== undefined) {
      errors.push(`${where}: duplicate entry for ${key} (first on line ${earlier})`);
      return;
    }
    let template: JmapUrlTemplate;
    try {
      template = parseTemplate(urlText, allowInsecure, where, sample);
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      errors.push(err.message);
      return;
    }
    firstLine.set(key, lineNo);
    if (key === '*') fallback = template;
    else if (key.startsWith('*.')) subdomains.set(key.slice(2), template);
    else domains.set(key, template);
  });
  const size = domains.size + subdomains.size + (fallback ? 1 : 0);
  if (errors.length === 0 && size === 0) errors.push(`${file}: no entries (expected lines of "DOMAIN URL")`);
  if (errors.length > 0) return { ok: false, errors };
  return { ok: true, map: { file, domains, subdomains, fallback, size } };
}

/** Reads and parses a map file; an unreadable file is an error like the others. */
export function loadUrlMap(file: string, allowInsecure: boolean): MapLoad {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    return { ok: false, errors: [`${file}: cannot read: ${(err as Error).message}`] };
  }
  return parseUrlMap(text, file, allowInsecure);
}

/** The template a map gives for `domain` (lower-cased, or null), or null when it has none for it. */
export function lookupMap(map: JmapUrlMap, domain: string | null): JmapUrlTemplate | null {
  if (domain !== null) {
    const exact = map.domains.get(domain);
    if (exact) return exact;
    // The longest `*.suffix` that the domain is a proper subdomain of.
    for (let dot = domain.indexOf('.'); dot !== -1; dot = domain.indexOf('.', dot + 1)) {
      const wild = map.subdomains.get(domain.slice(dot + 1));
      if (wild) return wild;
    }
  }
  return map.fallback;
}

export interface JmapUrlOptions {
  /** --jmap-url: a URL or a template; the default when the map has no entry (or there is no map). */
  readonly jmapUrl?: string | undefined;
  /** --jmap-url-map FILE. */
  readonly mapFile?: string | undefined;
  readonly allowInsecure: boolean;
}

export type ReloadResult = { readonly ok: true; readonly entries: number } | { readonly ok: false; readonly errors: readonly string[] };

/**
 * The JMAP URL for each identity. Precedence: the map's entry for the exact
 * domain, then its longest matching `*.suffix`, then its `*`, then
 * --jmap-url; none of these: 'no-url'. At least one of --jmap-url and
 * --jmap-url-map is required. The map is reloaded by reload() (SIGHUP); a
 * map that fails to load leaves the previous one in place.
 */
export class JmapUrlResolver {
  readonly template: JmapUrlTemplate | null;
  readonly mapFile: string | null;
  readonly allowInsecure: boolean;
  #map: JmapUrlMap | null = null;

  /** Throws ConfigError for a bad template, or a map file that does not load. */
  constructor(options: JmapUrlOptions) {
    this.allowInsecure = options.allowInsecure;
    this.template = options.jmapUrl ? parseTemplate(options.jmapUrl, options.allowInsecure) : null;
    this.mapFile = options.mapFile || null;
    if (!this.template && !this.mapFile) {
      throw new ConfigError('--jmap-url is required (the JMAP session resource URL), unless --jmap-url-map is given');
    }
    if (this.mapFile) {
      const loaded = loadUrlMap(this.mapFile, this.allowInsecure);
      if (!loaded.ok) throw new ConfigError(`--jmap-url-map: ${loaded.errors.join('; ')}`);
      this.#map = loaded.map;
    }
  }

  /** The URL when it is the same for every session (a plain --jmap-url and no map), else null. */
  get static(): { readonly url: string; readonly quoted: string } | null {
    return this.#map ? null : (this.template?.static ?? null);
  }

  /** Entries in the current map (0 without a map). */
  get mapEntries(): number {
    return this.#map?.size ?? 0;
  }

  /** Some URL the configuration can give is http:// (--allow-insecure-jmap-url). */
  get insecure(): boolean {
    const map = this.#map;
    const all = [this.template, map?.fallback, ...(map ? [...map.domains.values(), ...map.subdomains.values()] : [])];
    return all.some((t) => t?.insecure === true);
  }

  /** The URL for `identity` (the authenticated user name), or why there is none. Never throws. */
  resolve(identity: string | undefined): UrlResolution {
    try {
      let template = this.template;
      if (this.#map) {
        const domain = identity === undefined ? null : splitIdentity(identity).domain;
        template = lookupMap(this.#map, domain) ?? this.template;
      }
      if (!template) return { ok: false, reason: identity === undefined || identity === '' ? 'no-identity' : 'no-url' };
      return expandTemplate(template, identity, this.allowInsecure);
    } catch {
      // Not expected: every path above is total; refuse rather than throw into a session.
      return { ok: false, reason: 'invalid-url' };
    }
  }

  /** Reads the map file again; on any error the previous map stays. Without a map file: { ok: true, entries: 0 }. */
  reload(): ReloadResult {
    if (!this.mapFile) return { ok: true, entries: 0 };
    const loaded = loadUrlMap(this.mapFile, this.allowInsecure);
    if (!loaded.ok) return { ok: false, errors: loaded.errors };
    this.#map = loaded.map;
    return { ok: true, entries: loaded.map.size };
  }

  /** For logs: the template text, the map file and its entry count (URLs hold no secrets, but no more is needed). */
  describe(): { jmapUrl: string | null; jmapUrlMap: string | null; mapEntries?: number } {
    return {
      jmapUrl: this.template?.source ?? null,
      jmapUrlMap: this.mapFile,
      ...(this.mapFile ? { mapEntries: this.mapEntries } : {}),
    };
  }

  toJSON(): ReturnType<JmapUrlResolver['describe']> {
    return this.describe();
  }
}
