#!/usr/bin/env node
/**
 * Command-line flags (with JMAPACCESS_PROXY_* environment fallbacks) to a
 * validated Config, then the server. Exit status 2 for any bad flag.
 */

import cluster from 'node:cluster';
import { readFileSync } from 'node:fs';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { raiseMallocTrimThreshold } from './malloc-tuning.js';
import {
  ConfigError,
  DEFAULT_MAX_LINE_LENGTH,
  describeConfig,
  DEFAULT_MECHANISMS,
  MAX_WORKERS,
  validateConfig,
  type Config,
} from './config.js';
import { createLogger } from './logger.js';
import { ProxyServer } from './server.js';
import { startMetricsServer } from './metrics.js';
import { checkUpstream } from './check.js';
import { CertificateError, CertificateStore } from './tls.js';
import { reloadJmapUrlMap, runPrimary, runWorker } from './cluster.js';

const EXIT_USAGE = 2;

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

/** Flags that may be given more than once (certificate pairs, lists). */
const REPEATABLE_FLAGS = new Set(['tls-cert', 'tls-key', 'trusted-proxies', 'jmap-users-allow', 'jmap-users-deny']);

function usageError(message: string): never {
  process.stderr.write(`jmapaccess-proxy: ${message}\nTry --help for the list of flags.\n`);
  process.exit(EXIT_USAGE);
}

