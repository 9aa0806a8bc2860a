// Per-channel statistics both ways, pure: /encode's writer (patchify, (z − mean) / std, order) and
// /decode's de-normalisation (x · std + mean, unpatchify) are inverses for FLUX.2's 2×2 patches and
// for unpatched statistics (the video VAEs' form), in every wire order.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeLatents } from '../src/encoding/latents-out.js';
import { denormalizeToDecoderSpace } from '../src/latents/denormalize.js';
import { channelStats } from '../src/latents/normalize.js';
import { parseOptions } from '../src/latents/options.js';
import type { LatentPlan } from '../src/latents/parse.js';
import { gaussian, mulberry32 } from '../src/tensor/random.js';
import { maxAbs } from './helpers/encode-fixtures.js';

const [n, c, h, w] = [2, 3, 4, 6];
const normal = gaussian(mulberry32(5));
const z = Float32Array.from({ length: n * c * h * w }, () => 3 * normal());

for (const patch of [1, 2]) {
  const k = c * patch * patch;
  const stats = channelStats({
    latentsMean: Array.from({ length: k }, (_, i) => i / 3 - 1),
    latentsStd: Array.from({ length: k }, (_, i) => 0.5 + i / 7),
    patchSize: patch,
  }, c, 'test')!;
  for (const order of ['nchw', 'nhwc', ...(patch === 2 ? ['packed'] as const : [])] as const) {
    test(`statistics over ${patch}×${patch} patches, ${order}: encode's writer and decode's de-normalisation are inverses`, async () => {
      const out = writeLatents(z, undefined, [n, c, h, w], { scale: 1, shift: 0, stats, order, dtype: 'float32' }, 'test');
      const [ph, pw] = [h / patch, w / patch];
      assert.deepEqual(out.shape, order === 'packed' ? [n, ph * pw, k] : order === 'nhwc' ? [n, ph, pw, k] : [n, k, ph, pw]);
      const plan: LatentPlan = {
        options: parseOptions({}), dtype: 'float32', wireShape: out.shape, shape: [n, c, h, w], scale: 1, shift: 0, stats,
        order: patch === 2 && order === 'nchw' ? 'patched' : order,
      };
      const back = await denormalizeToDecoderSpace({ ...plan, stats }, out.bytes, 1e4);
      assert.ok(maxAbs(back.data, z) < 1e-5, `round trip differs by ${maxAbs(back.data, z)}`);
      // one value by hand: channel 1, pixel (3, 5) → patchified channel 1·p² + (3 % p)·p + 5 % p at (3/p, 5/p)
      const kk = (1 * patch + (3 % patch)) * patch + (5 % patch);
      const want = Math.fround((z[(1 * h + 3) * w + 5]! - stats.mean[kk]!) / stats.std[kk]!);
      const v = new Float32Array(out.bytes.buffer, out.bytes.byteOffset, out.bytes.byteLength / 4);
      const [py, px] = [Math.floor(3 / patch), Math.floor(5 / patch)];
      const at = order === 'nchw' ? (kk * ph + py) * pw + px : (py * pw + px) * k + kk;
      assert.ok(Math.abs(v[at]! - want) < 1e-6);
    });
  }
}

test('statistics that do not fit the channels are refused naming the field', () => {
  assert.throws(() => channelStats({ latentsMean: [0, 0], patchSize: 2 }, 32, 'config.json'), /config\.json: latentsMean must be 128 finite numbers \(32 latent channels × 2² patch\), got 2 values/);
  assert.throws(() => channelStats({ latentsStd: [1, 0, 1] }, 3, 'x'), /every latentsStd value must be positive/);
});
