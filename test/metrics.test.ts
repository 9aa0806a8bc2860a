// /metrics on the real service (built-in preview model, real ORT worker), with the app's Metrics
// object receiving the batchers' runs, as server.ts wires it.
import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import pino from 'pino';
import { register as globalRegister } from 'prom-client';
import { buildApp } from '../src/app.js';
import { loadConfig } from '../src/config.js';
import { PREVIEW_MODEL_NAME } from '../src/onnx/preview.js';
import { startService } from './helpers/service.js';

const MODEL = PREVIEW_MODEL_NAME;
const latents = (n: number): Buffer => Buffer.alloc(n * 4 * 8 * 8 * 4);

/** The real service on the preview model only (no MODEL_PATH), metrics wired as server.ts wires them. */
function service(t: TestContext, env: Record<string, string> = {}): ReturnType<typeof startService> {
  return startService(t, { MODEL_PATH: '', ...env });
}

interface Sample { name: string; labels: Record<string, string>; value: number }
interface Exposition { types: Map<string, string>; samples: Sample[] }

const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/;
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|$)/gy;
const SUFFIXES: Record<string, string[]> = { histogram: ['_bucket', '_sum', '_count'], summary: ['', '_sum', '_count'] };

/** Parses Prometheus text exposition strictly: every line a comment, a sample or empty. */
function parseExposition(text: string): Exposition {
  const types = new Map<string, string>();
  const samples: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('# HELP ')) continue;
    const type = /^# TYPE (\S+) (counter|gauge|histogram|summary|untyped)$/.exec(line);
    if (type) {
      types.set(type[1]!, type[2]!);
      continue;
    }
    const m = SAMPLE.exec(line);
    assert.ok(m, `not a sample line: ${JSON.stringify(line)}`);
    const labels: Record<string, string> = {};
    const raw = m[2] ?? '';
    LABEL.lastIndex = 0;
    let l: RegExpExecArray | null;
    let read = 0;
    while ((l = LABEL.exec(raw))) {
      labels[l[1]!] = l[2]!;
      read = LABEL.lastIndex;
    }
    assert.equal(read, raw.length, `bad labels in ${JSON.stringify(line)}`);
    // Go's ParseFloat, which Prometheus uses: NaN and Inf in any case.
    const special = /^([+-]?)(inf|nan)$/i.exec(m[3]!);
    const value = special ? (special[2]!.toLowerCase() === 'nan' ? NaN : special[1] === '-' ? -Infinity : Infinity) : Number(m[3]);
    assert.ok(special || !Number.isNaN(value), `bad value in ${JSON.stringify(line)}`);
    samples.push({ name: m[1]!, labels, value });
  }
  for (const s of samples) {
    const family = [...types].find(([name, type]) => (SUFFIXES[type] ?? ['']).some((suf) => s.name === name + suf));
    assert.ok(family, `sample ${s.name} has no # TYPE line`);
  }
  return { types, samples };
}

async function scrape(app: ReturnType<typeof buildApp>): Promise<Exposition> {
  const res = await app.inject('/metrics');
  assert.equal(res.statusCode, 200);
  assert.match(res.headers['content-type'] as string, /^text\/plain; version=0\.0\.4/);
  return parseExposition(res.body);
}

function value(e: Exposition, name: string, labels: Record<string, string> = {}): number | undefined {
  const s = e.samples.find((x) => x.name === name && Object.entries(labels).every(([k, v]) => x.labels[k] === v));
  return s?.value;
}

async function until(what: string, check: () => Promise<boolean>): Promise<void> {
  for (const stop = Date.now() + 5000; Date.now() < stop;) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 5));
  }
  assert.fail(`timed out waiting for ${what}`);
}

