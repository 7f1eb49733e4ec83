/**
 * Runs once before the test files (tap `before`): makes sure the real
 * servers the integration tests start are installed, so that `npm test`
 * works on a fresh Debian 12 machine as root.
 */

import { ensureCyrusInstalled } from './harness/cyrus.js';
import { ensureDovecotInstalled } from './harness/dovecot.js';
import { ensureDebianPackage } from './harness/packages.js';

await ensureDovecotInstalled();
// Unpacks Cyrus into /opt/cyrus-root once, here, rather than in whichever
// test files happen to start first (they would wait on its lock).
await ensureCyrusInstalled();
// mbsync (isync): the non-Node IMAP client of test/integration/mbsync.test.ts.
await ensureDebianPackage('/usr/bin/mbsync', 'isync');
