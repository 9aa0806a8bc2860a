// Request body → latents. Three encodings: raw little-endian bytes (octet-stream, tensor/binary or
// no Content-Type, as Python `requests.post(url, data=bytes)` sends), a NumPy .npy file, and JSON
// with base64 latents. Reading a body is cheap: options, the .npy header, the JSON fields; the
// bulk (base64, float conversion, scaling) waits until the plan has been checked against the
// model, and is then one pass in fuse.ts.
import { ServiceError } from '../errors.js';
import { BYTES_PER_ELEMENT, type WireDtype } from '../tensor/dtype.js';
import { parseNpyHeader, type NpyDtype, type NpyHeader } from '../tensor/npy.js';
import { scanJsonBody } from './json-body.js';
import type { ChannelStats } from './normalize.js';
import { parseOptions, rejectQueryOptions, type DecodeOptions } from './options.js';

export type BodyKind = 'raw' | 'npy' | 'json';

/** The latents as sent: what the options and headers say, the bytes not yet decoded. */
export interface WireLatents {
  options: DecodeOptions;
  /** The wire bytes' count, known before they are decoded. */
  byteLength: number;
  bytes(): Promise<Uint8Array>;
}

export interface LatentTensor {
  /** Decoder-space values, NCHW. */
  data: Float32Array;
  shape: [number, number, number, number];
}

export interface ModelLimits {
  name: string;
  channels: number;
  scalingFactor: number;
  shiftFactor: number;
  maxLatentSide: number;
  /** Per-channel statistics of the denoiser's space (FLUX.2), used instead of the factors. */
  stats?: ChannelStats;
}

/**
 * How the wire elements are ordered: NCHW, NHWC, FLUX-packed [N, (H/16)(W/16), 4C], or
 * patchified [N, C·p², h/p, w/p] (FLUX.2's denoiser space, p from the model's statistics).
 */
export type WireOrder = 'nchw' | 'nhwc' | 'packed' | 'patched';

/** The latents checked against a model: how to read them and what comes out. */
export interface LatentPlan {
  options: DecodeOptions;
  dtype: WireDtype;
  order: WireOrder;
  /** The shape as sent, with N: [N, C, h, w], [N, h, w, C] or [N, L, 4C]. */
  wireShape: number[];
  /** The decoder input, NCHW. */
  shape: [number, number, number, number];
  scale: number;
  shift: number;
  /** The model's per-channel statistics, when they apply (do_scaling and no factors given). */
  stats?: ChannelStats;
}

/**
 * Content-Types read as raw tensor bytes. application/x-www-form-urlencoded is what curl labels
 * `--data-binary @file` without -H: no form body can be a tensor (or an image), so it is read by
 * its bytes like an unlabelled one.
 */
export const RAW_TYPES: ReadonlySet<string> = new Set(['', 'application/octet-stream', 'tensor/binary', 'binary/octet-stream', 'application/x-www-form-urlencoded']);
/** Content-Types read as a NumPy .npy file. */
export const NPY_TYPES: ReadonlySet<string> = new Set(['application/x-npy', 'application/npy', 'application/x-numpy']);

/** The body's encoding from its Content-Type; UNSUPPORTED_MEDIA_TYPE for any other type. */
export function bodyKind(contentType: string | undefined): BodyKind {
  const t = (contentType ?? '').split(';')[0]!.trim().toLowerCase();
  if (RAW_TYPES.has(t)) return 'raw';
  if (NPY_TYPES.has(t)) return 'npy';
  if (t === 'application/json') return 'json';
  throw new ServiceError('UNSUPPORTED_MEDIA_TYPE',
    `Content-Type ${JSON.stringify(t)} is not supported: send application/octet-stream (or no Content-Type), application/x-npy or application/json`);
}

/**
 * The options and the latents' byte count from a body, without decoding the latents (see
 * WireLatents.bytes). The bytes may start at any offset of any buffer: fuse.ts reads them so.
 * @throws ServiceError EMPTY_BODY, BAD_NPY, BAD_JSON, BAD_BASE64, BAD_PARAMETER and the option errors
 */
