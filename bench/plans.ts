// What each mode measures, per model, and building the models that are not checked in (the
// full-width KL decoder from seeded weights; TAESD from its fixture weights).
import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { log, ROOT, runChild, TMP, TSX } from './proc.js';
import type { ModelPlan, PhaseShape } from './types.js';

export type Mode = 'quick' | 'full' | 'gpu';

export const TAESD_WEIGHTS = 'test/fixtures/taesd/taesd4-original.safetensors';
export const TAESD_MODEL = join(TMP, 'models/taesd.onnx');

const SMALL_LABEL = 'fixture sdvae-ch32 (16×16 → 128×128)';
const LARGE_LABEL = 'full-width sdvae-ch128 (64×64 → 512×512)';
const TAESD_LABEL = 'TAESD, full-size (ch=64) decoder (64×64 → 512×512)';

/** 1 instance × 2 intra-op threads against 2 × 1: the same two cores, split differently. */
const INSTANCE_VARIANTS = [{ instances: 1, intraOpThreads: 2 }, { instances: 2, intraOpThreads: 1 }];

export function plans(mode: Mode, small: string, large: string, maxBatch: number): ModelPlan[] {
  if (mode === 'gpu') {
    // a GPU decodes a 512² image in tens of ms: every model gets the full treatment
    const phase = (c: number): PhaseShape => ({ warmup: Math.max(8, 2 * c), min: Math.max(40, 3 * c), max: 20_000, seconds: 15 });
    const levels = [...new Set([1, 4, maxBatch, 16, 64])].sort((a, b) => a - b);
    const rawBatches = [...new Set([1, 4, maxBatch, 16])].sort((a, b) => a - b);
    const raw = { minIters: 10, maxIters: 2000, minSeconds: 4, warm: 'all' as const };
    return [
      {
        key: 'small', label: SMALL_LABEL, path: small, side: 16, formats: ['jpeg', 'png'], levels, phase,
        probeAt: { format: 'jpeg', concurrency: 16, dedicated: true, seconds: 10 }, rawBatches, rawFloat: true, raw,
        soakRequests: 1000, soakConcurrency: 16, delayCheckMs: 5, timeoutMs: 30_000,
        healthzRtt: { requests: 1000 }, bursts: { sizes: [8, 16], repeats: 5 },
        instances: { concurrency: 16, variants: INSTANCE_VARIANTS, shape: phase(16) },
        warmupShapes: ['16x16'],
      },
      {
        key: 'large', label: LARGE_LABEL, path: large, side: 64, formats: ['jpeg', 'png'], levels, phase,
        probeAt: { format: 'jpeg', concurrency: 16, dedicated: true, seconds: 10 }, rawBatches, rawFloat: true, raw,
        soakRequests: 1000, soakConcurrency: 16, timeoutMs: 60_000, build: 'kl-ch128',
        // SD 1.x/2.x at 768² and SDXL at 1024²: what a GPU replica would be asked to warm up
        warmupShapes: ['96x96', '128x128'],
        note: 'GPU mode: full levels for the full-width model; TFLOP/s = images/s × 2.5 TFLOP per 512² image',
      },
      taesdPlan(phase, [1, 8], 60_000),
    ];
  }
  if (mode === 'quick') {
    return [{
      key: 'small', label: SMALL_LABEL, path: small, side: 16,
      formats: ['jpeg', 'png'], levels: [1, maxBatch],
      phase: (c) => ({ warmup: Math.max(4, c), min: Math.max(10, 2 * c), max: 400, seconds: 4 }),
      probeAt: { format: 'jpeg', concurrency: maxBatch, dedicated: true, seconds: 4 },
      rawBatches: [1, maxBatch], rawFloat: true, raw: { minIters: 3, maxIters: 100, minSeconds: 1.5, warm: 'all' },
      soakRequests: 150, soakConcurrency: maxBatch, timeoutMs: 30_000,
      // cheap: a few hundred ms each
      healthzRtt: { requests: 200 }, bursts: { sizes: [8, 16], repeats: 3 },
      note: 'quick mode: short phases (4 s), levels 1 and MAX_BATCH_SIZE only, 150-request soak, 3 bursts per size; ' +
        'no MAX_QUEUE_DELAY_MS comparison, instance comparison, full-width or TAESD model',
    }];
  }
  return [
    {
      key: 'small', label: SMALL_LABEL, path: small, side: 16,
      formats: ['jpeg', 'png'], levels: [1, 4, 16, 64],
      phase: (c) => ({ warmup: Math.max(8, c), min: Math.max(40, 3 * c), max: 5000, seconds: 15 }),
      probeAt: { format: 'jpeg', concurrency: 16, dedicated: true, seconds: 10 },
      rawBatches: [1, 4, 8, 16], rawFloat: true, raw: { minIters: 5, maxIters: 500, minSeconds: 4, warm: 'all' },
      soakRequests: 1000, soakConcurrency: 16, delayCheckMs: 5, timeoutMs: 30_000,
      healthzRtt: { requests: 500 }, bursts: { sizes: [8, 16], repeats: 5 },
      instances: { concurrency: 16, variants: INSTANCE_VARIANTS, shape: { warmup: 16, min: 48, max: 5000, seconds: 15 } },
    },
    {
      key: 'large', label: LARGE_LABEL, path: large, side: 64,
      formats: ['jpeg', 'png'], levels: [1, maxBatch],
      // ~15-20 s per image on this CPU: a handful of requests per level
      phase: (c) => (c === 1 ? { warmup: 0, min: 2, max: 2, seconds: 0 } : { warmup: 0, min: c, max: c, seconds: 0 }),
      probeAt: { format: 'jpeg', concurrency: maxBatch },
      rawBatches: [1, maxBatch], rawFloat: false, raw: { minIters: 1, maxIters: 2, minSeconds: 0, warm: 'first' },
      soakRequests: 0, soakConcurrency: 0, timeoutMs: 1_800_000, build: 'kl-ch128',
      note: 'full-width model: ~15-20 s per image here, so concurrency 1 (2 requests) and MAX_BATCH_SIZE (one full batch) per format, ' +
        'raw at batch 1 (2 runs) and MAX_BATCH_SIZE (1-2 runs), no soak; its first service request (untimed) warms the 64×64 shape',
    },
    // ~0.14 TFLOP per 512² image, about 1/18 of the KL decoder's: seconds per image on 2 cores
    taesdPlan((c) => (c === 1 ? { warmup: 1, min: 3, max: 200, seconds: 10 } : { warmup: 0, min: 2 * c, max: 400, seconds: 20 }), [1, 8], 600_000),
  ];
}

