// A video model's request body → decoder-space latents [N, C, T, h, w]. The body encodings are the
// image path's (raw bytes, .npy, JSON with base64); a 4-D or FLUX/Qwen-packed body is one frame
// (T = 1). The wire → float32 pass is the image path's (fuse.ts, with factors 1 and 0); the
// per-channel de-normalisation of the denoiser's latents (x · std + mean) follows in one pass.
import { ServiceError } from '../errors.js';
import { toDecoderSpace } from '../latents/fuse.js';
import { scanJsonBody } from '../latents/json-body.js';
import { channelFactors, type ChannelNormalization } from './wan-latents.js';
import { rejectQueryOptions } from '../latents/options.js';
import { planLatents, readNpyRequest, type BodyKind, type LatentPlan, type ModelLimits, type WireLatents } from '../latents/parse.js';
import { BYTES_PER_ELEMENT } from '../tensor/dtype.js';
import type { VideoTensor } from './decoder.js';
import { parseVideoOptions, type VideoOptions } from './options.js';

export interface VideoWire {
  options: VideoOptions;
  byteLength: number;
  bytes(): Promise<Uint8Array>;
}

export interface VideoLimits extends ModelLimits {
  normalization: ChannelNormalization | undefined;
}

/** The plan: the image path's LatentPlan over [N, C, T·h, w] (the same memory order) and the 5-D shape. */
export interface VideoPlan {
  plan: LatentPlan;
  shape: VideoTensor['shape'];
  /** Undefined: do_scaling=false, the latents are in decoder space already. */
  normalization: ChannelNormalization | undefined;
}

/**
 * Reads the body's options and locates its latents without decoding them.
 * @throws ServiceError EMPTY_BODY, BAD_NPY, BAD_JSON, BAD_PARAMETER, UNKNOWN_FORMAT, BAD_SHAPE
 */
export function readVideoBody(kind: BodyKind, body: Buffer | undefined, query: Record<string, unknown>): VideoWire {
  if (!body || body.length === 0) throw new ServiceError('EMPTY_BODY', 'the request body is empty: send the latents as raw bytes, a .npy file or JSON');
  if (kind === 'raw') return { options: parseVideoOptions(query), byteLength: body.length, bytes: () => Promise.resolve(body) };
  if (kind === 'json') {
    const json = scanJsonBody(body);
    rejectQueryOptions(query, json.fields);
    return { options: parseVideoOptions(json.fields, 'json'), byteLength: json.byteLength, bytes: () => json.latents() };
  }
  const { header, dtype, data } = readNpyRequest(body);
  if (query.shape !== undefined || query.dtype !== undefined) throw new ServiceError('BAD_PARAMETER', 'with a .npy body the header gives shape and dtype: leave them out of the query string');
  return { options: parseVideoOptions({ ...query, shape: header.shape, dtype }), byteLength: data.byteLength, bytes: () => Promise.resolve(data) };
}

/**
 * Every check that needs no latent value: channels, side, frames, byte count, factors.
 * @throws ServiceError CHANNEL_MISMATCH, LATENT_TOO_LARGE, VIDEO_TOO_LONG, SIZE_MISMATCH, BAD_SHAPE, BAD_PARAMETER
 */
export function planVideo(wire: VideoWire, model: VideoLimits, maxVideoFrames: number): VideoPlan {
  const o = wire.options;
  const { base } = o;
  if (base.doScaling && (base.scalingFactor !== undefined || base.shiftFactor !== undefined)) {
    throw new ServiceError('BAD_PARAMETER', `model ${model.name} de-normalises each channel (latents · latents_std + latents_mean): ` +
      'scaling_factor and shift_factor do not apply; leave them out, or send decoder-space latents with do_scaling=false');
  }
  const normalization = base.doScaling ? model.normalization : undefined;
  let plan: LatentPlan;
  let shape: VideoTensor['shape'];
  if (o.shape5) {
    const [n, c, t, h, w] = o.shape5;
    checkVideoShape(o.shape5, model, maxVideoFrames);
    const want = n * c * t * h * w * BYTES_PER_ELEMENT[base.dtype];
    if (want !== wire.byteLength) throw new ServiceError('SIZE_MISMATCH', `shape ${o.shape5.join('x')} ${base.dtype} needs ${want} bytes, got ${wire.byteLength}`);
    plan = { options: base, dtype: base.dtype, order: 'nchw', wireShape: o.shape5, shape: [n, c, t * h, w], scale: 1, shift: 0 };
    shape = o.shape5;
  } else {
    const image: WireLatents = { options: base, byteLength: wire.byteLength, bytes: () => wire.bytes() };
    // the image path's plan would de-normalise by the model's stats: here toVideoTensor does, once
    const { stats: _stats, ...imagePlan } = planLatents(image, model);
    plan = { ...imagePlan, scale: 1, shift: 0 };
    const [n, c, h, w] = plan.shape;
    shape = [n, c, 1, h, w];
  }
  return { plan, shape, normalization };
}

/**
 * The checks a 5-D shape from the query string allows before the body is read.
 * @throws ServiceError CHANNEL_MISMATCH, LATENT_TOO_LARGE, VIDEO_TOO_LONG
 */
export function checkVideoShape([, c, t, h, w]: VideoTensor['shape'], model: ModelLimits, maxVideoFrames: number): void {
  if (c !== model.channels) {
    throw new ServiceError('CHANNEL_MISMATCH', `the latents [N, C, T, h, w] have ${c} channels but model ${model.name} takes ${model.channels}`);
  }
  if (t > maxVideoFrames) {
    throw new ServiceError('VIDEO_TOO_LONG', `${t} latent frames is over MAX_VIDEO_FRAMES (${maxVideoFrames} latent frames, ${1 + 4 * (maxVideoFrames - 1)} video frames): split the video`);
  }
  if (h > model.maxLatentSide || w > model.maxLatentSide) {
    throw new ServiceError('LATENT_TOO_LARGE', `latent size ${h}x${w} is over the maximum side of ${model.maxLatentSide} (${model.maxLatentSide * 8} px)`);
  }
}

/** The latents in decoder space: one pass over the wire bytes, one over the channels (when normalised). */
export async function toVideoTensor(p: VideoPlan, bytes: Uint8Array): Promise<VideoTensor> {
  const { data } = await toDecoderSpace(p.plan, bytes);
  if (p.normalization) {
    const { scale, shift } = channelFactors(p.normalization);
    const [n, c, t, h, w] = p.shape;
    const plane = t * h * w;
    for (let s = 0; s < n; s++) {
      for (let ch = 0; ch < c; ch++) {
        const k = scale[ch]!;
        const m = shift[ch]!;
        const from = (s * c + ch) * plane;
        for (let i = from; i < from + plane; i++) data[i] = Math.fround(data[i]! / k + m);
      }
    }
  }
  return { data, shape: p.shape };
}
