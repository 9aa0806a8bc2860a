// The in-graph postprocess against diffusers' formula, value by value: out-of-range values clamp,
// ties round half to even, and any other value lands within one level (float rounding near a tie).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as ort from 'onnxruntime-node';
import { GraphBuilder, encodeModel } from '../src/onnx/graph.js';
import { IMAGE_OUTPUT, NONFINITE_OUTPUT, withPostprocess } from '../src/onnx/postprocess.js';

/** A "decoder" that returns its input: sample = latent, [N, 3, h, w]. */
function identityDecoder(): Uint8Array {
  const g = new GraphBuilder('identity');
  const x = g.input('latent_sample', 'float32', ['batch', 3, 'height', 'width']);
  g.node('Identity', [x], {}, 'sample');
  g.output('sample', 'float32', ['batch', 3, 'height', 'width']);
  return encodeModel(g.model({}));
}

/** numpy's round (half to even) of diffusers' (x / 2 + 0.5).clamp(0, 1) * 255. */
function diffusers(x: number): number {
  const v = Math.min(1, Math.max(0, x / 2 + 0.5)) * 255;
  const r = Math.round(v);
  return Math.abs(v - Math.trunc(v)) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

test('postprocess: uint8 NHWC pixels as diffusers computes them, within one level; non-finite samples flagged', async () => {
  const w = 4096;
  const data = new Float32Array(3 * w);
  for (let i = 0; i < data.length; i++) data[i] = -1.25 + (2.5 * i) / data.length; // −1.25 … 1.25, every level and past both ends
  data[7] = -5;
  data[8] = 5;
  const session = await ort.InferenceSession.create(withPostprocess(identityDecoder()).bytes);
  const out = await session.run({ latent_sample: new ort.Tensor('float32', data, [1, 3, 1, w]) });
  const px = out[IMAGE_OUTPUT]!.data as Uint8Array;
  assert.deepEqual(out[IMAGE_OUTPUT]!.dims, [1, 1, w, 3]);
  let off = 0;
  for (let c = 0; c < 3; c++) {
    for (let x = 0; x < w; x++) {
      const want = diffusers(data[c * w + x]!);
      const got = px[x * 3 + c]!;
      assert.ok(Math.abs(got - want) <= 1, `value ${data[c * w + x]}: ${got} vs ${want}`);
      if (got !== want) off++;
    }
  }
  assert.ok(off < data.length / 1000, `${off} of ${data.length} values one level off`);
  assert.deepEqual([px[7 * 3], px[8 * 3]], [0, 255], 'clamped');
  assert.deepEqual([...(out[NONFINITE_OUTPUT]!.data as Float32Array)], [0]);

  const bad = new Float32Array(2 * 3 * 8);
  bad[3 * 8 + 5] = Infinity;
  const flags = (await session.run({ latent_sample: new ort.Tensor('float32', bad, [2, 3, 1, 8]) }))[NONFINITE_OUTPUT]!.data as Float32Array;
  assert.equal(flags[0], 0);
  assert.ok(Number.isNaN(flags[1]), 'the sample with +Inf is flagged');
  await session.release();
});