export function parseArgs(argv: string[]): Config & { check: boolean } {
  const args = yargs(argv)
    .scriptName('jmapaccess-proxy')
    .usage('$0 --upstream imap://HOST:PORT --jmap-url URL [options]\n\nAdds RFC 9698 JMAPACCESS to an IMAP server.')
    .env('JMAPACCESS_PROXY')
    .option('listen', {
      type: 'string',
      default: '127.0.0.1:1143',
      describe: 'Address to accept IMAP clients on: HOST:PORT, [IPv6]:PORT',
    })
    .option('upstream', {
      type: 'string',
      describe: 'The IMAP server (required): imap://HOST:PORT, imap://HOST:PORT?starttls, or imaps://HOST:PORT',
    })
    .option('upstream-starttls', { type: 'boolean', describe: 'Run STARTTLS toward an imap:// upstream before relaying anything' })
    .option('upstream-ca', { type: 'string', describe: 'PEM file of CA certificates to verify the upstream with (default: Node\'s bundled list)' })
    .option('upstream-servername', { type: 'string', describe: 'Name to verify the upstream certificate against and send as SNI (default: the upstream host)' })
    .option('upstream-tls-insecure', {
      type: 'boolean',
      describe: 'Do not verify the upstream certificate (self-signed labs only; logs a warning)',
    })
    .option('jmap-url', {
      type: 'string',
      describe:
        'JMAP session resource URL returned by GETJMAPACCESS, or a template with {user}, {localpart}, {domain} (required unless --jmap-url-map)',
    })
    .option('jmap-url-map', {
      type: 'string',
      describe: 'File of "DOMAIN URL" lines (* for the default) choosing the JMAP URL by the user\'s domain; reloaded on SIGHUP',
    })
    .option('jmap-users-allow', {
      type: 'string',
      describe: 'Comma list (repeatable) of domains, *.domains, user@domains or /regexps/: only these users get JMAPACCESS',
    })
    .option('jmap-users-deny', {
      type: 'string',
      describe: 'Comma list (repeatable) of domains, *.domains, user@domains or /regexps/: these users never get JMAPACCESS',
    })
    .option('jmap-verify', {
      type: 'boolean',
      default: false,
      describe: 'Grant JMAPACCESS only after the same credentials were accepted by the JMAP server',
    })
    .option('jmap-verify-timeout', { type: 'string', default: '2s', describe: 'Give up a JMAP verification after this long' })
    .option('jmap-verify-ttl', { type: 'string', default: '10m', describe: 'Remember a JMAP verification result this long (0: not at all)' })
    .option('jmap-verify-ca', { type: 'string', describe: 'PEM CA certificates to verify the JMAP server with (default: Node\'s bundled list)' })
    .option('jmap-mechanisms', {
      type: 'string',
      default: DEFAULT_MECHANISMS.join(','),
      describe: 'Comma list of login methods whose credentials also work for JMAP (LOGIN = the LOGIN command and SASL LOGIN)',
    })
    .option('objectid', {
      type: 'string',
      choices: ['require', 'assume'],
      default: 'require',
      describe: 'require: grant JMAPACCESS only if the upstream offers OBJECTID after login; assume: grant without it',
    })
    .option('allow-insecure-jmap-url', {
      type: 'boolean',
      default: false,
      describe: 'Permit an http:// JMAP URL (labs and tests only)',
    })
    .option('max-line-length', {
      type: 'number',
      default: DEFAULT_MAX_LINE_LENGTH,
      describe: 'Longest command or response line accepted, in bytes (literals are not counted)',
    })
    .option('upstream-connect-timeout', {
      type: 'string',
      default: '10s',
      describe: 'Give up connecting to the upstream after this long (seconds, or 500ms, 10s, 1m)',
    })
    .option('tls-cert', {
      type: 'string',
      array: true,
      describe: 'PEM certificate (chain allowed) for TLS toward clients; repeat with --tls-key for more names (chosen by SNI, the first is the default)',
    })
    .option('tls-key', { type: 'string', array: true, describe: 'PEM private key for the --tls-cert at the same position' })
    .option('listen-tls', { type: 'string', describe: 'Also accept implicit-TLS clients (993-style) on HOST:PORT' })
    .option('require-tls', {
      type: 'boolean',
      describe: 'Refuse LOGIN/AUTHENTICATE on plain connections until STARTTLS (default: on when a certificate is set)',
    })
    .option('tls-min-version', {
      type: 'string',
      choices: ['TLSv1.2', 'TLSv1.3'],
      default: 'TLSv1.2',
      describe: 'Oldest TLS version accepted from clients',
    })
    .option('compress', {
      type: 'boolean',
      default: true,
      describe: 'Offer COMPRESS=DEFLATE to logged-in clients (--no-compress to turn off)',
    })
    .option('metrics-listen', { type: 'string', describe: 'Serve /metrics (Prometheus), /healthz and /readyz on HOST:PORT' })
    .option('max-connections', { type: 'number', default: 10_000, describe: 'Client connections at once (0: no limit)' })
    .option('max-connections-per-ip', { type: 'number', default: 0, describe: 'Client connections at once from one address (0: no limit)' })
    .option('preauth-timeout', { type: 'string', default: '60s', describe: 'Time a client has to log in' })
    .option('idle-timeout', { type: 'string', default: '31m', describe: 'Close a session after this long without a byte from the client (IDLE clients re-issue IDLE every 29 min)' })
    .option('shutdown-grace', { type: 'string', default: '30s', describe: 'On SIGTERM/SIGINT, let sessions go on this long before saying BYE' })
    .option('upstream-connect', {
      type: 'string',
      choices: ['lazy', 'eager'],
      default: 'lazy',
      describe:
        "lazy: greet with the upstream's last greeting and connect at the client's first command (idle connections cost the IMAP server nothing); eager: connect at once",
    })
    .option('forward-client-ip', {
      type: 'string',
      choices: ['none', 'id'],
      default: 'none',
      describe: 'id: tell the upstream the client address with an ID command before the client speaks (Dovecot, from login_trusted_networks)',
    })
    .option('check', {
      type: 'boolean',
      default: false,
      describe: 'Check the configuration and the upstream (greeting, capabilities, whether JMAPACCESS can be granted), print a JSON report, exit 0/1',
    })
    .option('upstream-proxy-protocol', {
      type: 'string',
      choices: ['v1', 'v2'],
      describe: 'Send the client address to the upstream in a HAProxy PROXY header (Dovecot: haproxy = yes)',
    })
    .option('accept-proxy-protocol', {
      type: 'boolean',
      default: false,
      describe: 'Read a HAProxy PROXY v1/v2 header from connections coming from --trusted-proxies (and require one from them)',
    })
    .option('trusted-proxies', { type: 'string', describe: 'Comma list of load-balancer addresses or CIDR ranges' })
    .option('workers', {
      type: 'string',
      default: '1',
      describe: `Processes serving clients: 1 (one process), 2-${MAX_WORKERS} (a primary and that many workers sharing the listeners), or auto (one per CPU)`,
    })
    .option('log-level', {
      type: 'string',
      choices: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'],
      default: 'info',
      describe: 'Log level (JSON lines on stdout)',
    })
    .strict()
    .version(version())
    .help()
    .alias('h', 'help')
    .wrap(Math.min(110, process.stdout.columns || 110))
    .fail((message, err) => usageError(err?.message ?? message))
    .parseSync();

  // yargs turns a flag given twice into an array; only these may repeat.
  for (const [key, value] of Object.entries(args)) {
    if (Array.isArray(value) && /^[a-z][a-z-]*$/.test(key) && !REPEATABLE_FLAGS.has(key)) usageError(`--${key}: given more than once`);
  }

  try {
    const config = validateConfig({
      listen: args.listen,
      upstream: args.upstream ?? '',
      jmapUrl: args['jmap-url'] ?? '',
      jmapUrlMap: args['jmap-url-map'],
      jmapUsersAllow: args['jmap-users-allow'],
      jmapUsersDeny: args['jmap-users-deny'],
      jmapVerify: args['jmap-verify'],
      jmapVerifyTimeout: args['jmap-verify-timeout'],
      jmapVerifyTtl: args['jmap-verify-ttl'],
      jmapVerifyCa: args['jmap-verify-ca'],
      jmapMechanisms: args['jmap-mechanisms'],
      objectId: args.objectid,
      allowInsecureJmapUrl: args['allow-insecure-jmap-url'],
      maxLineLength: args['max-line-length'],
      upstreamConnectTimeout: args['upstream-connect-timeout'],
      logLevel: args['log-level'],
      tlsCert: args['tls-cert'],
      tlsKey: args['tls-key'],
      listenTls: args['listen-tls'],
      requireTls: args['require-tls'],
      tlsMinVersion: args['tls-min-version'],
      upstreamStarttls: args['upstream-starttls'],
      upstreamCa: args['upstream-ca'],
      upstreamServername: args['upstream-servername'],
      upstreamTlsInsecure: args['upstream-tls-insecure'],
      compress: args.compress,
      metricsListen: args['metrics-listen'],
      maxConnections: args['max-connections'],
      maxConnectionsPerIp: args['max-connections-per-ip'],
      preauthTimeout: args['preauth-timeout'],
      idleTimeout: args['idle-timeout'],
      shutdownGrace: args['shutdown-grace'],
      forwardClientIp: args['forward-client-ip'],
      upstreamConnect: args['upstream-connect'],
      upstreamProxyProtocol: args['upstream-proxy-protocol'],
      acceptProxyProtocol: args['accept-proxy-protocol'],
      trustedProxies: args['trusted-proxies'],
      workers: args.workers,
    });
    return { ...config, check: args.check };
  } catch (err) {
    if (err instanceof ConfigError) usageError(err.message);
    throw err;
  }
}

