// Request options, from the query string (binary bodies) or JSON fields. The names are the ones
// the diffusers `remote_decode` client sends (image_format, output_type, partial_postprocess,
// shape as a repeated key, dtype, scaling_factor, shift_factor, do_scaling, height, width).
import { ServiceError } from '../errors.js';
import { WIRE_DTYPES, type WireDtype } from '../tensor/dtype.js';

export type ImageFormat = 'png' | 'jpeg' | 'webp';
export type OutputType = 'image' | 'tensor';
/** The latents' memory order: channels first (PyTorch) or channels last (Keras, JAX). */
export type Layout = 'nchw' | 'nhwc';
/** Where options come from: the query string (binary bodies) or the JSON body's fields. */
export type OptionSource = 'query' | 'json';

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
  layout: Layout;
  /** Image height in pixels; with width and a 3-D shape, the latents are FLUX-packed. */
  height?: number;
  width?: number;
  packed: boolean;
  /** Tile side in latents for tiled decoding; 0: never tile. Unset: TILE_LATENT_SIDE. */
  tileSize?: number;
  /** diffusers' tile_overlap_factor, 0 ≤ f < 1. Unset: TILE_OVERLAP. */
  tileOverlap?: number;
}

/** Every option name: with a JSON body, none of them may also come in the query string. */
export const OPTION_NAMES = [
  'model', 'shape', 'dtype', 'format', 'image_format', 'quality', 'scaling_factor', 'shift_factor', 'do_scaling',
  'output_type', 'partial_postprocess', 'layout', 'height', 'width', 'tile_size', 'tile_overlap',
] as const;

export type Raw = unknown;

const FORMATS: Record<string, ImageFormat> = { png: 'png', jpeg: 'jpeg', jpg: 'jpeg', webp: 'webp' };
const OUTPUT_TYPES: Record<string, OutputType> = { pil: 'image', image: 'image', pt: 'tensor', tensor: 'tensor' };
const LAYOUTS: Record<string, Layout> = { nchw: 'nchw', nhwc: 'nhwc' };
const TRUE = new Set(['true', 'True', '1']);
const FALSE = new Set(['false', 'False', '0']);
// Decimal only: Number() would also accept '0x10', '0b1', '1e1' for an integer and ' 5 ' or ''.
const DECIMAL_INT = /^\d{1,15}$/;
const DECIMAL_NUMBER = /^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$/;

const show = (v: unknown): string => JSON.stringify(v) ?? String(v);

