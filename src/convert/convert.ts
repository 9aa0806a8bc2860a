// Checkpoint (.safetensors, any supported key layout) → ONNX VAE decoder. The architecture (KL
// VAE, TAESD or the Wan 2.1 VAE) is told from the keys. Weights stream from the checkpoint into the output file
// one tensor at a time, so peak memory stays near the size of the largest tensor rather than the
// model or the checkpoint.
import { basename, dirname, join } from 'node:path';
import { writeModelFile, type ElemType } from '../onnx/graph.js';
import { checkFp16, type Fp16Report } from './fp16-guard.js';
import { readBatchNormStats } from './flux2-stats.js';
import { prepareOutput, writeAtomically, writeTextAtomically } from './output.js';
import { SafetensorsFile } from './safetensors.js';
import { buildEncoderGraph } from './encoder-graph.js';
import { EncoderWeights, findKlEncoder, hasKlDecoder } from './encoder-weights.js';
import { buildTaesdEncoderGraph, detectTaesdEncoder, TaesdEncoderWeights } from './taesd-encoder.js';
import { buildTaesdGraph } from './taesd-graph.js';
import { TaesdWeights, detectTaesd } from './taesd-weights.js';
import { buildDecoderGraph, type DecoderGraph } from './vae-graph.js';
import { VaeWeights } from './vae-weights.js';
import { buildWanStepGraph } from './wan-graph.js';
import { WanWeights, detectWan } from './wan-weights.js';
import { WAN21_LATENTS_MEAN, WAN21_LATENTS_STD } from '../video/wan-latents.js';
import {
  CONFIG_FILE, ENCODER_FILE, FAMILIES, FAMILY_NAMES, MODEL_FILE, SD_SCALING_FACTOR, familiesFor, isFamily,
  type Family, type FamilyKind, type ModelConfig, type Precision,
} from '../serving/model-config.js';

const SD_LATENT_CHANNELS = 4;

export interface ConvertOptions {
  weights: string;
  out: string;
  fp16?: boolean;
  /** Defaults to the folder name when `out` is `<dir>/model.onnx`, else the file name. */
  name?: string;
  /**
   * Sets the factors (unless given below) and is recorded in config.json and the metadata; it
   * must agree with the weights' architecture and latent channels.
   */
  family?: Family;
  /** Required for 16 latent channels without `family`: SD3 (1.5305) and FLUX (0.3611) share shapes. */
  scalingFactor?: number;
  shiftFactor?: number;
  /** Wan: per-channel normalisation (a diffusers config's latents_mean/latents_std); default Wan 2.1's. */
  latentsMean?: number[];
  latentsStd?: number[];
  /** Recorded in the metadata; defaults to the checkpoint's file name. */
  source?: string;
  /** FLUX.2: the BatchNorm's epsilon (its config.json's batch_norm_eps); default diffusers' 1e-4. */
  batchNormEps?: number;
  /** Write config.json beside the model; defaults to true when `out` is named model.onnx. */
  writeConfig?: boolean;
  onProgress?: (done: number, total: number) => void;
  /** Convert weights holding NaN or ±Inf (reported through `warn`) instead of refusing them. */
  allowNonFinite?: boolean;
  warn?: (message: string) => void;
}

export interface ConvertResult {
  /** The KL VAE's shape (ch, chMult, numResBlocks) is added for KL decoders only. */
  config: ModelConfig & { ch?: number; chMult?: number[]; numResBlocks?: number };
  /** The architecture found in the weights, in words. */
  architecture: string;
  /** What the --fp16 guard measured (only with fp16). */
  fp16Check?: Fp16Report;
  /** The encoder written beside the decoder (`encoder.onnx` in a model folder), when the weights hold one. */
  encoder?: { path: string; architecture: string; bytes: number };
  /** Why an encoder in the weights was not written (a tensor missing or mis-shaped); the decoder was. */
  encoderSkipped?: string;
  /** The weights hold an encoder only (TAESD ships its halves as separate files): no decoder was written. */
  encoderOnly?: boolean;
  seconds: number;
  /** Bytes written, both files together. */
  bytes: number;
}

/** Where the encoder goes: `encoder.onnx` beside a model folder's `model.onnx`, else `<name>.encoder.onnx`. */
export function encoderPath(out: string): string {
  return basename(out) === MODEL_FILE ? join(dirname(out), ENCODER_FILE) : out.replace(/(\.onnx)?$/i, '.encoder.onnx');
}

type OpenOptions = Pick<ConvertOptions, 'allowNonFinite' | 'warn'>;

