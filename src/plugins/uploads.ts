// Request bodies: the one reader every route's parser uses, and the budget of body bytes held at
// once over all connections (MAX_INFLIGHT_BODY_BYTES). A request is charged the bytes it has
// actually sent, as they arrive, and released when its body is read or it ends: headers alone
// hold nothing, so clients that announce large bodies and send nothing block nobody. The reader
// decompresses gzip/deflate bodies as a stream and applies the body limit to the decompressed
// bytes. The set of requests still uploading lets a drain close them instead of waiting for a
// client that trickles a body. The whole-request deadline is Node's requestTimeout
// (BODY_TIMEOUT_MS, see http-server.ts): a stalled upload gets 408 and its socket closed.
import type { FastifyInstance, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import type { IncomingHttpHeaders } from 'node:http';
import { createGunzip, createInflate } from 'node:zlib';
import { ServiceError } from '../errors.js';
import { continueUpload } from '../http-server.js';

declare module 'fastify' {
  interface FastifyInstance {
    uploads: Uploads;
  }
}

export type ContentEncoding = 'identity' | 'gzip' | 'deflate';

/**
 * What to do about a body over BODY_LIMIT_BYTES, for the route it was sent to: /decode's bodies
 * are latents; /encode's an image or an image tensor (float32 is 12 bytes a pixel, a PNG a few).
 */
export function bodyTooLargeAdvice(url: string | undefined): string {
  return url === '/encode'
    ? 'send fewer images per request, an image as PNG, JPEG or WebP rather than as a tensor (float32: 12 bytes a pixel), or raise BODY_LIMIT_BYTES'
    : 'send fewer latents per request';
}
const ENCODINGS: Record<string, ContentEncoding> = { 'identity': 'identity', 'gzip': 'gzip', 'x-gzip': 'gzip', 'deflate': 'deflate' };
const CLOSE = { connection: 'close' };

/**
 * The body's `Content-Encoding`: none or `identity`, `gzip` (`x-gzip`), `deflate` (zlib, RFC 9110).
 * @throws ServiceError UNSUPPORTED_CONTENT_ENCODING (415) naming any other, or a list of codings.
 */
export function contentEncoding(headers: IncomingHttpHeaders): ContentEncoding {
  const raw = headers['content-encoding'];
  if (raw === undefined) return 'identity';
  const enc = ENCODINGS[raw.trim().toLowerCase()];
  if (enc) return enc;
  throw new ServiceError('UNSUPPORTED_CONTENT_ENCODING', `Content-Encoding ${JSON.stringify(raw)} is not supported: send the body as is, or with gzip or deflate`,
    { headers: { 'accept-encoding': 'gzip, deflate, identity' } });
}

export interface ReadBodyOptions {
  /** Bytes the (decompressed) body may have: 413 BODY_TOO_LARGE above, found while reading. */
  limit: number;
  /** performance.now() time by which the body must be read: 504 DEADLINE_EXCEEDED past it. */
  deadline?: number;
}

/** The first allocation, made when the first bytes arrive: a client that announces a large body and sends little holds little. */
const FIRST_ALLOCATION = 64 * 1024;

export class Uploads {
  /** Body bytes received and held by the requests whose bodies are being read now. */
  bytes = 0;
  private readonly open = new Map<FastifyRequest, number>();

  constructor(readonly maxInflightBodyBytes: number) {}

  /** The request may upload a body: it holds nothing until bytes arrive. */
  add(req: FastifyRequest): void {
    if (!this.open.has(req)) this.open.set(req, 0);
  }

  /**
   * `bytes` more of the request's body have arrived.
   * @throws ServiceError QUEUE_FULL (429, Retry-After 1, the connection closed) when the uploads
   * in progress would hold more than MAX_INFLIGHT_BODY_BYTES.
   */
  charge(req: FastifyRequest, bytes: number): void {
    const held = this.open.get(req) ?? 0;
    if (this.bytes + bytes > this.maxInflightBodyBytes) {
      throw new ServiceError('QUEUE_FULL', `uploads in progress hold ${this.bytes} bytes and this one's next ${bytes} would pass the limit of ${this.maxInflightBodyBytes} (MAX_INFLIGHT_BODY_BYTES)`,
        { headers: { 'retry-after': '1', ...CLOSE } });
    }
    this.open.set(req, held + bytes);
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

  /**
   * The body into one buffer, each chunk copied as it arrives (Fastify's own parser keeps the
   * chunks and copies them all at the end: one 20-40 ms task per 45 MB on a busy machine). The
   * buffer doubles up to the announced size, so a request holds less than twice what it sent.
   * Sends `100 Continue` first to a client that waits for it. Errors: 415/400 for the encoding,
   * 413 over `limit` (decompressed bytes), 400 for a body shorter or longer than Content-Length,
   * 429 over the upload budget, 504 past `deadline`; those found mid-body close the connection.
   */
  read(req: FastifyRequest, payload: NodeJS.ReadableStream, opts: ReadBodyOptions, done: (err: Error | null, body?: Buffer) => void): void {
    let encoding: ContentEncoding;
    try {
      encoding = contentEncoding(req.headers);
    } catch (e) {
      return done(e as Error);
    }
    const tooLarge = (): ServiceError => new ServiceError('BODY_TOO_LARGE', `the ${encoding === 'identity' ? '' : 'decompressed '}body is over the limit of ${opts.limit} bytes (BODY_LIMIT_BYTES); ${bodyTooLargeAdvice(req.routeOptions.url)}`, { headers: CLOSE });
    const header = req.headers['content-length'];
    const declared = header === undefined || encoding !== 'identity' ? undefined : Number(header);
    if (declared !== undefined && declared > opts.limit) return done(tooLarge());
    continueUpload(req.raw);
    const inflate = encoding === 'identity' ? undefined : encoding === 'gzip' ? createGunzip() : createInflate();
    const source: NodeJS.ReadableStream = inflate ? payload.pipe(inflate) : payload;
    const cap = declared !== undefined && Number.isSafeInteger(declared) ? declared : opts.limit;
    // Nothing until bytes arrive: connections that send headers alone hold no buffer.
    let body = Buffer.alloc(0);
    let received = 0;
    let timer: NodeJS.Timeout | undefined;
    const finish = (err: Error | null, out?: Buffer): void => {
      clearTimeout(timer);
      payload.removeListener('error', onEnd);
      source.removeListener('data', onData);
      source.removeListener('end', onEnd);
      source.removeListener('error', onEnd);
      if (inflate) {
        payload.unpipe(inflate);
        inflate.destroy();
      }
      this.done(req);
      done(err, out);
    };
    const onData = (data: Buffer | string): void => {
      const chunk = typeof data === 'string' ? Buffer.from(data) : data;
      if (received + chunk.length > opts.limit) return finish(tooLarge());
      if (declared !== undefined && received + chunk.length > declared) return finish(lengthMismatch(declared));
      try {
        this.charge(req, chunk.length);
      } catch (e) {
        return finish(e as Error);
      }
      if (received + chunk.length > body.length) {
        const want = body.length === 0 ? Math.min(FIRST_ALLOCATION, Math.max(2 * chunk.length, 1024)) : 2 * body.length;
        const grown = Buffer.allocUnsafeSlow(Math.min(cap, Math.max(want, received + chunk.length)));
        body.copy(grown, 0, 0, received);
        body = grown;
      }
      chunk.copy(body, received);
      received += chunk.length;
    };
    const onEnd = (err?: Error & { statusCode?: unknown; code?: string }): void => {
      if (err) {
        if (err.code?.startsWith('Z_')) return finish(new ServiceError('BAD_CONTENT_ENCODING', `the body is not valid ${encoding} data: ${err.message}`, { headers: CLOSE }));
        const status = err.statusCode;
        return finish(Object.assign(err, { statusCode: typeof status === 'number' && status >= 400 ? status : 400 }));
      }
      if (declared !== undefined && received !== declared) return finish(lengthMismatch(declared));
      finish(null, body.subarray(0, received));
    };
    if (opts.deadline !== undefined) {
      timer = setTimeout(() => finish(new ServiceError('DEADLINE_EXCEEDED', `the request's deadline passed while its body was being received (${received} bytes so far)`, { headers: CLOSE })),
        Math.max(0, opts.deadline - performance.now()));
    }
    source.on('data', onData);
    source.on('end', onEnd);
    source.on('error', onEnd);
    if (inflate) payload.on('error', onEnd);
    source.resume();
  }
}

function lengthMismatch(declared: number): ServiceError {
  return new ServiceError('BAD_PARAMETER', `the body does not match its Content-Length of ${declared} bytes`, { headers: CLOSE });
}

export interface UploadsOptions {
  maxInflightBodyBytes: number;
}

export default fp(async (app: FastifyInstance, opts: UploadsOptions) => {
  const uploads = new Uploads(opts.maxInflightBodyBytes);
  app.decorate('uploads', uploads);
  app.addHook('onRequest', async (req) => {
    const length = req.headers['content-length'];
    if (length === undefined && req.headers['transfer-encoding'] === undefined) return;
    // A body that cannot fit in what the uploads in progress leave is refused before it is read;
    // one over the route's body limit is the route's 413 (never accepted: no 429 to retry).
    const bytes = Number(length);
    const overLimit = bytes > (req.routeOptions.bodyLimit ?? Infinity);
    if (Number.isSafeInteger(bytes) && !overLimit && uploads.bytes + bytes > opts.maxInflightBodyBytes) {
      throw new ServiceError('QUEUE_FULL', `uploads in progress hold ${uploads.bytes} bytes and this one declares ${bytes}: over the limit of ${opts.maxInflightBodyBytes} (MAX_INFLIGHT_BODY_BYTES)`, { headers: { 'retry-after': '1' } });
    }
    uploads.add(req);
    req.raw.once('close', () => uploads.done(req));
  });
  app.addHook('preValidation', async (req) => uploads.done(req));
  app.addHook('onResponse', async (req) => uploads.done(req));
}, { name: 'uploads', fastify: '5.x' });
