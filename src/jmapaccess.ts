/**
 * The RFC 9698 policy: when a session may be told about JMAP, and what
 * GETJMAPACCESS answers. One place for the decision, used both for
 * capability lists and for GETJMAPACCESS, so the two always agree.
 */

import type { Config } from './config.js';
import type { LoginSecret } from './imap/credentials.js';

/** The JMAP session URL for one identity, or why that identity gets none. */
export type JmapTarget =
  | { readonly ok: true; readonly url: string; readonly quoted: string }
  | { readonly ok: false; readonly reason: string };

/** What the JMAP server said of the login's credentials (--jmap-verify). */
export type VerifyResult = { readonly ok: true } | { readonly ok: false; readonly reason: string };

/** 'off': not asked (no --jmap-verify); 'pending': the probe runs. */
export type Verification = 'off' | 'pending' | VerifyResult;

/**
 * Where each user's JMAP server is, and how to ask it about credentials:
 * built once per process from the configuration (server.ts), used by every
 * session.
 */
export interface JmapPolicy {
  /** Per-user URLs and allow/deny lists: the URL for `identity`, or a refusal. */
  target(identity: string | undefined): JmapTarget;
  /** --jmap-verify: asks the JMAP server; never rejects. Null when off. */
  readonly verify: ((url: string, identity: string, secret: LoginSecret) => Promise<VerifyResult>) | null;
}

/** How the client authenticated: `LOGIN` for the LOGIN command, else the SASL mechanism. */
export interface Authentication {
  readonly mechanism: string;
  readonly user: string | undefined;
  /** This user's JMAP server, or why there is none. */
  readonly jmap: JmapTarget;
  readonly verification: Verification;
}

/** What the proxy knows about OBJECTID (RFC 8474) in the upstream's post-login capabilities. */
export type ObjectIdKnowledge = 'present' | 'absent' | 'unknown';

export type Decision =
  | { readonly grant: true; readonly reason: 'eligible' | 'objectid-assumed'; readonly quoted: string }
  | {
      readonly grant: false;
      readonly reason:
        | 'not-authenticated'
        | 'preauthenticated'
        | 'mechanism-not-eligible'
        | 'user-not-eligible'
        | 'jmap-not-verified'
        | 'no-objectid';
      /** For logs: the refusal of the URL lookup or of the JMAP server. */
      readonly detail?: string;
    };

/** The inputs a decision can need; `objectId: 'unknown'` means "ask the upstream first". */
export interface SessionFacts {
  readonly authenticated: boolean;
  /** Null when authenticated without the proxy seeing how (a PREAUTH greeting). */
  readonly authentication: Authentication | null;
  readonly objectId: ObjectIdKnowledge;
}

export type PolicyConfig = Pick<Config, 'jmapMechanisms' | 'objectId'>;

/**
 * Whether the decision can be made with what is known, or needs the
 * upstream's post-login capabilities first.
 */
export function needsObjectIdProbe(facts: SessionFacts, config: PolicyConfig): boolean {
  return config.objectId === 'require' && facts.objectId === 'unknown' && decide(facts, config).reason === 'no-objectid';
}

/**
 * RFC 9698 section 3: advertise only when the server can infer that the
 * credentials used also work with the JMAP server. The operator declares
 * which mechanisms share credentials with JMAP; the upstream must also give
 * IMAP the same object ids as JMAP (OBJECTID), unless the operator overrides.
 * An unknown OBJECTID answer is treated as absent: callers that can ask the
 * upstream do so first (needsObjectIdProbe).
 */
export function decide(facts: SessionFacts, config: PolicyConfig): Decision {
  if (!facts.authenticated) return { grant: false, reason: 'not-authenticated' };
  if (facts.authentication === null) return { grant: false, reason: 'preauthenticated' };
  const { mechanism, jmap, verification } = facts.authentication;
  if (!config.jmapMechanisms.has(mechanism)) {
    return { grant: false, reason: 'mechanism-not-eligible' };
  }
  if (!jmap.ok) return { grant: false, reason: 'user-not-eligible', detail: jmap.reason };
  // The tagged OK of a login waits for the probe, so 'pending' is seen only
  // by a caller asking early: not yet known is not granted.
  if (verification === 'pending') return { grant: false, reason: 'jmap-not-verified', detail: 'pending' };
  if (verification !== 'off' && !verification.ok) {
    return { grant: false, reason: 'jmap-not-verified', detail: verification.reason };
  }
  if (facts.objectId === 'present') return { grant: true, reason: 'eligible', quoted: jmap.quoted };
  if (config.objectId === 'assume') return { grant: true, reason: 'objectid-assumed', quoted: jmap.quoted };
  return { grant: false, reason: 'no-objectid' };
}

const REFUSAL_TEXT: Record<Extract<Decision, { grant: false }>['reason'], string> = {
  'not-authenticated': 'GETJMAPACCESS is valid only after authentication',
  preauthenticated: 'JMAP access is not available for this session',
  'mechanism-not-eligible': 'JMAP access is not available for this authentication method',
  'user-not-eligible': 'JMAP access is not available for this account',
  'jmap-not-verified': 'JMAP access is not available for this account',
  'no-objectid': 'JMAP access is not available on this server',
};

/** The bytes answering `tag GETJMAPACCESS` (RFC 9698 section 4). */
export function getJmapAccessReply(tag: string, decision: Decision): string {
  if (decision.grant) return `* JMAPACCESS ${decision.quoted}\r\n${tag} OK GETJMAPACCESS completed\r\n`;
  return `${tag} BAD ${REFUSAL_TEXT[decision.reason]}\r\n`;
}