/** The checkpoint's encoder, or undefined when it holds none. */
async function openEncoder(path: string, opts: OpenOptions): Promise<GraphSource | undefined> {
  const file = await SafetensorsFile.open(path, { allowNonFinite: opts.allowNonFinite, warn: opts.warn });
  if (detectTaesdEncoder(file)) {
    const w = await TaesdEncoderWeights.fromFile(file);
    return {
      kind: 'taesd',
      latentChannels: w.config.latentChannels,
      architecture: `TAESD encoder (${w.layout} layout), ${w.config.ch} ch`,
      shape: {},
      weights: w,
      build: (type) => buildTaesdEncoderGraph(w.config, type),
    };
  }
  if (findKlEncoder(new Set(file.keys())) === undefined) {
    await file.close();
    return undefined;
  }
  const w = await EncoderWeights.fromFile(file);
  const cfg = w.config;
  return {
    kind: 'kl',
    latentChannels: cfg.latentChannels,
    architecture: `KL encoder ch ${cfg.ch} × [${cfg.chMult.join(', ')}], ${cfg.numResBlocks} res blocks${cfg.hasQuantConv ? '' : ', no quant_conv'}`,
    shape: {},
    weights: w,
    build: (type) => buildEncoderGraph(cfg, type),
  };
}

/** The decoder or encoder found in a checkpoint, either architecture, behind one interface. */
interface GraphSource {
  kind: FamilyKind;
  latentChannels: number;
  architecture: string;
  shape: Pick<ConvertResult['config'], 'ch' | 'chMult' | 'numResBlocks'>;
  weights: Pick<VaeWeights, 'check' | 'read' | 'close'>;
  build(type: ElemType): DecoderGraph;
  /** Extra metadata_props (the Wan step graph's cache slots). */
  metadata?: Record<string, string>;
}

const KIND_TITLES: Record<FamilyKind, string> = { kl: 'SD-family VAE', taesd: 'TAESD', wan: 'Wan 2.1 VAE streaming (one latent frame per run)' };

/** The checkpoint's decoder, or undefined when it holds none (a TAESD encoder file). */
async function openDecoder(path: string, opts: OpenOptions): Promise<GraphSource | undefined> {
  const file = await SafetensorsFile.open(path, { allowNonFinite: opts.allowNonFinite, warn: opts.warn });
  const keys = new Set(file.keys());
  if (detectWan(keys)) {
    const w = await WanWeights.fromFile(file);
    const built = buildWanStepGraph(w.config);
    return {
      kind: 'wan',
      latentChannels: w.config.latentChannels,
      architecture: `Wan 2.1 VAE (${w.layout} layout), mid ${w.config.midChannels} ch, out ${w.config.outChannels} ch, ${built.slots.length} cache slots`,
      shape: {},
      weights: w,
      build: (type) => (type === 'float32' ? built : buildWanStepGraph(w.config, type)),
      metadata: { feat_cache: JSON.stringify(built.slots) },
    };
  }
  if (detectTaesd(keys)) {
    const w = await TaesdWeights.fromFile(file);
    return {
      kind: 'taesd',
      latentChannels: w.config.latentChannels,
      architecture: `TAESD (${w.layout} layout), ${w.config.ch} ch`,
      shape: {},
      weights: w,
      build: (type) => buildTaesdGraph(w.config, type),
    };
  }
  // a file with an encoder and no decoder is an encoder file; with neither, the decoder reader says what is missing
  if (!hasKlDecoder(keys) && (findKlEncoder(keys) !== undefined || detectTaesdEncoder(file))) {
    await file.close();
    return undefined;
  }
  const w = await VaeWeights.fromFile(file);
  const cfg = w.config;
  return {
    kind: 'kl',
    latentChannels: cfg.latentChannels,
    architecture: `ch ${cfg.ch} × [${cfg.chMult.join(', ')}], ${cfg.numResBlocks} res blocks`,
    shape: { ch: cfg.ch, chMult: cfg.chMult, numResBlocks: cfg.numResBlocks },
    weights: w,
    build: (type) => buildDecoderGraph(cfg, type),
  };
}

/**
 * Converts a checkpoint into an ONNX decoder at `opts.out` (+ config.json in a repository folder),
 * and its encoder, when the weights hold one, at encoderPath(opts.out). The output paths are
 * checked before the checkpoint is read; every file is written under a temporary name and renamed.
 * @throws OutputPathError for an output that cannot be a model file; Error naming the checkpoint
 *   and the tensor for a bad header, a missing or misshapen weight, a NaN or ±Inf weight (unless
 *   `allowNonFinite`), a refused float16 conversion, or weights with neither decoder nor encoder
 */
