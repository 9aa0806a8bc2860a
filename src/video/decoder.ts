// A video through a streaming decoder, one latent frame per step: each step is queued on the
// model's batcher when the previous one has ended (the fairness rule: a video has one step queued
// or running at a time, and whatever was queued during that step runs before the video's next one,
// the batcher taking the oldest request first); steps of same-shaped videos waiting together share
// a run on the batch axis. The frames of each step are yielded as soon as it ends.
// The deadline and the client's signal are checked by the batcher at every step, so an abandoned
// video stops at the next step; its caches are then dropped in the worker. Admission: the request
// reserves all its steps (videoDemand) before its latents are read, and submits each against that
// ticket; each submit gives its step's room back to the queue's count as it starts waiting.
import type { Demand, ReserveWording } from '../batching/batcher.js';
import { ServiceError } from '../errors.js';
import type { OutputName } from '../inference/protocol.js';
import type { DecodeTicket, ServedModel } from '../serving/served-model.js';

/** Decoder-space latents of N videos: float32 [N, C, T, h, w]. */
export interface VideoTensor {
  data: Float32Array;
  shape: [number, number, number, number, number];
}

/** The output of one latent frame. */
export interface StepFrames {
  /** The latent frame it came from (0-based). */
  step: number;
  /** Output frames of this step: 1 for latent frame 0, then 4 (Wan). */
  frames: number;
  height: number;
  width: number;
  /** uint8 [N, frames, height, width, 3]. */
  images?: Uint8Array;
  /** float32 [N, 3, frames, height, width], clamped to [-1, 1]. */
  samples?: Float32Array;
  queueMs: number;
  runMs: number;
}

let nextStream = 0;
/** Output pixels per latent, each way (Wan's 8× spatial upsampling). */
export const SPATIAL_SCALE = 8;

/** Output frames of T latent frames: 1 + 4(T − 1) (Wan's 4× temporal upsampling, causal first frame). */
export function outputFrames(latentFrames: number): number {
  return 1 + 4 * (latentFrames - 1);
}

/**
 * What decoding [N, C, T, h, w] queues: T steps (one queue entry each, never split) of cost N·h·w.
 * Keyless: a step's batcher key names the instance chosen when the stream starts.
 */
export function videoDemand([n, , t, h, w]: readonly number[]): { demands: Demand[]; wording: ReserveWording } {
  return {
    demands: [{ sampleCount: t!, cost: n! * h! * w! }],
    wording: { unit: `latent frames of ${n}x${h}x${w} (one queue entry each)`, advice: 'split the video into shorter clips' },
  };
}

/** One latent frame t of [N, C, T, h, w] as [N, C, h, w]. */
export function latentFrame(video: VideoTensor, t: number): Float32Array {
  const [n, c, frames, h, w] = video.shape;
  const plane = h * w;
  const out = new Float32Array(n * c * plane);
  for (let s = 0; s < n * c; s++) out.set(video.data.subarray((s * frames + t) * plane, (s * frames + t + 1) * plane), s * plane);
  return out;
}

/**
 * Decodes `video` step by step on `model` (a streaming video decoder), yielding each step's frames;
 * each step is submitted against `opts.ticket`, which must hold videoDemand(video.shape) (without
 * one, the video reserves its own at the start and releases it at the end).
 * Stopping the iteration early (return, throw, abort) ends the stream in the worker.
 * @throws ServiceError BAD_SHAPE when the model is not a video decoder; without a ticket, the
 *   batcher's QueueFullError or BatchTooLargeError at the start; DeadlineError, the signal's
 *   reason and INFERENCE_FAILED as they happen
 */
export async function* decodeVideo(model: ServedModel, video: VideoTensor, fetch: OutputName[], opts: { ticket?: DecodeTicket; deadline?: number; signal?: AbortSignal } = {}): AsyncGenerator<StepFrames> {
  if (!model.isVideo) throw new ServiceError('BAD_SHAPE', `model ${model.name} is an image decoder: it takes [N, C, h, w] latents, not a video`);
  const [n, c, frames, h, w] = video.shape;
  const { demands, wording } = videoDemand(video.shape);
  const reserved = opts.ticket ? undefined : model.batcher.reserve(demands, wording);
  const ticket = opts.ticket ?? reserved!;
  const stream = nextStream++;
  const instance = stream % model.runners.length;
  let done = false;
  try {
    for (let t = 0; t < frames; t++) {
      const last = t === frames - 1;
      const data = latentFrame(video, t);
      // one queue per instance, shape and phase: steps of same-shaped videos share runs; a step
      // counts as one sample (never split across runs) of cost N·h·w
      const res = await ticket.submit(`video:${instance}:${n}x${h}x${w}:${t === 0 ? 'first' : 'next'}`, {
        tensor: { data, shape: [n, c, h, w] }, fetch, step: { stream, instance, first: t === 0, last },
      }, 1, { deadline: opts.deadline, signal: opts.signal });
      done = last;
      const part = res.parts[0]!;
      const out = part.result.outputs;
      const rows = part.result.sampleCount * n; // every stream in the run has n rows (the key says so)
      const values = out.image?.byteLength ?? out.sample!.byteLength / 4;
      const frameCount = values / (rows * 3 * SPATIAL_SCALE ** 2 * h * w);
      const per = frameCount * 3 * SPATIAL_SCALE ** 2 * h * w; // values per row
      const own = [part.batchOffset * n * per, (part.batchOffset + 1) * n * per] as const;
      yield {
        step: t, frames: frameCount, height: h * SPATIAL_SCALE, width: w * SPATIAL_SCALE,
        ...(out.image ? { images: new Uint8Array(out.image, own[0], own[1] - own[0]) } : {}),
        ...(out.sample ? { samples: new Float32Array(out.sample, own[0] * 4, own[1] - own[0]) } : {}),
        queueMs: res.queueMs, runMs: res.runMs,
      };
    }
  } finally {
    reserved?.release();
    if (!done) model.runners[instance]!.notify({ type: 'end-stream', stream });
  }
}
