/**
 * `--jmap-users-allow` and `--jmap-users-deny`: which authenticated
 * identities may be offered JMAPACCESS at all (staged roll-outs). Pure: the
 * lists are parsed once at start-up, and a bad entry is a ConfigError.
 *
 * An entry is one of:
 * - `example.com`: identities whose domain (after the last `@`) is exactly
 *   example.com, case-insensitive;
 * - `*.example.com`: identities in any subdomain of example.com (not
 *   example.com itself: list both for both);
 * - `alice@example.com`: that one identity, case-insensitive;
 * - `/REGEXP/FLAGS`: a JavaScript regular expression matched against the
 *   whole identity (as if written `^(?:REGEXP)$`); flags i, s, u, v.
 *
 * A flag value is a comma-separated list, and the flags may be repeated
 * (the lists add up). A comma inside a `/.../` entry belongs to it.
 */

import { ConfigError } from './config-error.js';
import { splitIdentity } from './jmap-url.js';

export type UserRule =
  | { readonly kind: 'domain'; readonly domain: string; readonly subdomains: boolean; readonly source: string }
  | { readonly kind: 'identity'; readonly identity: string; readonly source: string }
  | { readonly kind: 'regex'; readonly regex: RegExp; readonly source: string };

export type UserDecision = { readonly ok: true } | { readonly ok: false; readonly reason: 'not-allowed' | 'denied' };

const DOMAIN = /^(\*\.)?([^\s.*@/\\{}:,]+(?:\.[^\s.*@/\\{}:,]+)*)$/u;
const ALLOWED_FLAGS = /^[isuv]*$/;

/** Splits one flag value at commas, keeping `/.../flags` entries (which may hold commas) whole. */
export function splitUserList(value: string, flag: string): string[] {
  const items: string[] = [];
  let i = 0;
  const n = value.length;
  while (i < n) {
    while (i < n && /[\s,]/.test(value[i] as string)) i++;
    if (i >= n) break;
    const start = i;
    if (value[i] === '/') {
      i++;
      let inClass = false;
      for (; i < n; i++) {
        const ch = value[i];
        if (ch === '\\') i++;
        else if (ch === '[') inClass = true;
        else if (ch === ']') inClass = false;
        else if (ch === '/' && !inClass) break;
      }
      if (i >= n) throw new ConfigError(`${flag}: "${value.slice(start)}" has no closing "/"`);
      i++;
      while (i < n && /[A-Za-z]/.test(value[i] as string)) i++;
      const item = value.slice(start, i);
      while (i < n && /\s/.test(value[i] as string)) i++;
      if (i < n && value[i] !== ',') throw new ConfigError(`${flag}: expected "," after ${item}`);
      items.push(item);
    } else {
      while (i < n && value[i] !== ',') i++;
      items.push(value.slice(start, i).trim());
    }
  }
  return items;
}

/** Parses the values of one list flag (each a comma list). Throws ConfigError naming the flag. */
export function parseUserRules(values: string | readonly string[] | undefined, flag: string): UserRule[] {
  const list = values === undefined ? [] : typeof values === 'string' ? [values] : [...values];
  const rules: UserRule[] = [];
  for (const value of list) {
    for (const item of splitUserList(value, flag)) rules.push(parseUserRule(item, flag));
  }
  return rules;
}

function parseUserRule(item: string, flag: string): UserRule {
  if (item.startsWith('/')) {
    const close = item.lastIndexOf('/');
    const body = item.slice(1, close);
    const flags = item.slice(close + 1);
    if (body === '') throw new ConfigError(`${flag}: "${item}" is an empty regular expression`);
    if (!ALLOWED_FLAGS.test(flags)) {
      throw new ConfigError(`${flag}: "${item}": regular expression flags may only be i, s, u and v`);
    }
    let regex: RegExp;
    try {
      regex = new RegExp(`^(?:${body})$`, flags);
      // A body such as `a)|(b` would escape the anchors: compile it alone too.
      new RegExp(body, flags);
    } catch (err) {
      throw new ConfigError(`${flag}: "${item}" is not a valid regular expression: ${(err as Error).message}`);
    }
    return { kind: 'regex', regex, source: item };
  }
  const lower = item.toLowerCase();
  const at = lower.lastIndexOf('@');
  if (at !== -1) {
    const domain = lower.slice(at + 1);
    if (at === 0 || !DOMAIN.test(domain) || domain.startsWith('*.') || /[\s,]/.test(lower)) {
      throw new ConfigError(`${flag}: "${item}" is not a domain, *.domain, user@domain or /regular expression/`);
    }
    return { kind: 'identity', identity: lower, source: item };
  }
  const m = DOMAIN.exec(lower);
  if (!m) throw new ConfigError(`${flag}: "${item}" is not a domain, *.domain, user@domain or /regular expression/`);
  return { kind: 'domain', domain: m[2] as string, subdomains: m[1] !== undefined, source: item };
}

function matches(rule: UserRule, identity: string, domain: string | null): boolean {
  switch (rule.kind) {
    case 'regex':
      return rule.regex.test(identity);
    case 'identity':
      return identity.toLowerCase() === rule.identity;
    case 'domain':
      if (domain === null) return false;
      return rule.subdomains ? domain.endsWith(`.${rule.domain}`) : domain === rule.domain;
  }
}

/**
 * The allow and deny lists. Deny wins; an empty allow list allows everyone
 * (not denied); a session with no known identity is not allowed when there
 * is an allow list (and never matches the deny list).
 */
export class JmapUserFilter {
  readonly allow: readonly UserRule[];
  readonly deny: readonly UserRule[];

  constructor(allow: readonly UserRule[] = [], deny: readonly UserRule[] = []) {
    this.allow = allow;
    this.deny = deny;
  }

  /** From the raw flag values; throws ConfigError. */
  static fromFlags(allow: string | readonly string[] | undefined, deny: string | readonly string[] | undefined): JmapUserFilter {
    return new JmapUserFilter(parseUserRules(allow, '--jmap-users-allow'), parseUserRules(deny, '--jmap-users-deny'));
  }

  /** True when neither list has an entry (every identity is allowed). */
  get empty(): boolean {
    return this.allow.length === 0 && this.deny.length === 0;
  }

  allowed(identity: string | undefined): UserDecision {
    if (identity === undefined) return this.allow.length > 0 ? { ok: false, reason: 'not-allowed' } : { ok: true };
    const { domain } = splitIdentity(identity);
    if (this.deny.some((r) => matches(r, identity, domain))) return { ok: false, reason: 'denied' };
    if (this.allow.length > 0 && !this.allow.some((r) => matches(r, identity, domain))) return { ok: false, reason: 'not-allowed' };
    return { ok: true };
  }

  describe(): { allow: string[]; deny: string[] } {
    return { allow: this.allow.map((r) => r.source), deny: this.deny.map((r) => r.source) };
  }

  toJSON(): ReturnType<JmapUserFilter['describe']> {
    return this.describe();
  }
}
