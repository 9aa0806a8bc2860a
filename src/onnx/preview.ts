// The built-in preview decoder: the well-known linear latent→RGB approximation for SD 1.x
// (factors as published in ComfyUI's latent formats) followed by a bilinear 8× resize. It takes
// the same decoder-space input as the real VAE decoder, so the service treats it like any other
// model. It is an approximation for previews and smoke tests, not the VAE.
import { GraphBuilder, attr, encodeModel } from './graph.js';

export const PREVIEW_MODEL_NAME = 'sd15-preview';
export const PREVIEW_SCALING_FACTOR = 0.18215;

/** Rows: latent channels; columns: R, G, B. */
export const SD15_LATENT_RGB_FACTORS: readonly (readonly [number, number, number])[] = [
  [0.3512, 0.2297, 0.3227],
  [0.325, 0.4974, 0.235],
  [-0.2829, 0.1762, 0.2721],
  [-0.212, -0.2616, -0.7177],
];

export function buildPreviewDecoder(): Uint8Array {
  const g = new GraphBuilder('sd15_linear_preview');
  const x = g.input('latent_sample', 'float32', ['batch', 4, 'height', 'width']);
  // rgb = F^T · (0.18215 · z): a 1×1 convolution whose weight [3, 4, 1, 1] is 0.18215 · F^T.
  const weight = new Float32Array(3 * 4);
  for (let c = 0; c < 4; c++) {
    for (let o = 0; o < 3; o++) weight[o * 4 + c] = PREVIEW_SCALING_FACTOR * SD15_LATENT_RGB_FACTORS[c]![o]!;
  }
  const w = g.constant('rgb_factors', 'float32', [3, 4, 1, 1], weight);
  const rgb = g.node('Conv', [x, w], { kernel_shape: attr.ints([1, 1]) });
  const scales = g.constant('scales', 'float32', [4], new Float32Array([1, 1, 8, 8]));
  g.node('Resize', [rgb, '', scales], {
    mode: attr.s('linear'),
    coordinate_transformation_mode: attr.s('half_pixel'),
  }, 'sample');
  g.output('sample', 'float32', ['batch', 3, 'height_out', 'width_out']);
  return encodeModel(g.model({
    doc: 'Linear latent-to-RGB approximation of the SD 1.x VAE decoder with bilinear 8x upsampling (preview quality).',
    metadata: { name: PREVIEW_MODEL_NAME, scaling_factor: String(PREVIEW_SCALING_FACTOR), shift_factor: '0' },
  }));
}
