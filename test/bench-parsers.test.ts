// The benchmark's readers of what the service says (Server-Timing, /metrics, its log), which the
// report's burst, overhead and warm-up figures rest on; pure functions, so tested exactly.
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { parseServerTiming, type Sample } from '../bench/load.js';
import { batchCountersOf, batchSizesFromTimings, warmupFromLog, warmupSecondsOf } from '../bench/metrics.js';
import { stagesOf } from '../bench/phases.js';
import { burstDistribution } from '../bench/report-scale.js';
import { gaussianLatents } from '../bench/stats.js';
import { tempDir } from './helpers/paths.js';
import { gaussian, mulberry32 } from './helpers/shared.js';

const sample = (t: number, infer: number, extra: Partial<Sample> = {}): Sample => ({ t, ms: infer + 10, status: 200, bytes: 1, parse: 0.1, queue: 0.2, infer, encode: 1, ...extra });

test('bench: Server-Timing with and without total', () => {
  assert.deepEqual(parseServerTiming('parse;dur=0.08, queue;dur=5.38, infer;dur=36.70, encode;dur=1.18, total;dur=43.90'),
    { parse: 0.08, queue: 5.38, infer: 36.7, encode: 1.18, total: 43.9 });
  assert.deepEqual(parseServerTiming(undefined), {});
});

test('bench: the server-side overhead exists only when the service sends total', () => {
  const without = stagesOf([sample(0, 30)]);
  assert.equal(without.serverOverhead, undefined);
  assert.equal(without.overhead.p50, 9); // e2e (40) − infer (30) − encode (1)
  const withTotal = stagesOf([sample(0, 30, { total: 31.5 })]);
  assert.equal(withTotal.serverOverhead?.p50, 0.5);
});

test('bench: a burst split into batches is recovered from shared infer values, in start order', () => {
  // one lone request runs at once (12.34 ms), the other seven share the next run (40.5 ms)
  const s = [sample(0, 12.34), ...Array.from({ length: 7 }, (_, i) => sample(0.1 * i, 40.5, { queue: 12 }))];
  assert.deepEqual(batchSizesFromTimings(s), [1, 7]);
  // two batches with the same run time, a run apart, stay two
  const twice = [sample(0, 20), sample(0.2, 20), sample(25, 20), sample(25.1, 20)];
  assert.deepEqual(batchSizesFromTimings(twice), [2, 2]);
  assert.equal(burstDistribution({ size: 8, runs: [[1, 7], [8], [1, 7]].map((sizes) => ({ sizes, spanMs: 1, errors: 0 })) }), '[1,7] ×2, [8] ×1');
});

test('bench: /metrics readers sum over labels and say nothing when a metric is missing', () => {
  const text = [
    '# HELP latent_decoder_batches_total Batches run', 'latent_decoder_batches_total{model="a"} 3', 'latent_decoder_batches_total{model="b"} 1',
    'latent_decoder_batch_samples_total{model="a"} 10', 'latent_decoder_batch_samples_total{model="b"} 2',
    'latent_decoder_model_warmup_seconds{model="a"} 1.25',
  ].join('\n');
  assert.deepEqual(batchCountersOf(text), { batches: 4, samples: 12 });
  assert.deepEqual(warmupSecondsOf(text), { a: 1.25 });
  assert.equal(batchCountersOf('latent_decoder_batches_total 1'), undefined);
  assert.equal(warmupSecondsOf(''), undefined);
});

test('bench: warm-up from the service log, tolerant of older builds and of error lines', (t) => {
  const file = path.join(tempDir(t), 'service.log');
  writeFileSync(file, [
    'not json',
    JSON.stringify({ level: 50, msg: 'the models are loading and warming up' }),
    JSON.stringify({ level: 30, msg: 'warm-up', model: 'x', shapes: ['64x64'], ms: 1234 }),
    JSON.stringify({ level: 30, msg: 'model x ready on cuda', model: 'x', warmupMs: 1300 }),
  ].join('\n'));
  const w = warmupFromLog(file);
  assert.deepEqual(w.logged, [{ model: 'x', msg: 'warm-up', shapes: ['64x64'], ms: 1234 }]);
  assert.deepEqual(w.readyLineMs, { x: 1300 });
  assert.equal(w.instances, undefined);
  assert.deepEqual(warmupFromLog(path.join(path.dirname(file), 'missing.log')), { logged: [], readyLineMs: undefined, instances: undefined });
});

test('bench: seeded latents are the shared PRNG\'s normal sequence', () => {
  const next = gaussian(mulberry32(42));
  assert.deepEqual([...gaussianLatents(4, 42)], [...new Float32Array([next(), next(), next(), next()])]);
});
