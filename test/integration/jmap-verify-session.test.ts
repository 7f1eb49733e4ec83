/**
 * --jmap-verify through the proxy: a real Dovecot for IMAP, and the scripted
 * fake JMAP endpoint (test/harness/jmap-endpoint.ts) for the JMAP side, so
 * that each answer a JMAP server can give is produced on demand.
 */

import t, { type Test } from 'tap';
import { writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startFakeJmapEndpoint } from '../harness/jmap-endpoint.js';
import { proxyFor, rawClient, upstreamFor, type ProxyOptions } from './helpers.js';

async function rig(t: Test, options: ProxyOptions = {}) {
  const dovecot = await upstreamFor(t, 'dovecot', { users: { alice: 'alice-secret-pw', bob: 'bob-secret-pw' } });
  const jmap = await startFakeJmapEndpoint();
  t.teardown(() => jmap.close());
  const dir = mkdtempSync(join(tmpdir(), 'jmapverify-'));
  const caFile = join(dir, 'ca.pem');
  writeFileSync(caFile, jmap.ca);
  const proxy = await proxyFor(t, dovecot.port, {
    objectId: 'assume',
    jmapUrl: jmap.wellKnownUrl,
    jmapVerify: true,
    jmapVerifyCa: caFile,
    ...options,
  });
  return { dovecot, jmap, proxy };
}

t.test('smoke', async (t) => {
  const { jmap, proxy } = await rig(t);
  const { client } = await rawClient(t, proxy.port);
  client.send('a LOGIN alice alice-secret-pw\r\nb GETJMAPACCESS\r\n');
  const text = await client.response('b');
  t.match(text, /^a OK \[CAPABILITY [^\]]*JMAPACCESS/m);
  t.match(text, /^\* JMAPACCESS "https:\/\/127\.0\.0\.1:\d+\/\.well-known\/jmap"/m);
  t.equal(jmap.count(), 2, 'one probe, through the redirect');
  console.error(proxy.logs().filter((l) => /login|verify/i.test(String(l.msg))));
});
