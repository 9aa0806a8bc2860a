// Prometheus metrics. One prom-client Registry per app (never the global one), so several apps in
// one process (the tests) keep separate counts. Requests and batches are recorded as they happen;
// what the models and the queue look like now (queue depth, in-flight, model info) is read on
// scrape, so it never goes stale and the request path does not pay for it.
import type { FastifyInstance } from 'fastify';
import fp from 'fastify-plugin';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { BatchInfo } from '../batching/batcher.js';
import type { ImageFormat } from '../latents/options.js';
import type { ModelRegistry } from '../serving/registry.js';
import type { ServedModel } from '../serving/served-model.js';
import type { VideoFormat } from '../video/options.js';
import type {} from './models.js'; // the `models` decorator

declare module 'fastify' {
  interface FastifyInstance {
    /** This app's Prometheus registry and recorders. */
    metrics: Metrics;
  }
}

export type Outcome = 'ok' | 'rejected' | 'timed_out' | 'cancelled' | 'bad_request' | 'error';

export interface StageTimings {
  parse?: number;
  queue?: number;
  infer?: number;
  encode?: number;
}

/** What the decode route reports once per request, when it is answered (or its client is gone). */
export interface DecodeEvent {
  model: string | undefined;
  outcome: Outcome;
  seconds: number;
  timings: StageTimings;
  samples: number;
  /** What an ok answer carried: an image format or the raw tensor. */
  format?: ImageFormat | VideoFormat | 'tensor';
}

export const METRIC_PREFIX = 'latent_decoder_';

/** Seconds, from a sub-millisecond parse to a request that runs into a long deadline. */
const SECONDS_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];
const BATCH_SIZE_BUCKETS = [1, 2, 4, 8, 16, 32, 64];
const OUTCOMES: Record<Outcome, null> = { ok: null, rejected: null, timed_out: null, cancelled: null, bad_request: null, error: null };
const STAGES = ['parse', 'queue', 'infer', 'encode'] as const satisfies readonly (keyof StageTimings)[];

/** What the scrape reads: the models (once loaded) and the in-flight count (the models plugin's host). */
export interface MetricsSource {
  registry?: ModelRegistry;
  inflight: number;
}

export class Metrics {
  readonly register = new Registry();
  private readonly requests: Counter<'model' | 'outcome'>;
  private readonly requestSeconds: Histogram<'model' | 'outcome'>;
  private readonly stageSeconds: Histogram<'model' | 'stage'>;
  private readonly decodedSamples: Counter<'model' | 'format'>;
  private readonly batches: Counter<'model'>;
  private readonly batchFailures: Counter<'model'>;
  private readonly batchSamples: Counter<'model'>;
  private readonly batchSize: Histogram<'model'>;
  private readonly inferenceSeconds: Histogram<'model'>;
  /** Models whose counters have been set to 0, so that rate() works from their first request. */
  private readonly initialized = new Set<string>();

