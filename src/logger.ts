/**
 * The process logger: pino JSON lines on stdout.
 *
 * Nothing the proxy logs is built from command or response bytes: it logs
 * tags, command names, user names and decisions. The redact paths below are
 * a second line of defence should a secret-bearing field ever be added.
 *
 * Writes are synchronous: the proxy logs a handful of lines per connection,
 * never per byte, and synchronous writes keep lines in order and lose none
 * when the process exits on a signal.
 */

import { pino, type DestinationStream, type Logger } from 'pino';
import type { LogLevel } from './config.js';

export const REDACTED_PATHS = [
  'password',
  '*.password',
  'token',
  '*.token',
  'authorization',
  '*.authorization',
  'sasl',
  '*.sasl',
  'line',
  '*.line',
];

export function createLogger(level: LogLevel, destination?: DestinationStream): Logger {
  return pino(
    {
      level,
      base: { name: 'jmapaccess-proxy' },
      redact: { paths: REDACTED_PATHS, censor: '[redacted]' },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    destination ?? pino.destination({ fd: 1, sync: true }),
  );
}
