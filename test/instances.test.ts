// Scale-up within one process: several sessions per model (MODEL_INSTANCES) sharing one batcher,
// and the warm-up plan that keeps cuDNN's per-shape tuning off the request path on a GPU.
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { applyPerformanceHint, loadConfig } from '../src/config.js';
import { availableProviders } from '../src/inference/providers.js';
import { warmupPlan } from '../src/inference/warmup.js';
import { bytesOf, startService } from './helpers/service.js';

const latent = (k: number): Buffer => bytesOf(new Float32Array(4 * 32 * 32).map((_, i) => Math.sin(i / (17 + k))));

test('instances: two model instances run two batches at once, one on each session', async (t) => {
  const s = await startService(t, { MODEL_INSTANCES: '2', MAX_BATCH_SIZE: '1', ORT_INTRA_OP_THREADS: '1' });
  assert.equal(s.registry.get(undefined)!.runners.length, 2);
  const ends: { slot: number; start: number; end: number }[] = [];
  s.host.onBatch((_model, b) => ends.push({ slot: b.slot, start: performance.now() - b.runMs, end: performance.now() }));
  const res = await Promise.all([0, 1].map((k) => s.app.inject({ method: 'POST', url: '/decode?shape=1,4,32,32&format=jpeg', payload: latent(k) })));
  assert.deepEqual(res.map((r) => r.statusCode), [200, 200]);
  assert.deepEqual(ends.map((e) => e.slot).sort(), [0, 1], 'each instance ran one batch');
  const [a, b] = ends as [typeof ends[0], typeof ends[0]];
  assert.ok(a.start < b.end && b.start < a.end, `the runs overlapped: ${JSON.stringify(ends)}`);
});

test('instances: the defaults dispatch at once (no queue delay) and cap a batch at MAX_BATCH_SIZE 64×64 latents', () => {
  const cfg = loadConfig({});
  assert.equal(cfg.maxQueueDelayMs, 0);
  assert.equal(cfg.modelInstances, 1);
  assert.equal(cfg.maxBatchLatentPixels, 8 * 64 * 64);
  assert.equal(loadConfig({ MAX_BATCH_SIZE: '4' }).maxBatchLatentPixels, 4 * 64 * 64);
  assert.deepEqual(loadConfig({ WARMUP_LATENT_SIZES: '64x64, 128x96' }).warmupLatentSizes, [[64, 64], [128, 96]]);
  assert.throws(() => loadConfig({ WARMUP_LATENT_SIZES: '64' }), /WARMUP_LATENT_SIZES="64" is not valid/);
});

test('instances: on the CPU provider PERFORMANCE_HINT lays out the sessions; what is set wins; a GPU provider is left alone', () => {
  const layout = (env: Record<string, string>, provider: Parameters<typeof applyPerformanceHint>[2], cpus: number): object => {
    const c = applyPerformanceHint(loadConfig(env), env, provider, cpus);
    return { instances: c.modelInstances, threads: c.intraOpThreads, batch: c.maxBatchSize, pixels: c.maxBatchLatentPixels };
  };
  // throughput (the default): two sessions with half the CPUs each, one sample per run
  assert.deepEqual(layout({}, 'cpu', 2), { instances: 2, threads: 1, batch: 1, pixels: 64 * 64 });
  assert.deepEqual(layout({}, 'cpu', 16), { instances: 2, threads: 8, batch: 1, pixels: 64 * 64 });
  // a batch size set: the two runs in flight hold one batch's area
  assert.deepEqual(layout({ MAX_BATCH_SIZE: '4' }, 'cpu', 4), { instances: 2, threads: 2, batch: 4, pixels: 2 * 64 * 64 });
  // one CPU, or latency: one session with every CPU and batches as before
  assert.deepEqual(layout({}, 'cpu', 1), { instances: 1, threads: 1, batch: 8, pixels: 8 * 64 * 64 });
  assert.deepEqual(layout({ PERFORMANCE_HINT: 'Latency' }, 'cpu', 4), { instances: 1, threads: 4, batch: 8, pixels: 8 * 64 * 64 });
  // explicit settings win; MODEL_INSTANCES alone sizes the threads, not the area
  assert.deepEqual(layout({ MODEL_INSTANCES: '4', MAX_BATCH_SIZE: '8' }, 'cpu', 8), { instances: 4, threads: 2, batch: 8, pixels: 8 * 64 * 64 });
  assert.deepEqual(layout({ ORT_INTRA_OP_THREADS: '3' }, 'cpu', 8), { instances: 2, threads: 3, batch: 1, pixels: 64 * 64 });
  assert.deepEqual(layout({ MAX_BATCH_LATENT_PIXELS: '9999' }, 'cpu', 2), { instances: 2, threads: 1, batch: 1, pixels: 9999 });
  // a GPU provider (or none usable) keeps the config as loaded
  const gpu = { instances: 1, threads: 0, batch: 8, pixels: 8 * 64 * 64 };
  assert.deepEqual(layout({}, 'cuda', 16), gpu);
  assert.deepEqual(layout({}, 'webgpu', 16), gpu);
  assert.deepEqual(layout({}, undefined, 16), gpu);
  assert.throws(() => loadConfig({ PERFORMANCE_HINT: 'fast' }), /PERFORMANCE_HINT="fast" is not valid: expected throughput or latency/);
});

test('instances: on a GPU every batch size up to MAX_BATCH_SIZE is warmed at every latent size; a CPU runs batch 1 at each', () => {
  assert.deepEqual(warmupPlan('cuda', undefined, 3), [[1, 64, 64], [2, 64, 64], [3, 64, 64]]);
  assert.deepEqual(warmupPlan('tensorrt', [[64, 64], [128, 128]], 2), [[1, 64, 64], [2, 64, 64], [1, 128, 128], [2, 128, 128]]);
  assert.deepEqual(warmupPlan('cpu', undefined, 8), [[1, 64, 64]], 'the CPU warms up at SD\'s latent size: the first shape is the one ONNX Runtime plans for');
  assert.deepEqual(warmupPlan('cpu', [[16, 16]], 8), [[1, 16, 16]]);
});

test('instances: providers whose library is not installed are not tried; the others are, in order', () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'providers-'));
  writeFileSync(path.join(dir, 'libonnxruntime.so.1'), '');
  const pick = ({ usable, missing }: ReturnType<typeof availableProviders>): object => ({ usable, missing });
  assert.deepEqual(pick(availableProviders(['cuda', 'cpu'], dir)), { usable: ['cpu'], missing: ['cuda'] });
  writeFileSync(path.join(dir, 'libonnxruntime_providers_cuda.so'), '');
  assert.deepEqual(pick(availableProviders(['cuda', 'tensorrt', 'cpu'], dir)), { usable: ['cuda', 'cpu'], missing: ['tensorrt'] });
  assert.deepEqual(pick(availableProviders(['cuda', 'cpu'], null)), { usable: ['cuda', 'cpu'], missing: [] }, 'an unknown layout: let ORT decide');
});
