// What a model repository folder holds and what the server assumes when a model does not say:
// the file names, the config.json type that `convert` writes, and the default latent factors.
// Shared by the serving side and the conversion toolkit; imports nothing.

export const MODEL_FILE = 'model.onnx';
export const CONFIG_FILE = 'config.json';
/** The encoder (image → latents) beside the decoder in a model folder, when the weights held one. */
export const ENCODER_FILE = 'encoder.onnx';

export type Precision = 'fp32' | 'fp16';

/** What config.json in a model repository folder holds. */
export interface ModelConfig {
  name: string;
  latentChannels: number;
  scalingFactor: number;
  shiftFactor: number;
  precision: Precision;
  source: string;
  /** The model family (see FAMILIES), when the converter was told it or could be certain of it. */
  family?: Family;
  /**
   * Per-channel statistics of the denoiser's space, replacing scalingFactor/shiftFactor's shift
   * (FLUX.2: its BatchNorm's running_mean and sqrt(running_var + batch_norm_eps), over channels
   * patchified 2×2: latentChannels × patchSize² values each; Wan: latentChannels values, decoder
   * input = latents · latentsStd + latentsMean). See latents/normalize.ts.
   */
  latentsMean?: number[];
  latentsStd?: number[];
  patchSize?: number;
  /** FLUX.2: the BatchNorm epsilon latentsStd was computed with (sqrt(running_var + eps)). */
  batchNormEps?: number;
}

/** A repository folder's config.json or a MODEL_PATH sidecar, as read: every field optional. */
export type ModelConfigFile = Partial<ModelConfig>;

export type FamilyKind = 'kl' | 'taesd' | 'wan';

export interface FamilySpec {
  /** The latent channels the family's decoder takes. */
  latentChannels: number;
  /** 'kl': the AutoencoderKL decoder; 'taesd': the tiny TAESD decoder. */
  kind: FamilyKind;
  /** decoder input = latents / scalingFactor + shiftFactor */
  scalingFactor: number;
  shiftFactor: number;
}

/**
 * The model families a VAE decoder is converted for, with the latent factors of their pipelines.
 * TAESD decoders take latents as the diffusion model produces them (factor 1, shift 0): the
 * scaling is trained into them.
 */
export const FAMILIES = {
  sd1: { latentChannels: 4, kind: 'kl', scalingFactor: 0.18215, shiftFactor: 0 },
  sd2: { latentChannels: 4, kind: 'kl', scalingFactor: 0.18215, shiftFactor: 0 },
  sdxl: { latentChannels: 4, kind: 'kl', scalingFactor: 0.13025, shiftFactor: 0 },
  sd3: { latentChannels: 16, kind: 'kl', scalingFactor: 1.5305, shiftFactor: 0.0609 },
  flux: { latentChannels: 16, kind: 'kl', scalingFactor: 0.3611, shiftFactor: 0.1159 },
  // FLUX.2: no factor; its space is 2×2-patchified and normalised per channel by the VAE's BatchNorm statistics
  flux2: { latentChannels: 32, kind: 'kl', scalingFactor: 1, shiftFactor: 0 },
  taesd: { latentChannels: 4, kind: 'taesd', scalingFactor: 1, shiftFactor: 0 },
  taesdxl: { latentChannels: 4, kind: 'taesd', scalingFactor: 1, shiftFactor: 0 },
  taesd3: { latentChannels: 16, kind: 'taesd', scalingFactor: 1, shiftFactor: 0 },
  taef1: { latentChannels: 16, kind: 'taesd', scalingFactor: 1, shiftFactor: 0 },
  // the Wan 2.1 VAE (video); per-channel latents_mean/latents_std instead of a factor
  'wan2.1': { latentChannels: 16, kind: 'wan', scalingFactor: 1, shiftFactor: 0 },
  'qwen-image': { latentChannels: 16, kind: 'wan', scalingFactor: 1, shiftFactor: 0 },
} as const satisfies Record<string, FamilySpec>;

export type Family = keyof typeof FAMILIES;
export const FAMILY_NAMES = Object.keys(FAMILIES) as Family[];

export function isFamily(name: unknown): name is Family {
  return typeof name === 'string' && Object.hasOwn(FAMILIES, name);
}

/** The families of one decoder kind and channel count, e.g. for an error that lists the choices. */
export function familiesFor(kind: FamilyKind, latentChannels: number): Family[] {
  return FAMILY_NAMES.filter((f) => FAMILIES[f].kind === kind && FAMILIES[f].latentChannels === latentChannels);
}

/** SD 1.x/2.x; SDXL's VAE has the same shapes but 0.13025, which no weight reveals. */
export const SD_SCALING_FACTOR = 0.18215;

/**
 * Scaling defaults when neither config.json nor the ONNX metadata say: SD 1.x/2.x for 4 channels,
 * SD3 for 16 (FLUX shares its shapes and needs its own factors in a config).
 */
export function defaultFactors(channels: number): { scalingFactor: number; shiftFactor: number; guessed: boolean } {
  if (channels === 16) return { scalingFactor: 1.5305, shiftFactor: 0.0609, guessed: true };
  return { scalingFactor: SD_SCALING_FACTOR, shiftFactor: 0, guessed: channels !== 4 };
}
