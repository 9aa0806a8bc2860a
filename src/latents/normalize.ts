// How latents in the diffusion model's space relate to the VAE's: one scaling factor and shift
// (SD, SDXL, SD3, FLUX: denoiser = (vae − shift) × scaling), or per-channel statistics over
// 2×2-patchified latents (FLUX.2: denoiser = (patchify(vae) − mean[k]) / std[k], std =
// sqrt(running_var + batch_norm_eps) of the VAE's BatchNorm; video VAEs use the same form
// without the patches). Imports nothing from the service: the decode and encode paths share it.

export interface ChannelStats {
  /** Per denoiser channel (latent channels × patch²). */
  mean: Float32Array;
  /** Per denoiser channel; every value > 0. */
  std: Float32Array;
  /** Side of the square patches folded into channels (FLUX.2: 2; channel c·p² + dy·p + dx). */
  patch: number;
}

/** What config.json (or the ONNX metadata, JSON-encoded) states for per-channel statistics. */
export interface ChannelStatsConfig {
  latentsMean?: number[];
  latentsStd?: number[];
  patchSize?: number;
}

/**
 * The statistics a model states, or undefined. Throws naming the field when the vectors do not
 * fit `latentChannels` × patch² or a std is not positive.
 */
export function channelStats(cfg: ChannelStatsConfig, latentChannels: number, where: string): ChannelStats | undefined {
  if (cfg.latentsMean === undefined && cfg.latentsStd === undefined) return undefined;
  const patch = cfg.patchSize ?? 1;
  if (!Number.isInteger(patch) || patch < 1) throw new Error(`${where}: patchSize must be a positive integer, got ${JSON.stringify(cfg.patchSize)}`);
  const k = latentChannels * patch * patch;
  const vec = (name: string, v: number[] | undefined, def: number): Float32Array => {
    if (v === undefined) return new Float32Array(k).fill(def);
    if (!Array.isArray(v) || v.length !== k || v.some((x) => typeof x !== 'number' || !Number.isFinite(x))) {
      throw new Error(`${where}: ${name} must be ${k} finite numbers (${latentChannels} latent channels × ${patch}² patch), got ${Array.isArray(v) ? `${v.length} values` : JSON.stringify(v)}`);
    }
    return Float32Array.from(v);
  };
  const std = vec('latentsStd', cfg.latentsStd, 1);
  if (std.some((s) => !(s > 0))) throw new Error(`${where}: every latentsStd value must be positive`);
  return { mean: vec('latentsMean', cfg.latentsMean, 0), std, patch };
}

/** FLUX.2's statistics from its BatchNorm: std = sqrt(running_var + eps), in float32 as torch computes it. */
export function batchNormStats(runningMean: Float32Array, runningVar: Float32Array, eps: number): { latentsMean: number[]; latentsStd: number[] } {
  return {
    latentsMean: Array.from(runningMean),
    latentsStd: Array.from(runningVar, (v) => Math.fround(Math.sqrt(Math.fround(v + Math.fround(eps))))),
  };
}
