// POST /decode: HTTP only. The stages live in their modules: latents/parse (parse), the model's
// batcher (queue), the inference worker (infer), images/encode (encode); this file wires them to
// the request, its deadline and its connection.
import { errorCodes, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { BatchTooLargeError, CancelledError, DeadlineError, QueueFullError } from '../batching/batcher.js';
import { ServiceError, toServiceError } from '../errors.js';
import { CONTENT_TYPES, encodeImage } from '../images/encode.js';
import type { OutputName } from '../inference/protocol.js';
import { toDecoderSpace } from '../latents/fuse.js';
import { formatFromAccept, parseOptions } from '../latents/options.js';
import { bodyKind, checkBytes, checkShape, planLatents, readBody } from '../latents/parse.js';
import type { DecodeEvent, Outcome, StageTimings } from '../plugins/metrics.js';
import type { ModelHost } from '../plugins/models.js';
import { decodeSchema, documentOnly } from '../schemas.js';
import type { ServedModel } from '../serving/served-model.js';
import { decodeTiled, tilingFor } from '../serving/tiled.js';
import { decodeVideoRequest, precheckVideo, requestedModel, routesToVideo } from '../video/route.js';

function outcomeOf(status: number): Outcome {
  if (status === 429) return 'rejected';
  if (status === 504) return 'timed_out';
  if (status === 499) return 'cancelled';
  return status < 500 ? 'bad_request' : 'error';
}

function timeoutMs(req: FastifyRequest, max: number): number {
  const raw = req.headers['x-request-timeout-ms'];
  if (raw === undefined) return max;
  // Decimal only: Number() would also read 0x10, 1e3 and an empty string.
  const v = typeof raw === 'string' && /^\d+(\.\d+)?$/.test(raw) ? Number(raw) : NaN;
  if (!Number.isFinite(v) || v <= 0) {
    throw new ServiceError('BAD_PARAMETER', `X-Request-Timeout-Ms ${JSON.stringify(raw)} is not a positive number of milliseconds`);
  }
  return Math.min(v, max); // shortens, never lengthens
}

/** Bytes of a refused request's unread body worth draining to keep its connection open. */
const DRAIN_AT_MOST = 64 * 1024;

function registryOf(host: ModelHost): NonNullable<ModelHost['registry']> {
  if (host.draining) throw new ServiceError('SHUTTING_DOWN', 'the service is shutting down; retry on another replica');
  if (!host.registry) throw new ServiceError('NOT_READY', 'the models are still loading; retry shortly');
  return host.registry;
}

function modelOf(registry: NonNullable<ModelHost['registry']>, name: string | undefined): ServedModel {
  const model = registry.get(name);
  if (!model) throw new ServiceError('MODEL_NOT_FOUND', `no model named ${JSON.stringify(name)}; available: ${registry.names.join(', ')}`);
  return model;
}

/** The batcher would refuse these samples now: say so before reading or decoding anything more. */
function admit(model: ServedModel, samples: number, maxQueueSize: number): void {
  const b = model.batcher;
  if (samples > maxQueueSize) throw toServiceError(new BatchTooLargeError(`${samples} samples is more than the queue holds (${maxQueueSize}); split the request`));
  if (b.waitingSamples + samples > maxQueueSize) throw toServiceError(new QueueFullError(b.waitingSamples, b.retryAfter()));
}

/**
 * The body into one buffer of its announced size, each chunk copied as it arrives. Fastify's own
 * parser keeps the chunks and copies them all when the body ends: one 20-40 ms task per 45 MB on a
 * busy machine, and with a few large bodies ending together, the /healthz answer waits for all.
 */
function collectBody(req: FastifyRequest, payload: NodeJS.ReadableStream, done: (err: Error | null, body?: Buffer) => void): void {
  const limit = req.routeOptions.bodyLimit ?? Infinity;
  const declared = req.headers['content-length'] === undefined ? undefined : Number(req.headers['content-length']);
  if (declared !== undefined && declared > limit) return done(new errorCodes.FST_ERR_CTP_BODY_TOO_LARGE());
  // The announced size is allocated once the first MiB has arrived: a client that announces
  // 64 MiB and sends nothing holds no more than that MiB.
  const start = 1024 * 1024;
  let body = Buffer.allocUnsafeSlow(declared !== undefined && Number.isSafeInteger(declared) ? Math.min(declared, start) : start);
  let received = 0;
  const finish = (err: Error | null, out?: Buffer): void => {
    payload.removeListener('data', onData);
    payload.removeListener('end', onEnd);
    payload.removeListener('error', onEnd);
    done(err, out);
  };
  const onData = (data: Buffer | string): void => {
    const chunk = typeof data === 'string' ? Buffer.from(data) : data;
    if (received + chunk.length > limit) return finish(new errorCodes.FST_ERR_CTP_BODY_TOO_LARGE());
    if (received + chunk.length > body.length) {
      if (declared !== undefined && received + chunk.length > declared) return finish(new errorCodes.FST_ERR_CTP_INVALID_CONTENT_LENGTH());
      const grown = Buffer.allocUnsafeSlow(declared ?? Math.min(limit, Math.max(2 * body.length, received + chunk.length)));
      body.copy(grown, 0, 0, received);
      body = grown;
    }
    chunk.copy(body, received);
    received += chunk.length;
  };
  const onEnd = (err?: Error): void => {
    if (err) {
      const status = (err as { statusCode?: unknown }).statusCode;
      return finish(Object.assign(err, { statusCode: typeof status === 'number' && status >= 400 ? status : 400 }));
    }
    if (declared !== undefined && received !== declared) return finish(new errorCodes.FST_ERR_CTP_INVALID_CONTENT_LENGTH());
    finish(null, body.subarray(0, received));
  };
  payload.on('data', onData);
  payload.on('end', onEnd);
  payload.on('error', onEnd);
  payload.resume();
}

export default async function decodeRoutes(app: FastifyInstance): Promise<void> {
  const cfg = app.config;
  const host = app.models;
  // This plugin's own context: the other routes keep the app's parser.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', (req, payload, done) => collectBody(req, payload, done));

  /**
   * Before the body is read, from the query string and headers alone: a request the service will
   * refuse (draining, loading, unknown model, full queue, a bad shape or byte count) is answered
   * without reading, buffering or parsing its megabytes. The handler checks everything again.
   */
  async function precheck(req: FastifyRequest, reply: FastifyReply): Promise<void> {
    const start = performance.now();
    let model: ServedModel | undefined;
    try {
      const registry = registryOf(host);
      timeoutMs(req, cfg.requestTimeoutMs);
      const kind = bodyKind(req.headers['content-type']);
      const length = req.headers['content-length'] === undefined ? undefined : Number(req.headers['content-length']);
      if (length !== undefined && length > (req.routeOptions.bodyLimit ?? Infinity)) throw new errorCodes.FST_ERR_CTP_BODY_TOO_LARGE();
      const query = req.query as Record<string, unknown>;
      // A JSON body carries its options, the model among them: its checks wait for the fields
      // (read without parsing the latents, see json-body.ts).
      if (kind === 'json') return;
      const target = registry.get(requestedModel(kind, undefined, query));
      if (target?.isVideo) model = target;
      if (target && precheckVideo(target, kind, query, length, cfg)) return;
      const opts = parseOptions(query);
      model = modelOf(registry, opts.model);
      const resolved = kind === 'raw' ? checkShape(opts, model) : undefined;
      admit(model, resolved?.shape[0] ?? 1, cfg.maxQueueSize);
      if (length === 0) throw new ServiceError('EMPTY_BODY', 'the request body is empty: send the latents as raw bytes, a .npy file or JSON');
      if (resolved && length !== undefined) checkBytes(opts, resolved.wireShape, length);
    } catch (e) {
      // Fastify's body-limit error stays itself: the app's error handler words it.
      const err = e instanceof errorCodes.FST_ERR_CTP_BODY_TOO_LARGE ? e : toServiceError(e);
      const status = err instanceof ServiceError ? err.status : 413;
      app.metrics.onDecode({ model: model?.name, outcome: outcomeOf(status), seconds: (performance.now() - start) / 1000, timings: {}, samples: 0 });
      // Closing, not draining, the connection: Node would otherwise read the unread body to its
      // end. A small body costs less to drain than the client's reconnection.
      if (Number(req.headers['content-length'] ?? Infinity) > DRAIN_AT_MOST) reply.header('connection', 'close');
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
    const timings: StageTimings = {};
    let modelName: string | undefined;
    let samples = 0;
    const done = (outcome: Outcome, format?: DecodeEvent['format']): void =>
      app.metrics.onDecode({ model: modelName, outcome, seconds: (performance.now() - start) / 1000, timings, samples, format });
    const registry = registryOf(host);

    const controller = new AbortController();
    const onClose = (): void => {
      if (!reply.raw.writableFinished) controller.abort(new CancelledError('the client closed the connection'));
    };
    reply.raw.once('close', onClose);
    let timer: NodeJS.Timeout | undefined;
    host.inflight++;
    try {
      const deadline = start + timeoutMs(req, cfg.requestTimeoutMs);
      timer = setTimeout(() => controller.abort(new DeadlineError('the request did not finish before its deadline')), deadline - performance.now());

      const kind = bodyKind(req.headers['content-type']);
      const target = modelOf(registry, requestedModel(kind, req.body as Buffer | undefined, req.query as Record<string, unknown>));
      if (routesToVideo(target, kind, req.body as Buffer | undefined, req.query as Record<string, unknown>)) {
        modelName = target.name;
        const ctx = { cfg, deadline, signal: controller.signal, timings, done: (o: Outcome, f: DecodeEvent['format'], n: number) => { samples = n; done(o, f); } };
        return await decodeVideoRequest(req, reply, target, ctx);
      }
      const wire = readBody(kind, req.body as Buffer | undefined, req.query as Record<string, unknown>);
      const opts = wire.options;
      const model = modelOf(registry, opts.model);
      modelName = model.name;
      const plan = planLatents(wire, model);
      samples = plan.shape[0];
      admit(model, samples, cfg.maxQueueSize);
      const tensor = await toDecoderSpace(plan, await wire.bytes());
      timings.parse = performance.now() - start;

      const wantsFloat = opts.outputType === 'tensor' && !opts.partialPostprocess;
      const fetch: OutputName[] = [wantsFloat ? 'sample' : 'image'];
      const tiling = tilingFor(tensor.shape, opts, cfg);
      const decoded = tiling
        ? await decodeTiled(model, tensor, tiling, fetch, { deadline, signal: controller.signal, maxBatchSize: cfg.maxBatchSize, maxBatchLatentPixels: cfg.maxBatchLatentPixels, maxQueueSize: cfg.maxQueueSize })
        : await model.decode(tensor, fetch, { deadline, signal: controller.signal });
      timings.queue = decoded.queueMs;
      timings.infer = decoded.runMs;
      // Dropped before encoding: nobody would read the image.
      if (controller.signal.aborted) throw controller.signal.reason;

      const t = performance.now();
      if (opts.outputType === 'tensor') {
        const { n, height, width } = decoded;
        const [shape, dtype, data] = wantsFloat
          ? [[n, 3, height, width], 'float32', decoded.samples!]
          : [[n, height, width, 3], 'uint8', concat(decoded.images!)];
        reply.header('shape', JSON.stringify(shape)).header('dtype', dtype).type('application/octet-stream');
        timings.encode = performance.now() - t;
        reply.header('server-timing', serverTiming(timings, reply));
        done('ok', 'tensor');
        return Buffer.from(data.buffer, data.byteOffset, data.byteLength);
      }
      const format = opts.format ?? formatFromAccept(req.headers.accept);
      const enc = { format, quality: opts.quality, pngCompressionLevel: cfg.pngCompressionLevel };
      const images = await Promise.all(decoded.images!.map((px) => encodeImage(px, decoded.width, decoded.height, enc)));
      timings.encode = performance.now() - t;
      reply.header('server-timing', serverTiming(timings, reply));
      done('ok', format);
      if (images.length === 1) return reply.type(CONTENT_TYPES[format]).send(images[0]);
      return { images: images.map((b) => ({ contentType: CONTENT_TYPES[format], data: b.toString('base64') })) };
    } catch (e) {
      const err = toServiceError(e);
      done(outcomeOf(err.status));
      throw err;
    } finally {
      clearTimeout(timer);
      reply.raw.off('close', onClose);
      host.inflight--;
    }
  });
}

/**
 * The stages' times for clients and load generators: `parse;dur=0.12, queue;dur=3.40, ...,
 * total;dur=…` (ms); total is Fastify's time since the request arrived, body reading included, so
 * total − infer − encode is the service's own overhead.
 */
function serverTiming(timings: StageTimings, reply: FastifyReply): string {
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
