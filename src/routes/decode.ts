// POST /decode: HTTP only. The stages live in their modules: latents/parse (parse), the model's
// batcher (queue), the inference worker (infer), images/encode (encode); this file wires them to
// the request, its deadline and its connection.
import { errorCodes, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { ServiceError } from '../errors.js';
import { CONTENT_TYPES, encodeImage } from '../images/encode.js';
import type { OutputName } from '../inference/protocol.js';
import { toDecoderSpace } from '../latents/fuse.js';
import { formatFromAccept, parseOptions, type DecodeOptions } from '../latents/options.js';
import { bodyKind, checkShape, planLatents, readBody, type BodyKind } from '../latents/parse.js';
import { contentEncoding } from '../plugins/uploads.js';
import { decodeSchema, documentOnly } from '../schemas.js';
import type { ModelRegistry } from '../serving/registry.js';
import type { DecodeTicket, ServedModel } from '../serving/served-model.js';
import { decodeTiled, queueDemand, tilingFor } from '../serving/tiled.js';
import { inRequestScope, refusedBeforeBody, registryOf, requestDeadlines, reservations, serverTiming } from './request.js';
import { videoDemand } from '../video/decoder.js';
import { shape5Of } from '../video/options.js';
import { decodeVideoRequest, precheckVideo, requestedModel, routesToVideo } from '../video/route.js';

function modelOf(registry: ModelRegistry, name: string | undefined): ServedModel {
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
  const { admit, release } = reservations<ServedModel, DecodeTicket>();
  const deadlineOf = requestDeadlines(app);
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
      const target = registry.get(requestedModel(kind, undefined, query));
      if (target && precheckVideo(target, kind, query, length, cfg)) {
        app.metrics.noteOf(req).model = target.name;
        if (length === 0) throw new ServiceError('EMPTY_BODY', 'the request body is empty: send the latents as raw bytes, a .npy file or JSON');
        // a 5-D shape in the query: every step's room; else one step's until the body says
        const shape5 = shape5Of(query.shape);
        admit(req, reply, target, shape5 && kind === 'raw' ? videoDemand(shape5) : { demands: [{ sampleCount: 1 }], wording: {} });
        return;
      }
      const opts = parseOptions(query);
      const model = modelOf(registry, opts.model);
      app.metrics.noteOf(req).model = model.name;
      if (length === 0) throw new ServiceError('EMPTY_BODY', 'the request body is empty: send the latents as raw bytes, a .npy file or JSON');
      const shape = shapeBeforeBody(kind, opts, model, length);
      // A shape only the body says: hold room for one sample until it is read.
      admit(req, reply, model, shape ? queueDemand(shape, tilingFor(shape, opts, cfg)) : { demands: [{ sampleCount: 1 }], wording: {} });
    } catch (e) {
      throw refusedBeforeBody(e, req, reply);
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

    return inRequestScope(host, reply, start, deadlineOf(req, reply), () => release(req), async ({ deadline, signal }) => {

      const kind = bodyKind(req.headers['content-type']);
      const target = modelOf(registry, requestedModel(kind, req.body as Buffer | undefined, req.query as Record<string, unknown>));
      if (routesToVideo(target, kind, req.body as Buffer | undefined, req.query as Record<string, unknown>)) {
        note.model = target.name;
        const admitVideo = (demand: ReturnType<typeof videoDemand>): DecodeTicket => admit(req, reply, target, demand);
        return await decodeVideoRequest(req, reply, target, { cfg, deadline, signal: signal, note, admit: admitVideo });
      }
      const wire = readBody(kind, req.body as Buffer | undefined, req.query as Record<string, unknown>);
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
      const run = { ticket, deadline, signal: signal };
      const decoded = tiling
        ? await decodeTiled(model, tensor, tiling, fetch, { ...run, maxBatchSize: cfg.maxBatchSize, maxBatchLatentPixels: cfg.maxBatchLatentPixels })
        : await model.decode(tensor, fetch, run);
      timings.queue = decoded.queueMs;
      timings.infer = decoded.runMs;
      // Dropped before encoding: nobody would read the image.
      if (signal.aborted) throw signal.reason;

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
    });
  });
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
