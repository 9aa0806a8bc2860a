// Environment → one typed, validated config object. A bad value stops the start with a message
// that names the variable, the value and what is expected.

export type ExecutionProvider = 'cuda' | 'cpu' | 'tensorrt' | 'dml' | 'coreml' | 'webgpu';
const PROVIDERS: readonly ExecutionProvider[] = ['cuda', 'tensorrt', 'dml', 'coreml', 'webgpu', 'cpu'];
const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

export interface Config {
  host: string;
  port: number;
  /** One ONNX decoder file; served as the default model. */
  modelPath?: string;
  /** The model repository: one folder per model (model.onnx + config.json). */
  modelsDir: string;
  defaultModel?: string;
  executionProviders: ExecutionProvider[];
  maxBatchSize: number;
  maxQueueDelayMs: number;
  maxQueueSize: number;
  requestTimeoutMs: number;
  maxLatentSide: number;
  bodyLimitBytes: number;
  /** Latent side of the warm-up run; default 64 on CUDA (cuDNN tunes per shape), 8 on CPU. */
  warmupLatentSide?: number;
  /** ORT intra-op threads per session; 0 lets ORT choose. */
  intraOpThreads: number;
  pngCompressionLevel: number;
  logLevel: (typeof LOG_LEVELS)[number];
  authTokens: string[];
  /** Latents larger than this on either side are decoded as overlapping tiles of this side; 0: only when a request asks. */
  tileLatentSide: number;
  /** diffusers' tile_overlap_factor: the share of a tile that overlaps its neighbour (0 ≤ f < 1). */
  tileOverlap: number;
  /** The largest latent side the decoder runs in one piece: a whole untiled request, or a tile. */
  maxUntiledLatentSide: number;
}

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
  const warmup = optional(env, 'WARMUP_LATENT_SIDE');
  const maxUntiledLatentSide = int(env, 'MAX_UNTILED_LATENT_SIDE', 128, 1, 1024);
  const tileLatentSide = int(env, 'TILE_LATENT_SIDE', 128, 0, maxUntiledLatentSide);
  const tileOverlap = fraction(env, 'TILE_OVERLAP', 0.25);
  if (tileLatentSide > 0 && Math.trunc(tileLatentSide * (1 - tileOverlap)) < 1) {
    throw new ConfigError(`TILE_OVERLAP=${tileOverlap} leaves tiles of ${tileLatentSide} latents no stride (diffusers' int(tile·(1−overlap)) is 0): lower it`);
  }
  const cfg: Config = {
    host: optional(env, 'HOST') ?? '0.0.0.0',
    port: int(env, 'PORT', 8080, 0, 65535),
    modelPath: optional(env, 'MODEL_PATH'),
    modelsDir: optional(env, 'MODELS_DIR') ?? 'models',
    defaultModel: optional(env, 'DEFAULT_MODEL'),
    executionProviders: [...new Set(providers)] as ExecutionProvider[],
    maxBatchSize,
    maxQueueDelayMs: int(env, 'MAX_QUEUE_DELAY_MS', 5, 0, 60_000),
    maxQueueSize: int(env, 'MAX_QUEUE_SIZE', 64, 1, 1_000_000),
    requestTimeoutMs: int(env, 'REQUEST_TIMEOUT_MS', 30_000, 1, 3_600_000),
    // Tiled, a 4096² px image (512² latents) costs one batch of tiles plus the image itself.
    maxLatentSide: int(env, 'MAX_LATENT_SIDE', tileLatentSide > 0 ? 512 : maxUntiledLatentSide, 1, 1024),
    bodyLimitBytes: int(env, 'BODY_LIMIT_BYTES', 64 * 1024 * 1024, 1024),
    warmupLatentSide: warmup === undefined ? undefined : int(env, 'WARMUP_LATENT_SIDE', 8, 1, 1024),
    intraOpThreads: int(env, 'ORT_INTRA_OP_THREADS', 0, 0, 1024),
    pngCompressionLevel: int(env, 'PNG_COMPRESSION_LEVEL', 6, 0, 9),
    logLevel: logLevel as Config['logLevel'],
    authTokens: (env.AUTH_TOKEN ?? '').split(',').map((t) => t.trim()).filter(Boolean),
    tileLatentSide,
    tileOverlap,
    maxUntiledLatentSide,
  };
  return cfg;
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
