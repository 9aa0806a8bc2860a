// Checkpoint (.safetensors, any supported key layout) → ONNX VAE decoder. The architecture (KL
// VAE or TAESD) is told from the keys. Weights stream from the checkpoint into the output file
// one tensor at a time, so peak memory stays near the size of the largest tensor rather than the
// model or the checkpoint.
import { mkdir, rename, rm, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { writeModelFile, type ElemType } from '../onnx/graph.js';
import { checkFp16, type Fp16Report } from './fp16-guard.js';
import { SafetensorsFile } from './safetensors.js';
import { buildTaesdGraph } from './taesd-graph.js';
import { TaesdWeights, detectTaesd } from './taesd-weights.js';
import { buildDecoderGraph, type DecoderGraph } from './vae-graph.js';
import { VaeWeights } from './vae-weights.js';
import { buildWanStepGraph } from './wan-graph.js';
import { WanWeights, detectWan } from './wan-weights.js';
import { WAN21_LATENTS_MEAN, WAN21_LATENTS_STD } from '../video/wan-latents.js';
import {
  CONFIG_FILE, FAMILIES, FAMILY_NAMES, MODEL_FILE, SD_SCALING_FACTOR, familiesFor, isFamily,
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
  /** Write config.json beside the model; defaults to true when `out` is named model.onnx. */
  writeConfig?: boolean;
  onProgress?: (done: number, total: number) => void;
}

export interface ConvertResult {
  /** The KL VAE's shape (ch, chMult, numResBlocks) is added for KL decoders only. */
  config: ModelConfig & { ch?: number; chMult?: number[]; numResBlocks?: number };
  /** The architecture found in the weights, in words. */
  architecture: string;
  /** What the --fp16 guard measured (only with fp16). */
  fp16Check?: Fp16Report;
  seconds: number;
  bytes: number;
}

/** The decoder found in a checkpoint, either architecture, behind one interface. */
interface DecoderSource {
  kind: FamilyKind;
  latentChannels: number;
  architecture: string;
  shape: Pick<ConvertResult['config'], 'ch' | 'chMult' | 'numResBlocks'>;
  weights: Pick<VaeWeights, 'check' | 'read' | 'close'>;
  build(type: ElemType): DecoderGraph;
  /** In words, for the model's doc string. */
  title: string;
  /** Extra metadata_props (the Wan step graph's cache slots). */
  metadata?: Record<string, string>;
}

const KIND_TITLES: Record<FamilyKind, string> = { kl: 'SD-family VAE', taesd: 'TAESD', wan: 'Wan 2.1 VAE streaming (one latent frame per run)' };

async function openDecoder(path: string): Promise<DecoderSource> {
  const file = await SafetensorsFile.open(path);
  if (detectWan(new Set(file.keys()))) {
    const w = await WanWeights.fromFile(file);
    const built = buildWanStepGraph(w.config);
    return {
      kind: 'wan',
      latentChannels: w.config.latentChannels,
      architecture: `Wan 2.1 VAE (${w.layout} layout), mid ${w.config.midChannels} ch, out ${w.config.outChannels} ch, ${built.slots.length} cache slots`,
      shape: {},
      weights: w,
      build: (type) => (type === 'float32' ? built : buildWanStepGraph(w.config, type)),
      title: KIND_TITLES.wan,
      metadata: { feat_cache: JSON.stringify(built.slots) },
    };
  }
  if (detectTaesd(new Set(file.keys()))) {
    const w = await TaesdWeights.fromFile(file);
    return {
      kind: 'taesd',
      latentChannels: w.config.latentChannels,
      architecture: `TAESD (${w.layout} layout), ${w.config.ch} ch`,
      shape: {},
      weights: w,
      build: (type) => buildTaesdGraph(w.config, type),
      title: KIND_TITLES.taesd,
    };
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
    title: KIND_TITLES.kl,
  };
}

export async function convertCheckpoint(opts: ConvertOptions): Promise<ConvertResult> {
  const started = performance.now();
  const inRepoFolder = basename(opts.out) === MODEL_FILE;
  const src = await openDecoder(opts.weights);
  try {
    const factors = resolveFactors(src, opts);
    const precision: Precision = opts.fp16 ? 'fp16' : 'fp32';
    const config: ModelConfig = {
      name: opts.name ?? (inRepoFolder ? basename(dirname(opts.out)) : basename(opts.out).replace(/\.onnx$/i, '')),
      latentChannels: src.latentChannels,
      scalingFactor: factors.scalingFactor,
      shiftFactor: factors.shiftFactor,
      precision,
      source: opts.source ?? basename(opts.weights),
      ...(factors.family ? { family: factors.family } : {}),
      ...(src.kind === 'wan' ? channelNormalization(src.latentChannels, opts) : {}),
    };
    const type = opts.fp16 ? 'float16' : 'float32';
    const { graph, weights: refs } = src.build(type);
    for (const ref of refs) src.weights.check(ref.name, ref.shape); // fail before writing anything
    const model = graph.model({
      doc: `${src.title} decoder (${precision}) converted from ${config.source} by latent-decoder`,
      metadata: {
        name: config.name,
        scaling_factor: String(config.scalingFactor),
        shift_factor: String(config.shiftFactor),
        latent_channels: String(config.latentChannels),
        precision,
        source: config.source,
        ...(config.family ? { family: config.family } : {}),
        ...(config.latentsMean ? { latents_mean: JSON.stringify(config.latentsMean), latents_std: JSON.stringify(config.latentsStd) } : {}),
        ...src.metadata,
      },
    });
    await mkdir(dirname(opts.out), { recursive: true });
    // written under a temporary name so a model repository never sees a half-written model, nor
    // a float16 one the guard refuses
    const partial = `${opts.out}.partial`;
    let bytes: number;
    let fp16Check: Fp16Report | undefined;
    try {
      bytes = await writeModelFile(partial, model, refs.map((r) => ({
        name: r.name,
        type,
        dims: r.dims,
        load: () => src.weights.read(r.name, type),
      })), opts.onProgress);
      // the guard probes 4-D image decoders; the Wan graph keeps its norms and scores in float32
      if (opts.fp16 && src.kind !== 'wan') {
        fp16Check = await checkFp16({
          graph, weights: refs, fp16Model: partial, probePath: `${opts.out}.fp16-probe.partial`,
          readFloat32: (name) => src.weights.read(name, 'float32') as Promise<Float32Array>,
          latentChannels: config.latentChannels, scalingFactor: config.scalingFactor, shiftFactor: config.shiftFactor,
        });
      }
      await rename(partial, opts.out);
    } catch (err) {
      await rm(partial, { force: true });
      throw err;
    }
    if (opts.writeConfig ?? inRepoFolder) {
      await writeFile(join(dirname(opts.out), CONFIG_FILE), `${JSON.stringify(config, null, 2)}\n`);
    }
    return {
      config: { ...config, ...src.shape },
      architecture: src.architecture,
      ...(fp16Check ? { fp16Check } : {}),
      seconds: (performance.now() - started) / 1000,
      bytes,
    };
  } finally {
    await src.weights.close();
  }
}

const describe = (kind: FamilyKind, channels: number) => `${channels}-channel ${{ kl: 'KL VAE', taesd: 'TAESD', wan: 'Wan VAE' }[kind]} decoder`;

/**
 * The factors and family: explicit factors win; then --family; then what the weights make
 * certain. A family is recorded only when told or when the weights fit exactly one; factors are
 * inferred when every family that fits shares them (the whole TAESD family: 1 and 0), and a
 * 4-channel KL VAE keeps the SD 1.x/2.x default it always had.
 */
function resolveFactors(src: DecoderSource, opts: ConvertOptions): { scalingFactor: number; shiftFactor: number; family?: Family } {
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