export function readBody(kind: BodyKind, body: Buffer | undefined, query: Record<string, unknown>): WireLatents {
  if (!body || body.length === 0) {
    throw new ServiceError('EMPTY_BODY', 'the request body is empty: send the latents as raw bytes, a .npy file or JSON');
  }
  switch (kind) {
    case 'raw': return { options: parseOptions(query), byteLength: body.length, bytes: () => Promise.resolve(body) };
    case 'npy': return readNpyBody(body, query);
    case 'json': {
      const json = scanJsonBody(body);
      rejectQueryOptions(query, json.fields);
      return { options: parseOptions(json.fields, 'json'), byteLength: json.byteLength, bytes: json.latents };
    }
  }
}

/** The .npy dtypes a body may hold (numpy has no bfloat16: send it raw or as JSON). */
const NPY_WIRE_DTYPES: Partial<Record<NpyDtype, WireDtype>> = { '<f4': 'float32', '<f2': 'float16' };

/**
 * A .npy request body's header, with the wire dtype its `descr` names (`<f4` float32, `<f2`
 * float16) and its data (a view of `buf` from the header's end, at any byte offset).
 * @throws ServiceError BAD_NPY naming the problem: a bad header, another dtype, an empty shape
 */
export function readNpyRequest(buf: Buffer): { header: NpyHeader; dtype: WireDtype; data: Buffer } {
  let header: NpyHeader;
  try {
    header = parseNpyHeader(buf, 'the .npy body', Object.keys(NPY_WIRE_DTYPES) as NpyDtype[]);
  } catch (e) {
    throw new ServiceError('BAD_NPY', (e as Error).message);
  }
  if (header.shape.length === 0) throw new ServiceError('BAD_NPY', 'the .npy body has an empty shape');
  return { header, dtype: NPY_WIRE_DTYPES[header.dtype]!, data: buf.subarray(header.dataStart) };
}

function readNpyBody(buf: Buffer, query: Record<string, unknown>): WireLatents {
  const { header, dtype, data } = readNpyRequest(buf);
  // The header decides shape and dtype; the same option in the query string must agree with it.
  const fromQuery = parseOptions(query);
  if (query.shape !== undefined && fromQuery.shape?.join(',') !== header.shape.join(',')) {
    throw new ServiceError('BAD_PARAMETER', `shape=${fromQuery.shape?.join(',')} in the query string disagrees with the .npy header's shape (${header.shape.join(', ')}): leave it out`);
  }
  if (query.dtype !== undefined && fromQuery.dtype !== dtype) {
    throw new ServiceError('BAD_PARAMETER', `dtype=${fromQuery.dtype} in the query string disagrees with the .npy header's ${header.dtype} (${dtype}): leave it out`);
  }
  const options = parseOptions({ ...query, shape: header.shape, dtype });
  return { options, byteLength: data.byteLength, bytes: () => Promise.resolve(data) };
}

const product = (xs: number[]): number => xs.reduce((a, b) => a * b, 1);

/**
 * Checks the shape the options give against the model: dimensions, channels, side. Undefined when
 * no shape was given (raw bytes and JSON may leave it to the byte count).
 */
export function checkShape(o: DecodeOptions, model: ModelLimits): Omit<LatentPlan, 'options' | 'dtype' | 'scale' | 'shift'> | undefined {
  const s = o.shape;
  if (!s) return undefined;
  let order: WireOrder;
  let wireShape: number[];
  let shape: [number, number, number, number];
  if (o.packed) {
    order = 'packed';
    wireShape = s;
    shape = unpackedShape(s, o.height!, o.width!, model);
  } else if (patchedChannels(o, model) === s[s.length - 3] && o.layout === 'nchw') {
    // FLUX.2's denoiser space: C·p² channels at 1/p of the decoder's side
    const p = model.stats!.patch;
    order = 'patched';
    wireShape = s.length === 3 ? [1, ...s] : s;
    const [n, , b, c] = wireShape as [number, number, number, number];
    shape = [n, model.channels, b * p, c * p];
  } else {
    order = o.layout;
    wireShape = s.length === 3 ? [1, ...s] : s;
    const [n, a, b, c] = wireShape as [number, number, number, number];
    shape = order === 'nchw' ? [n, a, b, c] : [n, c, a, b];
    checkChannels(s, o.layout, model);
    checkImageSize(o, shape, wireShape);
  }
  checkSide(shape, model);
  return { order, wireShape, shape };
}

