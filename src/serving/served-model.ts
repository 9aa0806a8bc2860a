// One served model: its inference workers (MODEL_INSTANCES sessions), its batcher, and the settings
// requests are checked against. Glues the pure batcher to the runners: the batcher keeps one batch
// in flight per instance and says which slot runs it; this concatenates the slices of a batch into
// one input tensor and hands each request views of its rows of the output.
import type { Config } from '../config.js';
import { Batcher, type Batch, type BatchInfo, type BatchTicket, type Demand } from '../batching/batcher.js';
import { ServiceError } from '../errors.js';
import { InferenceRunner, type RunnerLogger, type RunnerOptions, type RunResult } from '../inference/runner.js';
import type { Direction, ModelIo, OutputName } from '../inference/protocol.js';
import type { LatentTensor, ModelLimits } from '../latents/parse.js';
import { channelStats, type ChannelStats } from '../latents/normalize.js';
import { servedFactors, statsConfig } from './factors.js';
import type { ModelConfigFile } from './model-config.js';
import type { ChannelNormalization } from '../video/wan-latents.js';
import type { VideoStep } from '../video/protocol.js';
import { runSteps } from '../video/step-run.js';

export interface ModelSpec {
  name: string;
  /** The decoder (model.onnx); absent for an encode-only folder. */
  modelPath?: string;
  /** The encoder beside it (encoder.onnx), when the folder has one. */
  encoderPath?: string;
  modelBytes?: Uint8Array;
  file: ModelConfigFile;
  builtin: boolean;
}

export interface Payload {
  tensor: LatentTensor;
  fetch: OutputName[];
  /** A streaming video decoder's step (src/video/decoder.ts): one stream's latent frame. */
  step?: VideoStep;
}

export interface BatchResult extends RunResult {
  /** Samples in the batch (rows of its outputs). */
  sampleCount: number;
}

/** Room in a model's queue held for one request: what `decode` submits against. */
export type DecodeTicket = BatchTicket<Payload, BatchResult>;

export interface Decoded {
  n: number;
  height: number;
  width: number;
  /** Per sample: height × width × 3 uint8 (views on the batch output). */
  images?: Uint8Array[];
  /** The decoder's float32 output [n, 3, height, width] (diffusers' DecoderOutput.sample). */
  sample?: Float32Array;
  queueMs: number;
  runMs: number;
}

export interface DecodeRunOptions {
  /** The request's reservation (`model.batcher.reserve(...)`): the samples are drawn from it. */
  ticket: DecodeTicket;
  deadline?: number;
  signal?: AbortSignal;
  /** Names row `r` of the tensor in messages; default `sample r of N`. */
  rowName?: (row: number) => string;
}

/** The batcher key of [N, C, h, w] latents: what can share a run is one latent size. */
export const batchKey = (h: number, w: number): string => `${h}x${w}`;

/** What decoding [N, C, h, w] latents in one piece queues: N samples of cost h·w. */
export function untiledDemand(shape: readonly number[]): Demand {
  const [n, , h, w] = shape as [number, number, number, number];
  return { key: batchKey(h, w), sampleCount: n, cost: h * w };
}

export type BatchListener = (model: string, info: BatchInfo, direction?: Direction) => void;

