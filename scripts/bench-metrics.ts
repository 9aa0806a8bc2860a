// What recording metrics costs a request: times N calls of the decode observer (the most
// expensive path: ok, all four stages, a format) plus one batch record each (the worst case,
// batches of one), after a warm-up, best of several rounds. Also times one scrape.
//   npx tsx scripts/bench-metrics.ts [N]
import os from 'node:os';
import { Metrics, type DecodeEvent } from '../src/plugins/metrics.js';

const N = Number(process.argv[2] ?? 100_000);
const ROUNDS = 5;
const metrics = new Metrics({ inflight: 0 });
const models = ['sd15', 'sdxl'];
const event = (i: number): DecodeEvent => ({
  model: models[i & 1], outcome: 'ok', seconds: 0.05 + (i % 100) / 1000, samples: 1, format: 'png',
  timings: { parse: 0.2, queue: 3 + (i % 7), infer: 40, encode: 6 },
});
const batch = { key: '64x64', slot: 0, sampleCount: 1, requests: 1, runMs: 40, ok: true };

function time(fn: (i: number) => void): number {
  let best = Infinity;
  for (let r = 0; r < ROUNDS; r++) {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < N; i++) fn(i);
    best = Math.min(best, Number(process.hrtime.bigint() - t0) / N);
  }
  return best;
}

const events = Array.from({ length: 1024 }, (_, i) => event(i));
const decode = time((i) => metrics.onDecode(events[i & 1023]!));
const onBatch = time((i) => metrics.onBatch(models[i & 1]!, batch));
const both = time((i) => {
  metrics.onDecode(events[i & 1023]!);
  metrics.onBatch(models[i & 1]!, batch);
});
const t0 = process.hrtime.bigint();
const text = await metrics.text();
const scrapeMs = Number(process.hrtime.bigint() - t0) / 1e6;

const cpu = os.cpus()[0]?.model ?? 'unknown CPU';
process.stdout.write([
  `metrics recording, N=${N}, best of ${ROUNDS} rounds, Node ${process.version}, ${os.cpus().length} cores, ${cpu}`,
  `  onDecode (ok, 4 stages)       ${decode.toFixed(0)} ns`,
  `  onBatch                       ${onBatch.toFixed(0)} ns`,
  `  per request (both)            ${both.toFixed(0)} ns`,
  `  one scrape (${text.length} bytes)   ${scrapeMs.toFixed(2)} ms`,
  '',
].join('\n'));
