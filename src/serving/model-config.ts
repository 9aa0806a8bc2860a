// What a model repository folder holds and what the server assumes when a model does not say:
// the file names, the config.json type that `convert` writes, and the default latent factors.
// Shared by the serving side and the conversion toolkit; imports nothing.

export const MODEL_FILE = 'model.onnx';
export const CONFIG_FILE = 'config.json';

export type Precision = 'fp32' | 'fp16';

/** What config.json in a model repository folder holds. */
export interface ModelConfig {
  name: string;
  latentChannels: number;
  scalingFactor: number;
  shiftFactor: number;
  precision: Precision;
  source: string;
}

/** A repository folder's config.json or a MODEL_PATH sidecar, as read: every field optional. */
export type ModelConfigFile = Partial<ModelConfig>;

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
