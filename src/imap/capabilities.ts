/**
 * What the proxy does to a capability list, as a pure function of the list.
 *
 * The proxy owns three capabilities: JMAPACCESS (its own decision replaces
 * anything the upstream says), and STARTTLS and COMPRESS=*, which only make
 * sense on the client's own link. Until the proxy terminates TLS and
 * compression itself it must not let a client start either through it.
 */

export const JMAPACCESS = 'JMAPACCESS';

/** Capabilities removed from every list the upstream sends. */
export function isProxyOwned(atom: string): boolean {
  const upper = atom.toUpperCase();
  return upper === JMAPACCESS || upper === 'STARTTLS' || upper.startsWith('COMPRESS=');
}

export function hasCapability(atoms: readonly string[], name: string): boolean {
  const wanted = name.toUpperCase();
  return atoms.some((atom) => atom.toUpperCase() === wanted);
}

/** The list the client sees: upstream's, minus what the proxy owns, plus JMAPACCESS when granted. */
export function rewriteCapabilities(atoms: readonly string[], grantJmapAccess: boolean): string[] {
  const kept = atoms.filter((atom) => !isProxyOwned(atom));
  if (grantJmapAccess) kept.push(JMAPACCESS);
  return kept;
}
