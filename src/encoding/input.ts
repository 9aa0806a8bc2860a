// /encode's body → the encoder's input, float32 [N, 3, H, W] in [-1, 1]. The body is an image
// (PNG, JPEG or WebP, told by its bytes: diffusers' remote_encode sends PNG with no Content-Type)
// or a tensor as on /decode (raw bytes with shape/dtype, .npy, or JSON with base64 "latents").
// Everything but the pixel work is checked first: format, header size, shape, byte count.
import { ServiceError } from '../errors.js';
import { decodeImage, describeBytes, readImageHeader, sniffImage, type ImageHeader } from '../images/read.js';
import { scanJsonBody } from '../latents/json-body.js';
import type { Raw } from '../latents/options.js';
import { NPY_TYPES, RAW_TYPES, readNpyRequest } from '../latents/parse.js';
import { BYTES_PER_ELEMENT, toFloat32 } from '../tensor/dtype.js';
import { parseEncodeOptions, rejectEncodeQueryOptions, type EncodeOptions } from './options.js';

export type EncodeBodyKind = 'image' | 'raw' | 'npy' | 'json';

const IMAGE_TYPES = new Set(['image/png', 'image/jpeg', 'image/jpg', 'image/webp']);

/** The body's kind from its Content-Type; 'raw' bodies are told apart (image or tensor) by their bytes. */
export function encodeBodyKind(contentType: string | undefined): EncodeBodyKind {
  const t = (contentType ?? '').split(';')[0]!.trim().toLowerCase();
  if (RAW_TYPES.has(t)) return 'raw';
  if (IMAGE_TYPES.has(t)) return 'image';
  if (NPY_TYPES.has(t)) return 'npy';
  if (t === 'application/json') return 'json';
  throw new ServiceError('UNSUPPORTED_MEDIA_TYPE',
    `Content-Type ${JSON.stringify(t)} is not supported: send an image (image/png, image/jpeg, image/webp or no Content-Type), application/octet-stream with shape and dtype, application/x-npy or application/json`);
}

export interface EncodeLimits {
  /** Sides must be multiples of this: 8, or 16 when the latents are packed or patchified. */
  factor: number;
  maxImagePixels: number;
  /** The largest latent side (MAX_LATENT_SIDE): sides up to 8× this in pixels. */
  maxLatentSide: number;
}

/** The body read and checked, its pixels not yet decoded. */
export interface EncodeInput {
  options: EncodeOptions;
  source: 'image' | 'tensor';
  /** What the encoder gets: [N, 3, H, W]. */
  shape: [number, number, number, number];
  /** Image bodies: the header (size as sent, format). */
  image?: ImageHeader;
  /** Decodes the pixels: float32 [N, 3, H, W] in [-1, 1]. */
  pixels(): Promise<Float32Array>;
}

/**
 * Reads the body's kind, options and shape; the pixels wait for `pixels()`. Throws BAD_IMAGE (not
 * an image nor a tensor, or an unreadable header), IMAGE_TOO_LARGE, BAD_IMAGE_SIZE, BAD_SHAPE,
 * SIZE_MISMATCH, BAD_NPY, BAD_JSON, EMPTY_BODY.
 */
