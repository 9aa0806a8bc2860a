// The benchmark's plan and result types: what bench/plans.ts asks for, what bench/run.ts writes
// to <stem>.json, and what bench/report.ts and bench/chart.ts render (also from older JSON files,
// hence the optional fields).
import type { CpuSideResult } from './cpu-side.js';
import type { RawResult } from './raw-ort.js';
import type { Summary } from './stats.js';
import type { CpuWindow, MachineInfo } from './sys.js';
import type { ProfileSummary } from './profile.js';

export type ModelKey = 'small' | 'large' | 'taesd';
export type Format = 'jpeg' | 'png';

export interface PhaseShape { warmup: number; min: number; max: number; seconds: number }

export interface ModelPlan {
  key: ModelKey;
  label: string;
  path: string;
  side: number;
  formats: Format[];
  levels: number[];
  /** Per level: warm-up requests, min requests, max requests, seconds. */
  phase: (c: number) => PhaseShape;
  /**
   * The format × concurrency during which the /healthz prober runs. `dedicated`: in an extra phase
   * of its own (so the prober's CPU does not count against a measured throughput); else during
   * that measured phase (for models where an extra phase would take minutes). Absent: no prober.
   */
  probeAt?: { format: Format; concurrency: number; dedicated?: boolean; seconds?: number };
  /** Raw ORT batch sizes; empty: no raw ceiling for this model. */
  rawBatches: number[];
  rawFloat: boolean;
  raw: { minIters: number; maxIters: number; minSeconds: number; warm: 'all' | 'first' };
  soakRequests: number;
  soakConcurrency: number;
  /**
   * Run the c=1 JPEG phase again with this MAX_QUEUE_DELAY_MS (diagnostic: how much of the c=1
   * overhead is the batcher's wait), unless the run already sets that value.
   */
  delayCheckMs?: number;
  /** Bare GET /healthz round trips at c=1 on one keep-alive connection (the HTTP floor). */
  healthzRtt?: { requests: number };
  /** Simultaneous bursts at the idle service: sizes, each repeated `repeats` times. */
  bursts?: { sizes: number[]; repeats: number };
  /** MODEL_INSTANCES × ORT_INTRA_OP_THREADS variants, each its own service, at one concurrency. */
  instances?: { concurrency: number; variants: { instances: number; intraOpThreads: number }[]; shape: PhaseShape };
  /** Extra service starts with only WARMUP_LATENT_SIZES changed, to time the warm-up per shape. */
  warmupShapes?: string[];
  /** Build the model file first (the ch=128 KL decoder, TAESD); a failure skips the model with its reason. */
  build?: 'kl-ch128' | 'taesd';
  /** Service environment added for this model only. */
  env?: Record<string, string>;
  timeoutMs: number;
  note?: string;
}

export interface Stages {
  parse: Summary;
  queue: Summary;
  infer: Summary;
  encode: Summary;
  /** e2e − infer − encode, client-side: parse, queue wait, HTTP, routing, body transfer, event-loop waits. */
  overhead: Summary;
  /** e2e − (parse + queue + infer + encode): what no stage accounts for. */
  unaccounted: Summary;
  /** Server-Timing `total` (the whole handler as Fastify sees it), when the service sends it. */
  total?: Summary;
  /** total − infer − encode: the server-side overhead, when `total` is sent. */
  serverOverhead?: Summary;
}

export interface PhaseResult {
  model: string;
  format: Format;
  concurrency: number;
  label?: string;
  ok: number;
  errors: Record<string, number>;
  wallMs: number;
  imagesPerSec: number;
  latency: Summary;
  stages: Stages;
  meanBatch: { value: number; source: 'metrics' | 'server-timing'; batches: number };
  healthz?: { n: number; sent: number; failures: number; ms: Summary };
  cpu: CpuWindow;
  meanBytes: number;
}

export interface SoakResult {
  model: string;
  requests: number;
  concurrency: number;
  format: string;
  warmupRequests: number;
  rssAfterWarmupMiB: number;
  rssEndMiB: number;
  rssEndIdleMiB: number;
  peakRssMiB: number;
  growthPct: number;
  growthIdlePct: number;
  rssSeriesMiB: { t: number; rss: number }[];
  imagesPerSec: number;
  errors: Record<string, number>;
}

/** One simultaneous burst: the batch sizes it was split into. */
export interface BurstRun {
  /** Batch sizes in start order, from the requests' shared Server-Timing `infer` values. */
  sizes: number[];
  /** batches_total / batch_samples_total deltas over the burst, when /metrics has them. */
  metrics?: { batches: number; samples: number };
  /** Client time from the first send to the last answer, ms. */
  spanMs: number;
  errors: number;
}

export interface BurstResult {
  size: number;
  runs: BurstRun[];
}

export interface InstanceVariant {
  instances: number;
  intraOpThreads: number;
  phase?: PhaseResult;
  /** What the service's log said about instances (absent: it said nothing, e.g. a build without MODEL_INSTANCES). */
  loggedInstances?: number;
  skipped?: string;
}

export interface WarmupInfo {
  /** The service's WARMUP_LATENT_SIZES (or '(unset)'). */
  sizes: string;
  startupMs: number;
  /** latent_decoder_model_warmup_seconds, per model label. */
  metricSeconds?: Record<string, number>;
  /** The service's own warm-up log lines (msg ~ /warm-?up/), as logged. */
  logged: { model?: string; msg: string; shapes?: unknown; ms?: number }[];
  /** warmupMs from each model's "ready" log line, when there is one. */
  readyLineMs?: Record<string, number>;
}

export interface ModelResult {
  key: ModelKey;
  label: string;
  path: string;
  side: number;
  imageSide: number;
  note?: string;
  raw?: RawResult;
  startupMs?: number;
  phases: PhaseResult[];
  /** Older results: the c=1 JPEG phase with MAX_QUEUE_DELAY_MS=0. */
  zeroDelay?: PhaseResult;
  /** The c=1 JPEG phase again with another MAX_QUEUE_DELAY_MS. */
  delayCheck?: { delayMs: number; phase: PhaseResult };
  /** Bare GET /healthz at c=1, one keep-alive connection, same client as the decode phases. */
  healthzRtt?: { n: number; ms: Summary };
  bursts?: BurstResult[];
  instances?: { concurrency: number; variants: InstanceVariant[] };
  /** The main service's warm-up, then one per extra shape (warmupShapes). */
  warmups?: WarmupInfo[];
  /** The extra phase the /healthz prober ran in, when it had one of its own. */
  probePhase?: PhaseResult;
  soak?: SoakResult;
  serviceEnv: Record<string, string>;
  skipped?: string;
}

export interface BenchResult {
  date: string;
  mode: 'quick' | 'full' | 'gpu';
  machine: MachineInfo;
  command: string;
  serviceCommand: string;
  settings: Record<string, string>;
  models: ModelResult[];
  profile?: ProfileSummary & { note: string };
  /** The CPU side's ceiling on the null decoder (bench/cpu-side.ts); absent with --no-cpu-side and on a GPU run. */
  cpuSide?: CpuSideResult;
  durationS: number;
  /** Seconds spent waiting for other processes on the machine to go quiet before phases. */
  quietWaitedS?: number;
  metricsAvailable: boolean;
}