export async function convertCheckpoint(opts: ConvertOptions): Promise<ConvertResult> {
  const started = performance.now();
  const inRepoFolder = basename(opts.out) === MODEL_FILE;
  await prepareOutput(opts.out);
  const decoder = await openDecoder(opts.weights, opts);
  let encoder: GraphSource | undefined;
  try {
    // a Wan checkpoint's encoder (3-D, causal) is no KL encoder: only its decoder is converted
    encoder = decoder?.kind === 'wan' ? undefined : await openEncoder(opts.weights, opts);
  } catch (err) {
    await decoder?.weights.close();
    throw err;
  }
  try {
    const main = (decoder ?? encoder)!;
    if (decoder && encoder && decoder.latentChannels !== encoder.latentChannels) {
      throw new Error(`${opts.weights}: the decoder takes ${decoder.latentChannels} latent channels but the encoder makes ${encoder.latentChannels}`);
    }
    const factors = resolveFactors(main, opts);
    const precision: Precision = opts.fp16 ? 'fp16' : 'fp32';
    const config: ModelConfig = {
      name: opts.name ?? (inRepoFolder ? basename(dirname(opts.out)) : basename(opts.out).replace(/\.onnx$/i, '')),
      latentChannels: main.latentChannels,
      scalingFactor: factors.scalingFactor,
      shiftFactor: factors.shiftFactor,
      precision,
      source: opts.source ?? basename(opts.weights),
      ...(factors.family ? { family: factors.family } : {}),
      ...(await readBatchNormStats(opts.weights, main.latentChannels, opts.batchNormEps)),
      ...(main.kind === 'wan' ? channelNormalization(main.latentChannels, opts) : {}),
    };
    const metadata = {
      name: config.name,
      scaling_factor: String(config.scalingFactor),
      shift_factor: String(config.shiftFactor),
      latent_channels: String(config.latentChannels),
      precision,
      source: config.source,
      ...(config.family ? { family: config.family } : {}),
      ...(config.latentsMean ? { latents_mean: JSON.stringify(config.latentsMean), latents_std: JSON.stringify(config.latentsStd) } : {}),
      ...(config.patchSize !== undefined ? { patch_size: String(config.patchSize) } : {}),
    };
    const type = opts.fp16 ? 'float16' : 'float32';
    const decoderGraph = decoder?.build(type);
    for (const ref of decoderGraph?.weights ?? []) decoder!.weights.check(ref.name, ref.shape); // fail before writing anything
    // The encoder is written in float32 whatever --fp16 says: the float16 guard measures decoders only.
    let encoderGraph = encoder?.build('float32');
    let encoderSkipped: string | undefined;
    try {
      for (const ref of encoderGraph?.weights ?? []) encoder!.weights.check(ref.name, ref.shape);
    } catch (err) {
      if (!decoder) throw err;
      encoderSkipped = (err as Error).message; // a decoder with a broken encoder beside it still converts
      encoderGraph = undefined;
    }
    let bytes = 0;
    let fp16Check: Fp16Report | undefined;
    if (decoder && decoderGraph) {
      const model = decoderGraph.graph.model({
        doc: `${KIND_TITLES[decoder.kind]} decoder (${precision}) converted from ${config.source} by latent-decoder`,
        metadata: { ...metadata, ...decoder.metadata },
      });
      // written under a temporary name so a model repository never sees a half-written model, nor
      // a float16 one the guard refuses
      bytes = await writeGraph(opts.out, model, decoderGraph.weights, type, decoder, opts.onProgress, async (partial) => {
        // the guard probes 4-D image decoders; the Wan graph keeps its norms and scores in float32
        if (!opts.fp16 || decoder.kind === 'wan') return;
        fp16Check = await checkFp16({
          graph: decoderGraph.graph, weights: decoderGraph.weights, fp16Model: partial, probePath: `${opts.out}.fp16-probe.partial`,
          readFloat32: (name) => decoder.weights.read(name, 'float32') as Promise<Float32Array>,
          latentChannels: config.latentChannels, scalingFactor: config.scalingFactor, shiftFactor: config.shiftFactor,
        });
      });
    }
    let encoderResult: ConvertResult['encoder'];
    if (encoder && encoderGraph) {
      const path = encoderPath(opts.out);
      const model = encoderGraph.graph.model({
        doc: `${encoder.kind === 'taesd' ? 'TAESD' : 'SD-family VAE'} encoder (fp32) converted from ${config.source} by latent-decoder`,
        metadata: { ...metadata, precision: 'fp32', direction: 'encode' },
      });
      await prepareOutput(path);
      const encBytes = await writeGraph(path, model, encoderGraph.weights, 'float32', encoder, decoder ? undefined : opts.onProgress);
      encoderResult = { path, architecture: encoder.architecture, bytes: encBytes };
    }
    if (opts.writeConfig ?? inRepoFolder) {
      await writeTextAtomically(join(dirname(opts.out), CONFIG_FILE), `${JSON.stringify(config, null, 2)}\n`);
    }
    return {
      config: { ...config, ...main.shape },
      architecture: main.architecture,
      ...(decoder ? {} : { encoderOnly: true }),
      ...(encoderResult ? { encoder: encoderResult } : {}),
      ...(encoderSkipped ? { encoderSkipped } : {}),
      ...(fp16Check ? { fp16Check } : {}),
      seconds: (performance.now() - started) / 1000,
      bytes: bytes + (encoderResult?.bytes ?? 0),
    };
  } finally {
    await decoder?.weights.close();
    await encoder?.weights.close();
  }
}

