/**
 * The JMAP side of the policy, built once per process from the
 * configuration: which URL each identity gets (templates, the URL map,
 * allow/deny lists) and, with --jmap-verify, the probe of the JMAP server.
 * The decision itself stays in jmapaccess.ts.
 */

import type { Logger } from 'pino';
import type { Config } from './config.js';
import type { JmapPolicy, JmapTarget } from './jmapaccess.js';
import { JmapVerifier, metricsHook } from './jmap-verify.js';
import type { Metrics } from './metrics.js';

type PolicyConfig = Pick<Config, 'jmapUrls' | 'jmapUsers' | 'jmapVerify' | 'jmapVerifyTimeoutMs' | 'jmapVerifyTtlMs' | 'jmapVerifyCa'>;

export function jmapPolicyFor(config: PolicyConfig, metrics: Metrics, log: Logger): JmapPolicy {
  const verifier = config.jmapVerify
    ? new JmapVerifier({
        timeoutMs: config.jmapVerifyTimeoutMs,
        ttlMs: config.jmapVerifyTtlMs,
        ca: config.jmapVerifyCa,
        onProbe: metricsHook(metrics),
        log: log.child({ component: 'jmap-verify' }),
      })
    : null;
  return {
    target(identity): JmapTarget {
      const user = config.jmapUsers.allowed(identity);
      if (!user.ok) return { ok: false, reason: user.reason };
      // The URL map is read at each lookup, so a SIGHUP reload applies to the next login.
      return config.jmapUrls.resolve(identity);
    },
    verify: verifier
      ? async (url, identity, secret) => {
          const outcome = await verifier.verify(url, identity, secret);
          return outcome.ok ? { ok: true } : { ok: false, reason: outcome.reason };
        }
      : null,
  };
}