function taesdPlan(phase: (c: number) => PhaseShape, levels: number[], timeoutMs: number): ModelPlan {
  return {
    key: 'taesd', label: TAESD_LABEL, path: TAESD_MODEL, side: 64, formats: ['jpeg'], levels, phase,
    rawBatches: [], rawFloat: false, raw: { minIters: 0, maxIters: 0, minSeconds: 0, warm: 'first' },
    soakRequests: 0, soakConcurrency: 0, timeoutMs, build: 'taesd',
    note: `converted from \`${TAESD_WEIGHTS}\` (seeded weights, real architecture) with convertCheckpoint; latents 1×4×64×64, scaling_factor=1; ` +
      'JPEG at c=1 and c=8 only, no raw ceiling, prober or soak: the row to set against the KL decoder at the same latent size',
  };
}

/** Builds the plan's model file when it is generated; `ok: false` carries why it could not be. */
export async function ensureModel(plan: ModelPlan): Promise<{ ok: boolean; why?: string }> {
  if (plan.build === 'kl-ch128') return ensureKlModel(plan.path);
  if (plan.build === 'taesd') return ensureTaesdModel(plan.path);
  return existsSync(plan.path) ? { ok: true } : { ok: false, why: `model file ${plan.path} not found` };
}

/** convertCheckpoint in a child process (it loads the converter from source, as the CLI would); its error comes back as text. */
async function convert(opts: Record<string, unknown>, tag: string): Promise<{ ok: boolean; error?: string }> {
  const outFile = join(TMP, `convert-${tag}.json`);
  const code = `import('./src/convert/convert.ts').then((m) => m.convertCheckpoint(${JSON.stringify(opts)}))` +
    `.then((r) => console.log(JSON.stringify({ ok: true, config: r.config })), (e) => { console.log(JSON.stringify({ ok: false, error: String(e && e.message || e) })); process.exitCode = 3; })`;
  const r = await runChild([...TSX, '-e', code], process.env, outFile);
  try {
    const res = JSON.parse(readFileSync(outFile, 'utf8').trim().split('\n').at(-1) ?? '') as { ok: boolean; error?: string };
    return r.code === 0 ? res : { ok: false, error: res.error ?? `exit code ${r.code}` };
  } catch {
    return { ok: false, error: `exit code ${r.code}, no result` };
  }
}

async function ensureKlModel(path: string): Promise<{ ok: boolean; why?: string }> {
  if (existsSync(path)) return { ok: true };
  const convertTs = join(ROOT, 'src/convert/convert.ts');
  const make = join(ROOT, 'scripts/make-seeded-vae.ts');
  if (!existsSync(convertTs) || !existsSync(make)) {
    return { ok: false, why: `${relative(ROOT, existsSync(convertTs) ? make : convertTs)} is missing, so the ch=128 model could not be built` };
  }
  mkdirSync(dirname(path), { recursive: true });
  const weights = path.replace(/\.onnx$/, '') + '.safetensors';
  log(`building the ch=128 decoder: seeded LDM weights → ${relative(ROOT, weights)} → ${relative(ROOT, path)}`);
  const a = await runChild([...TSX, 'scripts/make-seeded-vae.ts', weights, '--ch', '128', '--seed', '1']);
  if (a.code !== 0) return { ok: false, why: 'scripts/make-seeded-vae.ts failed' };
  const b = await convert({ weights, out: path, writeConfig: false, name: 'sdvae-ch128' }, 'kl-ch128');
  if (!b.ok || !existsSync(path)) return { ok: false, why: `convertCheckpoint failed: ${b.error ?? 'no output file'}` };
  return { ok: true };
}

/**
 * Converted on every run (a second or two): the TAESD converter is new, and a stale file from an
 * older converter would be measured without anyone noticing.
 */
async function ensureTaesdModel(path: string): Promise<{ ok: boolean; why?: string }> {
  const weights = join(ROOT, TAESD_WEIGHTS);
  if (!existsSync(weights)) return { ok: false, why: `${TAESD_WEIGHTS} is missing` };
  mkdirSync(dirname(path), { recursive: true });
  rmSync(path, { force: true });
  log(`converting TAESD: ${TAESD_WEIGHTS} → ${relative(ROOT, path)}`);
  // relative: the child runs in the repository root, and the reason shown in the report stays short
  const r = await convert({ weights: TAESD_WEIGHTS, out: path, writeConfig: false, name: 'taesd' }, 'taesd');
  if (!r.ok || !existsSync(path)) {
    // most likely a build whose converter does not know TAESD yet; the message says which
    const why = (r.error ?? 'no output file').split('\n')[0]!.slice(0, 200);
    return { ok: false, why: `convertCheckpoint failed on the TAESD weights (${why}): row skipped; a build without TAESD conversion fails this way` };
  }
  return { ok: true };
}
