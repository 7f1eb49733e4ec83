/**
 * Runs once before the test files (tap `before`): makes sure the real
 * servers the integration tests start are installed, so that `npm test`
 * works on a fresh Debian 12 machine as root.
 */

import { ensureDovecotInstalled } from './harness/dovecot.js';

await ensureDovecotInstalled();
