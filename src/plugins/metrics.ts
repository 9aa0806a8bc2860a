// Prometheus metrics. One prom-client Registry per app (never the global one), so several apps in
// one process (the tests) keep separate counts. Requests and batches are recorded as they happen;
// what the models and the queue look like now (queue depth, in-flight, model info) is read on
// scrape, so it never goes stale and the request path does not pay for it.
import type { FastifyInstance, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { BatchInfo } from '../batching/batcher.js';
import type { Direction } from '../inference/protocol.js';
import { ErrorCodes } from '../errors.js';
import { refusalOn } from '../http-server.js';
import type { ImageFormat } from '../latents/options.js';
import type { ModelRegistry } from '../serving/registry.js';
import type { ServedEncoder } from '../serving/served-encoder.js';
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
  /** Which route: /decode (the default) or /encode. */
  direction?: Direction;
}

/** What the decode route learns about a request as it goes; recorded once, when it ends. */
export interface DecodeNote {
  model?: string;
  timings: StageTimings;
  samples: number;
  format?: ImageFormat | VideoFormat | 'tensor';
  /** /encode's requests say so; /decode's leave it unset. */
  direction?: Direction;
  /**
   * Set by a route that ends an answer itself after its status went out (a streamed video reset
   * mid-way: error or timed_out): counted as this instead of by the status.
   */
  outcome?: Outcome;
}

