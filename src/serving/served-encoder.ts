// One served encoder (a model folder's encoder.onnx): its inference workers and its own batcher.
// Encode batches never mix with decode batches — they run another session — so the encoder keeps
// a queue of its own under the same limits (MAX_BATCH_SIZE, MAX_BATCH_LATENT_PIXELS of latent
// area, MAX_QUEUE_SIZE, MAX_QUEUE_DELAY_MS, MODEL_INSTANCES). Requests batch by image size.
import type { Config } from '../config.js';
import { Batcher, type Batch, type BatchInfo, type BatchTicket, type Demand, type ReserveWording } from '../batching/batcher.js';
import { ServiceError } from '../errors.js';
import type { OutputName } from '../inference/protocol.js';
import { InferenceRunner, type RunnerLogger, type RunnerOptions, type RunResult } from '../inference/runner.js';
import { channelStats, type ChannelStats } from '../latents/normalize.js';
import { servedFactors, statsConfig } from './factors.js';
import type { ModelConfigFile } from './model-config.js';

/** Pixels per latent along a side, for every image VAE served (SD, SDXL, SD3, FLUX, FLUX.2, TAESD). */
export const VAE_SCALE_FACTOR = 8;

interface Payload {
  /** float32 [n, 3, H, W] in [-1, 1]. */
  images: Float32Array;
  fetch: OutputName[];
}

interface BatchResult extends RunResult {
  sampleCount: number;
}

/** Room in an encoder's queue held for one request: what `encode` submits against. */
export type EncodeTicket = BatchTicket<Payload, BatchResult>;

/** The batcher key of [N, 3, H, W] images: what can share a run is one image size. */
export const encodeKey = (h: number, w: number): string => `${h}x${w}`;

/** What encoding [N, 3, H, W] images in one piece queues: N samples of cost (H/8)·(W/8) latents. */
export function encodeDemand(shape: readonly number[]): { demands: Demand[]; wording: ReserveWording } {
  const [n, , h, w] = shape as [number, number, number, number];
  return { demands: [{ key: encodeKey(h, w), sampleCount: n, cost: (h / VAE_SCALE_FACTOR) * (w / VAE_SCALE_FACTOR) }], wording: { unit: 'images' } };
}

export interface Encoded {
  /** float32 [n, C, H/8, W/8]. */
  mean: Float32Array;
  std?: Float32Array;
  queueMs: number;
  runMs: number;
}

export interface EncodeRunOptions {
  /** The request's reservation: the samples are drawn from it. */
  ticket: EncodeTicket;
  deadline?: number;
  signal?: AbortSignal;
  /** Also the posterior's std (KL encoders). */
  std?: boolean;
}

export type EncodeBatchListener = (model: string, info: BatchInfo) => void;

export class ServedEncoder {
  readonly batcher: Batcher<Payload, BatchResult>;
  readonly scalingFactor: number;
  readonly shiftFactor: number;
  /** Per-channel statistics of the denoiser's space (FLUX.2), when the model states them. */
  readonly stats?: ChannelStats;

  private constructor(readonly name: string, readonly file: ModelConfigFile, readonly runners: InferenceRunner[], cfg: Config, onBatch?: EncodeBatchListener) {
    const io = runners[0]!.io;
    const f = servedFactors(file, io.metadata, this.latentChannels);
    this.scalingFactor = f.scalingFactor;
    this.shiftFactor = f.shiftFactor;
    const stats = channelStats(statsConfig(file, io.metadata), this.latentChannels, `model ${name}`);
    if (stats) this.stats = stats;
    this.batcher = new Batcher<Payload, BatchResult>((b) => this.runBatch(b), {
      maxBatchSize: cfg.maxBatchSize,
      maxBatchCost: cfg.maxBatchLatentPixels,
      maxQueueDelayMs: cfg.maxQueueDelayMs,
      maxQueueSize: cfg.maxQueueSize,
      concurrency: runners.length,
      onBatch: onBatch && ((info) => onBatch(name, info)),
    });
  }

