/**
 * The RFC 9698 policy: when a session may be told about JMAP, and what
 * GETJMAPACCESS answers. One place for the decision, used both for
 * capability lists and for GETJMAPACCESS, so the two always agree.
 */

import type { Config } from './config.js';

/** How the client authenticated: `LOGIN` for the LOGIN command, else the SASL mechanism. */
export interface Authentication {
  readonly mechanism: string;
  readonly user: string | undefined;
}

/** What the proxy knows about OBJECTID (RFC 8474) in the upstream's post-login capabilities. */
export type ObjectIdKnowledge = 'present' | 'absent' | 'unknown';

export type Decision =
  | { readonly grant: true; readonly reason: 'eligible' | 'objectid-assumed' }
  | {
      readonly grant: false;
      readonly reason: 'not-authenticated' | 'preauthenticated' | 'mechanism-not-eligible' | 'no-objectid';
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
  return (
    config.objectId === 'require' &&
    facts.objectId === 'unknown' &&
    facts.authenticated &&
    facts.authentication !== null &&
    config.jmapMechanisms.has(facts.authentication.mechanism)
  );
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
  if (!config.jmapMechanisms.has(facts.authentication.mechanism)) {
    return { grant: false, reason: 'mechanism-not-eligible' };
  }
  if (facts.objectId === 'present') return { grant: true, reason: 'eligible' };
  if (config.objectId === 'assume') return { grant: true, reason: 'objectid-assumed' };
  return { grant: false, reason: 'no-objectid' };
}

const REFUSAL_TEXT: Record<Extract<Decision, { grant: false }>['reason'], string> = {
  'not-authenticated': 'GETJMAPACCESS is valid only after authentication',
  preauthenticated: 'JMAP access is not available for this session',
  'mechanism-not-eligible': 'JMAP access is not available for this authentication method',
  'no-objectid': 'JMAP access is not available on this server',
};

/** The bytes answering `tag GETJMAPACCESS` (RFC 9698 section 4). */
export function getJmapAccessReply(tag: string, decision: Decision, jmapUrlQuoted: string): string {
  if (decision.grant) return `* JMAPACCESS ${jmapUrlQuoted}\r\n${tag} OK GETJMAPACCESS completed\r\n`;
  return `${tag} BAD ${REFUSAL_TEXT[decision.reason]}\r\n`;
}
