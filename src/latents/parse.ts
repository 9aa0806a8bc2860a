// Request body → a typed latent tensor. Three encodings: raw little-endian bytes (octet-stream,
// tensor/binary or no Content-Type, as Python `requests.post(url, data=bytes)` sends), a NumPy
// .npy file, and JSON with base64 latents. Then validation against the model and the move into
// decoder space: z = latents / scaling_factor + shift_factor.
import { ServiceError } from '../errors.js';
import { BYTES_PER_ELEMENT, halfBitsToFloat32, toFloat32, type WireDtype } from '../tensor/dtype.js';
import { parseNpy, type NpyArray, type NpyDtype } from '../tensor/npy.js';
import { parseDtype, parseOptions, parseShape, type DecodeOptions } from './options.js';

export type BodyKind = 'raw' | 'npy' | 'json';

export interface ParsedBody {
  /** Wire values, converted to float32, not yet scaled. */
  values: Float32Array;
  /** Unset when the body did not say (raw bytes without a shape): resolved against the model. */
  shape?: number[];
  byteLength: number;
  options: DecodeOptions;
}

export interface LatentTensor {
  /** Decoder-space values, NCHW. */
  data: Float32Array;
  shape: [number, number, number, number];
}

const RAW_TYPES = new Set(['', 'application/octet-stream', 'tensor/binary', 'binary/octet-stream']);
const NPY_TYPES = new Set(['application/x-npy', 'application/npy', 'application/x-numpy']);

export function bodyKind(contentType: string | undefined): BodyKind {
  const t = (contentType ?? '').split(';')[0]!.trim().toLowerCase();
  if (RAW_TYPES.has(t)) return 'raw';
  if (NPY_TYPES.has(t)) return 'npy';
  if (t === 'application/json') return 'json';
  throw new ServiceError('UNSUPPORTED_MEDIA_TYPE',
    `Content-Type ${JSON.stringify(t)} is not supported: send application/octet-stream (or no Content-Type), application/x-npy or application/json`);
}

export function parseBody(kind: BodyKind, body: Buffer | undefined, query: Record<string, unknown>): ParsedBody {
  if (!body || body.length === 0) {
    throw new ServiceError('EMPTY_BODY', 'the request body is empty: send the latents as raw bytes, a .npy file or JSON');
  }
  switch (kind) {
    case 'raw': return fromBytes(body, parseOptions(query));
    case 'npy': return parseNpyBody(body, query);
    case 'json': return parseJson(body);
  }
}

function fromBytes(bytes: Uint8Array, options: DecodeOptions): ParsedBody {
  const bpe = BYTES_PER_ELEMENT[options.dtype];
  if (options.shape) {
    const want = options.shape.reduce((a, b) => a * b, 1) * bpe;
    if (want !== bytes.byteLength) {
      throw new ServiceError('SIZE_MISMATCH',
        `shape ${options.shape.join('x')} ${options.dtype} needs ${want} bytes, got ${bytes.byteLength}`);
    }
  } else if (bytes.byteLength % bpe !== 0) {
    throw new ServiceError('SIZE_MISMATCH', `${bytes.byteLength} bytes is not a whole number of ${options.dtype} values (${bpe} bytes each)`);
  }
  return { values: toFloat32(bytes, options.dtype), shape: options.shape, byteLength: bytes.byteLength, options };
}

const NPY_DTYPES: Partial<Record<NpyDtype, WireDtype>> = { '<f4': 'float32', '<f2': 'float16' };

function parseNpyBody(buf: Buffer, query: Record<string, unknown>): ParsedBody {
  let arr: NpyArray;
  try {
    arr = parseNpy(buf, 'the .npy body');
  } catch (e) {
    throw new ServiceError('BAD_NPY', (e as Error).message);
  }
  const dtype = NPY_DTYPES[arr.dtype];
  if (!dtype) throw new ServiceError('BAD_NPY', `the .npy body holds ${arr.dtype}; send little-endian float32 (<f4) or float16 (<f2)`);
  const shape = parseShape(arr.shape);
  if (!shape) throw new ServiceError('BAD_NPY', 'the .npy body has an empty shape');
  // Options still come from the query string; the header decides shape and dtype.
  const options = { ...parseOptions({ ...query, shape: undefined, dtype: undefined }), shape, dtype };
  // parseNpy already checked the length against the header and made an aligned copy: use it.
  const values = arr.dtype === '<f4' ? (arr.data as Float32Array) : halfBitsToFloat32(arr.data as Uint16Array);
  return { values, shape, byteLength: arr.data.byteLength, options };
}

