// Checkpoint (.safetensors, any supported key layout) → ONNX VAE decoder. Weights stream from
// the checkpoint into the output file one tensor at a time, so peak memory stays near the size
// of the largest tensor rather than the model or the checkpoint.
import { mkdir, rename, rm, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { writeModelFile } from '../onnx/graph.js';
import { buildDecoderGraph } from './vae-graph.js';
import { VaeWeights } from './vae-weights.js';
import { CONFIG_FILE, MODEL_FILE, SD_SCALING_FACTOR, type ModelConfig, type Precision } from '../serving/model-config.js';

const SD_LATENT_CHANNELS = 4;

export interface ConvertOptions {
  weights: string;
  out: string;
  fp16?: boolean;
  /** Defaults to the folder name when `out` is `<dir>/model.onnx`, else the file name. */
  name?: string;
  /** Required for latents other than 4 channels: SD3 (1.5305) and FLUX (0.3611) share shapes. */
  scalingFactor?: number;
  shiftFactor?: number;
  /** Recorded in the metadata; defaults to the checkpoint's file name. */
  source?: string;
  /** Write config.json beside the model; defaults to true when `out` is named model.onnx. */
  writeConfig?: boolean;
  onProgress?: (done: number, total: number) => void;
}

export interface ConvertResult {
  config: ModelConfig & { ch: number; chMult: number[]; numResBlocks: number };
  seconds: number;
  bytes: number;
}

export async function convertCheckpoint(opts: ConvertOptions): Promise<ConvertResult> {
  const started = performance.now();
  const inRepoFolder = basename(opts.out) === MODEL_FILE;
  const weights = await VaeWeights.open(opts.weights);
  try {
    const cfg = weights.config;
    const scalingFactor = opts.scalingFactor ?? defaultScalingFactor(cfg.latentChannels, opts.weights);
    const precision: Precision = opts.fp16 ? 'fp16' : 'fp32';
    const config: ModelConfig = {
      name: opts.name ?? (inRepoFolder ? basename(dirname(opts.out)) : basename(opts.out).replace(/\.onnx$/i, '')),
      latentChannels: cfg.latentChannels,
      scalingFactor,
      shiftFactor: opts.shiftFactor ?? 0,
      precision,
      source: opts.source ?? basename(opts.weights),
    };
    const type = opts.fp16 ? 'float16' : 'float32';
    const { graph, weights: refs } = buildDecoderGraph(cfg, type);
    for (const ref of refs) weights.check(ref.name, ref.shape); // fail before writing anything
    const model = graph.model({
      doc: `SD-family VAE decoder (${precision}) converted from ${config.source} by latent-decoder`,
      metadata: {
        name: config.name,
        scaling_factor: String(config.scalingFactor),
        shift_factor: String(config.shiftFactor),
        latent_channels: String(config.latentChannels),
        precision,
        source: config.source,
      },
    });
    await mkdir(dirname(opts.out), { recursive: true });
    // written under a temporary name so a model repository never sees a half-written model
    const partial = `${opts.out}.partial`;
    let bytes: number;
    try {
      bytes = await writeModelFile(partial, model, refs.map((r) => ({
        name: r.name,
        type,
        dims: r.dims,
        load: () => weights.read(r.name, type),
      })), opts.onProgress);
      await rename(partial, opts.out);
    } catch (err) {
      await rm(partial, { force: true });
      throw err;
    }
    if (opts.writeConfig ?? inRepoFolder) {
      await writeFile(join(dirname(opts.out), CONFIG_FILE), `${JSON.stringify(config, null, 2)}\n`);
    }
    return {
      config: { ...config, ch: cfg.ch, chMult: cfg.chMult, numResBlocks: cfg.numResBlocks },
      seconds: (performance.now() - started) / 1000,
      bytes,
    };
  } finally {
    await weights.close();
  }
}

function defaultScalingFactor(latentChannels: number, path: string): number {
  if (latentChannels === SD_LATENT_CHANNELS) return SD_SCALING_FACTOR;
  throw new Error(
    `${path}: a ${latentChannels}-channel VAE's scaling factor cannot be inferred from its weights ` +
    '(SD3: 1.5305 with shift 0.0609, FLUX: 0.3611 with shift 0.1159); pass --scaling-factor and --shift-factor',
  );
}