/** Streams a graph's model and weights to `path` atomically, running `verify` on the partial file first. */
function writeGraph(path: string, model: ReturnType<DecoderGraph['graph']['model']>, refs: DecoderGraph['weights'], type: ElemType,
  src: GraphSource, onProgress?: (done: number, total: number) => void, verify?: (partial: string) => Promise<void>): Promise<number> {
  return writeAtomically(path, async (partial) => {
    const bytes = await writeModelFile(partial, model, refs.map((r) => ({
      name: r.name,
      type,
      dims: r.dims,
      load: () => src.weights.read(r.name, type === 'float16' ? 'float16' : 'float32'),
    })), onProgress);
    await verify?.(partial);
    return bytes;
  });
}

const describe = (kind: FamilyKind, channels: number) => `${channels}-channel ${{ kl: 'KL VAE', taesd: 'TAESD', wan: 'Wan VAE' }[kind]} decoder`;

/**
 * The factors and family: explicit factors win; then --family; then what the weights make
 * certain. A family is recorded only when told or when the weights fit exactly one; factors are
 * inferred when every family that fits shares them (the whole TAESD family: 1 and 0), and a
 * 4-channel KL VAE keeps the SD 1.x/2.x default it always had.
 */
function resolveFactors(src: GraphSource, opts: ConvertOptions): { scalingFactor: number; shiftFactor: number; family?: Family } {
  const fits = familiesFor(src.kind, src.latentChannels);
  const explicit = (f: { scalingFactor: number; shiftFactor: number }, family?: Family) => ({
    scalingFactor: opts.scalingFactor ?? f.scalingFactor,
    shiftFactor: opts.shiftFactor ?? (opts.scalingFactor !== undefined ? 0 : f.shiftFactor),
    ...(family ? { family } : {}),
  });
  if (opts.family !== undefined) {
    if (!isFamily(opts.family)) throw new Error(`unknown family ${JSON.stringify(opts.family)}: choose one of ${FAMILY_NAMES.join(', ')}`);
    const spec = FAMILIES[opts.family];
    if (spec.kind !== src.kind || spec.latentChannels !== src.latentChannels) {
      throw new Error(`${opts.weights}: family ${opts.family} takes a ${describe(spec.kind, spec.latentChannels)}, ` +
        `but the weights hold a ${describe(src.kind, src.latentChannels)}` +
        (fits.length > 0 ? `; choose one of ${fits.join(', ')}` : ''));
    }
    return { scalingFactor: opts.scalingFactor ?? spec.scalingFactor, shiftFactor: opts.shiftFactor ?? spec.shiftFactor, family: opts.family };
  }
  if (fits.length === 1) return explicit(FAMILIES[fits[0]!], fits[0]);
  const first = fits[0] && FAMILIES[fits[0]];
  if (first && fits.every((f) => FAMILIES[f].scalingFactor === first.scalingFactor && FAMILIES[f].shiftFactor === first.shiftFactor)) {
    return explicit(first);
  }
  if (opts.scalingFactor !== undefined) return explicit({ scalingFactor: opts.scalingFactor, shiftFactor: 0 });
  if (src.kind === 'kl' && src.latentChannels === SD_LATENT_CHANNELS) return explicit({ scalingFactor: SD_SCALING_FACTOR, shiftFactor: 0 });
  const choices = fits.map((f) => `${f}: ${FAMILIES[f].scalingFactor} with shift ${FAMILIES[f].shiftFactor}`).join(', ');
  throw new Error(
    `${opts.weights}: a ${src.latentChannels}-channel VAE's scaling factor cannot be inferred from its weights` +
    (fits.length > 0 ? ` (${choices}); pass --family ${fits.join('|')}, or --scaling-factor and --shift-factor` : '; pass --scaling-factor and --shift-factor'),
  );
}

/** A Wan model's latents_mean/latents_std: the given ones (one per channel) or Wan 2.1's. */
function channelNormalization(channels: number, opts: ConvertOptions): { latentsMean: number[]; latentsStd: number[] } {
  const mean = opts.latentsMean ?? [...WAN21_LATENTS_MEAN];
  const std = opts.latentsStd ?? [...WAN21_LATENTS_STD];
  if (mean.length !== channels || std.length !== channels) {
    throw new Error(`${opts.weights}: latents_mean and latents_std need ${channels} values each, got ${mean.length} and ${std.length}`);
  }
  return { latentsMean: mean, latentsStd: std };
}
