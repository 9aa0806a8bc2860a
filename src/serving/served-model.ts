// One served model: its inference workers (MODEL_INSTANCES sessions), its batcher, and the settings
// requests are checked against. Glues the pure batcher to the runners: the batcher keeps one batch
// in flight per instance and says which slot runs it; this concatenates the slices of a batch into
// one input tensor and hands each request views of its rows of the output.
import type { Config } from '../config.js';
import { Batcher, type Batch, type BatchInfo } from '../batching/batcher.js';
import { ServiceError } from '../errors.js';
import { InferenceRunner, type RunnerLogger, type RunnerOptions, type RunResult } from '../inference/runner.js';
import type { ModelIo, OutputName } from '../inference/protocol.js';
import type { LatentTensor, ModelLimits } from '../latents/parse.js';
import { FAMILIES, defaultFactors, isFamily, type ModelConfigFile } from './model-config.js';
import type { ChannelNormalization } from '../video/wan-latents.js';
import type { VideoStep } from '../video/protocol.js';
import { runSteps } from '../video/step-run.js';

export interface ModelSpec {
  name: string;
  modelPath?: string;
  modelBytes?: Uint8Array;
  file: ModelConfigFile;
  builtin: boolean;
}

interface Payload {
  tensor: LatentTensor;
  fetch: OutputName[];
  /** A streaming video decoder's step (src/video/decoder.ts): one stream's latent frame. */
  step?: VideoStep;
}

interface BatchResult extends RunResult {
  samples: number;
}

export interface Decoded {
  n: number;
  height: number;
  width: number;
  /** Per sample: height × width × 3 uint8 (views on the batch output). */
  images?: Uint8Array[];
  /** float32 [n, 3, height, width]. */
  samples?: Float32Array;
  queueMs: number;
  runMs: number;
}

export type BatchListener = (model: string, info: BatchInfo) => void;