test('metrics: requests, outcomes, stages, batches, queue depth and models after real decodes', async (t) => {
  // Two samples fill the queue and wait out the 300 ms delay: long enough to watch the gauges.
  const { app } = await service(t, { MAX_QUEUE_SIZE: '2', MAX_QUEUE_DELAY_MS: '300', MAX_BATCH_SIZE: '8' });
  const first = app.inject({ method: 'POST', url: '/decode?shape=2,4,8,8', payload: latents(2), headers: { 'content-type': 'application/octet-stream' } });
  let waiting!: Exposition;
  await until('the request to queue', async () => {
    waiting = await scrape(app);
    return value(waiting, 'latent_decoder_queue_samples', { model: MODEL }) === 2;
  });
  assert.equal(value(waiting, 'latent_decoder_inflight_requests'), 1);

  const rejected = await app.inject({ method: 'POST', url: '/decode?shape=1,4,8,8', payload: latents(1) });
  assert.equal(rejected.statusCode, 429, rejected.body);
  assert.equal(rejected.headers['retry-after'], '1', 'no run measured yet: the minimum (the batcher tests check the estimate)');
  assert.equal((await first).statusCode, 200);
  const timedOut = await app.inject({ method: 'POST', url: '/decode?shape=1,4,8,8', payload: latents(1), headers: { 'x-request-timeout-ms': '1' } });
  assert.equal(timedOut.statusCode, 504, timedOut.body);
  const bad = await app.inject({ method: 'POST', url: '/decode?dtype=int7', payload: latents(1) });
  assert.equal(bad.statusCode, 400);

  const e = await scrape(app);
  for (const name of e.types.keys()) assert.ok(name.startsWith('latent_decoder_'), `${name} lacks the latent_decoder_ prefix`);
  const ours = ['requests_total', 'request_duration_seconds', 'stage_duration_seconds', 'decoded_samples_total', 'batches_total',
    'batch_failures_total', 'batch_samples_total', 'batch_size_samples', 'inference_duration_seconds', 'queue_samples',
    'running_batches', 'inflight_requests', 'model_info', 'model_load_seconds', 'model_warmup_seconds'].map((n) => `latent_decoder_${n}`);
  const expectedTypes = { counter: /_total$/, histogram: /_(seconds|samples)$/, gauge: /./ };
  for (const name of ours) {
    const type = e.types.get(name) as keyof typeof expectedTypes | undefined;
    assert.ok(type && expectedTypes[type].test(name), `${name}: type ${type}`);
  }
  const allowed = new Set(['model', 'direction', 'outcome', 'stage', 'format', 'le', 'provider', 'precision']);
  for (const s of e.samples.filter((x) => ours.some((n) => x.name.startsWith(n)))) {
    for (const l of Object.keys(s.labels)) assert.ok(allowed.has(l), `${s.name} has label ${l}`);
  }
  // The process and Node.js metrics share the prefix.
  assert.ok(value(e, 'latent_decoder_process_cpu_user_seconds_total')! > 0);
  assert.ok(e.types.has('latent_decoder_nodejs_eventloop_lag_seconds'));

  const req = (outcome: string, model = MODEL): number | undefined => value(e, 'latent_decoder_requests_total', { model, outcome });
  assert.equal(req('ok'), 1);
  assert.equal(req('rejected'), 1);
  assert.equal(req('timed_out'), 1);
  assert.equal(req('bad_request', 'none'), 1, 'a request that failed before choosing a model has model="none", never an empty label');
  assert.equal(req('error'), 0, 'every outcome of a served model starts at 0');
  assert.equal(value(e, 'latent_decoder_request_duration_seconds_count', { model: MODEL, outcome: 'ok' }), 1);
  const okSeconds = value(e, 'latent_decoder_request_duration_seconds_sum', { model: MODEL, outcome: 'ok' })!;
  assert.ok(okSeconds >= 0.25 && okSeconds < 5, `the ok request took ${okSeconds} s, having waited ~0.3 s in the queue`);

  for (const stage of ['parse', 'queue', 'infer', 'encode']) {
    assert.ok(value(e, 'latent_decoder_stage_duration_seconds_count', { model: MODEL, stage })! >= 1, stage);
  }
  const buckets = e.samples.filter((s) => s.name === 'latent_decoder_stage_duration_seconds_bucket' && s.labels.stage === 'queue');
  assert.ok(buckets.length > 5 && buckets.at(-1)!.labels.le === '+Inf');
  for (let i = 1; i < buckets.length; i++) assert.ok(buckets[i]!.value >= buckets[i - 1]!.value, 'buckets are cumulative');
  assert.equal(buckets.at(-1)!.value, value(e, 'latent_decoder_stage_duration_seconds_count', { model: MODEL, stage: 'queue' }));
  assert.equal(value(e, 'latent_decoder_decoded_samples_total', { model: MODEL, format: 'png' }), 2);

  const batches = value(e, 'latent_decoder_batches_total', { model: MODEL })!;
  const samples = value(e, 'latent_decoder_batch_samples_total', { model: MODEL })!;
  assert.ok(batches >= 1);
  assert.equal(samples, 2, 'the two-sample request ran; the timed-out one never did');
  assert.equal(value(e, 'latent_decoder_batch_size_samples_count', { model: MODEL }), batches);
  assert.equal(value(e, 'latent_decoder_batch_size_samples_sum', { model: MODEL }), samples);
  assert.deepEqual(e.samples.filter((s) => s.name === 'latent_decoder_batch_size_samples_bucket').map((s) => s.labels.le),
    ['1', '2', '4', '8', '16', '32', '64', '+Inf']);
  assert.equal(value(e, 'latent_decoder_inference_duration_seconds_count', { model: MODEL }), batches);
  assert.equal(value(e, 'latent_decoder_batch_failures_total', { model: MODEL }), 0);

  assert.equal(value(e, 'latent_decoder_queue_samples', { model: MODEL }), 0);
  assert.equal(value(e, 'latent_decoder_inflight_requests'), 0);
  assert.equal(value(e, 'latent_decoder_model_info', { model: MODEL, provider: 'cpu', precision: 'fp32' }), 1);
  assert.ok(value(e, 'latent_decoder_model_load_seconds', { model: MODEL })! > 0);
  assert.ok(value(e, 'latent_decoder_model_warmup_seconds', { model: MODEL })! > 0);
});

test('metrics: each app has its own registry, none in the global one', async (t) => {
  const { app } = await service(t);
  const other = buildApp({ config: loadConfig({}), logger: pino({ level: 'silent' }) });
  t.after(() => other.close());
  assert.equal((await app.inject({ method: 'POST', url: '/decode?shape=1,4,8,8', payload: latents(1) })).statusCode, 200);
  assert.equal(value(await scrape(app), 'latent_decoder_requests_total', { model: MODEL, outcome: 'ok' }), 1);
  const idle = await scrape(other);
  assert.equal(value(idle, 'latent_decoder_requests_total', { outcome: 'ok' }), undefined);
  assert.equal(value(idle, 'latent_decoder_queue_samples'), undefined, 'no models loaded, no queue series');
  assert.equal((await globalRegister.getMetricsAsJSON()).filter((m) => m.name.startsWith('latent_decoder_')).length, 0);
});
