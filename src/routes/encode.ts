// POST /encode: HTTP only. The stages live in their modules: encoding/input (parse: the body to
// the encoder's input), the encoder's batcher (queue), the inference worker (infer),
// encoding/latents-out (encode: the latents into the answer's space, order and dtype).
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { BatchTooLargeError, CancelledError, DeadlineError, QueueFullError } from '../batching/batcher.js';
import { ServiceError, toServiceError } from '../errors.js';
import { encodeBodyKind, readEncodeBody, type EncodeLimits } from '../encoding/input.js';
import type { EncodeOptions } from '../encoding/options.js';
import { parseEncodeOptions } from '../encoding/options.js';
import { writeLatents, type LatentsOut } from '../encoding/latents-out.js';
import { encodeTiled } from '../encoding/tiled.js';
import { tilingFor } from '../serving/tiled.js';
import type { Raw } from '../latents/options.js';
import type { Outcome, StageTimings } from '../plugins/metrics.js';
import type { ModelRegistry } from '../serving/registry.js';
import { VAE_SCALE_FACTOR, type ServedEncoder } from '../serving/served-encoder.js';
import { documentOnly, encodeSchema } from '../schemas.js';
import { BYTES_PER_ELEMENT } from '../tensor/dtype.js';
import { encodeNpy } from '../tensor/npy.js';
import { DRAIN_AT_MOST, outcomeOf, registryOf, serverTiming, timeoutMs } from './decode.js';

/** The model's encoder; ENCODER_NOT_FOUND naming the models that encode. */
function encoderOf(registry: ModelRegistry, name: string | undefined): ServedEncoder {
  const enc = registry.encoder(name);
  if (enc) return enc;
  const can = [...registry.encoders.keys()];
  const which = can.length > 0 ? `models that encode: ${can.join(', ')}` : 'no served model has an encoder (convert weights that hold one: encoder.onnx beside model.onnx)';
  if (name === undefined) throw new ServiceError('ENCODER_NOT_FOUND', `the default model ${registry.defaultName} has no encoder; ${which}`);
  const known = registry.allNames.includes(name);
  throw new ServiceError('ENCODER_NOT_FOUND', `${known ? `model ${JSON.stringify(name)} has no encoder` : `no model named ${JSON.stringify(name)}`}; ${which}`);
}

/** The encoder's queue would refuse these samples now: say so before decoding any pixel. */
function admit(enc: ServedEncoder, samples: number, maxQueueSize: number): void {
  const b = enc.batcher;
  if (samples > maxQueueSize) throw toServiceError(new BatchTooLargeError(`${samples} images is more than the queue holds (${maxQueueSize}); split the request`));
  if (b.waitingSamples + samples > maxQueueSize) throw toServiceError(new QueueFullError(b.waitingSamples, b.retryAfter()));
}

/** Sides are multiples of 16 when the answer is packed or the model's space is patchified (FLUX.2), else 8. */
function limitsFor(enc: ServedEncoder, o: EncodeOptions, maxImagePixels: number, maxLatentSide: number): EncodeLimits {
  const patch = o.pack ? 2 : o.doScaling && o.scalingFactor === undefined && o.shiftFactor === undefined ? enc.stats?.patch ?? 1 : 1;
  return { factor: VAE_SCALE_FACTOR * patch, maxImagePixels, maxLatentSide };
}