/** One scalar value: a repeated query key or a JSON array is a mistake, not a list to pick from. */
function scalar(name: string, v: Raw, from: OptionSource): string | number | boolean | undefined {
  if (v === undefined || v === null) return undefined;
  if (Array.isArray(v)) {
    if (from === 'query') throw new ServiceError('BAD_PARAMETER', `${name} was given ${v.length} times (${v.map(show).join(', ')}); give it once`);
    throw new ServiceError('BAD_PARAMETER', `${name} must be a single value, not the array ${show(v)}`);
  }
  if (typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean') return v;
  throw new ServiceError('BAD_PARAMETER', `${name} must be a string, number or boolean, not ${show(v)}`);
}

/** A string option (undefined when absent); BAD_PARAMETER for another type or a repeated key. */
export function str(name: string, v: Raw, from: OptionSource): string | undefined {
  const s = scalar(name, v, from);
  if (s === undefined || typeof s === 'string') return s;
  throw new ServiceError('BAD_PARAMETER', `${name} must be a string, not ${show(s)}`);
}

/** A boolean option: true/false/True/False/1/0; `def` when absent. */
export function bool(name: string, v: Raw, from: OptionSource, def: boolean): boolean {
  const s = scalar(name, v, from);
  if (s === undefined) return def;
  if (typeof s === 'boolean') return s;
  if (TRUE.has(String(s))) return true;
  if (FALSE.has(String(s))) return false;
  throw new ServiceError('BAD_PARAMETER', `${name}=${show(s)} is not a boolean: use true/false/True/False/1/0`);
}

/** A decimal number option passing `check` (integers only when `integer`); BAD_PARAMETER naming `expected` otherwise. */
export function num(name: string, v: Raw, from: OptionSource, integer: boolean, check: (x: number) => boolean, expected: string): number | undefined {
  const s = scalar(name, v, from);
  if (s === undefined || s === '') return undefined;
  const bad = (): ServiceError => new ServiceError('BAD_PARAMETER', `${name}=${show(s)} is not valid: expected ${expected}`);
  if (typeof s === 'boolean') throw bad();
  if (typeof s === 'string' && !(integer ? DECIMAL_INT : DECIMAL_NUMBER).test(s)) throw bad();
  const x = Number(s);
  if (!Number.isFinite(x) || (integer && !Number.isSafeInteger(x)) || !check(x)) throw bad();
  return x;
}

const positiveInt = (name: string, v: Raw, from: OptionSource): number | undefined =>
  num(name, v, from, true, (x) => x > 0, 'a positive decimal integer');

/** `1,4,64,64`, `[1, 4, 64, 64]`, a repeated key (`shape=1&shape=4&...`) or a JSON array. */
export function parseShape(v: Raw): number[] | undefined {
  if (v === undefined || v === null || v === '') return undefined;
  let parts: unknown[];
  if (Array.isArray(v)) parts = v.length === 1 && typeof v[0] === 'string' ? splitShape(v[0]) : v;
  else if (typeof v === 'string') parts = splitShape(v);
  else throw new ServiceError('BAD_SHAPE', `shape must be a list like [1, 4, 64, 64], got ${show(v)}`);
  if (parts.length !== 3 && parts.length !== 4) {
    throw new ServiceError('BAD_SHAPE', `shape ${show(v)} must have 4 dimensions [N, C, h, w] or 3 [C, h, w]`);
  }
  const dims = parts.map((p) => (typeof p === 'string' && DECIMAL_INT.test(p) ? Number(p) : p));
  for (const d of dims) {
    if (typeof d !== 'number' || !Number.isSafeInteger(d) || d < 1) {
      throw new ServiceError('BAD_SHAPE', `shape ${show(v)} must hold positive integers, written in decimal; ${show(d)} is not one`);
    }
  }
  return dims as number[];
}

function splitShape(s: string): string[] {
  return s.trim().replace(/^[[(]|[\])]$/g, '').split(',').map((p) => p.trim()).filter((p) => p !== '');
}

/** A wire dtype from option `name` ("torch." prefix accepted; float32 when unset); UNKNOWN_DTYPE naming the option. */
export function parseDtype(v: Raw, from: OptionSource = 'query', name = 'dtype'): WireDtype {
  const s = str(name, v, from);
  if (s === undefined) return 'float32';
  const d = s.replace(/^torch\./, '');
  if (!(WIRE_DTYPES as readonly string[]).includes(d)) {
    throw new ServiceError('UNKNOWN_DTYPE', `${name} ${show(s)} is not supported: use ${WIRE_DTYPES.join(', ')}`);
  }
  return d as WireDtype;
}

function format(name: string, v: Raw, from: OptionSource): ImageFormat | undefined {
  const s = str(name, v, from);
  if (s === undefined) return undefined;
  const f = FORMATS[s.toLowerCase()];
  if (!f) throw new ServiceError('UNKNOWN_FORMAT', `${name} ${show(s)} is not supported: use png, jpeg (jpg) or webp`);
  return f;
}

/** format and image_format are one option under two names: two different values are a conflict. */
function imageFormat(src: Record<string, Raw>, from: OptionSource): ImageFormat | undefined {
  const a = format('format', src.format, from);
  const b = format('image_format', src.image_format, from);
  if (a && b && a !== b) {
    throw new ServiceError('BAD_PARAMETER', `format=${show(src.format)} and image_format=${show(src.image_format)} disagree; give one`);
  }
  return a ?? b;
}

function layout(v: Raw, from: OptionSource): Layout {
  const s = str('layout', v, from);
  if (s === undefined || s === '') return 'nchw';
  const l = LAYOUTS[s.toLowerCase()];
  if (!l) throw new ServiceError('BAD_PARAMETER', `layout ${show(s)} is not supported: use nchw (channels first, the default) or nhwc (channels last)`);
  return l;
}

/** Reads options from a flat record: the query string or the JSON body's fields. */
export function parseOptions(src: Record<string, Raw>, from: OptionSource = 'query'): DecodeOptions {
  const ot = str('output_type', src.output_type, from);
  const outputType = ot === undefined ? 'image' : OUTPUT_TYPES[ot];
  if (!outputType) {
    throw new ServiceError('BAD_PARAMETER', `output_type ${show(ot)} is not supported: use pil/image (encoded images) or pt/tensor (raw tensor)`);
  }
  const shape = parseShape(src.shape);
  const height = positiveInt('height', src.height, from);
  const width = positiveInt('width', src.width, from);
  const model = str('model', src.model, from);
  const opts: DecodeOptions = {
    model: model === '' ? undefined : model,
    shape,
    dtype: parseDtype(src.dtype, from),
    format: imageFormat(src, from),
    quality: num('quality', src.quality, from, true, (x) => x >= 1 && x <= 100, 'a decimal integer from 1 to 100'),
    scalingFactor: num('scaling_factor', src.scaling_factor, from, false, (x) => x !== 0, 'a non-zero decimal number'),
    shiftFactor: num('shift_factor', src.shift_factor, from, false, () => true, 'a decimal number'),
    doScaling: bool('do_scaling', src.do_scaling, from, true),
    outputType,
    partialPostprocess: bool('partial_postprocess', src.partial_postprocess, from, false),
    layout: layout(src.layout, from),
    height,
    width,
    packed: shape?.length === 3 && height !== undefined && width !== undefined,
    tileSize: num('tile_size', src.tile_size, from, true, (x) => x >= 0, 'a whole number of latents (0: never tile)'),
    tileOverlap: num('tile_overlap', src.tile_overlap, from, false, (x) => x >= 0 && x < 1, 'a number from 0 up to (not including) 1'),
  };
  if (shape?.length === 3 && (height === undefined) !== (width === undefined)) {
    throw new ServiceError('BAD_PARAMETER', `packed latents need both height and width (pixels); got only ${height === undefined ? 'width' : 'height'}`);
  }
  if (opts.packed && opts.layout !== 'nchw') {
    throw new ServiceError('BAD_PARAMETER', 'layout=nhwc does not apply to packed latents [N, (H/16)(W/16), 4C]: leave it out');
  }
  return opts;
}

/** With a JSON body the options are its fields: the same option in the query string is a conflict. */
export function rejectQueryOptions(query: Record<string, Raw>, fields?: Record<string, Raw>): void {
  for (const name of OPTION_NAMES) {
    if (query[name] === undefined) continue;
    if (fields?.[name] !== undefined) {
      throw new ServiceError('BAD_PARAMETER',
        `${name} is given both in the query string (${show(query[name])}) and in the JSON body (${show(fields[name])}): with a JSON body, give options as JSON fields only`);
    }
    throw new ServiceError('BAD_PARAMETER', `${name} is in the query string (${show(query[name])}): with a JSON body, give options as JSON fields only`);
  }
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
