// The TAESD decoder family: both published layouts × 4 and 16 latent channels against the golden
// fixtures (test/fixtures/taesd), and converted models served through the real HTTP service.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { convertCheckpoint } from '../src/convert/convert.js';
import { readNpy } from '../src/tensor/npy.js';
import { REPO_ROOT, modelMetadata, runDecoder, tempDir } from './helpers/convert-fixtures.js';
import { bytesOf, maxAbsDiff, pixels, startService } from './helpers/service.js';

const TOLERANCE = 1e-4; // float32 against reference.npy
const MIN_FP16_PSNR = 40;
const taesd = (file: string): string => join(REPO_ROOT, 'test', 'fixtures', 'taesd', file);

async function load(channels: 4 | 16) {
  const latents = await readNpy(taesd(`taesd${channels}-latents.npy`));
  return {
    latents: latents.data as Float32Array,
    shape: latents.shape,
    reference: (await readNpy(taesd(`taesd${channels}-reference.npy`))).data as Float32Array,
    rgb: (await readNpy(taesd(`taesd${channels}-reference-rgb.npy`))).data as Uint8Array,
  };
}

async function compare(model: string, channels: 4 | 16): Promise<{ maxAbs: number; psnr: number; dims: readonly number[] }> {
  const f = await load(channels);
  const { data, dims } = await runDecoder(model, f.latents, f.shape);
  let maxAbs = 0;
  let se = 0;
  for (let i = 0; i < data.length; i++) {
    const d = Math.abs(data[i]! - f.reference[i]!);
    if (!(d <= maxAbs)) maxAbs = d; // NaN fails
    se += d * d;
  }
  assert.equal(data.length, f.reference.length);
  return { maxAbs, psnr: 10 * Math.log10(4 / (se / data.length)), dims };
}

for (const channels of [4, 16] as const) {
  for (const layout of ['original', 'diffusers'] as const) {
    test(`TAESD ${channels}-channel ${layout} layout converts, declares factor 1 / shift 0, and matches reference.npy`, async (t) => {
      const dir = tempDir(t);
      const out = join(dir, 'tiny', 'model.onnx');
      const r = await convertCheckpoint({ weights: taesd(`taesd${channels}-${layout}.safetensors`), out });
      assert.equal(r.architecture, `TAESD (${layout} layout), 64 ch`);
      // taesd vs taesdxl (and taesd3 vs taef1) share their weights' shapes: no family is recorded
      const config = { name: 'tiny', latentChannels: channels, scalingFactor: 1, shiftFactor: 0, precision: 'fp32', source: `taesd${channels}-${layout}.safetensors` };
      assert.deepEqual({ ...r.config }, config);
      assert.deepEqual(JSON.parse(await readFile(join(dir, 'tiny', 'config.json'), 'utf8')), config);
      assert.deepEqual(await modelMetadata(out), {
        name: 'tiny', scaling_factor: '1', shift_factor: '0', latent_channels: String(channels), precision: 'fp32', source: config.source,
      });
      const { maxAbs, dims } = await compare(out, channels);
      t.diagnostic(`max abs error ${maxAbs.toExponential(2)}`);
      assert.deepEqual(dims, [2, 3, 128, 128]);
      assert.ok(maxAbs <= TOLERANCE, `max abs error ${maxAbs}`);
    });
  }
}

test('TAESD --family names the member (recorded in config.json and metadata); a family of another architecture or channel count is refused', async (t) => {
  const dir = tempDir(t);
  const out = join(dir, 'taef1', 'model.onnx');
  const r = await convertCheckpoint({ weights: taesd('taesd16-diffusers.safetensors'), out, family: 'taef1' });
  assert.deepEqual([r.config.family, r.config.scalingFactor, r.config.shiftFactor], ['taef1', 1, 0]);
  assert.equal((JSON.parse(await readFile(join(dir, 'taef1', 'config.json'), 'utf8')) as { family: string }).family, 'taef1');
  assert.equal((await modelMetadata(out)).family, 'taef1');
  await assert.rejects(convertCheckpoint({ weights: taesd('taesd16-original.safetensors'), out: join(dir, 'a.onnx'), family: 'taesdxl' }),
    /family taesdxl takes a 4-channel TAESD decoder, but the weights hold a 16-channel TAESD decoder; choose one of taesd3, taef1/);
  await assert.rejects(convertCheckpoint({ weights: taesd('taesd4-original.safetensors'), out: join(dir, 'b.onnx'), family: 'sdxl' }),
    /family sdxl takes a 4-channel KL VAE decoder, but the weights hold a 4-channel TAESD decoder; choose one of taesd, taesdxl/);
});

test('TAESD --fp16 passes the guard and stays within 40 dB PSNR of reference.npy', async (t) => {
  const dir = tempDir(t);
  const out = join(dir, 'fp16.onnx');
  const r = await convertCheckpoint({ weights: taesd('taesd4-original.safetensors'), out, fp16: true });
  assert.equal(r.config.precision, 'fp16');
  const g = r.fp16Check!;
  t.diagnostic(`guard: max activation ${g.maxActivation.toExponential(2)} at ${g.at}, PSNR ${g.psnr.toFixed(1)} dB, ${g.seconds.toFixed(2)} s of ${r.seconds.toFixed(2)} s`);
  const { psnr } = await compare(out, 4);
  t.diagnostic(`fp16 PSNR ${psnr.toFixed(1)} dB against reference.npy`);
  assert.ok(psnr >= MIN_FP16_PSNR, `PSNR ${psnr} dB`);
});

test('served TAESD models (4 and 16 channels, MODEL_PATH) report their family, use factor 1 with no request factors and match reference-rgb', async (t) => {
  const dir = tempDir(t);
  for (const channels of [4, 16] as const) {
    const out = join(dir, `taesd${channels}`, 'model.onnx');
    const family = channels === 16 ? 'taef1' : undefined; // MODEL_PATH reads it from the ONNX metadata
    await convertCheckpoint({ weights: taesd(`taesd${channels}-diffusers.safetensors`), out, family });
    const { app, registry } = await startService(t, { MODEL_PATH: out });
    const model = registry.get(undefined)!;
    assert.deepEqual([model.scalingFactor, model.shiftFactor, model.factorsGuessed, model.channels, model.family], [1, 0, false, channels, family]);
    const f = await load(channels);
    const res = await app.inject({
      method: 'POST', url: `/decode?shape=2,${channels},16,16&format=png`,
      headers: { 'content-type': 'application/octet-stream' }, payload: bytesOf(f.latents),
    });
    assert.equal(res.statusCode, 200, res.body);
    const body = res.json<{ images: { data: string }[] }>();
    assert.equal(body.images.length, 2);
    const plane = 128 * 128 * 3;
    for (let i = 0; i < 2; i++) {
      const img = await pixels(Buffer.from(body.images[i]!.data, 'base64'));
      assert.deepEqual([img.width, img.height, img.channels], [128, 128, 3]);
      const diff = maxAbsDiff(img.data, f.rgb.subarray(i * plane, (i + 1) * plane));
      t.diagnostic(`${channels} channels, sample ${i}: max ${diff} level(s) from reference-rgb`);
      assert.ok(diff <= 1, `${channels} channels, sample ${i} differs by ${diff} levels`);
    }
  }
});