export async function readEncodeBody(kind: EncodeBodyKind, body: Buffer | undefined, query: Record<string, Raw>,
  limits: (o: EncodeOptions) => EncodeLimits): Promise<EncodeInput> {
  if (!body || body.length === 0) throw new ServiceError('EMPTY_BODY', 'the request body is empty: send an image (PNG, JPEG, WebP) or a tensor [N, 3, H, W]');
  if (kind === 'json') {
    const json = scanJsonBody(body);
    rejectEncodeQueryOptions(query);
    const options = parseEncodeOptions(json.fields, 'json');
    if (!options.shape) throw new ServiceError('BAD_SHAPE', 'a JSON body needs "shape": [N, 3, H, W] beside the base64 "latents" tensor');
    return tensorInput(options, json.byteLength, () => json.latents(), limits(options));
  }
  if (kind === 'npy') {
    const { header, dtype, data } = readNpyRequest(body);
    const options = parseEncodeOptions({ ...query, shape: header.shape, dtype });
    return tensorInput(options, data.byteLength, () => Promise.resolve(data), limits(options));
  }
  const options = parseEncodeOptions(query);
  if (kind === 'raw' && options.shape) return tensorInput(options, body.length, () => Promise.resolve(body), limits(options));
  const format = sniffImage(body);
  if (!format) {
    throw new ServiceError('BAD_IMAGE', `the body is neither a PNG, JPEG or WebP image nor a tensor (a tensor needs shape and dtype): it looks like ${describeBytes(body)}`);
  }
  const lim = limits(options);
  const header = await readImageHeader(body, { maxPixels: lim.maxImagePixels, factor: lim.factor, resize: options.resize });
  const { width, height } = header.target;
  checkSide(height, width, lim);
  return {
    options, source: 'image', shape: [1, 3, height, width], image: header,
    pixels: async () => {
      const out = new Float32Array(3 * width * height);
      await decodeImage(body, header, out);
      return out;
    },
  };
}

function checkSide(h: number, w: number, lim: EncodeLimits): void {
  const max = lim.maxLatentSide * 8;
  if (h > max || w > max) throw new ServiceError('IMAGE_TOO_LARGE', `the image is ${w}x${h}: each side must be at most ${max} pixels (MAX_LATENT_SIDE ${lim.maxLatentSide} latents)`);
}

/** Values may pass ±1 by rounding (a bfloat16 step at 1 is 2⁻⁷), not by more. */
const RANGE_SLACK = 2 ** -7;

function tensorInput(options: EncodeOptions, byteLength: number, bytes: () => Promise<Uint8Array>, lim: EncodeLimits): EncodeInput {
  const s = options.shape!;
  const shape = (s.length === 3 ? [1, ...s] : s) as [number, number, number, number];
  const [n, c, h, w] = shape;
  const named = `the tensor [${s.join(', ')}]`;
  if (c !== 3) throw new ServiceError('BAD_SHAPE', `${named} must be [N, 3, H, W] (RGB, channels first, values in [-1, 1]); dimension 1 is ${c}`);
  if (h < lim.factor || w < lim.factor || h % lim.factor !== 0 || w % lim.factor !== 0) {
    throw new ServiceError('BAD_IMAGE_SIZE', `${named}: H and W must be multiples of ${lim.factor} (tensors are not resized); got ${h}x${w}`);
  }
  checkSide(h, w, lim);
  const want = n * c * h * w * BYTES_PER_ELEMENT[options.dtype];
  if (want !== byteLength) throw new ServiceError('SIZE_MISMATCH', `shape ${s.join('x')} ${options.dtype} needs ${want} bytes, got ${byteLength}`);
  return {
    options, source: 'tensor', shape,
    pixels: async () => {
      const data = toFloat32(await bytes(), options.dtype);
      for (let i = 0; i < data.length; i++) {
        const x = data[i]!;
        if (Number.isFinite(x) && Math.abs(x) <= 1 + RANGE_SLACK) continue;
        const at = `[${position(i, shape).join(', ')}] (flat index ${i})`;
        if (!Number.isFinite(x)) throw new ServiceError('NON_FINITE', `the image tensor holds ${x} at ${at}; every value must be finite`);
        throw new ServiceError('IMAGE_OUT_OF_RANGE', `the image tensor holds ${x} at ${at}: values must be in [-1, 1] (x / 127.5 − 1 of 8-bit pixels)`);
      }
      return data;
    },
  };
}

function position(i: number, shape: readonly number[]): number[] {
  const idx = new Array<number>(shape.length);
  for (let d = shape.length - 1; d >= 0; d--) {
    idx[d] = i % shape[d]!;
    i = Math.floor(i / shape[d]!);
  }
  return idx;
}