  constructor(source: MetricsSource) {
    const registers = [this.register];
    collectDefaultMetrics({ register: this.register, prefix: METRIC_PREFIX });
    const name = (n: string): string => METRIC_PREFIX + n;

    const models = (): ServedModel[] => [...(source.registry?.models.values() ?? [])];
    this.requests = new Counter({
      name: name('requests_total'), help: 'Decode requests answered, by outcome (ok, rejected, timed_out, cancelled, bad_request, error)',
      labelNames: ['model', 'outcome'], registers,
      // The first of these metrics on a scrape: the counters below it are initialized in time.
      collect: () => this.initialize(models().map((m) => m.name)),
    });
    this.requestSeconds = new Histogram({
      name: name('request_duration_seconds'), help: 'Whole decode request, from the handler start to the answer, by outcome',
      labelNames: ['model', 'outcome'], buckets: SECONDS_BUCKETS, registers,
    });
    this.stageSeconds = new Histogram({
      name: name('stage_duration_seconds'),
      help: 'Time a decode request spent in one stage: parse (body to tensor), queue (wait for a batch), infer (the batch run(s) it was in), encode (tensor to images)',
      labelNames: ['model', 'stage'], buckets: SECONDS_BUCKETS, registers,
    });
    this.decodedSamples = new Counter({
      name: name('decoded_samples_total'), help: 'Samples decoded and returned, by output format (png, jpeg, webp, tensor)',
      labelNames: ['model', 'format'], registers,
    });
    this.batches = new Counter({ name: name('batches_total'), help: 'Batches run by the inference worker', labelNames: ['model'], registers });
    this.batchFailures = new Counter({ name: name('batch_failures_total'), help: 'Batches whose inference run failed', labelNames: ['model'], registers });
    this.batchSamples = new Counter({ name: name('batch_samples_total'), help: 'Samples in all batches run (divide by batches_total for the mean batch size)', labelNames: ['model'], registers });
    this.batchSize = new Histogram({
      name: name('batch_size_samples'), help: 'Samples per batch run', labelNames: ['model'], buckets: BATCH_SIZE_BUCKETS, registers,
    });
    this.inferenceSeconds = new Histogram({
      name: name('inference_duration_seconds'), help: 'One batch run in the inference worker', labelNames: ['model'], buckets: SECONDS_BUCKETS, registers,
    });

    const perModel = (g: Gauge<'model'>, value: (m: ServedModel) => number): void => {
      g.reset();
      for (const m of models()) g.set({ model: m.name }, value(m));
    };
    const queue: Gauge<'model'> = new Gauge({
      name: name('queue_samples'), help: 'Samples waiting in the batcher queue (the autoscaling signal)', labelNames: ['model'], registers,
      collect: () => perModel(queue, (m) => m.batcher.waitingSamples),
    });
    const running: Gauge<'model'> = new Gauge({
      name: name('running_batches'), help: 'Batches in the inference worker now', labelNames: ['model'], registers,
      collect: () => perModel(running, (m) => m.batcher.runningBatches),
    });
    const inflight: Gauge = new Gauge({
      name: name('inflight_requests'), help: 'Decode requests accepted and not yet answered', registers,
      collect: () => inflight.set(source.inflight),
    });
    const info: Gauge<'model' | 'provider' | 'precision'> = new Gauge({
      name: name('model_info'), help: 'Served models: always 1, the labels carry the execution provider and precision',
      labelNames: ['model', 'provider', 'precision'], registers,
      collect: () => {
        info.reset();
        for (const m of models()) info.set({ model: m.name, provider: m.io.provider, precision: m.precision }, 1);
      },
    });
    const load: Gauge<'model'> = new Gauge({
      name: name('model_load_seconds'), help: 'Time to create the model\'s ONNX Runtime session', labelNames: ['model'], registers,
      collect: () => perModel(load, (m) => m.io.loadMs / 1000),
    });
    const warmup: Gauge<'model'> = new Gauge({
      name: name('model_warmup_seconds'), help: 'Time of the model\'s warm-up run', labelNames: ['model'], registers,
      collect: () => perModel(warmup, (m) => m.io.warmupMs / 1000),
    });
  }

  get contentType(): string {
    return this.register.contentType;
  }

  text(): Promise<string> {
    return this.register.metrics();
  }

  /** The decode route's observer: once per request. */
  readonly onDecode = (e: DecodeEvent): void => {
    // "none" when the request failed before a model was chosen: never the client's model name.
    const model = e.model ?? 'none';
    this.requests.inc({ model, outcome: e.outcome });
    this.requestSeconds.observe({ model, outcome: e.outcome }, e.seconds);
    for (const stage of STAGES) {
      const ms = e.timings[stage];
      if (ms !== undefined) this.stageSeconds.observe({ model, stage }, ms / 1000);
    }
    if (e.outcome === 'ok' && e.format) this.decodedSamples.inc({ model, format: e.format }, e.samples);
  };

  /** The models' batch listener: once per batch run. */
  readonly onBatch = (model: string, b: BatchInfo): void => {
    this.batches.inc({ model });
    this.batchSamples.inc({ model }, b.samples);
    this.batchSize.observe({ model }, b.samples);
    this.inferenceSeconds.observe({ model }, b.runMs / 1000);
    if (!b.ok) this.batchFailures.inc({ model });
  };

  private initialize(names: string[]): void {
    for (const model of names) {
      if (this.initialized.has(model)) continue;
      this.initialized.add(model);
      for (const outcome of Object.keys(OUTCOMES) as Outcome[]) this.requests.inc({ model, outcome }, 0);
      for (const c of [this.batches, this.batchFailures, this.batchSamples]) c.inc({ model }, 0);
    }
  }
}

/** Decorates `metrics` and records every batch run of the models plugin's host. */
export default fp(async (app: FastifyInstance) => {
  const metrics = new Metrics(app.models);
  app.decorate('metrics', metrics);
  app.models.onBatch(metrics.onBatch);
}, { name: 'metrics', dependencies: ['models'], fastify: '5.x' });
