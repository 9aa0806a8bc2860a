// POST /decode for a streaming video decoder (a Wan model): the decode route hands such requests
// here. Parse (request.ts) → one step at a time through the model's batcher (decoder.ts) →
// frames into the answer as each step ends (answer.ts, ffmpeg.ts) → reply, whole or streamed.
import { PassThrough } from 'node:stream';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { Config } from '../config.js';
import { ServiceError, toServiceError } from '../errors.js';
import { encodeImage } from '../images/encode.js';
import { scanJsonBody } from '../latents/json-body.js';
import { formatFromAccept } from '../latents/options.js';
import { bodyKind, type BodyKind } from '../latents/parse.js';
import type { DecodeNote } from '../plugins/metrics.js';
import type { DecodeTicket, ServedModel } from '../serving/served-model.js';
import { parseNpyHeader } from '../tensor/npy.js';
import { FrameCollector, SampleCollector, VIDEO_CONTENT_TYPES, animate, framePart, stills } from './answer.js';
import { SPATIAL_SCALE, decodeVideo, outputFrames, videoDemand, type VideoTensor } from './decoder.js';
import { VideoEncoder, findFfmpeg } from './ffmpeg.js';
import { parseVideoOptions, shape5Of, type VideoFormat } from './options.js';
import { checkVideoShape, planVideo, readVideoBody, toVideoTensor, type VideoPlan } from './request.js';

export interface VideoRequestContext {
  cfg: Config;
  /** performance.now() ms: from the request's arrival (routes/request.ts). */
  deadline: number;
  signal: AbortSignal;
  /**
   * The request's metrics note (its timings, samples, format), counted once when it ends; a
   * failure after the first byte sets its outcome, the status being sent already.
   */
  note: DecodeNote;
  /** Reserves (or resizes to) `demand` in the model's queue for this request: 413 or 429 when it cannot. */
  admit(demand: ReturnType<typeof videoDemand>): DecodeTicket;
}

type Query = Record<string, unknown>;

/** The model a request names, before its options are parsed: the query's, or the JSON body's field. */
export function requestedModel(kind: BodyKind, body: Buffer | undefined, query: Query): string | undefined {
  const v = kind === 'json' && body && body.length > 0 ? scanJsonBody(body).fields.model : query.model;
  return typeof v === 'string' && v !== '' ? v : undefined;
}

function kindOf(model: ServedModel): string {
  return model.isVideo ? `a video decoder${model.family ? ` (${model.family})` : ''}` : `an image decoder${model.family ? ` (${model.family})` : ''}`;
}

function notAVideoModel(model: ServedModel, shape: number[]): ServiceError {
  return new ServiceError('BAD_SHAPE', `model ${model.name} is ${kindOf(model)}: it takes [N, C, h, w] latents, ` +
    `not the video [${shape.join(', ')}] ([N, C, T, h, w]); send videos to a video model (Wan 2.1 VAE)`);
}

/**
 * Whether the video path answers: every request to a video model does. A 5-D shape for an image
 * model is refused here, naming the model's kind. @throws ServiceError BAD_SHAPE
 */
export function routesToVideo(model: ServedModel, kind: BodyKind, body: Buffer | undefined, query: Query): boolean {
  if (model.isVideo) return true;
  let shape: unknown = query.shape;
  if (kind === 'json' && body && body.length > 0) shape = scanJsonBody(body).fields.shape;
  if (kind === 'npy' && body) {
    try {
      shape = parseNpyHeader(body).shape;
    } catch {
      return false; // the image path words a broken header
    }
  }
  const s = shape5Of(shape);
  if (s) throw notAVideoModel(model, s);
  return false;
}

/** Finds ffmpeg once per configured path. */
const ffmpegs = new Map<string, string | undefined>();
function ffmpegFor(cfg: Config, format: VideoFormat): string {
  const key = cfg.ffmpegPath ?? '';
  if (!ffmpegs.has(key)) ffmpegs.set(key, findFfmpeg(cfg.ffmpegPath));
  const bin = ffmpegs.get(key);
  if (!bin) {
    throw new ServiceError('FFMPEG_UNAVAILABLE', `format ${format} needs an ffmpeg binary and none was found` +
      `${cfg.ffmpegPath ? ` at FFMPEG_PATH=${cfg.ffmpegPath}` : ''}: install the optional npm dependency @ffmpeg-installer/ffmpeg, ` +
      'or ffmpeg (apt-get install ffmpeg), or set FFMPEG_PATH; webp, gif, png, jpeg and output_type=pt work without it');
  }
  return bin;
}

