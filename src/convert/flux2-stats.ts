// FLUX.2's VAE (diffusers AutoencoderKLFlux2) keeps the statistics of its denoiser's latent space
// in a BatchNorm2d(128, affine=False) over the 2×2-patchified latents: Flux2Pipeline normalises
// with them ((z − running_mean) / sqrt(running_var + batch_norm_eps)) and the model's own
// encode/decode never apply them. The converter keeps them in the model's config as per-channel
// statistics (latents/normalize.ts), so /decode and /encode work in the denoiser's space.
import { batchNormStats } from '../latents/normalize.js';
import { SafetensorsFile } from './safetensors.js';

/** diffusers' AutoencoderKLFlux2 default; its config.json states it as batch_norm_eps. */
export const FLUX2_BATCH_NORM_EPS = 1e-4;

const PREFIXES = ['', 'vae.', 'first_stage_model.'];

export interface Flux2Stats {
  latentsMean: number[];
  latentsStd: number[];
  patchSize: number;
  batchNormEps: number;
}

/**
 * The BatchNorm statistics in `path`, or undefined when it has none. Throws when running_mean and
 * running_var disagree or their length is not latentChannels × a square patch.
 */
export async function readBatchNormStats(path: string, latentChannels: number, eps = FLUX2_BATCH_NORM_EPS): Promise<Flux2Stats | undefined> {
  const file = await SafetensorsFile.open(path);
  try {
    const prefix = PREFIXES.find((p) => file.info(`${p}bn.running_mean`) && file.info(`${p}bn.running_var`));
    if (prefix === undefined) return undefined;
    const mean = await file.readFloat32(`${prefix}bn.running_mean`);
    const variance = await file.readFloat32(`${prefix}bn.running_var`);
    const patch = Math.round(Math.sqrt(mean.length / latentChannels));
    if (variance.length !== mean.length || patch < 1 || patch * patch * latentChannels !== mean.length) {
      throw new Error(`${path}: bn.running_mean (${mean.length}) and bn.running_var (${variance.length}) must both hold ${latentChannels} latent channels × a square patch`);
    }
    if (!(eps > 0)) throw new Error(`batch_norm_eps must be positive, got ${eps}`);
    return { ...batchNormStats(mean, variance, eps), patchSize: patch, batchNormEps: eps };
  } finally {
    await file.close();
  }
}