export class ServedModel implements ModelLimits {
  readonly batcher: Batcher<Payload, BatchResult>;
  readonly scalingFactor: number;
  readonly shiftFactor: number;
  readonly maxLatentSide: number;
  readonly factorsGuessed: boolean;
  /** Per-channel statistics of the denoiser's space (FLUX.2, Wan), when the model states them. */
  readonly stats?: ChannelStats;
  /** A video model's per-channel latents_mean/latents_std (Wan), as stated: src/video/ de-normalises with them. */
  readonly normalization: ChannelNormalization | undefined;
  private readonly fixedSide: [number | string, number | string];
  private constructor(readonly spec: ModelSpec, readonly runners: InferenceRunner[], cfg: Config, onBatch?: BatchListener) {
    const io = runners[0]!.io;
    const factors = servedFactors(spec.file, io.metadata, io.channels);
    this.scalingFactor = factors.scalingFactor;
    this.shiftFactor = factors.shiftFactor;
    this.factorsGuessed = factors.guessed;
    const stated = statsConfig(spec.file, io.metadata);
    const stats = channelStats(stated, io.channels, `model ${spec.name}`);
    if (stats) this.stats = stats;
    this.maxLatentSide = cfg.maxLatentSide;
    this.fixedSide = [io.inputShape.at(-2)!, io.inputShape.at(-1)!];
    if (stats && io.inputShape.length === 5 && stats.patch !== 1) {
      throw new Error(`model ${spec.name}: a video model's latentsMean and latentsStd are per latent channel (${io.channels} each); patchSize does not apply`);
    }
    this.normalization = stats && io.inputShape.length === 5
      ? { latentsMean: stated.latentsMean ?? Array.from(stats.mean), latentsStd: stated.latentsStd ?? Array.from(stats.std) }
      : undefined;
    const fixedBatch = typeof io.inputShape[0] === 'number' ? io.inputShape[0] : Infinity;
    this.batcher = new Batcher<Payload, BatchResult>((b) => this.runBatch(b), {
      maxBatchSize: Math.min(cfg.maxBatchSize, fixedBatch),
      maxBatchCost: cfg.maxBatchLatentPixels,
      maxQueueDelayMs: cfg.maxQueueDelayMs,
      maxQueueSize: cfg.maxQueueSize,
      concurrency: runners.length,
      onBatch: onBatch && ((info) => onBatch(spec.name, info)),
    });
  }