async function main(): Promise<void> {
  const config = parseArgs(hideBin(process.argv));
  raiseMallocTrimThreshold();
  if (config.check) {
    const report = await checkUpstream(config);
    process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
    process.exit(report.ok ? 0 : 1);
  }
  const log = createLogger(config.logLevel);
  // A worker forked by the primary (--workers N): the primary has logged the warnings below.
  if (cluster.isWorker) return runWorker(config, log);
  if (config.objectId === 'assume') {
    log.warn('--objectid assume: JMAPACCESS is granted even when the upstream does not offer OBJECTID (RFC 9698 requires it)');
  }
  if (config.upstreamTls?.insecure) {
    log.warn('--upstream-tls-insecure: the upstream certificate is not verified; anyone on the path can read the mail');
  }
  if (config.jmapUrls.insecure) {
    log.warn(
      { ...config.jmapUrls.describe() },
      'the JMAP URL is not https (--allow-insecure-jmap-url); clients would send credentials in clear',
    );
  }
  if (config.workers > 1) {
    // Refuse unusable certificates here, once, as a single process would, rather than in every worker.
    try {
      if (config.tls) new CertificateStore(config.tls, log);
    } catch (err) {
      if (err instanceof CertificateError) usageError(`--tls-cert/--tls-key: ${err.message}`);
      throw err;
    }
    return runPrimary(config, log);
  }
  let server: ProxyServer;
  try {
    server = new ProxyServer(config, log);
  } catch (err) {
    if (err instanceof CertificateError) usageError(`--tls-cert/--tls-key: ${err.message}`);
    throw err;
  }
  try {
    await server.listen();
    if (config.metricsListen) {
      const { address } = await startMetricsServer(config.metricsListen, server.metrics, () => server.readiness(), log);
      log.info({ metricsListen: `${address.address}:${address.port}` }, 'metrics listening');
    }
  } catch (err) {
    log.fatal({ err: (err as Error).message }, 'cannot listen');
    log.flush();
    process.exit(1);
  }
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) {
      // A second signal: no more grace.
      log.info({ signal }, 'stopping now');
      void server.close().then(() => process.exit(0));
      return;
    }
    stopping = true;
    log.info({ signal, graceSeconds: config.shutdownGraceMs / 1000 }, 'stopping: no new connections, sessions finishing');
    const forced = setTimeout(() => process.exit(0), config.shutdownGraceMs + 5000);
    forced.unref();
    void server.drain(config.shutdownGraceMs).then(() => {
      log.info('stopped');
      log.flush();
      process.exit(0);
    });
  };
  process.on('SIGHUP', () => {
    reloadJmapUrlMap(config, log);
    log.info({ config: describeConfig(config) }, 'SIGHUP: effective configuration');
    server.reloadCertificates('SIGHUP');
  });
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

main().catch((err: unknown) => {
  process.stderr.write(`jmapaccess-proxy: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
