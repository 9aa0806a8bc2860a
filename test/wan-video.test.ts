import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { convertCheckpoint } from '../src/convert/convert.js';
import { decodeVideo, type VideoTensor } from '../src/video/decoder.js';
import { startService, tempDir } from './helpers/service.js';
import { FLOAT_TOLERANCE, maxAbs, npy, wan, wanModels } from './helpers/wan.js';

/** [N, 3, F, H, W] from the steps' [N, 3, f, H, W] pieces, and [N, F, H, W, 3] from theirs. */
function assemble(steps: { frames: number; samples?: Float32Array; images?: Uint8Array }[], n: number, plane: number): { samples: Float32Array; images: Uint8Array } {
  const total = steps.reduce((a, s) => a + s.frames, 0);
  const samples = new Float32Array(n * 3 * total * plane);
  const images = new Uint8Array(n * total * plane * 3);
  let f0 = 0;
  for (const s of steps) {
    for (let i = 0; i < n; i++) {
      for (let c = 0; c < 3; c++) {
        samples.set(s.samples!.subarray(((i * 3 + c) * s.frames) * plane, ((i * 3 + c) * s.frames + s.frames) * plane), ((i * 3 + c) * total + f0) * plane);
      }
      images.set(s.images!.subarray(i * s.frames * plane * 3, (i + 1) * s.frames * plane * 3), (i * total + f0) * plane * 3);
    }
    f0 += s.frames;
  }
  return { samples, images };
}

for (const c of ['video', 'batch', 'image'] as const) {
  test(`the worker decodes the ${c} case step by step (caches kept in the worker) to diffusers' references`, async (t) => {
    const dir = await wanModels(t);
    const { registry } = await startService(t, { MODEL_PATH: '', MODELS_DIR: dir });
    const latents = await npy(`${c}-latents-decoder.npy`);
    const ref = await npy(`${c}-reference.npy`);
    const rgb = await npy(`${c}-reference-rgb.npy`);
    const shape = latents.shape as VideoTensor['shape'];
    for (const name of ['wan-diffusers', 'wan-original']) {
      const model = registry.get(name)!;
      assert.ok(model.isVideo);
      const steps = [];
      for await (const s of decodeVideo(model, { data: latents.data as Float32Array, shape }, ['image', 'sample'])) steps.push(s);
      assert.deepEqual(steps.map((s) => s.frames), [1, 4, 4].slice(0, shape[2]));
      const { height, width } = steps[0]!;
      assert.deepEqual([height, width], ref.shape.slice(3));
      const { samples, images } = assemble(steps, shape[0], height * width);
      const err = maxAbs(samples, ref.data);
      const levels = maxAbs(images, rgb.data);
      t.diagnostic(`${name}: max abs error ${err.toExponential(2)}, max RGB difference ${levels}`);
      assert.ok(err <= FLOAT_TOLERANCE, `float error ${err}`);
      assert.ok(levels <= 1, `RGB difference ${levels}`);
    }
  });
}

test('a --fp16 Wan model runs in the worker with float16 caches: the video case within 2 RGB levels', async (t) => {
  const dir = tempDir(t);
  await convertCheckpoint({ weights: wan('diffusers.safetensors'), out: path.join(dir, 'wan16', 'model.onnx'), fp16: true });
  const { registry } = await startService(t, { MODEL_PATH: '', MODELS_DIR: dir });
  const model = registry.get('wan16')!;
  assert.equal(model.precision, 'fp16');
  const latents = await npy('video-latents-decoder.npy');
  const rgb = await npy('video-reference-rgb.npy');
  const steps = [];
  for await (const s of decodeVideo(model, { data: latents.data as Float32Array, shape: latents.shape as VideoTensor['shape'] }, ['image'])) steps.push(s);
  const images = Buffer.concat(steps.map((s) => s.images!));
  const levels = maxAbs(images, rgb.data);
  t.diagnostic(`max RGB difference ${levels}`);
  assert.ok(levels <= 2, `RGB difference ${levels}`);
});

test('a Wan model whose config.json has latentsMean of the wrong length does not load, and says why', async (t) => {
  const dir = tempDir(t);
  const out = path.join(dir, 'bad', 'model.onnx');
  await convertCheckpoint({ weights: wan('diffusers.safetensors'), out });
  const cfgFile = path.join(dir, 'bad', 'config.json');
  const conf = JSON.parse(readFileSync(cfgFile, 'utf8')) as Record<string, unknown>;
  writeFileSync(cfgFile, JSON.stringify({ ...conf, latentsMean: [0, 1, 2] }));
  await assert.rejects(startService(t, { MODEL_PATH: '', MODELS_DIR: dir }), /model bad: latentsMean must be 16 finite numbers \(16 latent channels × 1² patch\), got 3 values/);
});

test('steps of two same-shaped videos share runs (the batch axis), each still matching the reference', async (t) => {
  const dir = await wanModels(t);
  const { registry, batches } = await startService(t, { MODEL_PATH: '', MODELS_DIR: dir });
  const model = registry.get('wan-diffusers')!;
  const latents = await npy('video-latents-decoder.npy');
  const ref = await npy('video-reference.npy');
  const decode = async (): Promise<Float32Array> => {
    const parts: Float32Array[] = [];
    for await (const s of decodeVideo(model, { data: (latents.data as Float32Array).slice(), shape: latents.shape as VideoTensor['shape'] }, ['sample'])) parts.push(s.samples!.slice());
    // [1, 3, f, H, W] per step → [1, 3, 9, H, W]
    const plane = 64 * 64;
    const out = new Float32Array(3 * 9 * plane);
    let f0 = 0;
    for (const p of parts) {
      const f = p.length / (3 * plane);
      for (let c = 0; c < 3; c++) out.set(p.subarray(c * f * plane, (c + 1) * f * plane), (c * 9 + f0) * plane);
      f0 += f;
    }
    return out;
  };
  const before = batches.length;
  const [a, b] = await Promise.all([decode(), decode()]);
  const shared = batches.slice(before).filter((x) => x.model === 'wan-diffusers' && x.requests === 2);
  t.diagnostic(`runs: ${batches.slice(before).map((x) => x.requests).join(' ')}`);
  assert.ok(shared.length >= 1, 'at least one run held steps of both videos');
  for (const v of [a, b]) assert.ok(maxAbs(v, ref.data) <= FLOAT_TOLERANCE);
});
