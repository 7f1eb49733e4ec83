/**
 * The identity a client claims in its first SASL response, for logs and for
 * the JMAP policy. Only the identity is extracted: passwords and tokens are
 * read past, never copied out, and never returned.
 */

/** A SASL response's bytes; null for an empty (`=`), cancelled (`*`) or malformed one. */
export function decodeBase64(text: string): Buffer | null {
  const trimmed = text.trim();
  if (trimmed === '' || trimmed === '=' || trimmed === '*') return null;
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(trimmed)) return null;
  return Buffer.from(trimmed, 'base64');
}

/** PLAIN (RFC 4616): authzid NUL authcid NUL passwd. The authorization identity wins when set. */
function plainIdentity(payload: Buffer): string | undefined {
  const first = payload.indexOf(0);
  if (first === -1) return undefined;
  const second = payload.indexOf(0, first + 1);
  if (second === -1) return undefined;
  const authzid = payload.toString('utf8', 0, first);
  const authcid = payload.toString('utf8', first + 1, second);
  return authzid || authcid || undefined;
}

/** OAUTHBEARER (RFC 7628): a GS2 header `n,a=user,` then key=value pairs separated by 0x01. */
function oauthBearerIdentity(payload: Buffer): string | undefined {
  const text = payload.toString('utf8');
  const header = text.split('\x01', 1)[0] ?? '';
  const parts = header.split(',');
  const authz = parts.find((p) => p.startsWith('a='));
  // GS2 saslname escapes ',' as =2C and '=' as =3D.
  return authz ? authz.slice(2).replace(/=2C/gi, ',').replace(/=3D/gi, '=') || undefined : undefined;
}

/** XOAUTH2: `user=NAME` 0x01 `auth=Bearer TOKEN` 0x01 0x01. */
function xoauth2Identity(payload: Buffer): string | undefined {
  const text = payload.toString('utf8');
  const field = text.split('\x01').find((p) => p.startsWith('user='));
  return field ? field.slice(5) || undefined : undefined;
}

/**
 * The identity in the client's first SASL response for `mechanism`, given as
 * the base64 text the client sent (SASL-IR argument or first response line).
 */
export function saslIdentity(mechanism: string, firstResponse: string): string | undefined {
  const payload = decodeBase64(firstResponse);
  if (!payload) return undefined;
  try {
    switch (mechanism) {
      case 'PLAIN':
        return plainIdentity(payload);
      case 'LOGIN':
        // The first response of the LOGIN mechanism is the user name.
        return payload.toString('utf8') || undefined;
      case 'OAUTHBEARER':
        return oauthBearerIdentity(payload);
      case 'XOAUTH2':
        return xoauth2Identity(payload);
      default:
        return undefined;
    }
  } finally {
    payload.fill(0);
  }
}