/** The channel count of the model's patchified space when its statistics apply (p > 1), else undefined. */
function patchedChannels(o: DecodeOptions, model: ModelLimits): number | undefined {
  const p = model.stats?.patch ?? 1;
  return p > 1 && statsApply(o, model) ? model.channels * p * p : undefined;
}

/** The model's statistics replace the factors unless the request scales itself or names factors. */
function statsApply(o: DecodeOptions, model: ModelLimits): boolean {
  return model.stats !== undefined && o.doScaling && o.scalingFactor === undefined && o.shiftFactor === undefined;
}

function unpackedShape(s: number[], height: number, width: number, model: ModelLimits): [number, number, number, number] {
  const [n, patches, last] = s as [number, number, number];
  const named = `packed latents [${s.join(', ')}] with height ${height} and width ${width}`;
  // diffusers' _unpack_latents rounds the image size down to whole 2x2 patches of 8x latents.
  const ph = Math.floor(height / 16);
  const pw = Math.floor(width / 16);
  if (ph < 1 || pw < 1) throw new ServiceError('BAD_SHAPE', `${named}: height and width must be at least 16 pixels`);
  if (patches !== ph * pw) {
    throw new ServiceError('BAD_SHAPE', `${named}: (${height}/16)·(${width}/16) = ${ph}·${pw} = ${ph * pw} patches, but dimension 1 is ${patches}`);
  }
  if (last % 4 !== 0) throw new ServiceError('BAD_SHAPE', `${named}: the last dimension ${last} is not 4 × channels (2x2 patches)`);
  const c = last / 4;
  if (c !== model.channels) {
    throw new ServiceError('CHANNEL_MISMATCH', `${named} carry ${c} channels (last dimension ${last} = 4 × ${c}) but model ${model.name} takes ${model.channels}`);
  }
  return [n, c, 2 * ph, 2 * pw];
}

/**
 * Latent channel counts of published VAEs: 4 (SD 1.x/2.x, SDXL, TAESD), 12 (Mochi), 16 (SD3,
 * FLUX.1, CogVideoX, HunyuanVideo, Wan 2.1), 32 (FLUX.2, DC-AE f32c32), 48 (Wan 2.2), 128 (LTX-Video,
 * DC-AE f64c128). A tensor whose channels-first reading has one of these is most likely such a
 * latent sent to the wrong model, not a channels-last one.
 */
const LATENT_CHANNEL_COUNTS = new Set([4, 12, 16, 32, 48, 128]);

/**
 * CHANNEL_MISMATCH naming both readings of the shape. The other layout is suggested only when
 * following the hint decodes the latents as they were meant: the other reading has the model's
 * channels and sides within MAX_LATENT_SIDE, and the reading as sent is not itself a plausible
 * latent (its channel count is none of LATENT_CHANNEL_COUNTS). [1, 16, 12, 4] to a 4-channel
 * model reads as 16-channel 12x4 latents (a FLUX latent, say): layout=nhwc would decode garbage.
 */
function checkChannels(s: number[], layout: 'nchw' | 'nhwc', model: ModelLimits): void {
  const [a, b, last] = s.slice(-3) as [number, number, number];
  const [c, other, otherLayout, otherSides] = layout === 'nchw' ? [a, last, 'nhwc', [a, b]] : [last, a, 'nchw', [b, last]];
  if (c === model.channels) return;
  let hint = '';
  if (other === model.channels) {
    if (LATENT_CHANNEL_COUNTS.has(c)) hint = `; not suggesting layout=${otherLayout}: ${c} channels is what other VAEs' latents have (another model's latents?)`;
    else if (otherSides.every((d) => d <= model.maxLatentSide)) hint = `: pass layout=${otherLayout}`;
  }
  throw new ServiceError('CHANNEL_MISMATCH',
    `the latents have ${c} channels but model ${model.name} takes ${model.channels}: shape [${s.join(', ')}] read as ${layout.toUpperCase()} has ${c} channels, read as ${otherLayout.toUpperCase()} ${other}${hint}`);
}