export default async function encodeRoutes(app: FastifyInstance): Promise<void> {
  const cfg = app.config;
  const host = app.models;

  /** From the query string and headers, before the body is read: draining, loading, model, options, queue room. */
  async function precheck(req: FastifyRequest, reply: FastifyReply): Promise<void> {
    const start = performance.now();
    let model: string | undefined;
    try {
      const registry = registryOf(host);
      timeoutMs(req, cfg.requestTimeoutMs);
      const kind = encodeBodyKind(req.headers['content-type']);
      if (kind === 'json') return; // its options are in the body
      const opts = parseEncodeOptions(req.query as Record<string, Raw>);
      const enc = encoderOf(registry, opts.model);
      model = enc.name;
      const s = kind === 'raw' ? opts.shape : undefined;
      admit(enc, s ? (s.length === 4 ? s[0]! : 1) : 1, cfg.maxQueueSize);
      const length = req.headers['content-length'] === undefined ? undefined : Number(req.headers['content-length']);
      if (length === 0) throw new ServiceError('EMPTY_BODY', 'the request body is empty: send an image (PNG, JPEG, WebP) or a tensor [N, 3, H, W]');
      const want = s ? s.reduce((a, d) => a * d, 1) * BYTES_PER_ELEMENT[opts.dtype] : undefined;
      if (want !== undefined && length !== undefined && length !== want) {
        throw new ServiceError('SIZE_MISMATCH', `shape ${s!.join('x')} ${opts.dtype} needs ${want} bytes, got ${length}`);
      }
    } catch (e) {
      const err = toServiceError(e);
      app.metrics.onDecode({ model, direction: 'encode', outcome: outcomeOf(err.status), seconds: (performance.now() - start) / 1000, timings: {}, samples: 0 });
      // as on /decode: a refused large body is not read to its end
      if (Number(req.headers['content-length'] ?? Infinity) > DRAIN_AT_MOST) reply.header('connection', 'close');
      throw err;
    }
  }

  app.post('/encode', {
    schema: encodeSchema,
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
    const done = (outcome: Outcome): void =>
      app.metrics.onDecode({ model: modelName, direction: 'encode', outcome, seconds: (performance.now() - start) / 1000, timings, samples, format: 'tensor' });
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
      const kind = encodeBodyKind(req.headers['content-type']);
      const query = req.query as Record<string, Raw>;
      // the model, named by the options (a JSON body's among its fields), decides the factor (16 for FLUX.2's patches)
      let chosen: ServedEncoder | undefined;
      const input = await readEncodeBody(kind, req.body as Buffer | undefined, query, (o) => {
        chosen = encoderOf(registry, o.model);
        modelName = chosen.name;
        return limitsFor(chosen, o, cfg.maxImagePixels, cfg.maxLatentSide);
      });
      const model = chosen!;
      const opts = input.options;
      samples = input.shape[0];
      admit(model, samples, cfg.maxQueueSize);
      const pixels = await input.pixels();
      timings.parse = performance.now() - start;

      const sample = opts.sampleMode === 'sample' && model.hasStd;
      const [n, , h, w] = input.shape;
      // above the untiled size, diffusers' tiled_encode (tilingFor throws for sizes that cannot be encoded at all)
      const tiling = tilingFor([n, 3, h / VAE_SCALE_FACTOR, w / VAE_SCALE_FACTOR], opts, cfg);
      const res = tiling
        ? await encodeTiled(model, pixels, input.shape, tiling, { deadline, signal: controller.signal, std: sample, maxBatchSize: cfg.maxBatchSize, maxBatchLatentPixels: cfg.maxBatchLatentPixels, maxQueueSize: cfg.maxQueueSize })
        : await model.encode(pixels, input.shape, { deadline, signal: controller.signal, std: sample });
      timings.queue = res.queueMs;
      timings.infer = res.runMs;
      if (controller.signal.aborted) throw controller.signal.reason;

      const t = performance.now();
      const stats = opts.doScaling && opts.scalingFactor === undefined && opts.shiftFactor === undefined ? model.stats : undefined;
      const out = writeLatents(res.mean, res.std, [n, model.latentChannels, h / VAE_SCALE_FACTOR, w / VAE_SCALE_FACTOR], {
        scale: opts.doScaling ? (opts.scalingFactor ?? (stats ? 1 : model.scalingFactor)) : 1,
        shift: opts.doScaling ? (opts.shiftFactor ?? model.shiftFactor) : 0,
        ...(stats ? { stats } : {}),
        order: opts.pack ? 'packed' : opts.layout,
        dtype: opts.outputDtype,
        ...(opts.seed !== undefined ? { seed: opts.seed } : {}),
      }, model.name);
      if (opts.pack) reply.header('height', String(h)).header('width', String(w));
      const body = answer(out, req.headers.accept, reply, opts.pack ? { height: h, width: w } : undefined);
      timings.encode = performance.now() - t;
      reply.header('server-timing', serverTiming(timings, reply));
      done('ok');
      return body;
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
 * The latents as the client asked (Accept): raw bytes with `shape` and `dtype` headers (what
 * diffusers' remote_encode reads; the default), a .npy file, or JSON with base64 latents.
 */
function answer(out: LatentsOut, accept: string | undefined, reply: FastifyReply, size?: { height: number; width: number }): Buffer | object {
  const wants = (accept ?? '').toLowerCase();
  reply.header('shape', JSON.stringify(out.shape)).header('dtype', out.dtype);
  if (wants.includes('application/x-npy')) {
    if (out.dtype === 'bfloat16') throw new ServiceError('BAD_PARAMETER', '.npy has no bfloat16: ask for output_dtype=float32 or float16, or the raw answer');
    reply.type('application/x-npy');
    const data = out.dtype === 'float32' ? new Float32Array(out.bytes.buffer, out.bytes.byteOffset, out.bytes.byteLength / 4) : new Uint16Array(out.bytes.buffer, out.bytes.byteOffset, out.bytes.byteLength / 2);
    return encodeNpy({ dtype: out.dtype === 'float32' ? '<f4' : '<f2', shape: out.shape, data });
  }
  if (wants.includes('application/json')) {
    reply.type('application/json');
    return { latents: Buffer.from(out.bytes.buffer, out.bytes.byteOffset, out.bytes.byteLength).toString('base64'), shape: out.shape, dtype: out.dtype, ...size };
  }
  reply.type('application/octet-stream');
  return Buffer.from(out.bytes.buffer, out.bytes.byteOffset, out.bytes.byteLength);
}
