// /encode's options, from the query string (image and binary bodies) or the JSON body's fields.
// The names follow diffusers: `scaling_factor`/`shift_factor` as remote_encode sends them,
// `sample_mode` as retrieve_latents takes it, `shape`/`dtype` describing a tensor body as on /decode.
import { ServiceError } from '../errors.js';
import { bool, num, parseDtype, parseShape, str, type Layout, type OptionSource, type Raw } from '../latents/options.js';
import { WIRE_DTYPES, type WireDtype } from '../tensor/dtype.js';

/** 'mode': the posterior mean (deterministic); 'sample': mean + std·ε. */
export type SampleMode = 'mode' | 'sample';

export interface EncodeOptions {
  model?: string;
  /** A tensor body's shape, [N, 3, H, W] or [3, H, W]; unset for an image body. */
  shape?: number[];
  /** A tensor body's dtype. */
  dtype: WireDtype;
  /** The answer's dtype. */
  outputDtype: WireDtype;
  sampleMode: SampleMode;
  /** sample_mode=sample: the noise's seed (a fresh one when unset). */
  seed?: number;
  scalingFactor?: number;
  shiftFactor?: number;
  /** false: the latents as the VAE makes them (decoder space), no scaling or normalisation. */
  doScaling: boolean;
  layout: Layout;
  /** FLUX-packed answer [N, (H/16)(W/16), 4C] with height/width headers. */
  pack: boolean;
  /** Image sides that are not multiples of the factor: resized down (true) or refused (false). */
  resize: boolean;
  /** Tiled encoding: tile side in latents (8× in pixels); 0 never tiles. Unset: TILE_LATENT_SIDE. */
  tileSize?: number;
  /** diffusers' tile_overlap_factor. Unset: TILE_OVERLAP. */
  tileOverlap?: number;
}

export const ENCODE_OPTION_NAMES = [
  'model', 'shape', 'dtype', 'output_dtype', 'sample_mode', 'seed', 'scaling_factor', 'shift_factor', 'do_scaling', 'layout', 'pack', 'resize', 'tile_size', 'tile_overlap',
] as const;

const SAMPLE_MODES: Record<string, SampleMode> = { mode: 'mode', argmax: 'mode', sample: 'sample' };
const MAX_SEED = 2 ** 32 - 1;

function choice<T extends string>(name: string, v: Raw, from: OptionSource, table: Record<string, T>, def: T, words: string): T {
  const s = str(name, v, from);
  if (s === undefined || s === '') return def;
  const c = table[s.toLowerCase()];
  if (!c) throw new ServiceError('BAD_PARAMETER', `${name} ${JSON.stringify(s)} is not supported: use ${words}`);
  return c;
}

/** Reads /encode's options from a flat record; throws BAD_PARAMETER / BAD_SHAPE / UNKNOWN_DTYPE naming the option. */
export function parseEncodeOptions(src: Record<string, Raw>, from: OptionSource = 'query'): EncodeOptions {
  const model = str('model', src.model, from);
  const outputDtype = src.output_dtype === undefined ? 'float32' : parseDtype(src.output_dtype, from, 'output_dtype');
  const opts: EncodeOptions = {
    model: model === '' ? undefined : model,
    shape: parseShape(src.shape),
    dtype: parseDtype(src.dtype, from),
    outputDtype,
    sampleMode: choice('sample_mode', src.sample_mode, from, SAMPLE_MODES, 'mode', 'mode (alias argmax: the posterior mean) or sample (mean + std·ε)'),
    seed: num('seed', src.seed, from, true, (x) => x >= 0 && x <= MAX_SEED, `a decimal integer from 0 to ${MAX_SEED}`),
    scalingFactor: num('scaling_factor', src.scaling_factor, from, false, (x) => x !== 0, 'a non-zero decimal number'),
    shiftFactor: num('shift_factor', src.shift_factor, from, false, () => true, 'a decimal number'),
    doScaling: bool('do_scaling', src.do_scaling, from, true),
    layout: choice('layout', src.layout, from, { nchw: 'nchw', nhwc: 'nhwc' }, 'nchw', 'nchw (channels first, the default) or nhwc (channels last)'),
    pack: bool('pack', src.pack, from, false),
    resize: bool('resize', src.resize, from, true),
    tileSize: num('tile_size', src.tile_size, from, true, (x) => x >= 0, 'a whole number of latents (0: never tile)'),
    tileOverlap: num('tile_overlap', src.tile_overlap, from, false, (x) => x >= 0 && x < 1, 'a number from 0 up to (not including) 1'),
  };
  if (opts.pack && opts.layout !== 'nchw') throw new ServiceError('BAD_PARAMETER', 'pack=true gives [N, (H/16)(W/16), 4C]: layout=nhwc does not apply, leave it out');
  if (opts.seed !== undefined && opts.sampleMode !== 'sample') {
    throw new ServiceError('BAD_PARAMETER', 'seed applies to sample_mode=sample only (the default mode returns the posterior mean)');
  }
  if (!WIRE_DTYPES.includes(opts.outputDtype)) throw new ServiceError('UNKNOWN_DTYPE', `output_dtype must be one of ${WIRE_DTYPES.join(', ')}`);
  return opts;
}

/** With a JSON body the options are its fields: the same option in the query string is a conflict. */
export function rejectEncodeQueryOptions(query: Record<string, Raw>): void {
  const given = ENCODE_OPTION_NAMES.filter((n) => query[n] !== undefined);
  if (given.length > 0) {
    throw new ServiceError('BAD_PARAMETER', `${given.join(', ')} ${given.length > 1 ? 'are' : 'is'} in the query string: with a JSON body, give options as JSON fields only`);
  }
}