/**
 * The checks a raw body's query string allows before the body is read (the decode route's
 * precheck): a 5-D shape's channels, frames (MAX_VIDEO_FRAMES: 413), side and byte count, and
 * ffmpeg for mp4/webm. Returns false when the request is not for the video path.
 */
export function precheckVideo(model: ServedModel, kind: BodyKind, query: Query, length: number | undefined, cfg: Config): boolean {
  if (!routesToVideo(model, kind, undefined, query)) return false;
  if (kind !== 'raw') return true;
  const o = parseVideoOptions(query);
  if (o.shape5) {
    checkVideoShape(o.shape5, model, cfg.maxVideoFrames);
    const want = o.shape5.reduce((a, b) => a * b, 1) * (o.base.dtype === 'float32' ? 4 : 2);
    if (length !== undefined && length !== want) throw new ServiceError('SIZE_MISMATCH', `shape ${o.shape5.join('x')} ${o.base.dtype} needs ${want} bytes, got ${length}`);
  }
  if (o.format === 'mp4' || o.format === 'webm') ffmpegFor(cfg, o.format);
  return true;
}

function plan(req: FastifyRequest, model: ServedModel, cfg: Config): { wire: ReturnType<typeof readVideoBody>; p: VideoPlan } {
  const wire = readVideoBody(bodyKind(req.headers['content-type']), req.body as Buffer | undefined, req.query as Query);
  try {
    return { wire, p: planVideo(wire, model, cfg.maxVideoFrames) };
  } catch (e) {
    if (e instanceof ServiceError && e.code === 'CHANNEL_MISMATCH' && !wire.options.shape5) {
      throw new ServiceError('CHANNEL_MISMATCH', `${e.message}; model ${model.name} is ${kindOf(model)}: it takes [N, ${model.channels}, T, h, w], or [N, ${model.channels}, h, w] for one frame`);
    }
    throw e;
  }
}

/** Answers one video request (see the README's video section for the rules). */
export async function decodeVideoRequest(req: FastifyRequest, reply: FastifyReply, model: ServedModel, ctx: VideoRequestContext): Promise<unknown> {
  const { cfg } = ctx;
  const t0 = performance.now();
  const { wire, p } = plan(req, model, cfg);
  const o = wire.options;
  const [n, , t, h, w] = p.shape;
  ctx.note.samples = n;
  const size = { width: w * SPATIAL_SCALE, height: h * SPATIAL_SCALE };
  const total = outputFrames(t);
  const tensorOut = o.base.outputType === 'tensor';
  const format: VideoFormat | undefined = tensorOut ? undefined : o.format ?? (total === 1 ? formatFromAccept(req.headers.accept) : 'webp');
  const asImage = total === 1 && (format === 'png' || format === 'jpeg' || format === 'webp');
  if (o.stream && (n !== 1 || !(format === 'mp4' || format === 'webm' || format === 'png' || format === 'jpeg'))) {
    throw new ServiceError('BAD_PARAMETER', `stream=true sends one video (N = 1, got ${n}) as mp4, webm, or png/jpeg frames (multipart/mixed)${format ? `, not ${format}` : ', not a tensor'}`);
  }
  const bin = format === 'mp4' || format === 'webm' ? ffmpegFor(cfg, format) : undefined;
  // every step's queue room, held before the latents are read (released when the request ends)
  const ticket = ctx.admit(videoDemand(p.shape));
  const tensor: VideoTensor = await toVideoTensor(p, await wire.bytes());
  const timings = ctx.note.timings;
  timings.parse = performance.now() - t0;

  const floats = tensorOut && !o.base.partialPostprocess ? new SampleCollector(n, total, size) : undefined;
  const frames = floats ? undefined : new FrameCollector(n, size);
  const keepFrames = !bin && !o.stream;
  const encoders = bin ? await Promise.all(Array.from({ length: n }, () => VideoEncoder.start(bin, { ...size, fps: o.fps, format: format as 'mp4' | 'webm', quality: o.base.quality, fragmented: o.stream }))) : [];
  const boundary = `frame-${Math.random().toString(36).slice(2)}`;
  const streamed = o.stream && !bin ? new PassThrough() : undefined;
  let index = 0;
  // reply.sent stays false while a streamed body is being written: this says whether a byte may have left
  let started = false;
  const startStream = (): void => {
    if (!o.stream || started) return;
    started = true;
    const body = encoders[0]?.output ?? streamed!;
    reply.header('x-video-frames', String(total)).header('x-video-fps', String(o.fps));
    void reply.type(bin ? VIDEO_CONTENT_TYPES[format!] : `multipart/mixed; boundary=${boundary}`).send(body);
  };
  try {
    for await (const s of decodeVideo(model, tensor, [floats ? 'sample' : 'image'], { ticket, deadline: ctx.deadline, signal: ctx.signal })) {
      timings.queue = (timings.queue ?? 0) + s.queueMs;
      timings.infer = (timings.infer ?? 0) + s.runMs;
      if (floats) floats.add(s.samples!, s.frames);
      else {
        const perVideo = frames!.add(s.images!, s.frames);
        if (!keepFrames) frames!.videos.forEach((list) => list.splice(0));
        await Promise.all(encoders.map((e, i) => e.write(perVideo[i]!)));
        if (streamed) {
          const list = perVideo[0]!;
          const plane = size.width * size.height * 3;
          const still = await stills(Array.from({ length: s.frames }, (_, k) => list.subarray(k * plane, (k + 1) * plane)), size, format as 'png' | 'jpeg', o.base.quality, cfg.pngCompressionLevel);
          for (const b of still) streamed.write(framePart(boundary, VIDEO_CONTENT_TYPES[format!], index++, b));
        }
      }
      if (s.step === 0) startStream(); // only once the first step worked: until then errors get a status
    }
    if (o.stream) {
      await encoders[0]?.finish();
      streamed?.end(`--${boundary}--\r\n`);
      ctx.note.format = format;
      return reply;
    }
  } catch (e) {
    if (!started) {
      await Promise.all(encoders.map((enc) => enc.abort()));
      throw e;
    }
    // After the first byte there is no status to send: the connection is reset — before ffmpeg is
    // stopped, whose closing stdout would otherwise end the answer normally — so the client sees
    // an incomplete answer, never a silently shorter video.
    const err = toServiceError(e);
    // counted as what ended it (the 'close' the reset causes records the note), not as the 200 sent
    ctx.note.outcome = err.status === 504 ? 'timed_out' : err.status === 499 ? 'cancelled' : 'error';
    ctx.note.format = format;
    reply.raw.destroy(err);
    await Promise.all(encoders.map((enc) => enc.abort()));
    return reply;
  }
  return answer(reply, ctx, { n, total, size, format, asImage, fps: o.fps, quality: o.base.quality, rank: o.shape5 ? 5 : 4, floats, frames, encoders });
}