/** The outcome label of an answer's status (499: the client closed the connection first). */
export function outcomeOf(status: number): Outcome {
  if (status < 400) return 'ok';
  if (status === 429) return 'rejected';
  if (status === 504) return 'timed_out';
  if (status === 499) return 'cancelled';
  return status < 500 ? 'bad_request' : 'error';
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
  private readonly requests: Counter<'model' | 'direction' | 'outcome'>;
  private readonly requestSeconds: Histogram<'model' | 'direction' | 'outcome'>;
  private readonly stageSeconds: Histogram<'model' | 'direction' | 'stage'>;
  private readonly decodedSamples: Counter<'model' | 'format'>;
  private readonly encodedSamples: Counter<'model'>;
  private readonly batches: Counter<'model' | 'direction'>;
  private readonly batchFailures: Counter<'model' | 'direction'>;
  private readonly batchSamples: Counter<'model' | 'direction'>;
  private readonly batchSize: Histogram<'model' | 'direction'>;
  private readonly inferenceSeconds: Histogram<'model' | 'direction'>;
  /** Models whose counters have been set to 0, so that rate() works from their first request. */
  private readonly initialized = new Set<string>();

  constructor(source: MetricsSource) {
    const registers = [this.register];
    collectDefaultMetrics({ register: this.register, prefix: METRIC_PREFIX });
    const name = (n: string): string => METRIC_PREFIX + n;

    const models = (): ServedModel[] => [...(source.registry?.models.values() ?? [])];
    const encoders = (): ServedEncoder[] => [...(source.registry?.encoders.values() ?? [])];
    this.requests = new Counter({
      name: name('requests_total'), help: 'Requests, each once however it ended, by direction (decode, encode) and outcome (ok, rejected, timed_out, cancelled, bad_request, error); model "none" includes requests Node\'s HTTP parser refused',
      labelNames: ['model', 'direction', 'outcome'], registers,
      // The first of these metrics on a scrape: the counters below it are initialized in time.
      collect: () => this.initialize([...models().map((m) => [m.name, 'decode'] as const), ...encoders().map((m) => [m.name, 'encode'] as const)]),
    });
    this.requestSeconds = new Histogram({
      name: name('request_duration_seconds'), help: 'Whole request, from its arrival to the answer, by direction and outcome',
      labelNames: ['model', 'direction', 'outcome'], buckets: SECONDS_BUCKETS, registers,
    });
    this.stageSeconds = new Histogram({
      name: name('stage_duration_seconds'),
      help: 'Time a request spent in one stage: parse (body to tensor), queue (wait for a batch), infer (the batch run(s) it was in), encode (the answer\'s bytes: images, or latents for /encode)',
      labelNames: ['model', 'direction', 'stage'], buckets: SECONDS_BUCKETS, registers,
    });
    this.decodedSamples = new Counter({
      name: name('decoded_samples_total'), help: 'Samples decoded and returned, by output format (png, jpeg, webp, tensor)',
      labelNames: ['model', 'format'], registers,
    });
    this.encodedSamples = new Counter({ name: name('encoded_samples_total'), help: 'Images encoded to latents and returned', labelNames: ['model'], registers });
    const perBatch = ['model', 'direction'] as const;
    this.batches = new Counter({ name: name('batches_total'), help: 'Batches run by the inference worker', labelNames: perBatch, registers });
    this.batchFailures = new Counter({ name: name('batch_failures_total'), help: 'Batches whose inference run failed', labelNames: perBatch, registers });
    this.batchSamples = new Counter({ name: name('batch_samples_total'), help: 'Samples in all batches run (divide by batches_total for the mean batch size)', labelNames: perBatch, registers });
    this.batchSize = new Histogram({
      name: name('batch_size_samples'), help: 'Samples per batch run', labelNames: perBatch, buckets: BATCH_SIZE_BUCKETS, registers,
    });
    this.inferenceSeconds = new Histogram({
      name: name('inference_duration_seconds'), help: 'One batch run in the inference worker', labelNames: perBatch, buckets: SECONDS_BUCKETS, registers,
    });

    const perModel = (g: Gauge<'model'>, value: (m: ServedModel) => number): void => {
      g.reset();
      for (const m of models()) g.set({ model: m.name }, value(m));
    };
    // decoders and encoders queue apart (they run different sessions): one series per direction
    const perQueue = (g: Gauge<'model' | 'direction'>, value: (b: ServedModel['batcher'] | ServedEncoder['batcher']) => number): void => {
      g.reset();
      for (const m of models()) g.set({ model: m.name, direction: 'decode' }, value(m.batcher));
      for (const m of encoders()) g.set({ model: m.name, direction: 'encode' }, value(m.batcher));
    };
    const queue: Gauge<'model' | 'direction'> = new Gauge({
      name: name('queue_samples'), help: 'Samples waiting in the batcher queue (the autoscaling signal), by direction', labelNames: ['model', 'direction'], registers,
      collect: () => perQueue(queue, (b) => b.waitingSamples),
    });
    const running: Gauge<'model' | 'direction'> = new Gauge({
      name: name('running_batches'), help: 'Batches in the inference worker now, by direction', labelNames: ['model', 'direction'], registers,
      collect: () => perQueue(running, (b) => b.runningBatches),
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

  private readonly notes = new WeakMap<FastifyRequest, DecodeNote>();
  private readonly counted = new WeakSet<FastifyRequest>();

  /** The request's note, for its route to fill in. */
  noteOf(req: FastifyRequest): DecodeNote {
    let note = this.notes.get(req);
    if (!note) this.notes.set(req, (note = { timings: {}, samples: 0 }));
    return note;
  }

  /**
   * Counts every request of `app`'s routes once, whatever ends it: its answer (onResponse), or
   * its connection closing first (onRequestAbort during the upload, the response's close after
   * it): Node's own refusal when its parser closed it (408 at BODY_TIMEOUT_MS, 400), else a
   * client abort (499). `seconds` runs from the request's arrival.
   */
  countRequests(app: FastifyInstance): void {
    const arrivals = new WeakMap<FastifyRequest, number>();
    const record = (req: FastifyRequest, status: number, seconds: number): void => {
      if (this.counted.has(req)) return;
      this.counted.add(req);
      const note = this.notes.get(req) ?? { timings: {}, samples: 0 };
      this.onDecode({ ...note, model: note.model, outcome: note.outcome ?? outcomeOf(status), seconds });
    };
    app.addHook('onRequest', async (req, reply) => {
      const arrival = performance.now() - reply.elapsedTime;
      arrivals.set(req, arrival);
      // A connection closed after the whole body arrived is no abort to Fastify (req.aborted is
      // false) and its answer never finishes, so neither hook below runs: counted here.
      reply.raw.once('close', () => {
        if (reply.raw.writableFinished) return; // onResponse counts it
        const refusal = refusalOn(req.raw.socket);
        record(req, refusal ? ErrorCodes[refusal.code] : 499, (performance.now() - arrival) / 1000);
      });
    });
    app.addHook('onResponse', async (req, reply) => record(req, reply.statusCode, reply.elapsedTime / 1000));
    app.addHook('onRequestAbort', async (req) => {
      const arrival = arrivals.get(req);
      const refusal = refusalOn(req.raw.socket);
      record(req, refusal ? ErrorCodes[refusal.code] : 499, arrival === undefined ? 0 : (performance.now() - arrival) / 1000);
    });
  }

  /** A request Node's HTTP parser answered (400, 408, 431) before any route saw it: model "none". */
  readonly onUnrouted = (status: number): void => {
    this.requests.inc({ model: 'none', direction: 'decode', outcome: outcomeOf(status) });
  };

  /** Records one request's end (countRequests calls it once per request). */
  readonly onDecode = (e: DecodeEvent): void => {
    // "none" when the request failed before a model was chosen: never the client's model name.
    const model = e.model ?? 'none';
    const direction = e.direction ?? 'decode';
    this.requests.inc({ model, direction, outcome: e.outcome });
    this.requestSeconds.observe({ model, direction, outcome: e.outcome }, e.seconds);
    for (const stage of STAGES) {
      const ms = e.timings[stage];
      if (ms !== undefined) this.stageSeconds.observe({ model, direction, stage }, ms / 1000);
    }
    if (e.outcome !== 'ok') return;
    if (direction === 'encode') this.encodedSamples.inc({ model }, e.samples);
    else if (e.format) this.decodedSamples.inc({ model, format: e.format }, e.samples);
  };

  /** The models' batch listener: once per batch run. */
  readonly onBatch = (model: string, b: BatchInfo, direction: Direction = 'decode'): void => {
    const labels = { model, direction };
    this.batches.inc(labels);
    this.batchSamples.inc(labels, b.sampleCount);
    this.batchSize.observe(labels, b.sampleCount);
    this.inferenceSeconds.observe(labels, b.runMs / 1000);
    if (!b.ok) this.batchFailures.inc(labels);
  };

  private initialize(served: (readonly [string, Direction])[]): void {
    for (const [model, direction] of served) {
      const key = `${direction}:${model}`;
      if (this.initialized.has(key)) continue;
      this.initialized.add(key);
      for (const outcome of Object.keys(OUTCOMES) as Outcome[]) this.requests.inc({ model, direction, outcome }, 0);
      for (const c of [this.batches, this.batchFailures, this.batchSamples]) c.inc({ model, direction }, 0);
    }
  }
}

/** Decorates `metrics` and records every batch run of the models plugin's host. */
export default fp(async (app: FastifyInstance) => {
  const metrics = new Metrics(app.models);
  app.decorate('metrics', metrics);
  app.models.onBatch(metrics.onBatch);
}, { name: 'metrics', dependencies: ['models'], fastify: '5.x' });
