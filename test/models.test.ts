// The model side of the service: in-graph postprocessing, the built-in preview decoder, and the
// model repository serving a converted checkpoint next to the preview.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import * as ort from 'onnxruntime-node';
import { convertCheckpoint } from '../src/convert/convert.js';
import { loadConfig } from '../src/config.js';
import { discoverModels } from '../src/serving/registry.js';
import { withPostprocess } from '../src/onnx/postprocess.js';
import { buildPreviewDecoder, SD15_LATENT_RGB_FACTORS } from '../src/onnx/preview.js';
import { fixture } from './helpers/paths.js';
import { FIXTURE_MODEL, REPO, RGB, bytesOf, loadFixture, maxAbsDiff, sampleLatents, startService, tempDir } from './helpers/service.js';

test('models: torch-export.onnx wrapped with the postprocess graph returns reference-rgb.npy within one level', async () => {
  const f = await loadFixture();
  const { bytes, io } = withPostprocess(readFileSync(FIXTURE_MODEL));
  assert.deepEqual([io.input, io.output], ['latent_sample', 'sample']);
  const session = await ort.InferenceSession.create(bytes);
  const out = await session.run({ latent_sample: new ort.Tensor('float32', f.latents, [2, 4, 16, 16]) }, ['image']);
  assert.equal(out.image!.type, 'uint8');
  assert.deepEqual(out.image!.dims, [2, 128, 128, 3]);
  assert.ok(maxAbsDiff(out.image!.data as Uint8Array, f.rgb) <= 1);
  await session.release();
});

test('models: the preview decoder is the published linear map, upsampled 8x', async () => {
  const z = [0.5, -1, 2, 0.25];
  const session = await ort.InferenceSession.create(withPostprocess(buildPreviewDecoder()).bytes);
  const data = new Float32Array(4 * 8 * 8);
  for (let c = 0; c < 4; c++) data.fill(z[c]!, c * 64, (c + 1) * 64);
  const out = await session.run({ latent_sample: new ort.Tensor('float32', data, [1, 4, 8, 8]) });
  assert.deepEqual(out.sample!.dims, [1, 3, 64, 64]);
  const rgb = [0, 1, 2].map((o) => z.reduce((a, v, c) => a + SD15_LATENT_RGB_FACTORS[c]![o]! * 0.18215 * v, 0));
  const px = out.image!.data as Uint8Array;
  for (let o = 0; o < 3; o++) {
    assert.ok(Math.abs((out.sample!.data as Float32Array)[o * 64 * 64 + 100]! - rgb[o]!) < 1e-5);
    assert.equal(px[100 * 3 + o], Math.round(Math.min(1, Math.max(0, rgb[o]! / 2 + 0.5)) * 255));
  }
  await session.release();
});

test('models: the repository serves a converted checkpoint by name next to the preview', async (t) => {
  const dir = tempDir(t);
  await convertCheckpoint({ weights: fixture('ldm.safetensors'), out: path.join(dir, 'sd-fixture', 'model.onnx') });
  const { app } = await startService(t, { MODEL_PATH: '', MODELS_DIR: dir });
  const list = (await app.inject('/v1/models')).json() as { defaultModel: string; models: { name: string; channels: number; precision: string; scalingFactor: number; builtin: boolean }[] };
  assert.equal(list.defaultModel, 'sd-fixture', 'a real model is the default over the preview');
  assert.deepEqual(list.models.map((m) => [m.name, m.channels, m.precision, m.scalingFactor, m.builtin]).sort(),
    [['sd-fixture', 4, 'fp32', 0.18215, false], ['sd15-preview', 4, 'fp32', 0.18215, true]]);
  const f = await loadFixture();
  for (let i = 0; i < 2; i++) {
    const res = await app.inject({ method: 'POST', url: '/decode?model=sd-fixture&shape=1,4,16,16&output_type=pt&partial_postprocess=1&scaling_factor=1', payload: bytesOf(sampleLatents(f, i)) });
    assert.equal(res.statusCode, 200, res.body);
    assert.ok(maxAbsDiff(res.rawPayload, f.rgb.subarray(i * RGB, (i + 1) * RGB)) <= 1);
  }
  const preview = await app.inject({ method: 'POST', url: '/decode?model=sd15-preview&shape=1,4,16,16', payload: bytesOf(sampleLatents(f, 0)) });
  assert.equal(preview.statusCode, 200);
  for (const name of ['../sd-fixture', '/etc/passwd', 'sd-fixture/model.onnx']) {
    const res = await app.inject({ method: 'POST', url: `/decode?model=${encodeURIComponent(name)}&shape=1,4,16,16`, payload: bytesOf(sampleLatents(f, 0)) });
    assert.equal(res.statusCode, 404, name);
    assert.match((res.json() as { error: { message: string } }).error.message, /available: .*sd-fixture/);
  }
});

