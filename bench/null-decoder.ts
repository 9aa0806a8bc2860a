// The null decoder: an ONNX model with a decoder's interface (latent_sample [N, 4, h, w] →
// sample [N, 3, 8h, 8w], float32 in [−1, 1]) whose "decoding" is an Expand of one stored image,
// so that a service running it spends its CPU on everything but the model: parsing, queueing, the
// in-graph postprocess, copies, encoding, HTTP. The stored image is smooth with a little seeded
// noise, so that PNG/JPEG/WebP work as on a decoded picture rather than on a flat one. Only the
// latent size it was built for is valid (any batch size is).
import { writeFileSync } from 'node:fs';
import { GraphBuilder, attr, encodeModel } from '../src/onnx/graph.js';
import { mulberry32 } from '../test/helpers/shared.js';

/** Builds the null decoder for `side`×`side` latents (8·side px images) and writes it to `out`. */
export function writeNullDecoder(out: string, side = 64): void {
  const px = side * 8;
  const rand = mulberry32(17);
  const img = new Float32Array(3 * px * px);
  for (let c = 0; c < 3; c++) {
    for (let y = 0; y < px; y++) {
      for (let x = 0; x < px; x++) {
        const v = 0.6 * Math.sin(x / (23 + 7 * c) + c) * Math.cos(y / (31 - 5 * c)) + 0.25 * Math.sin((x + y) / 97) + 0.04 * (rand() - 0.5);
        img[(c * px + y) * px + x] = Math.max(-1, Math.min(1, v));
      }
    }
  }
  const g = new GraphBuilder('null_decoder');
  const x = g.input('latent_sample', 'float32', ['batch', 4, side, side]);
  const picture = g.constant('picture', 'float32', [1, 3, px, px], img);
  const batch = g.node('Slice', [g.node('Shape', [x]), g.ints('b0', [0]), g.ints('b1', [1])]);
  const shape = g.node('Concat', [batch, g.ints('chw', [3, px, px])], { axis: attr.i(0) });
  g.node('Expand', [picture, shape], {}, 'sample');
  g.output('sample', 'float32', ['batch', 3, px, px]);
  writeFileSync(out, encodeModel(g.model({ doc: 'null decoder: one stored image per sample (benchmark of the CPU side)', metadata: { name: 'null-decoder', scaling_factor: '1', shift_factor: '0' } })));
}
