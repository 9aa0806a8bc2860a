// Request options, from the query string (binary bodies) or JSON fields. The names are the ones
// the diffusers `remote_decode` client sends (image_format, output_type, partial_postprocess,
// shape as a repeated key, dtype, scaling_factor, shift_factor, do_scaling, height, width).
import { ServiceError } from '../errors.js';
import { WIRE_DTYPES, type WireDtype } from '../tensor/dtype.js';

export type ImageFormat = 'png' | 'jpeg' | 'webp';
export type OutputType = 'image' | 'tensor';

export interface DecodeOptions {
  model?: string;
  shape?: number[];
  dtype: WireDtype;
  /** Unset: the Accept header chooses. */
  format?: ImageFormat;
  quality?: number;
  scalingFactor?: number;
  shiftFactor?: number;
  doScaling: boolean;
  outputType: OutputType;
  partialPostprocess: boolean;
  packed: boolean;
  /** Tile side in latents for tiled decoding; 0: never tile. Unset: TILE_LATENT_SIDE. */
  tileSize?: number;
  /** diffusers' tile_overlap_factor, 0 ≤ f < 1. Unset: TILE_OVERLAP. */
  tileOverlap?: number;
}

type Raw = unknown;

const FORMATS: Record<string, ImageFormat> = { png: 'png', jpeg: 'jpeg', jpg: 'jpeg', webp: 'webp' };
const OUTPUT_TYPES: Record<string, OutputType> = { pil: 'image', image: 'image', pt: 'tensor', tensor: 'tensor' };
const TRUE = new Set(['true', 'True', '1']);
const FALSE = new Set(['false', 'False', '0']);

function one(name: string, v: Raw): string | undefined {
  if (v === undefined || v === null) return undefined;
  if (Array.isArray(v)) {
    if (v.length !== 1) throw new ServiceError('BAD_PARAMETER', `${name} was given ${v.length} times; give it once`);
    return one(name, v[0]);
  }
  if (typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean') return String(v);
  throw new ServiceError('BAD_PARAMETER', `${name} must be a string, number or boolean`);
}

function bool(name: string, v: Raw, def: boolean): boolean {
  const s = one(name, v);
  if (s === undefined) return def;
  if (TRUE.has(s)) return true;
  if (FALSE.has(s)) return false;
  throw new ServiceError('BAD_PARAMETER', `${name}=${JSON.stringify(s)} is not a boolean: use true/false/True/False/1/0`);
}

function num(name: string, v: Raw, check: (x: number) => boolean, expected: string): number | undefined {
  const s = one(name, v);
  if (s === undefined || s === '') return undefined;
  const x = Number(s);
  if (!Number.isFinite(x) || !check(x)) throw new ServiceError('BAD_PARAMETER', `${name}=${JSON.stringify(s)} is not valid: expected ${expected}`);
  return x;
}

/** `1,4,64,64`, `[1, 4, 64, 64]`, a repeated key (`shape=1&shape=4&...`) or a JSON array. */
export function parseShape(v: Raw): number[] | undefined {
  if (v === undefined || v === null || v === '') return undefined;
  let parts: unknown[];
  if (Array.isArray(v)) parts = v.length === 1 && typeof v[0] === 'string' ? splitShape(v[0]) : v;
  else if (typeof v === 'string') parts = splitShape(v);
  else throw new ServiceError('BAD_SHAPE', `shape must be a list like [1, 4, 64, 64], got ${JSON.stringify(v)}`);
  const dims = parts.map((p) => (typeof p === 'string' && p.trim() !== '' ? Number(p) : p));
  if (dims.length !== 3 && dims.length !== 4) {
    throw new ServiceError('BAD_SHAPE', `shape ${JSON.stringify(v)} must have 4 dimensions [N, C, h, w] or 3 [C, h, w]`);
  }
  for (const d of dims) {
    if (typeof d !== 'number' || !Number.isInteger(d) || d < 1) {
      throw new ServiceError('BAD_SHAPE', `shape ${JSON.stringify(v)} must hold positive integers`);
    }
  }
  return dims as number[];
}

function splitShape(s: string): string[] {
  return s.trim().replace(/^[[(]|[\])]$/g, '').split(',').map((p) => p.trim()).filter((p) => p !== '');
}

export function parseDtype(v: Raw): WireDtype {
  const s = one('dtype', v);
  if (s === undefined) return 'float32';
  const d = s.replace(/^torch\./, '');
  if (!(WIRE_DTYPES as readonly string[]).includes(d)) {
    throw new ServiceError('UNKNOWN_DTYPE', `dtype ${JSON.stringify(s)} is not supported: use ${WIRE_DTYPES.join(', ')}`);
  }
  return d as WireDtype;
}

function format(name: string, v: Raw): ImageFormat | undefined {
  const s = one(name, v);
  if (s === undefined) return undefined;
  const f = FORMATS[s.toLowerCase()];
  if (!f) throw new ServiceError('UNKNOWN_FORMAT', `${name} ${JSON.stringify(s)} is not supported: use png, jpeg (jpg) or webp`);
  return f;
}

/** Reads options from a flat record: the query string or the JSON body's fields. */
export function parseOptions(src: Record<string, Raw>): DecodeOptions {
  const ot = one('output_type', src.output_type);
  const outputType = ot === undefined ? 'image' : OUTPUT_TYPES[ot];
  if (!outputType) {
    throw new ServiceError('BAD_PARAMETER', `output_type ${JSON.stringify(ot)} is not supported: use pil/image (encoded images) or pt/tensor (raw tensor)`);
  }
  const shape = parseShape(src.shape);
  const height = num('height', src.height, (x) => Number.isInteger(x) && x > 0, 'a positive integer');
  const width = num('width', src.width, (x) => Number.isInteger(x) && x > 0, 'a positive integer');
  const model = one('model', src.model);
  return {
    model: model === '' ? undefined : model,
    shape,
    dtype: parseDtype(src.dtype),
    format: format('format', src.format) ?? format('image_format', src.image_format),
    quality: num('quality', src.quality, (x) => Number.isInteger(x) && x >= 1 && x <= 100, 'an integer from 1 to 100'),
    scalingFactor: num('scaling_factor', src.scaling_factor, (x) => x !== 0, 'a non-zero number'),
    shiftFactor: num('shift_factor', src.shift_factor, () => true, 'a number'),
    doScaling: bool('do_scaling', src.do_scaling, true),
    outputType,
    partialPostprocess: bool('partial_postprocess', src.partial_postprocess, false),
    packed: shape?.length === 3 && height !== undefined && width !== undefined,
    tileSize: num('tile_size', src.tile_size, (x) => Number.isInteger(x) && x >= 0, 'a whole number of latents (0: never tile)'),
    tileOverlap: num('tile_overlap', src.tile_overlap, (x) => x >= 0 && x < 1, 'a number from 0 up to (not including) 1'),
  };
}

const ACCEPT: [RegExp, ImageFormat][] = [[/image\/png/, 'png'], [/image\/jpe?g/, 'jpeg'], [/image\/webp/, 'webp']];

/** The first image type the Accept header names, in the header's order; png when none. */
export function formatFromAccept(accept: string | undefined): ImageFormat {
  if (!accept) return 'png';
  let best: { f: ImageFormat; at: number } | undefined;
  for (const [re, f] of ACCEPT) {
    const m = re.exec(accept);
    if (m && (!best || m.index < best.at)) best = { f, at: m.index };
  }
  return best?.f ?? 'png';
}
