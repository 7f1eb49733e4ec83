/**
 * A throwaway certificate authority for tests, made with the openssl CLI:
 * a CA and server certificates it signs, in a temp directory.
 */

import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

export interface IssuedCertificate {
  certFile: string;
  keyFile: string;
  cert: Buffer;
}

export interface TestCa {
  dir: string;
  caFile: string;
  ca: Buffer;
  /** Issues a certificate for the given names (DNS names, or IP addresses) into `${label}.crt/.key`. */
  issue(label: string, names: string[]): IssuedCertificate;
  remove(): void;
}

function openssl(args: string[], cwd: string): void {
  execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
}

export function makeTestCa(): TestCa {
  const dir = mkdtempSync(path.join(tmpdir(), 'jap-pki-'));
  openssl(
    ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2',
      '-keyout', 'ca.key', '-out', 'ca.crt', '-subj', '/CN=jmapaccess-proxy test CA',
      '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'],
    dir,
  );
  let serial = 1;
  return {
    dir,
    caFile: path.join(dir, 'ca.crt'),
    ca: readFileSync(path.join(dir, 'ca.crt')),
    issue(label, names) {
      const san = names.map((n) => (/^[\d.]+$|:/.test(n) ? `IP:${n}` : `DNS:${n}`)).join(',');
      writeFileSync(path.join(dir, `${label}.ext`), `subjectAltName=${san}\nextendedKeyUsage=serverAuth\n`);
      openssl(
        ['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
          '-keyout', `${label}.key`, '-out', `${label}.csr`, '-subj', `/CN=${names[0]}`],
        dir,
      );
      openssl(
        ['x509', '-req', '-in', `${label}.csr`, '-CA', 'ca.crt', '-CAkey', 'ca.key', '-set_serial', String(serial++),
          '-days', '2', '-out', `${label}.crt`, '-extfile', `${label}.ext`],
        dir,
      );
      const certFile = path.join(dir, `${label}.crt`);
      return { certFile, keyFile: path.join(dir, `${label}.key`), cert: readFileSync(certFile) };
    },
    remove() {
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
