import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import { convertCheckpoint } from '../src/convert/convert.js';
import { CACHE_IN, CACHE_OUT, type CacheSlot } from '../src/convert/wan-graph.js';
import { readNpy } from '../src/tensor/npy.js';
import { modelMetadata } from './helpers/convert-fixtures.js';
import { REPO, tempDir } from './helpers/paths.js';

const WAN = path.join(REPO, 'test', 'fixtures', 'wan');
const wan = (f: string): string => path.join(WAN, f);
const TOLERANCE = 1e-4;

interface CacheTable { frames_per_latent_frame: number[]; slots: { slot: number; conv: string | null; after_frame: (number[] | 'Rep' | null)[] }[] }

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i]! - b[i]!);
    if (!(d <= m)) m = d;
  }
  return m;
}

/** Runs the step graph over the video case frame by frame; checks outputs and cache shapes. */
async function checkSteps(modelPath: string, t: { diagnostic(s: string): void }, tolerance = TOLERANCE): Promise<void> {
  const meta = await modelMetadata(modelPath);
  const slots = JSON.parse(meta.feat_cache!) as CacheSlot[];
  const table = JSON.parse(await readFile(wan('streaming-cache.json'), 'utf8')) as CacheTable;
  // the graph's slots are diffusers' feat_cache slots, in call order
  assert.deepEqual(slots.map((s) => `decoder.${s.conv.replace(/^decoder\./, '')}`), table.slots.filter((s) => s.conv).map((s) => s.conv));
  const latents = await readNpy(wan('video-latents-decoder.npy'));
  const [n, c, frames, h, w] = latents.shape as [number, number, number, number, number];
  const data = latents.data as Float32Array;
  const session = await ort.InferenceSession.create(modelPath);
  try {
    const half = session.inputMetadata.some((m) => m.name === `${CACHE_IN}0` && m.isTensor && m.type === 'float16');
    let cache: Record<string, ort.Tensor> = Object.fromEntries(slots.map((s) => {
      const dims = [n, s.channels, 2, h * s.scale, w * s.scale];
      const size = dims.reduce((a, b) => a * b, 1);
      return [`${CACHE_IN}${s.slot}`, half ? new ort.Tensor('float16', new Uint16Array(size), dims) : new ort.Tensor('float32', new Float32Array(size), dims)];
    }));
    for (let f = 0; f < frames; f++) {
      const frame = new Float32Array(n * c * h * w);
      for (let ch = 0; ch < c; ch++) frame.set(data.subarray((ch * frames + f) * h * w, (ch * frames + f + 1) * h * w), ch * h * w);
      const out = await session.run({ latent_sample: new ort.Tensor('float32', frame, [n, c, 1, h, w]), first_chunk: new ort.Tensor('int64', BigInt64Array.of(f === 0 ? 1n : 0n), [1]), ...cache });
      const ref = await readNpy(wan(`video-step${f}.npy`));
      assert.deepEqual(out.sample!.dims, ref.shape);
      const err = maxAbsDiff(out.sample!.data as Float32Array, ref.data as Float32Array);
      t.diagnostic(`step ${f}: max abs error ${err.toExponential(2)}`);
      assert.ok(err <= tolerance, `step ${f}: max abs error ${err}`);
      assert.deepEqual(out.image!.dims, [n, ref.shape[2], ref.shape[3], ref.shape[4], 3]);
      for (const s of table.slots) {
        if (!s.conv) continue;
        const got = out[`${CACHE_OUT}${s.slot}`]!;
        const want = s.after_frame[f]!;
        // diffusers keeps 1 frame after frame 0 (its conv pads the other with zeros) and "Rep" in
        // the temporal upsamplers; the graph keeps that zero frame, and zeros for "Rep"
        const full = want === 'Rep' ? s.after_frame[1] as number[] : want;
        assert.deepEqual(got.dims, [full[0], full[1], 2, full[3], full[4]], `slot ${s.slot} after frame ${f}`);
        if (f > 0) continue;
        const v = got.data as Float32Array | Uint16Array;
        const plane = full[3]! * full[4]!; // [1, C, 2, H, W]: per channel, the zero frame then frame 0's
        const frame = (k: number): (Float32Array | Uint16Array)[] => Array.from({ length: full[1]! }, (_, ch) => v.subarray((2 * ch + k) * plane, (2 * ch + k + 1) * plane));
        // ±0 (float16 bits 0x0000 or 0x8000: a negative value times the zero mask is −0)
        const zero = (x: number): boolean => (v instanceof Uint16Array ? (x & 0x7fff) === 0 : x === 0);
        assert.ok(frame(0).every((p) => p.every(zero)), `slot ${s.slot}: zero history after frame 0`);
        assert.equal(frame(1).every((p) => p.every(zero)), want === 'Rep', `slot ${s.slot}: frame 0 cached, zeros for Rep`);
      }
      cache = Object.fromEntries(slots.map((s) => [`${CACHE_IN}${s.slot}`, out[`${CACHE_OUT}${s.slot}`]!]));
    }
  } finally {
    await session.release();
  }
}

