// Environment → one typed, validated config object. A bad value stops the start with a message
// that names the variable, the value and what is expected.
import { availableParallelism } from 'node:os';

export type ExecutionProvider = 'cuda' | 'cpu' | 'tensorrt' | 'dml' | 'coreml' | 'webgpu';
const PROVIDERS: readonly ExecutionProvider[] = ['cuda', 'tensorrt', 'dml', 'coreml', 'webgpu', 'cpu'];
const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
/** OpenVINO's PERFORMANCE_HINT, for the CPU provider: how a model's sessions share the CPUs. */
export const PERFORMANCE_HINTS = ['throughput', 'latency'] as const;
export type PerformanceHint = (typeof PERFORMANCE_HINTS)[number];

export interface Config {
  host: string;
  port: number;
  /** One ONNX decoder file; served as the default model. */
  modelPath?: string;
  /** The model repository: one folder per model (model.onnx + config.json). */
  modelsDir: string;
  /** Largest model file loaded (bytes): ONNX's protobuf cannot hold more than 2 GiB in one file. */
  maxModelBytes: number;
  defaultModel?: string;
  executionProviders: ExecutionProvider[];
  maxBatchSize: number;
  /** Latent pixels (h × w, summed over its samples) one batch may hold: bounds a run's memory. */
  maxBatchLatentPixels: number;
  maxQueueDelayMs: number;
  /** Sessions (worker threads) per model, sharing its batcher. */
  modelInstances: number;
  /** CPU provider: several sessions with some CPUs each (throughput) or one with all (latency); see applyPerformanceHint. */
  performanceHint: PerformanceHint;
  maxQueueSize: number;
  requestTimeoutMs: number;
  maxLatentSide: number;
  /** Explicit (BODY_LIMIT_BYTES) or derived from the limits: see defaultBodyLimit. */
  bodyLimitBytes: number;
  /** Time to receive a whole request, body included: a stalled upload gets 408 and is closed. */
  bodyTimeoutMs: number;
  /** Idle keep-alive connections stay open this long: above any load balancer's idle timeout. */
  keepAliveTimeoutMs: number;
  /** Body bytes held by uploads in progress (received so far), over all connections: 429 above. */
  maxInflightBodyBytes: number;
  /** SIGTERM: how long accepted requests may take to be answered before the process exits anyway. */
  drainTimeoutMs: number;
  /** Latent sizes [h, w] warmed up before ready; unset: 64×64 on GPU providers, one 8×8 run on CPU. */
  warmupLatentSizes?: [number, number][];
  /** ORT intra-op threads per session; 0 lets ORT choose. */
  intraOpThreads: number;
  /** ONNX Runtime's CPU arena: less CPU per image, but it keeps (and grows past) its peak. */
  cpuMemArena: boolean;
  /** ORT's intra-op threads spin-wait for work between parallel sections (CPU burnt, a little latency saved). */
  allowSpinning: boolean;
  pngCompressionLevel: number;
  logLevel: (typeof LOG_LEVELS)[number];
  authTokens: string[];
  /** Latents larger than this on either side are decoded as overlapping tiles of this side; 0: only when a request asks. */
  tileLatentSide: number;
  /** diffusers' tile_overlap_factor: the share of a tile that overlaps its neighbour (0 ≤ f < 1). */
  tileOverlap: number;
  /** The largest latent side the decoder runs in one piece: a whole untiled request, or a tile. */
  maxUntiledLatentSide: number;
  /** /encode: pixels (width × height) an image may have, checked from its header before decoding: 413 above. */
  maxImagePixels: number;
  /** Latent frames (T of [N, C, T, h, w]) one video request may hold: 413 above, from the query. */
  maxVideoFrames: number;
  /** The ffmpeg binary for mp4/webm answers; unset: @ffmpeg-installer/ffmpeg, then ffmpeg on PATH. */
  ffmpegPath?: string;
}

/** A protobuf message, hence an ONNX file without external data, is at most 2 GiB. */
export const MAX_MODEL_BYTES = 2 ** 31;