  /** Starts MODEL_INSTANCES workers on `path`; throws (closing any started) when one fails. */
  static async start(name: string, path: string, file: ModelConfigFile, cfg: Config, log: RunnerLogger,
    onBatch?: EncodeBatchListener, runnerOpts: RunnerOptions = {}): Promise<ServedEncoder> {
    const init = {
      modelPath: path, providers: cfg.executionProviders, intraOpThreads: cfg.intraOpThreads, cpuMemArena: cfg.cpuMemArena,
      warmupLatentSizes: cfg.warmupLatentSizes, maxBatchSize: cfg.maxBatchSize, direction: 'encode' as const,
    };
    const started = await Promise.allSettled(Array.from({ length: cfg.modelInstances }, () => InferenceRunner.start(init, log, runnerOpts)));
    const runners = started.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
    const failed = started.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) {
      await Promise.all(runners.map((r) => r.close()));
      throw new Error(`encoder ${path}: ${(failed.reason as Error).message}`);
    }
    const e = new ServedEncoder(name, file, runners, cfg, onBatch);
    log.info({ model: name, instances: runners.length, provider: e.runners[0]!.io.provider, latentChannels: e.latentChannels, std: e.hasStd },
      `encoder ${name} ready on ${e.runners[0]!.io.provider}`);
    return e;
  }

  get latentChannels(): number { return this.runners[0]!.io.latentChannels ?? 0; }
  /** KL encoders give the posterior's std (sample_mode=sample); TAESD is deterministic. */
  get hasStd(): boolean { return this.runners[0]!.io.hasStd ?? false; }
  get healthy(): boolean { return this.runners.every((r) => r.healthy); }
  get provider(): string { return this.runners[0]!.io.provider; }

  /**
   * Queues images float32 [n, 3, H, W] in [-1, 1] (H, W multiples of 8); resolves with the
   * posterior mean (and std when asked and the encoder has one), [n, C, H/8, W/8]. The samples
   * are drawn from the request's ticket (`batcher.reserve(encodeDemand(shape).demands)`). Rejects
   * with DeadlineError, the signal's reason, or INFERENCE_FAILED.
   */
  async encode(images: Float32Array, shape: readonly [number, number, number, number], opts: EncodeRunOptions): Promise<Encoded> {
    const [n, , h, w] = shape;
    const fetch: OutputName[] = opts.std && this.hasStd ? ['mean', 'std'] : ['mean'];
    const cost = (h / VAE_SCALE_FACTOR) * (w / VAE_SCALE_FACTOR);
    const res = await opts.ticket.submit(encodeKey(h, w), { images, fetch }, n, { deadline: opts.deadline, signal: opts.signal });
    const per = this.latentChannels * cost;
    const gather = (key: 'mean' | 'std'): Float32Array => {
      const out = new Float32Array(n * per);
      for (const p of res.parts) out.set(new Float32Array(p.result.outputs[key]!, p.batchOffset * per * 4, p.count * per), p.start * per);
      return out;
    };
    return { mean: gather('mean'), ...(fetch.includes('std') ? { std: gather('std') } : {}), queueMs: res.queueMs, runMs: res.runMs };
  }

  private async runBatch(batch: Batch<Payload>): Promise<BatchResult> {
    const [h, w] = batch.key.split('x').map(Number) as [number, number];
    const per = 3 * h * w;
    const data = new Float32Array(batch.sampleCount * per);
    const fetch = new Set<OutputName>();
    let row = 0;
    for (const s of batch.slices) {
      data.set(s.payload.images.subarray(s.start * per, (s.start + s.count) * per), row * per);
      row += s.count;
      for (const f of s.payload.fetch) fetch.add(f);
    }
    try {
      const r = await this.runners[batch.slot]!.run(data, [batch.sampleCount, 3, h, w], [...fetch]);
      return { ...r, sampleCount: batch.sampleCount };
    } catch (e) {
      throw new ServiceError('INFERENCE_FAILED', `encoder ${this.name} failed on a batch of ${batch.sampleCount}x3x${h}x${w}: ${(e as Error).message}`, { cause: e });
    }
  }

  async close(): Promise<void> {
    await Promise.all(this.runners.map((r) => r.close()));
  }
}
