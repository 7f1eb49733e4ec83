/**
 * Helpers shared by the --jmap-verify and per-user URL integration tests
 * (jmap-verify-session, jmap-verify-cyrus-session, jmap-per-user, secrets):
 * SASL payloads, the fake JMAP endpoint with its CA on disk, metrics read
 * from a running proxy, the proxy's login log lines, and an independent
 * RFC 3986 percent-encoder to compute expected URLs with.
 */

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Test } from 'tap';
import { startFakeJmapEndpoint, type FakeJmapEndpoint, type FakeJmapUser } from '../harness/jmap-endpoint.js';
import type { RunningProxy } from '../harness/proxy.js';
import { capabilityLists, countAtom, type RawClient } from './helpers.js';

export const b64 = (text: string): string => Buffer.from(text, 'utf8').toString('base64');

/** SASL PLAIN (RFC 4616) response, base64. */
export const plainResponse = (authcid: string, password: string, authzid = ''): string => b64(`${authzid}\0${authcid}\0${password}`);

/** OAUTHBEARER (RFC 7628) client response, base64; `a=` omitted when `user` is null. */
export function oauthBearerResponse(user: string | null, token: string): string {
  const gs2 = user === null ? 'n,,' : `n,a=${user.replace(/=/g, '=3D').replace(/,/g, '=2C')},`;
  return b64(`${gs2}\x01host=127.0.0.1\x01port=143\x01auth=Bearer ${token}\x01\x01`);
}

/** XOAUTH2 client response, base64. */
export const xoauth2Response = (user: string, token: string): string => b64(`user=${user}\x01auth=Bearer ${token}\x01\x01`);

/** The Authorization header a probe with these credentials carries. */
export const basicHeader = (user: string, password: string): string => `Basic ${b64(`${user}:${password}`)}`;

/** The fake JMAP endpoint (HTTPS) with its CA written to a file for --jmap-verify-ca; closed in t.teardown. */
export async function fakeJmapFor(t: Test, users: Record<string, FakeJmapUser> = {}): Promise<{ jmap: FakeJmapEndpoint; caFile: string }> {
  const jmap = await startFakeJmapEndpoint({ users });
  const dir = mkdtempSync(join(tmpdir(), 'jmap-ca-'));
  const caFile = join(dir, 'ca.pem');
  writeFileSync(caFile, jmap.ca);
  t.teardown(async () => {
    await jmap.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return { jmap, caFile };
}

/**
 * The value of one Prometheus sample of the proxy's metrics: the sum over
 * every series of `name` whose labels include `labels` (0 when none).
 */
export async function metricValue(proxy: RunningProxy, name: string, labels: Record<string, string> = {}): Promise<number> {
  const text = await proxy.server.metrics.registry.metrics();
  let sum = 0;
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const have: Record<string, string> = {};
    for (const pair of (m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) have[pair[1] as string] = pair[2] as string;
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) sum += Number(m[3]);
  }
  return sum;
}

export const VERIFY_METRIC = 'jmapaccess_proxy_jmap_verify_total';
export const DECISIONS_METRIC = 'jmapaccess_proxy_jmapaccess_decisions_total';

/** The proxy's `login succeeded` / `login failed` log lines, oldest first. */
export function loginLogs(proxy: RunningProxy): Array<Record<string, unknown>> {
  return proxy.logs().filter((l) => l.msg === 'login succeeded' || l.msg === 'login failed');
}

/** The last login log line (fails loudly when there is none). */
export function lastLogin(proxy: RunningProxy): Record<string, unknown> {
  const all = loginLogs(proxy);
  const last = all[all.length - 1];
  if (!last) throw new Error('no login log line yet');
  return last;
}

/** How many capability lists in `text` carry JMAPACCESS, and how many lists there are. */
export function jmapAccessCount(text: string): { lists: number; withJmapAccess: number } {
  const lists = capabilityLists(text);
  return { lists: lists.length, withJmapAccess: lists.filter((l) => countAtom(l, 'JMAPACCESS') > 0).length };
}

/** The exact refusal the proxy gives an authenticated but ineligible session (RFC 9698 example 3). */
export const NOT_FOR_THIS_ACCOUNT = (tag: string): string => `${tag} BAD JMAP access is not available for this account\r\n`;

/** The exact grant for `url`. */
export const GRANTED = (tag: string, url: string): string => `* JMAPACCESS "${url}"\r\n${tag} OK GETJMAPACCESS completed\r\n`;

/**
 * After a login: a CAPABILITY and a GETJMAPACCESS, checked against the
 * expectation (granted with `url`, or not: no JMAPACCESS and the BAD).
 */
export async function assertJmapAccess(t: Test, client: RawClient, expected: { url: string } | 'refused', tag = 'x'): Promise<void> {
  client.send(`${tag}1 CAPABILITY\r\n${tag}2 GETJMAPACCESS\r\n`);
  const capability = await client.response(`${tag}1`);
  const lists = capabilityLists(capability);
  t.equal(lists.length, 1, 'CAPABILITY: one list');
  t.equal(countAtom(lists[0] ?? [], 'JMAPACCESS'), expected === 'refused' ? 0 : 1, `CAPABILITY: JMAPACCESS ${expected === 'refused' ? 'absent' : 'once'}`);
  const answer = await client.response(`${tag}2`);
  t.equal(answer, expected === 'refused' ? NOT_FOR_THIS_ACCOUNT(`${tag}2`) : GRANTED(`${tag}2`, expected.url), 'GETJMAPACCESS');
}

/**
 * RFC 3986 percent-encoding of a component, written independently of
 * src/jmap-url.ts: every UTF-8 byte but ALPHA / DIGIT / "-" / "." / "_" / "~"
 * becomes %XX in upper case.
 */
export function pct(value: string): string {
  let out = '';
  for (const byte of Buffer.from(value, 'utf8')) {
    const c = String.fromCharCode(byte);
    out += /[A-Za-z0-9\-._~]/.test(c) ? c : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}