  static async start(spec: ModelSpec, cfg: Config, log: RunnerLogger, onBatch?: BatchListener, runnerOpts: RunnerOptions = {}): Promise<ServedModel> {
    const init = {
      modelPath: spec.modelPath, modelBytes: spec.modelBytes, maxModelBytes: cfg.maxModelBytes, providers: cfg.executionProviders,
      intraOpThreads: cfg.intraOpThreads, cpuMemArena: cfg.cpuMemArena, allowSpinning: cfg.allowSpinning, warmupLatentSizes: cfg.warmupLatentSizes, maxBatchSize: cfg.maxBatchSize,
    };
    const started = await Promise.allSettled(Array.from({ length: cfg.modelInstances }, () => InferenceRunner.start(init, log, runnerOpts)));
    const runners = started.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
    const failed = started.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) {
      await Promise.all(runners.map((r) => r.close()));
      throw failed.reason;
    }
    let m: ServedModel;
    try {
      m = new ServedModel(spec, runners, cfg, onBatch);
    } catch (e) {
      await Promise.all(runners.map((r) => r.close()));
      throw e;
    }
    if (m.factorsGuessed) {
      log.warn({ model: m.name, channels: m.channels, scalingFactor: m.scalingFactor, shiftFactor: m.shiftFactor },
        `model ${m.name} does not say its scaling factor; guessing from its ${m.channels} channels (set scalingFactor and shiftFactor in its config.json)`);
    }
    log.info({ model: m.name, instances: runners.length, provider: m.io.provider, channels: m.io.channels, inputType: m.io.inputType,
      loadMs: Math.round(m.io.loadMs), warmupMs: Math.round(m.io.warmupMs), scalingFactor: m.scalingFactor, shiftFactor: m.shiftFactor },
    `model ${m.name} ready on ${m.io.provider}`);
    return m;
  }

  get name(): string { return this.spec.name; }
  get io(): ModelIo { return this.runners[0]!.io; }
  /** Every instance loaded and running (none restarting). */
  get healthy(): boolean { return this.runners.every((r) => r.healthy); }
  get channels(): number { return this.io.channels; }
  /** A streaming video decoder (one latent frame per run, src/video/), not an image decoder. */
  get isVideo(): boolean { return this.io.inputShape.length === 5; }
  get precision(): string { return this.spec.file.precision ?? (this.io.inputType === 'float16' ? 'fp16' : 'fp32'); }
  /** The model family (sd1, sdxl, taesd, ...) when config.json or the ONNX metadata names one. */
  get family(): string | undefined { return this.spec.file.family ?? (this.io.metadata.family || undefined); }

  /**
   * Queues the latents against the request's ticket; resolves with its rows of the batch output(s).
   * Throws BAD_SHAPE (a fixed-size model), NON_FINITE_OUTPUT naming the row, INFERENCE_FAILED, and
   * the batcher's DeadlineError / the signal's reason.
   */
  async decode(tensor: LatentTensor, fetch: OutputName[], opts: DecodeRunOptions): Promise<Decoded> {
    const [n, , h, w] = tensor.shape;
    const [fh, fw] = this.fixedSide;
    if ((typeof fh === 'number' && fh !== h) || (typeof fw === 'number' && fw !== w)) {
      throw new ServiceError('BAD_SHAPE', `model ${this.name} takes ${fh}x${fw} latents only, got ${h}x${w}`);
    }
    const res = await opts.ticket.submit(batchKey(h, w), { tensor, fetch }, n, { deadline: opts.deadline, signal: opts.signal });
    for (const p of res.parts) {
      const bad = p.result.outputs.nonFinite.find((row) => row >= p.batchOffset && row < p.batchOffset + p.count);
      if (bad !== undefined) {
        const row = p.start + bad - p.batchOffset;
        const named = opts.rowName?.(row) ?? `sample ${row} of ${n}`;
        throw new ServiceError('NON_FINITE_OUTPUT', `model ${this.name} produced NaN or infinite values for ${named}: ` +
          'the latents are outside what the decoder handles (check scaling_factor and shift_factor) or the model overflows in float16');
      }
    }
    const first = res.parts[0]!.result;
    const pixels = first.outputs.image ? first.outputs.image.byteLength / (first.sampleCount * 3) : (first.outputs.sample!.byteLength / 4) / (first.sampleCount * 3);
    const up = Math.round(Math.sqrt(pixels / (h * w)));
    const out: Decoded = { n, height: h * up, width: w * up, queueMs: res.queueMs, runMs: res.runMs };
    const plane = out.height * out.width * 3;
    if (fetch.includes('image')) {
      out.images = res.parts.flatMap((p) => Array.from({ length: p.count }, (_, k) =>
        new Uint8Array(p.result.outputs.image!, (p.batchOffset + k) * plane, plane)));
    }
    if (fetch.includes('sample')) {
      const rows = (p: (typeof res.parts)[number]): Float32Array =>
        new Float32Array(p.result.outputs.sample!, p.batchOffset * plane * 4, p.count * plane);
      if (res.parts.length === 1) out.sample = rows(res.parts[0]!); // one run: its rows are contiguous
      else {
        out.sample = new Float32Array(n * plane);
        for (const p of res.parts) out.sample.set(rows(p), p.start * plane);
      }
    }
    return out;
  }

  private async runBatch(batch: Batch<Payload>): Promise<BatchResult> {
    const { step, tensor: first } = batch.slices[0]!.payload;
    if (step) {
      const steps = batch.slices.map(({ payload: p }) => ({ data: p.tensor.data, dims: p.tensor.shape, step: p.step!, fetch: p.fetch }));
      try {
        return { ...(await runSteps(this.runners[step.instance]!, steps)), sampleCount: batch.sampleCount };
      } catch (e) {
        throw new ServiceError('INFERENCE_FAILED', `model ${this.name} failed on a video step of ${steps.length} stream(s) of ${first.shape.join('x')}: ${(e as Error).message}`, { cause: e });
      }
    }
    const [, c, h, w] = first.shape;
    const per = c * h * w;
    const data = new Float32Array(batch.sampleCount * per);
    const fetch = new Set<OutputName>();
    let row = 0;
    for (const s of batch.slices) {
      data.set(s.payload.tensor.data.subarray(s.start * per, (s.start + s.count) * per), row * per);
      row += s.count;
      for (const f of s.payload.fetch) fetch.add(f);
    }
    try {
      const r = await this.runners[batch.slot]!.run(data, [batch.sampleCount, c, h, w], [...fetch]);
      return { ...r, sampleCount: batch.sampleCount };
    } catch (e) {
      throw new ServiceError('INFERENCE_FAILED', `model ${this.name} failed on a batch of ${batch.sampleCount}x${c}x${h}x${w}: ${(e as Error).message}`, { cause: e });
    }
  }

  async close(): Promise<void> {
    await Promise.all(this.runners.map((r) => r.close()));
  }
}
