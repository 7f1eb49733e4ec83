/**
 * IMAP `quoted` strings (RFC 9051): DQUOTE *QUOTED-CHAR DQUOTE, where `"` and
 * `\` are escaped with `\`, and CR, LF and NUL cannot appear at all. Only
 * 7-bit text is produced here: 8-bit text in `quoted` needs UTF8=ACCEPT.
 */

/** The quoted form of `value`, or null when it cannot be written as `quoted`. */
export function quoteImapString(value: string): string | null {
  let out = '"';
  for (const ch of value) {
    const code = ch.codePointAt(0) as number;
    if (code === 0 || code === 0x0a || code === 0x0d || code > 0x7e) return null;
    if (ch === '"' || ch === '\\') out += '\\';
    out += ch;
  }
  return out + '"';
}