for (const layout of ['diffusers', 'original'] as const) {
  test(`Wan VAE (${layout} layout) converts to a streaming step graph matching video-step{0,1,2}.npy and the cache table`, async (t) => {
    const dir = tempDir(t);
    const out = path.join(dir, 'wan', 'model.onnx');
    const r = await convertCheckpoint({ weights: wan(`${layout}.safetensors`), out, ...(layout === 'original' ? { family: 'wan2.1' as const } : {}) });
    const config = JSON.parse(await readFile(path.join(dir, 'wan', 'config.json'), 'utf8')) as Record<string, unknown>;
    const fixtureConfig = JSON.parse(await readFile(wan('config.json'), 'utf8')) as { latents_mean: number[]; latents_std: number[] };
    assert.deepEqual(config.latentsMean, fixtureConfig.latents_mean);
    assert.deepEqual(config.latentsStd, fixtureConfig.latents_std);
    assert.equal(config.latentChannels, 16);
    assert.equal(config.family, layout === 'original' ? 'wan2.1' : undefined, 'Wan 2.1 and Qwen-Image share the VAE: the family is recorded only when told');
    assert.match(r.architecture, new RegExp(`Wan 2.1 VAE \\(${layout === 'original' ? 'wan' : 'diffusers'} layout\\)`));
    await checkSteps(out, t);
  });
}

test('Wan VAE --fp16: float16 weights and caches (half the file), steps within 2e-2 of the float32 references', async (t) => {
  const dir = tempDir(t);
  const fp32 = await convertCheckpoint({ weights: wan('diffusers.safetensors'), out: path.join(dir, 'a.onnx') });
  const out = path.join(dir, 'b.onnx');
  const r = await convertCheckpoint({ weights: wan('original.safetensors'), out, fp16: true });
  assert.equal(r.config.precision, 'fp16');
  assert.ok(r.bytes < fp32.bytes * 0.6, `fp16 ${r.bytes} bytes vs fp32 ${fp32.bytes}`);
  // the fixture README: float16 on a CPU is off by up to 8.3e-3 on this case
  await checkSteps(out, t, 2e-2);
});

test('Wan VAE: a KL family is refused with the choices', async (t) => {
  const dir = tempDir(t);
  await assert.rejects(convertCheckpoint({ weights: wan('original.safetensors'), out: path.join(dir, 'b.onnx'), family: 'flux' }),
    /family flux takes a 16-channel KL VAE decoder, but the weights hold a 16-channel Wan VAE decoder; choose one of wan2.1, qwen-image/);
});

test('Wan VAE: latents_mean/latents_std from a diffusers config (as pull passes them) are recorded; a wrong count is refused', async (t) => {
  const dir = tempDir(t);
  const mean = Array.from({ length: 16 }, (_, i) => i / 10);
  const std = Array.from({ length: 16 }, (_, i) => 1 + i / 10);
  await convertCheckpoint({ weights: wan('diffusers.safetensors'), out: path.join(dir, 'w', 'model.onnx'), latentsMean: mean, latentsStd: std });
  const config = JSON.parse(await readFile(path.join(dir, 'w', 'config.json'), 'utf8')) as Record<string, unknown>;
  assert.deepEqual([config.latentsMean, config.latentsStd], [mean, std]);
  assert.equal((await modelMetadata(path.join(dir, 'w', 'model.onnx'))).latents_std, JSON.stringify(std));
  await assert.rejects(convertCheckpoint({ weights: wan('diffusers.safetensors'), out: path.join(dir, 'x.onnx'), latentsMean: [0], latentsStd: std }),
    /latents_mean and latents_std need 16 values each, got 1 and 16/);
});
