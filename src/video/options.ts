// A video request's options: the image options (src/latents/options.ts) plus what only a video
// has — a 5-D shape [N, C, T, h, w], the container formats, fps and streaming. The image parser
// reads everything else, so both paths name and check the shared options the same way.
import { ServiceError } from '../errors.js';
import { parseOptions, type DecodeOptions, type OptionSource } from '../latents/options.js';

/** mp4 (H.264, ffmpeg), webm (VP9, ffmpeg), animated webp/gif (sharp), png/jpeg per frame. */
export type VideoFormat = 'mp4' | 'webm' | 'webp' | 'gif' | 'png' | 'jpeg';
export const VIDEO_FORMATS: readonly VideoFormat[] = ['mp4', 'webm', 'webp', 'gif', 'png', 'jpeg'];
const FORMAT_NAMES: Record<string, VideoFormat> = { mp4: 'mp4', webm: 'webm', webp: 'webp', gif: 'gif', png: 'png', jpeg: 'jpeg', jpg: 'jpeg' };
/** Wan's frame rate (diffusers' Wan examples export at 16 fps). */
export const DEFAULT_FPS = 16;
const MAX_FPS = 120;

export interface VideoOptions {
  /** The options shared with images (shape left out when it is 5-D). */
  base: DecodeOptions;
  /** [N, C, T, h, w] when the shape has 5 dimensions. */
  shape5?: [number, number, number, number, number];
  /** Unset: animated webp for a video, the image rule (Accept) for one frame. */
  format?: VideoFormat;
  fps: number;
  /** Send frames as they are decoded (fragmented MP4, or multipart PNG/JPEG frames). */
  stream: boolean;
}

const show = (v: unknown): string => JSON.stringify(v) ?? String(v);

function one(name: string, v: unknown): string | undefined {
  if (v === undefined || v === null || v === '') return undefined;
  if (typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean') return String(v);
  throw new ServiceError('BAD_PARAMETER', `${name} must be a single value, not ${show(v)}`);
}

function videoFormat(name: string, v: unknown): VideoFormat | undefined {
  const s = one(name, v);
  if (s === undefined) return undefined;
  const f = FORMAT_NAMES[s.toLowerCase()];
  if (!f) throw new ServiceError('UNKNOWN_FORMAT', `${name} ${show(s)} is not supported by a video model: use ${VIDEO_FORMATS.join(', ')}`);
  return f;
}

/** `1,16,21,60,104`, `[1, 16, 21, 60, 104]`, a repeated key or a JSON array, with 5 dimensions; undefined for other counts. */
export function shape5Of(v: unknown): [number, number, number, number, number] | undefined {
  const split = (s: string): string[] => s.trim().replace(/^[[(]|[\])]$/g, '').split(',').map((p) => p.trim()).filter((p) => p !== '');
  const parts: unknown[] = typeof v === 'string' ? split(v)
    : Array.isArray(v) ? (v.length === 1 && typeof v[0] === 'string' ? split(v[0]) : v) : [];
  if (parts.length !== 5) return undefined;
  const dims = parts.map((p) => (typeof p === 'string' && /^\d{1,15}$/.test(p) ? Number(p) : p));
  if (!dims.every((d) => typeof d === 'number' && Number.isSafeInteger(d) && d >= 1)) {
    throw new ServiceError('BAD_SHAPE', `shape ${show(v)} must hold positive integers, written in decimal`);
  }
  return dims as [number, number, number, number, number];
}

/**
 * Reads a video model's options from the query string or the JSON body's fields. output_type=mp4
 * (what diffusers' remote_decode sends for video) means format=mp4 and wins over image_format.
 * @throws ServiceError UNKNOWN_FORMAT, BAD_PARAMETER, BAD_SHAPE
 */
export function parseVideoOptions(src: Record<string, unknown>, from: OptionSource = 'query'): VideoOptions {
  const mp4 = one('output_type', src.output_type) === 'mp4';
  const shape5 = shape5Of(src.shape);
  const f = videoFormat('format', src.format);
  const g = mp4 ? undefined : videoFormat('image_format', src.image_format);
  if (f && g && f !== g) throw new ServiceError('BAD_PARAMETER', `format=${show(src.format)} and image_format=${show(src.image_format)} disagree; give one`);
  const base = parseOptions({ ...src, shape: shape5 ? undefined : src.shape, format: undefined, image_format: undefined, output_type: mp4 ? undefined : src.output_type }, from);
  const fpsRaw = one('fps', src.fps);
  const fps = fpsRaw === undefined ? DEFAULT_FPS : Number(fpsRaw);
  if (!/^\d+(\.\d+)?$/.test(fpsRaw ?? '16') || !(fps > 0 && fps <= MAX_FPS)) {
    throw new ServiceError('BAD_PARAMETER', `fps=${show(fpsRaw)} is not valid: expected a number above 0, at most ${MAX_FPS}`);
  }
  const streamRaw = one('stream', src.stream);
  if (streamRaw !== undefined && !['true', 'false', 'True', 'False', '1', '0'].includes(streamRaw)) {
    throw new ServiceError('BAD_PARAMETER', `stream=${show(streamRaw)} is not a boolean: use true/false/True/False/1/0`);
  }
  if (shape5 && base.layout !== 'nchw') throw new ServiceError('BAD_PARAMETER', 'layout=nhwc does not apply to 5-D latents [N, C, T, h, w]: leave it out');
  return {
    base, fps,
    ...(shape5 ? { shape5 } : {}),
    ...(mp4 || f || g ? { format: mp4 ? 'mp4' : (f ?? g)! } : {}),
    stream: streamRaw !== undefined && ['true', 'True', '1'].includes(streamRaw),
  };
}
