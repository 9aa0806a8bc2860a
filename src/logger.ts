// pino: JSON lines in production, pretty output only when a person watches a TTY. Lines are written
// synchronously, so that the last words before a hard exit (a second signal, a fatal worker
// fault) are not lost in a buffer.
import pino, { type Logger } from 'pino';
import type { Config } from './config.js';

export function createLogger(level: Config['logLevel']): Logger {
  const pretty = process.stdout.isTTY && process.env.NODE_ENV !== 'production';
  return pino({
    level,
    base: { service: 'latent-decoder' },
    ...(pretty ? { transport: { target: 'pino-pretty', options: { translateTime: 'SYS:HH:MM:ss.l' } } } : {}),
  }, pretty ? undefined : pino.destination({ dest: 1, sync: true }));
}