interface Collected {
  n: number;
  total: number;
  size: { width: number; height: number };
  format: VideoFormat | undefined;
  asImage: boolean;
  fps: number;
  quality: number | undefined;
  rank: 4 | 5;
  floats: SampleCollector | undefined;
  frames: FrameCollector | undefined;
  encoders: VideoEncoder[];
}

async function answer(reply: FastifyReply, ctx: VideoRequestContext, c: Collected): Promise<unknown> {
  const t = performance.now();
  const { n, total, size, format } = c;
  const finish = (f: VideoFormat | 'tensor'): void => {
    ctx.note.timings.encode = performance.now() - t;
    ctx.note.format = f;
  };
  if (!format) {
    const { width: W, height: H } = size;
    const [shape, dtype, data] = c.floats
      ? [c.rank === 5 ? [n, 3, total, H, W] : [n, 3, H, W], 'float32', c.floats.data]
      : [c.rank === 5 ? [n, total, H, W, 3] : [n, H, W, 3], 'uint8', Buffer.concat(c.frames!.videos.flat())];
    reply.header('shape', JSON.stringify(shape)).header('dtype', dtype).type('application/octet-stream');
    finish('tensor');
    return Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  }
  const type = VIDEO_CONTENT_TYPES[format];
  const videos = c.frames?.videos ?? [];
  let out: Buffer[];
  if (c.asImage) out = await Promise.all(videos.map((v) => encodeImage(v[0]!, size.width, size.height, { format: format as 'png', quality: c.quality, pngCompressionLevel: ctx.cfg.pngCompressionLevel })));
  else if (format === 'mp4' || format === 'webm') out = await Promise.all(c.encoders.map((e) => e.finish()));
  else if (format === 'webp' || format === 'gif') out = await Promise.all(videos.map((v) => animate(v, size, format, c.fps, c.quality)));
  else {
    const per = await Promise.all(videos.map((v) => stills(v, size, format, c.quality, ctx.cfg.pngCompressionLevel)));
    finish(format);
    const list = per.map((f) => ({ fps: c.fps, frames: f.map((b) => ({ contentType: type, data: b.toString('base64') })) }));
    return n === 1 ? list[0] : { videos: list };
  }
  finish(format);
  if (n === 1) return reply.type(type).send(out[0]);
  return c.asImage
    ? { images: out.map((b) => ({ contentType: type, data: b.toString('base64') })) }
    : { videos: out.map((b) => ({ contentType: type, data: b.toString('base64') })) };
}