export class ConfigError extends Error {
  override name = 'ConfigError';
}

type Env = Record<string, string | undefined>;

function int(env: Env, name: string, def: number, min: number, max = Number.MAX_SAFE_INTEGER): number {
  const raw = env[name];
  if (raw === undefined || raw.trim() === '') return def;
  const v = Number(raw);
  if (!Number.isInteger(v) || v < min || v > max) {
    throw new ConfigError(`${name}=${JSON.stringify(raw)} is not valid: expected an integer from ${min} to ${max}`);
  }
  return v;
}

function optional(env: Env, name: string): string | undefined {
  const v = env[name]?.trim();
  return v ? v : undefined;
}

/** `64x64,128x128` → [[64, 64], [128, 128]]; unset → undefined. */
function latentSizes(env: Env, name: string): [number, number][] | undefined {
  const raw = optional(env, name);
  if (raw === undefined) return undefined;
  return raw.split(',').map((part) => {
    const m = /^\s*(\d{1,4})x(\d{1,4})\s*$/.exec(part);
    const [h, w] = m ? [Number(m[1]), Number(m[2])] : [0, 0];
    if (h < 1 || w < 1) throw new ConfigError(`${name}=${JSON.stringify(raw)} is not valid: expected latent sizes like 64x64,128x128`);
    return [h, w];
  });
}

/**
 * The largest valid request, so that nothing larger is read: a queue's worth of 64×64 latents or
 * one latent at the maximum side, whichever is more, at 16 channels of float32, as base64 JSON
 * (4/3), plus 64 KiB for the JSON's other fields or a .npy header.
 */
export function defaultBodyLimit(maxQueueSize: number, maxLatentSide: number): number {
  const pixels = Math.max(maxLatentSide * maxLatentSide, maxQueueSize * 64 * 64);
  return Math.ceil((pixels * 16 * 4 * 4) / 3) + 64 * 1024;
}

