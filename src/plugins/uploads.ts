// Slow and greedy clients: a cap on the body bytes being uploaded at once (declared by
// Content-Length, else counted as a whole body limit), checked on onRequest before a byte of body
// is read, and the set of requests still uploading, so that a drain can close them instead of
// waiting for a client that trickles a body. The body deadline itself is Node's requestTimeout
// (BODY_TIMEOUT_MS, in app.ts's server options): a stalled upload gets 408 and its socket closed.
import type { FastifyInstance, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import { ServiceError } from '../errors.js';

declare module 'fastify' {
  interface FastifyInstance {
    uploads: Uploads;
  }
}

export class Uploads {
  /** Bytes declared by the requests whose bodies are being read now. */
  bytes = 0;
  private readonly open = new Map<FastifyRequest, number>();

  add(req: FastifyRequest, bytes: number): void {
    this.open.set(req, bytes);
    this.bytes += bytes;
  }

  /** The body is read (or the request is gone): its bytes no longer count. */
  done(req: FastifyRequest): void {
    const bytes = this.open.get(req);
    if (bytes === undefined) return;
    this.open.delete(req);
    this.bytes -= bytes;
  }

  /** Closes the connections of requests still uploading (a drain does not wait for them). */
  closeAll(): number {
    const n = this.open.size;
    for (const req of [...this.open.keys()]) {
      req.raw.socket?.destroy();
      this.done(req);
    }
    return n;
  }
}

export interface UploadsOptions {
  bodyLimitBytes: number;
  maxInflightBodyBytes: number;
}

export default fp(async (app: FastifyInstance, opts: UploadsOptions) => {
  const uploads = new Uploads();
  app.decorate('uploads', uploads);
  app.addHook('onRequest', async (req) => {
    const length = req.headers['content-length'];
    const chunked = req.headers['transfer-encoding'] !== undefined;
    if (length === undefined && !chunked) return;
    const bytes = length === undefined ? opts.bodyLimitBytes : Math.min(Number(length) || 0, opts.bodyLimitBytes);
    if (bytes === 0) return;
    if (uploads.bytes + bytes > opts.maxInflightBodyBytes) {
      throw new ServiceError('QUEUE_FULL', `uploads in progress hold ${uploads.bytes} bytes and this one declares ${bytes}: over the limit of ${opts.maxInflightBodyBytes} (MAX_INFLIGHT_BODY_BYTES)`, { headers: { 'retry-after': '1' } });
    }
    uploads.add(req, bytes);
    req.raw.once('close', () => uploads.done(req));
  });
  app.addHook('preValidation', async (req) => uploads.done(req));
  app.addHook('onResponse', async (req) => uploads.done(req));
}, { name: 'uploads', fastify: '5.x' });
