// POST /decode: HTTP only. The stages live in their modules: latents/parse (parse), the model's
// batcher (queue), the inference worker (infer), images/encode (encode); this file wires them to
// the request, its deadline and its connection.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { CancelledError, DeadlineError } from '../batching/batcher.js';
import { ServiceError, toServiceError } from '../errors.js';
import { CONTENT_TYPES, encodeImage } from '../images/encode.js';
import type { OutputName } from '../inference/protocol.js';
import { formatFromAccept, type ImageFormat } from '../latents/options.js';
import { bodyKind, parseBody, toDecoderSpace } from '../latents/parse.js';
import type { DecodeEvent, Outcome, StageTimings } from '../plugins/metrics.js';
import { decodeSchema, documentOnly } from '../schemas.js';
import { decodeTiled, tilingFor } from '../serving/tiled.js';

function outcomeOf(status: number): Outcome {
  if (status === 429) return 'rejected';
  if (status === 504) return 'timed_out';
  if (status === 499) return 'cancelled';
  return status < 500 ? 'bad_request' : 'error';
}

function timeoutMs(req: FastifyRequest, max: number): number {
  const raw = req.headers['x-request-timeout-ms'];
  if (raw === undefined) return max;
  const v = Number(raw);
  if (typeof raw !== 'string' || !Number.isFinite(v) || v <= 0) {
    throw new ServiceError('BAD_PARAMETER', `X-Request-Timeout-Ms ${JSON.stringify(raw)} is not a positive number of milliseconds`);
  }
  return Math.min(v, max); // shortens, never lengthens
}

export default async function decodeRoutes(app: FastifyInstance): Promise<void> {
  const cfg = app.config;
  const host = app.models;

  app.post('/decode', { schema: decodeSchema, validatorCompiler: documentOnly }, async (req: FastifyRequest, reply: FastifyReply) => {
    const start = performance.now();
    const timings: StageTimings = {};
    let modelName: string | undefined;
    let samples = 0;
    const done = (outcome: Outcome, format?: DecodeEvent['format']): void =>
      app.metrics.onDecode({ model: modelName, outcome, seconds: (performance.now() - start) / 1000, timings, samples, format });
    if (host.draining) throw new ServiceError('SHUTTING_DOWN', 'the service is shutting down; retry on another replica');
    const registry = host.registry;
    if (!registry) throw new ServiceError('NOT_READY', 'the models are still loading; retry shortly');

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

      const body = parseBody(bodyKind(req.headers['content-type']), req.body as Buffer | undefined, req.query as Record<string, unknown>);
      const model = registry.get(body.options.model);
      if (!model) {
        throw new ServiceError('MODEL_NOT_FOUND', `no model named ${JSON.stringify(body.options.model)}; available: ${registry.names.join(', ')}`);
      }
      modelName = model.name;
      const opts = body.options;
      const tensor = toDecoderSpace(body, model);
      samples = tensor.shape[0];
      timings.parse = performance.now() - start;

      const wantsFloat = opts.outputType === 'tensor' && !opts.partialPostprocess;
      const fetch: OutputName[] = [wantsFloat ? 'sample' : 'image'];
      const tiling = tilingFor(tensor.shape, opts, cfg);
      const decoded = tiling
        ? await decodeTiled(model, tensor, tiling, fetch, { deadline, signal: controller.signal, maxBatchSize: cfg.maxBatchSize, maxQueueSize: cfg.maxQueueSize })
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
        reply.header('server-timing', serverTiming(timings));
        done('ok', 'tensor');
        return Buffer.from(data.buffer, data.byteOffset, data.byteLength);
      }
      const format = opts.format ?? formatFromAccept(req.headers.accept);
      const enc = { format, quality: opts.quality, pngCompressionLevel: cfg.pngCompressionLevel };
      const images = await Promise.all(decoded.images!.map((px) => encodeImage(px, decoded.width, decoded.height, enc)));
      timings.encode = performance.now() - t;
      reply.header('server-timing', serverTiming(timings));
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

/** The stages' times for clients and load generators: `parse;dur=0.12, queue;dur=3.40, ...` (ms). */
function serverTiming(timings: StageTimings): string {
  return Object.entries(timings).map(([k, v]) => `${k};dur=${(v as number).toFixed(2)}`).join(', ');
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