export function loadConfig(env: Env = process.env): Config {
  const providers = (optional(env, 'EXECUTION_PROVIDERS') ?? 'cuda,cpu').split(',').map((p) => p.trim().toLowerCase()).filter(Boolean);
  for (const p of providers) {
    if (!PROVIDERS.includes(p as ExecutionProvider)) {
      throw new ConfigError(`EXECUTION_PROVIDERS contains ${JSON.stringify(p)}: expected a comma-separated list of ${PROVIDERS.join(', ')}`);
    }
  }
  if (providers.length === 0) throw new ConfigError('EXECUTION_PROVIDERS is empty: expected e.g. "cuda,cpu"');
  const logLevel = (optional(env, 'LOG_LEVEL') ?? 'info').toLowerCase();
  if (!(LOG_LEVELS as readonly string[]).includes(logLevel)) {
    throw new ConfigError(`LOG_LEVEL=${JSON.stringify(env.LOG_LEVEL)} is not valid: expected one of ${LOG_LEVELS.join(', ')}`);
  }
  const maxBatchSize = int(env, 'MAX_BATCH_SIZE', 8, 1, 1024);
  const maxUntiledLatentSide = int(env, 'MAX_UNTILED_LATENT_SIDE', 128, 1, 1024);
  const tileLatentSide = int(env, 'TILE_LATENT_SIDE', 128, 0, maxUntiledLatentSide);
  const tileOverlap = fraction(env, 'TILE_OVERLAP', 0.25);
  if (tileLatentSide > 0 && Math.trunc(tileLatentSide * (1 - tileOverlap)) < 1) {
    throw new ConfigError(`TILE_OVERLAP=${tileOverlap} leaves tiles of ${tileLatentSide} latents no stride (diffusers' int(tile·(1−overlap)) is 0): lower it`);
  }
  const maxQueueSize = int(env, 'MAX_QUEUE_SIZE', 64, 1, 1_000_000);
  const performanceHint = (optional(env, 'PERFORMANCE_HINT') ?? 'throughput').toLowerCase();
  if (!(PERFORMANCE_HINTS as readonly string[]).includes(performanceHint)) {
    throw new ConfigError(`PERFORMANCE_HINT=${JSON.stringify(env.PERFORMANCE_HINT)} is not valid: expected ${PERFORMANCE_HINTS.join(' or ')}`);
  }
  // Tiled, a 4096² px image (512² latents) costs one batch of tiles plus the image itself.
  const maxLatentSide = int(env, 'MAX_LATENT_SIDE', tileLatentSide > 0 ? 512 : maxUntiledLatentSide, 1, 1024);
  const bodyLimitBytes = int(env, 'BODY_LIMIT_BYTES', defaultBodyLimit(maxQueueSize, maxLatentSide), 1024);
  const cfg: Config = {
    host: optional(env, 'HOST') ?? '0.0.0.0',
    port: int(env, 'PORT', 8080, 0, 65535),
    modelPath: optional(env, 'MODEL_PATH'),
    modelsDir: optional(env, 'MODELS_DIR') ?? 'models',
    maxModelBytes: int(env, 'MAX_MODEL_BYTES', MAX_MODEL_BYTES, 1024),
    defaultModel: optional(env, 'DEFAULT_MODEL'),
    executionProviders: [...new Set(providers)] as ExecutionProvider[],
    maxBatchSize,
    maxBatchLatentPixels: int(env, 'MAX_BATCH_LATENT_PIXELS', maxBatchSize * 64 * 64, 1),
    maxQueueDelayMs: int(env, 'MAX_QUEUE_DELAY_MS', 0, 0, 60_000),
    modelInstances: int(env, 'MODEL_INSTANCES', 1, 1, 64),
    performanceHint: performanceHint as PerformanceHint,
    maxQueueSize,
    requestTimeoutMs: int(env, 'REQUEST_TIMEOUT_MS', 30_000, 1, 3_600_000),
    maxLatentSide,
    bodyLimitBytes,
    bodyTimeoutMs: int(env, 'BODY_TIMEOUT_MS', 30_000, 1000, 3_600_000),
    keepAliveTimeoutMs: int(env, 'KEEP_ALIVE_TIMEOUT_MS', 72_000, 1000, 3_600_000),
    // Below the body limit, a body between the two could never be accepted: 429 forever.
    maxInflightBodyBytes: int(env, 'MAX_INFLIGHT_BODY_BYTES', 4 * bodyLimitBytes, bodyLimitBytes),
    drainTimeoutMs: int(env, 'DRAIN_TIMEOUT_MS', 30_000, 0, 3_600_000),
    warmupLatentSizes: latentSizes(env, 'WARMUP_LATENT_SIZES'),
    intraOpThreads: int(env, 'ORT_INTRA_OP_THREADS', 0, 0, 1024),
    cpuMemArena: int(env, 'ORT_CPU_MEM_ARENA', 0, 0, 1) === 1,
    allowSpinning: int(env, 'ORT_ALLOW_SPINNING', 0, 0, 1) === 1,
    pngCompressionLevel: int(env, 'PNG_COMPRESSION_LEVEL', 1, 0, 9),
    logLevel: logLevel as Config['logLevel'],
    authTokens: authTokens(env),
    tileLatentSide,
    tileOverlap,
    maxUntiledLatentSide,
    maxImagePixels: int(env, 'MAX_IMAGE_PIXELS', (maxLatentSide * 8) ** 2, 64),
    maxVideoFrames: int(env, 'MAX_VIDEO_FRAMES', 21, 1, 10_000),
    ffmpegPath: optional(env, 'FFMPEG_PATH'),
  };
  return cfg;
}

/**
 * CPUs this process may use: CPU_LIMIT when set (the Deployment sets it from limits.cpu through the
 * Downward API, since os.availableParallelism() counts the node's cores, not a CFS quota), else
 * os.availableParallelism(). At least 1.
 */
export function cpuCount(env: Env = process.env): number {
  const limit = Number(env.CPU_LIMIT);
  return Number.isInteger(limit) && limit > 0 ? limit : Math.max(1, availableParallelism());
}