/** Pixels per latent on each side: every image VAE served here upsamples 8× (3 upsampling blocks). */
export const PIXELS_PER_LATENT = 8;

/** height/width (pixels) given beside latents that are not packed must be what the latents decode to. */
function checkImageSize(o: DecodeOptions, [, , h, w]: number[], wireShape: number[]): void {
  const wantH = h! * PIXELS_PER_LATENT;
  const wantW = w! * PIXELS_PER_LATENT;
  if ((o.height === undefined || o.height === wantH) && (o.width === undefined || o.width === wantW)) return;
  const given = [o.height === undefined ? '' : `height=${o.height}`, o.width === undefined ? '' : `width=${o.width}`].filter(Boolean).join(' and ');
  throw new ServiceError('BAD_PARAMETER',
    `${given} contradict${o.height !== undefined && o.width !== undefined ? '' : 's'} shape [${wireShape.join(', ')}]: its ${h}x${w} latents decode to ${wantH}x${wantW} pixels (height x width, ${PIXELS_PER_LATENT} per latent); fix or leave out height and width (they unpack 3-D FLUX latents)`);
}

function checkSide([, , h, w]: number[], model: ModelLimits): void {
  if (h! > model.maxLatentSide || w! > model.maxLatentSide) {
    throw new ServiceError('LATENT_TOO_LARGE', `latent size ${h}x${w} is over the maximum side of ${model.maxLatentSide} (${model.maxLatentSide * 8} px)`);
  }
}

/** The wire byte count the shape needs against the one the body has. */
export function checkBytes(o: DecodeOptions, wireShape: number[], byteLength: number): void {
  const want = product(wireShape) * BYTES_PER_ELEMENT[o.dtype];
  if (want !== byteLength) {
    throw new ServiceError('SIZE_MISMATCH', `shape ${o.shape!.join('x')} ${o.dtype} needs ${want} bytes, got ${byteLength}`);
  }
}

/** Every check that needs no latent value; the plan for fuse.ts. */
export function planLatents(wire: WireLatents, model: ModelLimits): LatentPlan {
  const o = wire.options;
  const bpe = BYTES_PER_ELEMENT[o.dtype];
  let resolved = checkShape(o, model);
  if (resolved) checkBytes(o, resolved.wireShape, wire.byteLength);
  else {
    if (wire.byteLength % bpe !== 0) {
      throw new ServiceError('SIZE_MISMATCH', `${wire.byteLength} bytes is not a whole number of ${o.dtype} values (${bpe} bytes each)`);
    }
    const c = model.channels;
    const side = Math.sqrt(wire.byteLength / bpe / c);
    if (!Number.isInteger(side)) {
      throw new ServiceError('BAD_SHAPE',
        `no shape given and ${wire.byteLength} bytes is not one square ${c}-channel latent: pass shape, e.g. ?shape=1,${c},64,64`);
    }
    const shape: LatentPlan['shape'] = [1, c, side, side];
    checkSide(shape, model);
    const wireShape = o.layout === 'nchw' ? shape : [1, side, side, c];
    checkImageSize(o, shape, wireShape);
    resolved = { order: o.layout, wireShape, shape };
  }
  // do_scaling=false means the client already scaled.
  const scale = o.doScaling ? (o.scalingFactor ?? model.scalingFactor) : 1;
  const shift = o.doScaling ? (o.shiftFactor ?? model.shiftFactor) : 0;
  // Statistics over 2×2 patches read patchified or FLUX-packed latents (packing is 2×2 too);
  // unpatchified latents of such a model are in the decoder's space already (its factors are 1 and 0).
  const p = model.stats?.patch;
  const stats = statsApply(o, model) && (p === 1 || resolved.order === 'patched' || (resolved.order === 'packed' && p === 2));
  return { ...resolved, options: o, dtype: o.dtype, scale, shift, ...(stats ? { stats: model.stats! } : {}) };
}