const BASE64 = /^[A-Za-z0-9+/\-_]*={0,2}$/;

function parseJson(buf: Buffer): ParsedBody {
  let doc: unknown;
  try {
    doc = JSON.parse(buf.toString('utf8'));
  } catch (e) {
    throw new ServiceError('BAD_JSON', `the body is not valid JSON: ${(e as Error).message}`);
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) {
    throw new ServiceError('BAD_JSON', 'the JSON body must be an object like {"latents": "<base64>", "shape": [1, 4, 64, 64]}');
  }
  const fields = doc as Record<string, unknown>;
  const latents = fields.latents;
  if (typeof latents !== 'string') {
    throw new ServiceError('BAD_JSON', 'the JSON body needs "latents": a base64 string of the raw little-endian tensor bytes');
  }
  const b64 = latents.replace(/\s+/g, '');
  if (b64.length === 0) throw new ServiceError('EMPTY_BODY', '"latents" is empty');
  if (!BASE64.test(b64) || b64.length % 4 === 1) {
    throw new ServiceError('BAD_BASE64', '"latents" is not valid base64');
  }
  parseDtype(fields.dtype);
  return fromBytes(Buffer.from(b64, 'base64'), parseOptions(fields));
}

export interface ModelLimits {
  name: string;
  channels: number;
  scalingFactor: number;
  shiftFactor: number;
  maxLatentSide: number;
}

/** Checks the latents against the model and moves them into decoder space, in place. */
export function toDecoderSpace(body: ParsedBody, model: ModelLimits): LatentTensor {
  const { options } = body;
  if (options.packed) {
    throw new ServiceError('BAD_SHAPE', 'packed latents (3-D with height and width) are not supported: send unpacked [N, C, h, w] latents');
  }
  const shape = resolveShape(body, model.channels);
  const [, c, h, w] = shape;
  if (c !== model.channels) {
    throw new ServiceError('CHANNEL_MISMATCH', `the latents have ${c} channels but model ${model.name} takes ${model.channels}`);
  }
  if (h > model.maxLatentSide || w > model.maxLatentSide) {
    throw new ServiceError('LATENT_TOO_LARGE', `latent size ${h}x${w} is over the maximum side of ${model.maxLatentSide} (${model.maxLatentSide * 8} px)`);
  }
  const data = body.values;
  // do_scaling=false means the client already scaled; dividing (not multiplying by the inverse)
  // keeps the values bit-identical to diffusers' `latents / scaling_factor + shift_factor`.
  const scale = options.doScaling ? (options.scalingFactor ?? model.scalingFactor) : 1;
  const shift = options.doScaling ? (options.shiftFactor ?? model.shiftFactor) : 0;
  for (let i = 0; i < data.length; i++) {
    const v = data[i]!;
    if (!Number.isFinite(v)) throw nonFinite(v, i, shape);
    data[i] = v / scale + shift;
  }
  return { data, shape };
}

function resolveShape(body: ParsedBody, channels: number): [number, number, number, number] {
  const s = body.shape;
  if (s) return (s.length === 3 ? [1, ...s] : s) as [number, number, number, number];
  const side = Math.sqrt(body.values.length / channels);
  if (!Number.isInteger(side)) {
    throw new ServiceError('BAD_SHAPE',
      `no shape given and ${body.byteLength} bytes is not one square ${channels}-channel latent: pass shape, e.g. ?shape=1,${channels},64,64`);
  }
  return [1, channels, side, side];
}

function nonFinite(v: number, i: number, [, c, h, w]: number[]): ServiceError {
  const x = i % w!;
  const y = Math.floor(i / w!) % h!;
  const ch = Math.floor(i / (w! * h!)) % c!;
  const n = Math.floor(i / (w! * h! * c!));
  return new ServiceError('NON_FINITE', `the latents hold ${v} at [${n}, ${ch}, ${y}, ${x}] (flat index ${i}); every value must be finite`);
}