/**
 * Lays out a model's ONNX Runtime sessions on the CPUs when the provider that will run them is the
 * CPU (`provider`: the first of EXECUTION_PROVIDERS that can load here); any other provider gets
 * `cfg` back unchanged. What is set in `env` wins. PERFORMANCE_HINT (OpenVINO's term for the same
 * trade) decides the rest:
 * - throughput (default), `cpus` ≥ 2: MODEL_INSTANCES 2 with cpus ÷ 2 ORT_INTRA_OP_THREADS each,
 *   and MAX_BATCH_SIZE 1. Two sessions on their own cores do not wait at ONNX Runtime's
 *   per-operator barriers for a thread that the event loop, sharp or the other session preempted,
 *   and one image already fills a CPU's cores, so a batch buys nothing and a larger one falls out
 *   of cache (raw ORT per image at batch 4–8: 0.8–0.94× batch 1's rate on the fixture). Measured on
 *   2 cores (scripts/ratio.ts, 14 rounds at 128²–512²): 0.87–1.14× raw ORT's best, against
 *   0.78–0.96× for one session on both cores with batches of 8; a lone request takes ~1.7–1.9× as long.
 *   MAX_BATCH_LATENT_PIXELS, unset, is max(64², MAX_BATCH_SIZE × 64² ÷ 2): the two runs in flight
 *   hold at most what one batch held, and the memory sizing stays true.
 * - latency, or one CPU: one session with every CPU, MAX_BATCH_SIZE 8: the fastest single request.
 * - MODEL_INSTANCES set: ORT_INTRA_OP_THREADS defaults to cpus ÷ MODEL_INSTANCES.
 * @param cpus CPUs the process may use (cpuCount()).
 * @returns the config with modelInstances, intraOpThreads, maxBatchSize and maxBatchLatentPixels resolved
 */
export function applyPerformanceHint(cfg: Config, env: Env, provider: ExecutionProvider | undefined, cpus: number): Config {
  if (provider !== 'cpu') return cfg;
  const isSet = (name: string): boolean => optional(env, name) !== undefined;
  const throughput = cfg.performanceHint === 'throughput' && cpus >= 2;
  const chosen = !isSet('MODEL_INSTANCES');
  const modelInstances = chosen ? (throughput ? 2 : 1) : cfg.modelInstances;
  const intraOpThreads = isSet('ORT_INTRA_OP_THREADS') ? cfg.intraOpThreads : Math.max(1, Math.floor(cpus / modelInstances));
  const maxBatchSize = throughput && !isSet('MAX_BATCH_SIZE') ? 1 : cfg.maxBatchSize;
  const maxBatchLatentPixels = isSet('MAX_BATCH_LATENT_PIXELS')
    ? cfg.maxBatchLatentPixels
    : Math.max(64 * 64, Math.floor((maxBatchSize * 64 * 64) / (chosen ? modelInstances : 1)));
  return { ...cfg, modelInstances, intraOpThreads, maxBatchSize, maxBatchLatentPixels };
}

/**
 * AUTH_TOKEN: comma-separated bearer tokens; unset means no auth. Set but blank (`''`, `' , '`)
 * is a mistake that would silently turn authentication off, so it stops the start.
 */
function authTokens(env: Env): string[] {
  const raw = env.AUTH_TOKEN;
  if (raw === undefined) return [];
  const tokens = raw.split(',').map((t) => t.trim()).filter(Boolean);
  if (tokens.length === 0) {
    throw new ConfigError(`AUTH_TOKEN=${JSON.stringify(raw)} holds no token: set one or more comma-separated tokens, or unset AUTH_TOKEN to serve without auth`);
  }
  return tokens;
}

/** A number from 0 up to, not including, 1. */
function fraction(env: Env, name: string, def: number): number {
  const raw = env[name];
  if (raw === undefined || raw.trim() === '') return def;
  const v = Number(raw);
  if (!Number.isFinite(v) || v < 0 || v >= 1) {
    throw new ConfigError(`${name}=${JSON.stringify(raw)} is not valid: expected a number from 0 up to (not including) 1`);
  }
  return v;
}
