// POST /encode: HTTP only. The stages live in their modules: encoding/input (parse: the body to
// the encoder's input), the encoder's batcher (queue), the inference worker (infer),
// encoding/latents-out (encode: the latents into the answer's space, order and dtype).
import { errorCodes, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { Demand, ReserveWording } from '../batching/batcher.js';
import { ServiceError } from '../errors.js';
import { encodeBodyKind, readEncodeBody, type EncodeLimits } from '../encoding/input.js';
import { writeLatents, type LatentsOut } from '../encoding/latents-out.js';
import { parseEncodeOptions, type EncodeOptions } from '../encoding/options.js';
import { encodeTiled, tiledEncodeDemand } from '../encoding/tiled.js';
import type { Raw } from '../latents/options.js';
import { contentEncoding } from '../plugins/uploads.js';
import { documentOnly, encodeSchema } from '../schemas.js';
import { encodeDemand, VAE_SCALE_FACTOR, type EncodeTicket, type ServedEncoder } from '../serving/served-encoder.js';
import { tilingFor, type TileSettings } from '../serving/tiled.js';
import { BYTES_PER_ELEMENT } from '../tensor/dtype.js';
import { encodeNpy } from '../tensor/npy.js';
import { inRequestScope, refusedBeforeBody, registryOf, requestDeadlines, reservations, serverTiming } from './request.js';

/** Sides are multiples of 16 when the answer is packed or the model's space is patchified (FLUX.2), else 8. */
function limitsFor(enc: ServedEncoder, o: EncodeOptions, maxImagePixels: number, maxLatentSide: number): EncodeLimits {
  const patch = o.pack ? 2 : o.doScaling && o.scalingFactor === undefined && o.shiftFactor === undefined ? enc.stats?.patch ?? 1 : 1;
  return { factor: VAE_SCALE_FACTOR * patch, maxImagePixels, maxLatentSide };
}

/** Everything encoding [N, 3, H, W] queues: N images, or every tile of them. */
function demandOf(shape: readonly number[], tiling: TileSettings | undefined): { demands: Demand[]; wording: ReserveWording } {
  return tiling ? tiledEncodeDemand(shape, tiling) : encodeDemand(shape);
}

export default async function encodeRoutes(app: FastifyInstance): Promise<void> {
  const cfg = app.config;
  const host = app.models;
  const { admit, release } = reservations<ServedEncoder, EncodeTicket>();
  const tiling = (shape: readonly number[], o: EncodeOptions): TileSettings | undefined =>
    tilingFor([shape[0]!, 3, shape[2]! / VAE_SCALE_FACTOR, shape[3]! / VAE_SCALE_FACTOR], o, cfg, 'encode');

  const deadlineOf = requestDeadlines(app);
  app.metrics.countRequests(app);

  /**
   * From the query string and headers, before the body is read: draining, loading, the model's
   * encoder, options, a tensor's byte count, queue room (an image holds room for one until its
   * header is read). A refused large body is not read to its end.
   */
  async function precheck(req: FastifyRequest, reply: FastifyReply): Promise<void> {
    const note = app.metrics.noteOf(req);
    note.direction = 'encode';
    try {
      const registry = registryOf(host);
      deadlineOf(req, reply);
      const kind = encodeBodyKind(req.headers['content-type']);
      const compressed = contentEncoding(req.headers) !== 'identity';
      const length = req.headers['content-length'] === undefined || compressed ? undefined : Number(req.headers['content-length']);
      if (length !== undefined && length > (req.routeOptions.bodyLimit ?? Infinity)) throw new errorCodes.FST_ERR_CTP_BODY_TOO_LARGE();
      if (kind === 'json') return; // its options are in the body
      const opts = parseEncodeOptions(req.query as Record<string, Raw>);
      checkAnswerable(opts, req.headers.accept);
      const enc = registry.encoder(opts.model);
      note.model = enc.name;
      if (length === 0) throw new ServiceError('EMPTY_BODY', 'the request body is empty: send an image (PNG, JPEG, WebP) or a tensor [N, 3, H, W]');
      const s = kind === 'raw' ? opts.shape : undefined;
      const want = s ? s.reduce((a, d) => a * d, 1) * BYTES_PER_ELEMENT[opts.dtype] : undefined;
      if (want !== undefined && length !== undefined && length !== want) {
        throw new ServiceError('SIZE_MISMATCH', `shape ${s!.join('x')} ${opts.dtype} needs ${want} bytes, got ${length}`);
      }
      const shape = s && s.length === 4 && s[2]! % VAE_SCALE_FACTOR === 0 && s[3]! % VAE_SCALE_FACTOR === 0 ? s : undefined;
      admit(req, reply, enc, shape ? demandOf(shape, tiling(shape, opts)) : { demands: [{ sampleCount: 1 }], wording: {} });
    } catch (e) {
      throw refusedBeforeBody(e, req, reply);
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
    const note = app.metrics.noteOf(req);
    note.direction = 'encode';
    const timings = note.timings;
    const registry = registryOf(host);
    return inRequestScope(host, reply, start, deadlineOf(req, reply), () => release(req), async ({ deadline, signal }) => {
      const kind = encodeBodyKind(req.headers['content-type']);
      const query = req.query as Record<string, Raw>;
      // the model, named by the options (a JSON body's among its fields), decides the factor (16 for FLUX.2's patches)
      let chosen: ServedEncoder | undefined;
      const input = await readEncodeBody(kind, req.body as Buffer | undefined, query, (o) => {
        chosen = registry.encoder(o.model);
        note.model = chosen.name;
        return limitsFor(chosen, o, cfg.maxImagePixels, cfg.maxLatentSide);
      });
      const model = chosen!;
      const opts = input.options;
      checkAnswerable(opts, req.headers.accept);
      note.samples = input.shape[0];
      const [n, , h, w] = input.shape;
      // above the untiled size, diffusers' tiled_encode (tilingFor throws for sizes that cannot be encoded at all)
      const tiles = tiling(input.shape, opts);
      // the room held since the headers, resized to what this request queues
      const ticket = admit(req, reply, model, demandOf(input.shape, tiles));
      const pixels = await input.pixels();
      timings.parse = performance.now() - start;

      const sample = opts.sampleMode === 'sample' && model.hasStd;
      const run = { ticket, deadline, signal: signal, std: sample };
      const res = tiles
        ? await encodeTiled(model, pixels, input.shape, tiles, { ...run, maxBatchSize: cfg.maxBatchSize, maxBatchLatentPixels: cfg.maxBatchLatentPixels })
        : await model.encode(pixels, input.shape, run);
      timings.queue = res.queueMs;
      timings.infer = res.runMs;
      if (signal.aborted) throw signal.reason;

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
      note.format = 'tensor';
      return body;
    });
  });
}

/** An answer the options and Accept ask for must be writable: .npy has no bfloat16 (BAD_PARAMETER, before any work). */
function checkAnswerable(o: EncodeOptions, accept: string | undefined): void {
  if (o.outputDtype === 'bfloat16' && (accept ?? '').toLowerCase().includes('application/x-npy')) {
    throw new ServiceError('BAD_PARAMETER', '.npy has no bfloat16: ask for output_dtype=float32 or float16, or the raw answer');
  }
}

/**
 * The latents as the client asked (Accept): raw bytes with `shape` and `dtype` headers (what
 * diffusers' remote_encode reads; the default), a .npy file, or JSON with base64 latents.
 */
function answer(out: LatentsOut, accept: string | undefined, reply: FastifyReply, size?: { height: number; width: number }): Buffer | object {
  const wants = (accept ?? '').toLowerCase();
  reply.header('shape', JSON.stringify(out.shape)).header('dtype', out.dtype);
  if (wants.includes('application/x-npy')) {
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
