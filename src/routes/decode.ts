// POST /decode: HTTP only. The stages live in their modules: latents/parse (parse), the model's
// batcher (queue), the inference worker (infer), images/encode (encode); this file wires them to
// the request, its deadline and its connection.
import { errorCodes, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { CancelledError, DeadlineError } from '../batching/batcher.js';
import { ServiceError, toServiceError } from '../errors.js';
import { CONTENT_TYPES, encodeImage } from '../images/encode.js';
import type { OutputName } from '../inference/protocol.js';
import { toDecoderSpace } from '../latents/fuse.js';
import { formatFromAccept, parseOptions, type DecodeOptions } from '../latents/options.js';
import { bodyKind, checkShape, planLatents, readBody, type BodyKind } from '../latents/parse.js';
import type { StageTimings } from '../plugins/metrics.js';
import type { ModelHost } from '../plugins/models.js';
import { contentEncoding } from '../plugins/uploads.js';
import { decodeSchema, documentOnly } from '../schemas.js';
import type { DecodeTicket, ServedModel } from '../serving/served-model.js';
import { decodeTiled, queueDemand, tilingFor, type QueueDemand } from '../serving/tiled.js';

/** The request's time budget, ms: X-Request-Timeout-Ms shortens REQUEST_TIMEOUT_MS, never lengthens it. */
export function timeoutMs(req: FastifyRequest, max: number): number {
  const raw = req.headers['x-request-timeout-ms'];
  if (raw === undefined) return max;
  // Decimal only: Number() would also read 0x10, 1e3 and an empty string.
  const v = typeof raw === 'string' && /^\d+(\.\d+)?$/.test(raw) ? Number(raw) : NaN;
  if (!Number.isFinite(v) || v <= 0) {
    throw new ServiceError('BAD_PARAMETER', `X-Request-Timeout-Ms ${JSON.stringify(raw)} is not a positive number of milliseconds`);
  }
  return Math.min(v, max); // shortens, never lengthens
}

/** Bytes of a refused request's unread body worth reading and discarding to keep its connection open. */
export const DISCARD_AT_MOST = 64 * 1024;

/** The loaded registry; SHUTTING_DOWN while draining, NOT_READY while loading. */
export function registryOf(host: ModelHost): NonNullable<ModelHost['registry']> {
  if (host.draining) throw new ServiceError('SHUTTING_DOWN', 'the service is shutting down; retry on another replica');
  if (!host.registry) throw new ServiceError('NOT_READY', 'the models are still loading; retry shortly');
  return host.registry;
}

function modelOf(registry: NonNullable<ModelHost['registry']>, name: string | undefined): ServedModel {
  return registry.resolve(name);
}

/**
 * The decoder-space shape [N, C, h, w] a raw or .npy body will have, from the query string and
 * Content-Length alone (checked against the model: 400s here); undefined when only the body says
 * (a .npy without `shape` in the query, a raw body of unknown length without it).
 */
function shapeBeforeBody(kind: BodyKind, opts: DecodeOptions, model: ServedModel, length: number | undefined): readonly number[] | undefined {
  if (kind === 'npy' || length === undefined) return checkShape(opts, model)?.shape;
  // planLatents needs the byte count only, not the bytes: the shape, or the square latent it implies.
  return planLatents({ options: opts, byteLength: length, bytes: () => Promise.reject(new Error('not read yet')) }, model).shape;
}

export default async function decodeRoutes(app: FastifyInstance): Promise<void> {
  const cfg = app.config;
  const host = app.models;
  /** Each admitted request's reservation, from before its body until its response has gone. */
  const admitted = new WeakMap<FastifyRequest, { model: ServedModel; ticket: DecodeTicket }>();

  /**
   * Reserves in `model`'s queue everything decoding `shape` will queue (every tile when tiled),
   * reusing the room the request already holds; 413 or 429 (Retry-After) when it cannot. The
   * reservation is released when the response has gone or the connection closed, whichever
   * comes first (and by the handler when it is done): an aborted request never keeps it.
   */
  function admit(req: FastifyRequest, reply: FastifyReply, model: ServedModel, { demands, wording }: QueueDemand): DecodeTicket {
    const held = admitted.get(req);
    if (held?.model === model) {
      held.ticket.replace(demands, wording);
      return held.ticket;
    }
    held?.ticket.release();
    const ticket = model.batcher.reserve(demands, wording);
    admitted.set(req, { model, ticket });
    reply.raw.once('close', () => ticket.release());
    return ticket;
  }
  // This plugin's own context: the other routes keep the app's parser.
  app.removeAllContentTypeParsers();
  /** Each request's deadline (performance.now() ms): REQUEST_TIMEOUT_MS or X-Request-Timeout-Ms from its arrival. */
  const deadlines = new WeakMap<FastifyRequest, number>();
  const deadlineOf = (req: FastifyRequest, reply: FastifyReply): number => {
    let deadline = deadlines.get(req);
    if (deadline === undefined) deadlines.set(req, (deadline = performance.now() - reply.elapsedTime + timeoutMs(req, cfg.requestTimeoutMs)));
    return deadline;
  };
  // The body reader refuses a body still arriving at the deadline.
  app.addContentTypeParser('*', (req, payload, done) => app.uploads.read(req, payload, { limit: req.routeOptions.bodyLimit ?? cfg.bodyLimitBytes, deadline: deadlines.get(req) }, done));
  app.metrics.countRequests(app);

  /**
   * Before the body is read, from the query string and headers alone: a request the service will
   * refuse (draining, loading, unknown model, a bad shape or byte count, tiles, a full queue — in
   * that order, queue room last) is answered without reading, buffering or parsing its megabytes,
   * and one it admits holds room for everything it will queue. The handler checks again.
   */
  async function precheck(req: FastifyRequest, reply: FastifyReply): Promise<void> {
    try {
      const registry = registryOf(host);
      deadlineOf(req, reply);
      const kind = bodyKind(req.headers['content-type']);
      // A compressed body's Content-Length says nothing of its decompressed size: read to see.
      const compressed = contentEncoding(req.headers) !== 'identity';
      const length = req.headers['content-length'] === undefined || compressed ? undefined : Number(req.headers['content-length']);
      if (length !== undefined && length > (req.routeOptions.bodyLimit ?? Infinity)) throw new errorCodes.FST_ERR_CTP_BODY_TOO_LARGE();
      const query = req.query as Record<string, unknown>;
      // A JSON body carries its options, the model among them: its checks wait for the fields
      // (read without parsing the latents, see json-body.ts).
      if (kind === 'json') return;
      const opts = parseOptions(query);
      const model = modelOf(registry, opts.model);
      app.metrics.noteOf(req).model = model.name;
      if (length === 0) throw new ServiceError('EMPTY_BODY', 'the request body is empty: send the latents as raw bytes, a .npy file or JSON');
      const shape = shapeBeforeBody(kind, opts, model, length);
      // A shape only the body says: hold room for one sample until it is read.
      admit(req, reply, model, shape ? queueDemand(shape, tilingFor(shape, opts, cfg)) : { demands: [{ sampleCount: 1 }], wording: {} });
    } catch (e) {
      // Fastify's body-limit error stays itself: the app's error handler words it.
      const err = e instanceof errorCodes.FST_ERR_CTP_BODY_TOO_LARGE ? e : toServiceError(e);
      // Closing the connection: Node would otherwise read the unread body to its
      // end. A small body costs less to read and discard than the client's reconnection.
      if (Number(req.headers['content-length'] ?? Infinity) > DISCARD_AT_MOST) reply.header('connection', 'close');
      throw err;
    }
  }

  app.post('/decode', {
    schema: decodeSchema,
    validatorCompiler: documentOnly,
    preParsing: async (req, reply, payload) => {
      await precheck(req, reply);
      return payload;
    },
  }, async (req: FastifyRequest, reply: FastifyReply) => {
    const start = performance.now();
    const note = app.metrics.noteOf(req);
    const timings = note.timings;
    const registry = registryOf(host);

    const controller = new AbortController();
    const onClose = (): void => {
      if (!reply.raw.writableFinished) controller.abort(new CancelledError('the client closed the connection'));
    };
    reply.raw.once('close', onClose);
    let timer: NodeJS.Timeout | undefined;
    host.inflight++;
    try {
      const deadline = deadlineOf(req, reply);
      if (start >= deadline) throw new DeadlineError('the request\'s deadline passed while its body was being received');
      timer = setTimeout(() => controller.abort(new DeadlineError('the request did not finish before its deadline')), deadline - performance.now());

      const wire = readBody(bodyKind(req.headers['content-type']), req.body as Buffer | undefined, req.query as Record<string, unknown>);
      const opts = wire.options;
      const model = modelOf(registry, opts.model);
      note.model = model.name;
      const plan = planLatents(wire, model);
      note.samples = plan.shape[0];
      const tiling = tilingFor(plan.shape, opts, cfg);
      // The room held since the headers covers this shape exactly, unless the body alone said it.
      const ticket = admit(req, reply, model, queueDemand(plan.shape, tiling));
      const tensor = await toDecoderSpace(plan, await wire.bytes());
      timings.parse = performance.now() - start;

      const wantsFloat = opts.outputType === 'tensor' && !opts.partialPostprocess;
      const fetch: OutputName[] = [wantsFloat ? 'sample' : 'image'];
      const run = { ticket, deadline, signal: controller.signal };
      const decoded = tiling
        ? await decodeTiled(model, tensor, tiling, fetch, { ...run, maxBatchSize: cfg.maxBatchSize, maxBatchLatentPixels: cfg.maxBatchLatentPixels })
        : await model.decode(tensor, fetch, run);
      timings.queue = decoded.queueMs;
      timings.infer = decoded.runMs;
      // Dropped before encoding: nobody would read the image.
      if (controller.signal.aborted) throw controller.signal.reason;

      const t = performance.now();
      if (opts.outputType === 'tensor') {
        const { n, height, width } = decoded;
        const [shape, dtype, data] = wantsFloat
          ? [[n, 3, height, width], 'float32', decoded.sample!]
          : [[n, height, width, 3], 'uint8', concat(decoded.images!)];
        reply.header('shape', JSON.stringify(shape)).header('dtype', dtype).type('application/octet-stream');
        timings.encode = performance.now() - t;
        reply.header('server-timing', serverTiming(timings, reply));
        note.format = 'tensor';
        return Buffer.from(data.buffer, data.byteOffset, data.byteLength);
      }
      const format = opts.format ?? formatFromAccept(req.headers.accept);
      const enc = { format, quality: opts.quality, pngCompressionLevel: cfg.pngCompressionLevel };
      const images = await Promise.all(decoded.images!.map((px) => encodeImage(px, decoded.width, decoded.height, enc)));
      timings.encode = performance.now() - t;
      reply.header('server-timing', serverTiming(timings, reply));
      note.format = format;
      if (images.length === 1) return reply.type(CONTENT_TYPES[format]).send(images[0]);
      return { images: images.map((b) => ({ contentType: CONTENT_TYPES[format], data: b.toString('base64') })) };
    } catch (e) {
      throw toServiceError(e);
    } finally {
      clearTimeout(timer);
      reply.raw.off('close', onClose);
      admitted.get(req)?.ticket.release();
      host.inflight--;
    }
  });
}

/**
 * The stages' times for clients and load generators: `parse;dur=0.12, queue;dur=3.40, ...,
 * total;dur=…` (ms); total is Fastify's time since the request arrived, body reading included, so
 * total − infer − encode is the service's own overhead.
 */
export function serverTiming(timings: StageTimings, reply: FastifyReply): string {
  const stages = Object.entries(timings).map(([k, v]) => `${k};dur=${(v as number).toFixed(2)}`);
  return [...stages, `total;dur=${reply.elapsedTime.toFixed(2)}`].join(', ');
}

function concat(parts: Uint8Array[]): Uint8Array {
  if (parts.length === 1) return parts[0]!;
  const out = new Uint8Array(parts.reduce((a, p) => a + p.byteLength, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.byteLength;
  }
  return out;
}
