// A served model's latent factors, from what it states: config.json (or the MODEL_PATH sidecar)
// first, then the ONNX metadata, then the named family's, then a guess from the channel count.
// Shared by the decoder and the encoder of a model, so both directions use the same factors.
import type { ChannelStatsConfig } from '../latents/normalize.js';
import { FAMILIES, defaultFactors, isFamily, type ModelConfigFile } from './model-config.js';

export interface ServedFactors {
  scalingFactor: number;
  shiftFactor: number;
  /** Neither a factor nor a family was stated: the channel count chose them. */
  guessed: boolean;
}

/** The factors a model serves with; see the module comment for the order of precedence. */
export function servedFactors(file: ModelConfigFile, meta: Record<string, string>, channels: number): ServedFactors {
  const defaults = defaultFactors(channels);
  const metaNum = (k: string): number | undefined => (meta[k] !== undefined && Number.isFinite(Number(meta[k])) ? Number(meta[k]) : undefined);
  const scaling = file.scalingFactor ?? metaNum('scaling_factor');
  // a named family (config.json or metadata) stands in for factors the model does not state
  const family = file.family ?? meta.family;
  const preset = isFamily(family) ? FAMILIES[family] : undefined;
  const base = scaling !== undefined ? { scalingFactor: scaling, shiftFactor: 0 } : preset ?? defaults;
  return {
    scalingFactor: base.scalingFactor,
    shiftFactor: file.shiftFactor ?? metaNum('shift_factor') ?? base.shiftFactor,
    guessed: scaling === undefined && !preset && defaults.guessed,
  };
}

/**
 * Per-channel statistics as the model states them: config.json's latentsMean/latentsStd/patchSize,
 * else the ONNX metadata's latents_mean/latents_std (JSON arrays) and patch_size.
 */
export function statsConfig(file: ModelConfigFile, meta: Record<string, string>): ChannelStatsConfig {
  const fromMeta = (k: string): number[] | undefined => {
    if (meta[k] === undefined) return undefined;
    try {
      return JSON.parse(meta[k]) as number[];
    } catch {
      throw new Error(`the ONNX metadata's ${k} is not a JSON array`);
    }
  };
  const patch = meta.patch_size !== undefined ? Number(meta.patch_size) : undefined;
  return {
    latentsMean: file.latentsMean ?? fromMeta('latents_mean'),
    latentsStd: file.latentsStd ?? fromMeta('latents_std'),
    patchSize: file.patchSize ?? patch,
  };
}
