/**
 * The proxy's own certificates, toward clients: loading, choosing one by
 * SNI, and reloading without dropping a connection.
 *
 * Connections pick a context when their handshake starts, so a reload
 * affects new handshakes only. A reload that fails (a half-written file, a
 * key that does not match) is logged and the previous certificates stay.
 */

import { readFileSync, unwatchFile, watchFile, type Stats } from 'node:fs';
import { X509Certificate } from 'node:crypto';
import tls from 'node:tls';
import type { Logger } from 'pino';
import type { ClientTlsConfig } from './config.js';

interface LoadedCertificate {
  readonly context: tls.SecureContext;
  readonly x509: X509Certificate;
}

export class CertificateError extends Error {
  override readonly name = 'CertificateError';
}

/** A client gets this long to complete its TLS handshake (implicit TLS and STARTTLS). */
export const TLS_HANDSHAKE_TIMEOUT_MS = 30_000;

/** How often certificate files are checked for changes (fs.watchFile polls; it follows symlinks). */
const WATCH_INTERVAL_MS = 2000;

export class CertificateStore {
  private readonly config: ClientTlsConfig;
  private readonly log: Logger;
  private loaded: LoadedCertificate[];
  /** The file watchers this store added (unwatchFile without its listener would remove everyone's). */
  private readonly watchers = new Map<string, (current: Stats, previous: Stats) => void>();

  /** Loads every certificate now; throws CertificateError when one cannot be used. */
  constructor(config: ClientTlsConfig, log: Logger) {
    this.config = config;
    this.log = log;
    this.loaded = this.loadAll();
  }

  /** The certificate used when the client sends no SNI name or none matches. */
  get defaultContext(): tls.SecureContext {
    return (this.loaded[0] as LoadedCertificate).context;
  }


  readonly sniCallback = (servername: string, callback: (err: Error | null, ctx?: tls.SecureContext) => void): void => {
    callback(null, this.contextFor(servername));
  };

  /** The first certificate whose names cover `servername`, else the default. */
  contextFor(servername: string): tls.SecureContext {
    const match = servername ? this.loaded.find((c) => c.x509.checkHost(servername) !== undefined) : undefined;
    return (match ?? (this.loaded[0] as LoadedCertificate)).context;
  }

  /** Subjects of the certificates in use, for logs. */
  describe(): string[] {
    return this.loaded.map((c) => `${c.x509.subject.replace(/\n/g, ', ')} (until ${c.x509.validTo})`);
  }

  /** Re-reads the files. Returns false, and keeps the old certificates, when they cannot be used. */
  reload(reason: string): boolean {
    try {
      this.loaded = this.loadAll();
    } catch (err) {
      this.log.error({ reason, err: (err as Error).message }, 'certificate reload failed; keeping the previous certificates');
      return false;
    }
    this.log.info({ reason, certificates: this.describe() }, 'certificates reloaded');
    return true;
  }


  /** Reloads when a certificate or key file changes. */
  watch(): void {
    if (this.watchers.size > 0) return;
    for (const file of this.files()) {
      const listener = (current: Stats, previous: Stats) => {
        if (current.mtimeMs !== previous.mtimeMs || current.size !== previous.size || current.ino !== previous.ino) {
          this.reload(`${file} changed`);
        }
      };
      this.watchers.set(file, listener);
      watchFile(file, { interval: WATCH_INTERVAL_MS, persistent: false }, listener);
    }
  }

  unwatch(): void {
    for (const [file, listener] of this.watchers) unwatchFile(file, listener);
    this.watchers.clear();
  }

  private files(): string[] {
    return [...new Set(this.config.certificates.flatMap((c) => [c.certFile, c.keyFile]))];
  }

  private loadAll(): LoadedCertificate[] {
    return this.config.certificates.map(({ certFile, keyFile }) => {
      let cert: Buffer;
      let key: Buffer;
      try {
        cert = readFileSync(certFile);
        key = readFileSync(keyFile);
      } catch (err) {
        throw new CertificateError(`cannot read ${(err as NodeJS.ErrnoException).path ?? certFile}: ${(err as Error).message}`);
      }
      try {
        const context = tls.createSecureContext({ cert, key, minVersion: this.config.minVersion });
        return { context, x509: new X509Certificate(cert) };
      } catch (err) {
        throw new CertificateError(`${certFile} / ${keyFile}: ${(err as Error).message}`);
      }
    });
  }
}
