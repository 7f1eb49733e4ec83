/**
 * What the proxy does to a capability list, as a pure function of the list
 * and of what the proxy offers on this client link.
 *
 * The proxy owns JMAPACCESS (its own decision replaces anything the upstream
 * says) and everything about the client link itself: STARTTLS, COMPRESS=*,
 * and, while TLS is required but not active, LOGINDISABLED in place of the
 * AUTH= mechanisms (RFC 9051 section 6.2.3). COMPRESS=DEFLATE is offered by
 * the proxy for the client link only; the upstream's own offer is hidden.
 */

export const JMAPACCESS = 'JMAPACCESS';

export interface CapabilityOffer {
  /** Add JMAPACCESS (the RFC 9698 decision). */
  readonly jmapAccess: boolean;
  /** Add STARTTLS: the proxy can start TLS on this link now. */
  readonly startTls: boolean;
  /** Add LOGINDISABLED and hide AUTH=: logins wait for TLS. */
  readonly loginDisabled: boolean;
  /** Add COMPRESS=DEFLATE: the proxy compresses this link on request (RFC 4978). */
  readonly compress: boolean;
}

/** Capabilities removed from every list the upstream sends. */
export function isProxyOwned(atom: string): boolean {
  const upper = atom.toUpperCase();
  return upper === JMAPACCESS || upper === 'STARTTLS' || upper.startsWith('COMPRESS=');
}

export function hasCapability(atoms: readonly string[], name: string): boolean {
  const wanted = name.toUpperCase();
  return atoms.some((atom) => atom.toUpperCase() === wanted);
}

/** The list the client sees: upstream's, minus what the proxy owns, plus what it offers. */
export function rewriteCapabilities(atoms: readonly string[], offer: CapabilityOffer): string[] {
  const kept = atoms.filter((atom) => {
    if (isProxyOwned(atom)) return false;
    if (!offer.loginDisabled) return true;
    const upper = atom.toUpperCase();
    return upper !== 'LOGINDISABLED' && !upper.startsWith('AUTH=');
  });
  if (offer.startTls) kept.push('STARTTLS');
  if (offer.loginDisabled) kept.push('LOGINDISABLED');
  if (offer.compress) kept.push('COMPRESS=DEFLATE');
  if (offer.jmapAccess) kept.push(JMAPACCESS);
  return kept;
}
