// The Wan 2.1 VAE's per-channel latent normalisation: the denoiser works on (z − mean) / std and
// the pipeline de-normalises with `latents / (1 / std) + mean` before `vae.decode` (diffusers'
// pipelines/wan/pipeline_wan.py and pipelines/qwenimage/pipeline_qwenimage.py). Imports nothing.

/** Wan 2.1's `latents_mean` (AutoencoderKLWan's defaults; Qwen-Image's vae/config.json holds the same). */
export const WAN21_LATENTS_MEAN: readonly number[] = [
  -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
  0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
];

/** Wan 2.1's `latents_std`. */
export const WAN21_LATENTS_STD: readonly number[] = [
  2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
  3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.916,
];

export interface ChannelNormalization {
  /** [C]: decoder input = latents · std + mean, per channel. */
  latentsMean: readonly number[];
  latentsStd: readonly number[];
}

/**
 * Per channel, the float32 (scale, shift) with which diffusers' `latents / (1 / std) + mean` is
 * computed: `x / scale[c] + shift[c]`, scale being float32(1 / std) as the pipeline's tensor holds it.
 */
export function channelFactors(n: ChannelNormalization): { scale: Float32Array; shift: Float32Array } {
  return {
    scale: Float32Array.from(n.latentsStd, (s) => Math.fround(1 / Math.fround(s))),
    shift: Float32Array.from(n.latentsMean),
  };
}