test('models: MODEL_PATH=<dir>/model.onnx is named after its folder and configured by the config.json beside it', async (t) => {
  const dir = tempDir(t);
  const out = path.join(dir, 'my-vae', 'model.onnx');
  await convertCheckpoint({ weights: fixture('ldm.safetensors'), out, scalingFactor: 0.13025, name: 'ignored-by-discovery' });
  // the name convert wrote would win; drop it to check the folder-name default
  const config = JSON.parse(readFileSync(path.join(dir, 'my-vae', 'config.json'), 'utf8')) as Record<string, unknown>;
  delete config.name;
  writeFileSync(path.join(dir, 'my-vae', 'config.json'), JSON.stringify(config));
  const [, spec] = await discoverModels(loadConfig({ MODEL_PATH: out, MODELS_DIR: path.join(dir, 'none') }));
  assert.deepEqual([spec!.name, spec!.modelPath, spec!.file.scalingFactor], ['my-vae', out, 0.13025]);

  // any other file name keeps its base name and its <base>.json sidecar
  const other = path.join(dir, 'my-vae', 'decoder.onnx');
  copyFileSync(out, other);
  writeFileSync(path.join(dir, 'my-vae', 'decoder.json'), JSON.stringify({ scalingFactor: 0.5 }));
  const [, plain] = await discoverModels(loadConfig({ MODEL_PATH: other, MODELS_DIR: path.join(dir, 'none') }));
  assert.deepEqual([plain!.name, plain!.file.scalingFactor], ['decoder', 0.5]);
});

test('CLI: `models` lists the preview, the MODEL_PATH model and the repository, as the server discovers them', async (t) => {
  const dir = tempDir(t);
  await convertCheckpoint({ weights: fixture('ldm.safetensors'), out: path.join(dir, 'repo', 'sd-a', 'model.onnx'), fp16: true });
  await convertCheckpoint({ weights: fixture('ldm.safetensors'), out: path.join(dir, 'single', 'model.onnx'), scalingFactor: 0.13025 });
  const cli = (args: string[], env: Record<string, string>) =>
    spawnSync(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'models', ...args], { cwd: REPO, encoding: 'utf8', env: { ...process.env, MODEL_PATH: '', MODELS_DIR: '', ...env } });
  const withPath = cli(['--models-dir', path.join(dir, 'repo')], { MODEL_PATH: path.join(dir, 'single', 'model.onnx') });
  assert.equal(withPath.status, 0, withPath.stderr);
  const rows = withPath.stdout.trimEnd().split('\n').map((l) => l.split(/\s{2,}/));
  assert.deepEqual(rows.map((r) => r.slice(0, 5)), [
    ['NAME', 'CHANNELS', 'PRECISION', 'SCALING', 'SHIFT'],
    ['sd15-preview', '4', 'fp32', '0.18215', '0'],
    ['single', '4', 'fp32', '0.13025', '0'],
    ['sd-a', '4', 'fp16', '0.18215', '0'],
  ]);
  assert.equal(rows[1]![5], 'built-in');
  assert.match(rows[2]![5]!, /^\d+\.\d MiB$/);
  // MODELS_DIR from the environment, as the server reads it
  const fromEnv = cli([], { MODELS_DIR: path.join(dir, 'repo') });
  assert.match(fromEnv.stdout, /^sd-a\s+4\s+fp16/m);
  assert.doesNotMatch(fromEnv.stdout, /^single/m);
  const missing = cli(['--models-dir', path.join(dir, 'nope')], {});
  assert.equal(missing.status, 1);
  assert.match(missing.stderr, /models folder .*nope does not exist/);
});

test('models: /v1/models says ready: false for a model whose worker is restarting, as /readyz says 503', async (t) => {
  const { app, registry } = await startService(t);
  const model = registry.get(undefined)!;
  const ready = async (): Promise<boolean | undefined> =>
    ((await app.inject('/v1/models')).json() as { models: { name: string; ready: boolean }[] }).models.find((m) => m.name === model.name)?.ready;
  assert.equal(await ready(), true);
  assert.equal((await app.inject('/readyz')).statusCode, 200);
  await (model.runners[0] as unknown as { worker: { terminate(): Promise<number> } }).worker.terminate();
  assert.equal(model.healthy, false);
  assert.equal((await app.inject('/readyz')).statusCode, 503);
  assert.equal(await ready(), false, 'the same rule as /readyz');
  const end = Date.now() + 10_000;
  while (!model.healthy && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
  assert.equal(await ready(), true, 'ready again once the worker has restarted');
});
