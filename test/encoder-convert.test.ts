// Encoder conversion against diffusers' own results (test/fixtures/encode/README.md): the KL
// encoder in the LDM and diffusers layouts (posterior mean and std) and the TAESD encoder in both
// published layouts, with the README's tolerances.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { convertCheckpoint } from '../src/convert/convert.js';
import { encodeFixture, imageTensor, maxAbs, npy, runEncoder } from './helpers/encode-fixtures.js';
import { modelMetadata, rewriteCheckpoint, tempDir } from './helpers/convert-fixtures.js';

const MEAN_TOLERANCE = 0.002;
const STD_TOLERANCE = 0.0002;
const TAESD_TOLERANCE = 0.0001;

test('a full LDM checkpoint converts to decoder and encoder in one folder; the encoder matches diffusers\' posterior mean and std', async (t) => {
  const dir = tempDir(t);
  const out = join(dir, 'sd', 'model.onnx');
  const r = await convertCheckpoint({ weights: encodeFixture('sd-ldm.safetensors'), out });
  assert.ok(existsSync(out));
  assert.equal(r.encoder?.path, join(dir, 'sd', 'encoder.onnx'));
  assert.match(r.encoder.architecture, /KL encoder ch 32 × \[1, 2, 4, 4\], 2 res blocks/);
  assert.equal((await modelMetadata(r.encoder.path)).direction, 'encode');
  assert.equal((JSON.parse(await readFile(join(dir, 'sd', 'config.json'), 'utf8')) as { latentChannels: number }).latentChannels, 4);
  for (const size of ['64x64', '96x64']) {
    const out = await runEncoder(r.encoder.path, await imageTensor(`image-${size}.png`));
    const mean = maxAbs(out.latent_mean!, await npy(`sd-${size}-mean.npy`));
    const std = maxAbs(out.latent_std!, await npy(`sd-${size}-std.npy`));
    t.diagnostic(`${size}: mean max |Δ| ${mean.toExponential(2)}, std ${std.toExponential(2)}`);
    assert.ok(mean <= MEAN_TOLERANCE, `mean differs by ${mean}`);
    assert.ok(std <= STD_TOLERANCE, `std differs by ${std}`);
  }
});

test('an encoder-only diffusers checkpoint converts to an encode-only model folder', async (t) => {
  const dir = tempDir(t);
  const out = join(dir, 'sd-enc', 'model.onnx');
  const r = await convertCheckpoint({ weights: encodeFixture('sd-diffusers-encoder.safetensors'), out });
  assert.equal(r.encoderOnly, true);
  assert.equal(existsSync(out), false, 'no decoder is written');
  const enc = await runEncoder(r.encoder!.path, await imageTensor('image-96x64.png'));
  const mean = maxAbs(enc.latent_mean!, await npy('sd-96x64-mean.npy'));
  t.diagnostic(`diffusers layout: mean max |Δ| ${mean.toExponential(2)}`);
  assert.ok(mean <= MEAN_TOLERANCE, `mean differs by ${mean}`);
});

for (const [file, layout] of [['taesd-encoder-original.safetensors', 'original'], ['taesd-diffusers.safetensors', 'diffusers']] as const) {
  test(`the TAESD encoder (${layout} layout, stray decoder keys ignored) converts to an encode-only model matching AutoencoderTiny.encode`, async (t) => {
    const dir = tempDir(t);
    const out = join(dir, 'taesd', 'model.onnx');
    const r = await convertCheckpoint({ weights: encodeFixture(file), out });
    assert.equal(r.architecture, `TAESD encoder (${layout} layout), 64 ch`);
    assert.deepEqual([r.encoderOnly, r.config.scalingFactor, r.config.shiftFactor], [true, 1, 0]);
    for (const size of ['64x64', '96x64']) {
      const enc = await runEncoder(r.encoder!.path, await imageTensor(`image-${size}.png`));
      assert.equal(enc.latent_std, undefined, 'TAESD is deterministic');
      const d = maxAbs(enc.latent_mean!, await npy(`taesd-${size}-latents.npy`));
      t.diagnostic(`${size}: max |Δ| ${d.toExponential(2)}`);
      assert.ok(d <= TAESD_TOLERANCE, `latents differ by ${d}`);
    }
  });
}

test('a KL encoder without quant_conv (FLUX.1\'s layout) converts: its posterior comes straight from conv_out', async (t) => {
  const dir = tempDir(t);
  const weights = await rewriteCheckpoint(encodeFixture('sd-diffusers-encoder.safetensors'), join(dir, 'no-quant.safetensors'),
    (ts) => ts.filter((x) => !x.name.startsWith('quant_conv.')));
  const r = await convertCheckpoint({ weights, out: join(dir, 'noq', 'model.onnx') });
  assert.match(r.encoder!.architecture, /no quant_conv/);
  const out = await runEncoder(r.encoder!.path, await imageTensor('image-64x64.png'));
  assert.equal(out.latent_mean!.length, 4 * 8 * 8);
  // without quant_conv's ×15 mean rows the latents are those of conv_out: far from the reference
  assert.ok(maxAbs(out.latent_mean!, await npy('sd-64x64-mean.npy')) > 0.5);
});