export class ServedModel implements ModelLimits {
  readonly batcher: Batcher<Payload, BatchResult>;
  readonly scalingFactor: number;
  readonly shiftFactor: number;
  readonly maxLatentSide: number;
  readonly factorsGuessed: boolean;
  /** Per-channel latents_mean/latents_std (Wan), from config.json or the ONNX metadata. */
  readonly normalization: ChannelNormalization | undefined;
  private readonly fixedSide: [number | string, number | string];
  private constructor(readonly spec: ModelSpec, readonly runners: InferenceRunner[], cfg: Config, onBatch?: BatchListener) {
    const io = runners[0]!.io;
    const meta = io.metadata;
    const defaults = defaultFactors(io.channels);
    const metaNum = (k: string): number | undefined => (meta[k] !== undefined && Number.isFinite(Number(meta[k])) ? Number(meta[k]) : undefined);
    const scaling = spec.file.scalingFactor ?? metaNum('scaling_factor');
    // a named family (config.json or metadata) stands in for factors the model does not state
    const family = spec.file.family ?? meta.family;
    const preset = isFamily(family) ? FAMILIES[family] : undefined;
    const base = scaling !== undefined ? { scalingFactor: scaling, shiftFactor: 0 } : preset ?? defaults;
    this.scalingFactor = base.scalingFactor;
    this.shiftFactor = spec.file.shiftFactor ?? metaNum('shift_factor') ?? base.shiftFactor;
    this.factorsGuessed = scaling === undefined && !preset && defaults.guessed;
    this.maxLatentSide = cfg.maxLatentSide;
    this.fixedSide = [io.inputShape.at(-2)!, io.inputShape.at(-1)!];
    const mean = spec.file.latentsMean ?? (meta.latents_mean ? JSON.parse(meta.latents_mean) as number[] : undefined);
    const std = spec.file.latentsStd ?? (meta.latents_std ? JSON.parse(meta.latents_std) as number[] : undefined);
    const perChannel = (v: unknown): boolean => Array.isArray(v) && v.length === io.channels && v.every((x) => typeof x === 'number' && Number.isFinite(x));
    if ((mean || std) && !(perChannel(mean) && perChannel(std))) {
      throw new Error(`model ${spec.name}: latentsMean and latentsStd must be ${io.channels} finite numbers each`);
    }
    this.normalization = mean && std ? { latentsMean: mean, latentsStd: std } : undefined;
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
      modelPath: spec.modelPath, modelBytes: spec.modelBytes, providers: cfg.executionProviders,
      intraOpThreads: cfg.intraOpThreads, cpuMemArena: cfg.cpuMemArena, warmupLatentSizes: cfg.warmupLatentSizes, maxBatchSize: cfg.maxBatchSize,
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

  /** Queues the latents; resolves with this request's rows of the batch output(s). */
  async decode(tensor: LatentTensor, fetch: OutputName[], opts: { deadline?: number; signal?: AbortSignal }): Promise<Decoded> {
    const [n, , h, w] = tensor.shape;
    const [fh, fw] = this.fixedSide;
    if ((typeof fh === 'number' && fh !== h) || (typeof fw === 'number' && fw !== w)) {
      throw new ServiceError('BAD_SHAPE', `model ${this.name} takes ${fh}x${fw} latents only, got ${h}x${w}`);
    }
    const res = await this.batcher.submit(`${h}x${w}`, { tensor, fetch }, n, { ...opts, cost: h * w });
    for (const p of res.parts) {
      const bad = p.result.outputs.nonFinite.find((row) => row >= p.batchOffset && row < p.batchOffset + p.count);
      if (bad !== undefined) {
        const sample = p.start + bad - p.batchOffset;
        throw new ServiceError('NON_FINITE_OUTPUT', `model ${this.name} produced NaN or infinite values for sample ${sample} of ${n}: ` +
          'the latents are outside what the decoder handles (check scaling_factor and shift_factor) or the model overflows in float16');
      }
    }
    const first = res.parts[0]!.result;
    const pixels = first.outputs.image ? first.outputs.image.byteLength / (first.samples * 3) : (first.outputs.sample!.byteLength / 4) / (first.samples * 3);
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
      if (res.parts.length === 1) out.samples = rows(res.parts[0]!); // one run: its rows are contiguous
      else {
        out.samples = new Float32Array(n * plane);
        for (const p of res.parts) out.samples.set(rows(p), p.start * plane);
      }
    }
    return out;
  }

  private async runBatch(batch: Batch<Payload>): Promise<BatchResult> {
    const { step, tensor: first } = batch.slices[0]!.payload;
    if (step) {
      const steps = batch.slices.map(({ payload: p }) => ({ data: p.tensor.data, dims: p.tensor.shape, step: p.step!, fetch: p.fetch }));
      try {
        return { ...(await runSteps(this.runners[step.instance]!, steps)), samples: batch.samples };
      } catch (e) {
        throw new ServiceError('INFERENCE_FAILED', `model ${this.name} failed on a video step of ${steps.length} stream(s) of ${first.shape.join('x')}: ${(e as Error).message}`, { cause: e });
      }
    }
    const [, c, h, w] = first.shape;
    const per = c * h * w;
    const data = new Float32Array(batch.samples * per);
    const fetch = new Set<OutputName>();
    let row = 0;
    for (const s of batch.slices) {
      data.set(s.payload.tensor.data.subarray(s.start * per, (s.start + s.count) * per), row * per);
      row += s.count;
      for (const f of s.payload.fetch) fetch.add(f);
    }
    try {
      const r = await this.runners[batch.slot]!.run(data, [batch.samples, c, h, w], [...fetch]);
      return { ...r, samples: batch.samples };
    } catch (e) {
      throw new ServiceError('INFERENCE_FAILED', `model ${this.name} failed on a batch of ${batch.samples}x${c}x${h}x${w}: ${(e as Error).message}`, { cause: e });
    }
  }

  async close(): Promise<void> {
    await Promise.all(this.runners.map((r) => r.close()));
  }
}
