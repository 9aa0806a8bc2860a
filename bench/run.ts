// `npm run bench [-- --quick] [options]`: the service against raw ONNX Runtime, stage by stage.
//
// The service runs as a real child process (`node --import tsx src/main.ts`, from source, as
// `npm run dev` does; --dist runs `node dist/main.js` after `npm run build` instead) and is driven
// over HTTP by a separate load-generator process (bench/load.ts, undici), with a separate /healthz
// prober process (bench/probe.ts). The raw ceiling runs in its own process (bench/raw-ort.ts)
// while nothing else of ours runs. Results: bench/results/<date>-<host>.{md,json,svg}.
//
// Options:
//   --quick                 CI smoke (~1-2 min): fixture model only, 2 levels, short phases
//   --gpu                   EXECUTION_PROVIDERS=cuda and GPU-sized phases for both models (see bench/gpu.sh)
//   --small PATH            the small (overhead) model; default test/fixtures/sdvae-ch32/torch-export.onnx
//   --large PATH            the full-width model; default bench/results/tmp/models/sdvae-ch128.onnx,
//                           built from seeded weights with scripts/make-seeded-vae.ts + convertCheckpoint
//   --no-large              skip the full-width model
//   --only-large            run the full-width model only (the small one's results are not produced)
//   --env KEY=VALUE         extra environment for the service and the raw process (repeatable), e.g.
//                           --env ORT_INTRA_OP_THREADS=2 --env UV_THREADPOOL_SIZE=2
//   --no-profile            skip the --cpu-prof run of the service (full mode runs one)
//   --dist                  run the built service (node dist/main.js; run `npm run build` first)
//   --out DIR               results folder (default bench/results)
//   --quiet-wait S          before each phase, wait until other processes use < 25 % of the cores,
//                           at most S seconds over the whole run (default 300 full, 15 quick)
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, openSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { request } from 'undici';
import type { LoadResult, LoadSpec, Sample } from './load.js';
import type { ProbeResult } from './probe.js';
import type { RawResult } from './raw-ort.js';
import { gaussianLatents, summarize, type Summary } from './stats.js';
import { cpuWindow, machineInfo, processCpuSeconds, readMem, systemCpuSeconds, type CpuWindow, type MachineInfo } from './sys.js';
import { summarizeProfiles, type ProfileSummary } from './profile.js';
import { renderMarkdown } from './report.js';
import { renderChart } from './chart.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const TSX = ['--import', 'tsx'];

// ---------------------------------------------------------------- result types

export interface ModelPlan {
  key: 'small' | 'large';
  label: string;
  path: string;
  side: number;
  formats: ('jpeg' | 'png')[];
  levels: number[];
  /** Per level: [warm-up requests, min requests, max requests, seconds]. */
  phase: (c: number) => { warmup: number; min: number; max: number; seconds: number };
  /**
   * The format × concurrency during which the /healthz prober runs. `dedicated`: in an extra phase
   * of its own (so the prober's CPU does not count against a measured throughput); else during
   * that measured phase (for models where an extra phase would take minutes).
   */
  probeAt: { format: 'jpeg' | 'png'; concurrency: number; dedicated?: boolean; seconds?: number };
  rawBatches: number[];
  rawFloat: boolean;
  raw: { minIters: number; maxIters: number; minSeconds: number; warm: 'all' | 'first' };
  soakRequests: number;
  soakConcurrency: number;
  /** Run the c=1 JPEG phase again with MAX_QUEUE_DELAY_MS=0 (diagnostic). */
  zeroDelayCheck: boolean;
  timeoutMs: number;
  note?: string;
}

export interface Stages {
  parse: Summary;
  queue: Summary;
  infer: Summary;
  encode: Summary;
  /** e2e − infer − encode: parse, queue wait, HTTP, routing, body transfer, event-loop waits. */
  overhead: Summary;
  /** e2e − (parse + queue + infer + encode): what no stage accounts for. */
  unaccounted: Summary;
}

export interface PhaseResult {
  model: string;
  format: 'jpeg' | 'png';
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

export interface ModelResult {
  key: 'small' | 'large';
  label: string;
  path: string;
  side: number;
  imageSide: number;
  note?: string;
  raw?: RawResult;
  startupMs?: number;
  phases: PhaseResult[];
  zeroDelay?: PhaseResult;
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
  durationS: number;
  /** Seconds spent waiting for other processes on the machine to go quiet before phases. */
  quietWaitedS?: number;
  metricsAvailable: boolean;
}

// ---------------------------------------------------------------- process helpers

const log = (msg: string): void => { process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}\n`); };

function runChild(args: string[], env: NodeJS.ProcessEnv = process.env, stdoutFile?: string): Promise<{ code: number | null }> {
  return new Promise((res, rej) => {
    const out = stdoutFile ? openSync(stdoutFile, 'w') : 'inherit';
    const c = spawn(process.execPath, args, { cwd: ROOT, env, stdio: ['ignore', out, 'inherit'] });
    c.on('error', rej);
    c.on('exit', (code) => res({ code }));
  });
}

async function freePort(): Promise<number> {
  const { createServer } = await import('node:net');
  return new Promise((res) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      const port = typeof a === 'object' && a ? a.port : 0;
      s.close(() => res(port));
    });
  });
}

interface Service {
  child: ChildProcess;
  pid: number;
  origin: string;
  logFile: string;
  startupMs: number;
  exited: Promise<number | null>;
}

const TMP = join(ROOT, 'bench/results/tmp');

async function startService(env: Record<string, string>, o: { dist: boolean; cpuProfDir?: string; tag: string }): Promise<Service> {
  const port = await freePort();
  const logFile = join(TMP, `service-${o.tag}.log`);
  const args = [
    ...(o.cpuProfDir ? ['--cpu-prof', `--cpu-prof-dir=${o.cpuProfDir}`] : []),
    ...(o.dist ? ['dist/main.js'] : [...TSX, 'src/main.ts']),
  ];
  const fd = openSync(logFile, 'w');
  const t0 = performance.now();
  const child = spawn(process.execPath, args, {
    cwd: ROOT,
    env: { ...process.env, ...env, PORT: String(port), HOST: '127.0.0.1' },
    stdio: ['ignore', fd, fd],
  });
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  let dead = false;
  void exited.then(() => { dead = true; });
  const origin = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 600_000;
  for (;;) {
    if (dead) throw new Error(`the service exited during start; see ${relative(ROOT, logFile)}:\n${readFileSync(logFile, 'utf8').slice(-2000)}`);
    if (Date.now() > deadline) throw new Error('the service did not become ready in 10 minutes');
    try {
      const r = await request(`${origin}/readyz`);
      await r.body.dump();
      if (r.statusCode === 200) break;
    } catch { /* not listening yet */ }
    await sleep(100);
  }
  return { child, pid: child.pid!, origin, logFile, startupMs: performance.now() - t0, exited };
}

async function stopService(s: Service): Promise<void> {
  s.child.kill('SIGTERM');
  let timer: NodeJS.Timeout | undefined;
  const code = await Promise.race([s.exited, new Promise<'timeout'>((r) => { timer = setTimeout(() => r('timeout'), 60_000); })]);
  clearTimeout(timer);
  if (code === 'timeout') {
    log('service did not exit in 60 s after SIGTERM; killing it');
    s.child.kill('SIGKILL');
    await s.exited;
  }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------- other users of the machine

let quietBudgetS = 0;
let quietWaitedS = 0;

/**
 * Waits (within the run's budget) until processes other than `ours` use under `maxPct` % of all
 * cores, measured over 1 s: other work on a 2-core machine moves every number here.
 */
async function waitQuiet(ours: number[], maxPct = 25): Promise<number> {
  const t0 = performance.now();
  let foreign = 0;
  for (;;) {
    const s0 = systemCpuSeconds();
    const p0 = ours.map(processCpuSeconds);
    await sleep(1000);
    const s1 = systemCpuSeconds();
    const mine = ours.map(processCpuSeconds).reduce((a, v, i) => a + (Number.isFinite(v) ? v - p0[i]! : 0), 0);
    foreign = (100 * (s1.busy - s0.busy - mine)) / (s1.total - s0.total);
    const waited = (performance.now() - t0) / 1000;
    if (foreign < maxPct || quietWaitedS + waited >= quietBudgetS) {
      quietWaitedS += waited;
      if (waited > 1.5) log(`  waited ${waited.toFixed(0)} s for other processes to calm down (now ${foreign.toFixed(0)} % of the cores)`);
      return foreign;
    }
  }
}

// ---------------------------------------------------------------- metrics

/** Sums of the batch counters, if the service exposes them. */
async function batchCounters(origin: string): Promise<{ batches: number; samples: number } | undefined> {
  try {
    const r = await request(`${origin}/metrics`);
    const text = await r.body.text();
    if (r.statusCode !== 200) return undefined;
    const sum = (name: string): number | undefined => {
      let found = false;
      let total = 0;
      for (const line of text.split('\n')) {
        const m = new RegExp(`^${name}(?:\\{[^}]*\\})?\\s+([-+\\d.eE]+|NaN)`).exec(line);
        if (m) { found = true; total += Number(m[1]); }
      }
      return found ? total : undefined;
    };
    const batches = sum('latent_decoder_batches_total');
    const samples = sum('latent_decoder_batch_samples_total');
    return batches !== undefined && samples !== undefined ? { batches, samples } : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Batches from Server-Timing alone: every request of a batch gets the same `infer` value (the
 * batch's run time) and the same batch start (client send + parse + queue, ± send skew); two
 * batches with equal run times start at least a run apart, since the runner runs one at a time.
 */
export function batchesFromTimings(samples: Sample[]): { batches: number; samples: number } {
  const groups = new Map<string, number[]>();
  for (const s of samples) {
    if (s.infer === undefined || s.status !== 200) continue;
    const k = s.infer.toFixed(2);
    const arr = groups.get(k) ?? [];
    arr.push(s.t + (s.parse ?? 0) + (s.queue ?? 0));
    groups.set(k, arr);
  }
  let batches = 0;
  let n = 0;
  for (const [k, starts] of groups) {
    const tol = Math.max(2, Number(k) / 2);
    starts.sort((a, b) => a - b);
    let last = -Infinity;
    for (const t of starts) {
      if (t - last > tol) batches++;
      last = t;
      n++;
    }
  }
  return { batches, samples: n };
}

// ---------------------------------------------------------------- phases

let metricsSeen = false;

async function loadPhase(svc: Service, o: {
  model: string; side: number; format: 'jpeg' | 'png'; concurrency: number; bodyFile: string;
  warmup: number; min: number; max: number; seconds: number; timeoutMs: number; probe: boolean; label?: string;
}): Promise<PhaseResult> {
  const out = join(TMP, `load-${o.model}-${o.format}-c${o.concurrency}${o.label ? '-' + o.label : ''}.json`);
  const spec: LoadSpec = {
    origin: svc.origin,
    path: `/decode?shape=1,4,${o.side},${o.side}&format=${o.format}&scaling_factor=1`,
    bodyFile: o.bodyFile,
    concurrency: o.concurrency,
    maxRequests: o.max,
    minRequests: o.min,
    seconds: o.seconds,
    warmupRequests: o.warmup,
    timeoutMs: o.timeoutMs,
    out,
  };
  // Warm-up runs inside the load process; counters and CPU are read from after it, so they are
  // approximate at the edges (a warm-up batch may still be running when the window opens).
  await waitQuiet([svc.pid]);
  const before = await batchCounters(svc.origin);
  const cpu = cpuWindow(svc.pid);
  let prober: ChildProcess | undefined;
  let probeDone: Promise<unknown> | undefined;
  const probeOut = join(TMP, `probe-${o.model}-${o.format}-c${o.concurrency}.json`);
  if (o.probe) {
    prober = spawn(process.execPath, [...TSX, 'bench/probe.ts', JSON.stringify({ origin: svc.origin, intervalMs: 10, seconds: 0, out: probeOut })],
      { cwd: ROOT, stdio: ['ignore', 'inherit', 'inherit'] });
    probeDone = new Promise((r) => prober!.on('exit', r));
  }
  const { code } = await runChild([...TSX, 'bench/load.ts', JSON.stringify(spec)]);
  if (code !== 0) throw new Error(`the load generator exited with code ${code}`);
  const cpuUse = cpu();
  const after = await batchCounters(svc.origin);
  let healthz: PhaseResult['healthz'];
  if (prober) {
    prober.kill('SIGTERM');
    await probeDone;
    const p = JSON.parse(readFileSync(probeOut, 'utf8')) as ProbeResult;
    healthz = { n: p.latenciesMs.length, sent: p.sent, failures: p.failures, ms: summarize(p.latenciesMs) };
  }
  const r = JSON.parse(readFileSync(out, 'utf8')) as LoadResult;
  const ok = r.samples.filter((s) => s.status === 200);
  const num = (f: (s: Sample) => number | undefined): number[] => ok.map(f).filter((v): v is number => v !== undefined && Number.isFinite(v));
  const stages: Stages = {
    parse: summarize(num((s) => s.parse)),
    queue: summarize(num((s) => s.queue)),
    infer: summarize(num((s) => s.infer)),
    encode: summarize(num((s) => s.encode)),
    overhead: summarize(num((s) => (s.infer !== undefined && s.encode !== undefined ? s.ms - s.infer - s.encode : undefined))),
    unaccounted: summarize(num((s) => (s.infer !== undefined && s.encode !== undefined ? s.ms - (s.parse ?? 0) - (s.queue ?? 0) - s.infer - s.encode : undefined))),
  };
  let meanBatch: PhaseResult['meanBatch'];
  if (before && after && after.batches > before.batches) {
    metricsSeen = true;
    const b = after.batches - before.batches;
    meanBatch = { value: (after.samples - before.samples) / b, source: 'metrics', batches: b };
  } else {
    const est = batchesFromTimings(r.samples);
    meanBatch = { value: est.batches ? est.samples / est.batches : NaN, source: 'server-timing', batches: est.batches };
  }
  const res: PhaseResult = {
    model: o.model, format: o.format, concurrency: o.concurrency, label: o.label,
    ok: ok.length, errors: r.errors, wallMs: r.wallMs,
    imagesPerSec: (ok.length * 1000) / r.wallMs,
    latency: summarize(ok.map((s) => s.ms)),
    stages, meanBatch, healthz, cpu: cpuUse,
    meanBytes: ok.length ? ok.reduce((a, s) => a + s.bytes, 0) / ok.length : 0,
  };
  log(`  ${o.model} ${o.format} c=${o.concurrency}${o.label ? ' ' + o.label : ''}: ${res.imagesPerSec.toFixed(2)} img/s, p50 ${res.latency.p50.toFixed(1)} ms, ` +
    `p99 ${res.latency.p99.toFixed(1)} ms, batch ${res.meanBatch.value.toFixed(2)}, overhead p50 ${stages.overhead.p50.toFixed(2)} ms` +
    (healthz ? `, healthz p99 ${healthz.ms.p99.toFixed(1)} ms` : '') + (Object.keys(r.errors).length ? `, errors ${JSON.stringify(r.errors)}` : '') +
    `, svc cpu ${cpuUse.servicePct.toFixed(0)}%, other ${cpuUse.otherPct.toFixed(0)}%`);
  return res;
}

async function soakPhase(svc: Service, o: { model: string; side: number; bodyFile: string; requests: number; concurrency: number; timeoutMs: number }): Promise<SoakResult> {
  const series: { t: number; rss: number }[] = [];
  const t0 = performance.now();
  let peakHwm = 0;
  const sample = (): number => {
    const m = readMem(svc.pid);
    if (!m) return NaN;
    peakHwm = Math.max(peakHwm, m.hwmKiB);
    const rss = m.rssKiB / 1024;
    series.push({ t: Math.round(performance.now() - t0), rss: Math.round(rss * 10) / 10 });
    return rss;
  };
  const timer = setInterval(sample, 250);
  const warmup = Math.max(1, Math.round(o.requests / 10));
  const run = async (n: number, tag: string): Promise<LoadResult> => {
    const out = join(TMP, `soak-${o.model}-${tag}.json`);
    const spec: LoadSpec = {
      origin: svc.origin, path: `/decode?shape=1,4,${o.side},${o.side}&format=jpeg&scaling_factor=1`, bodyFile: o.bodyFile,
      concurrency: o.concurrency, maxRequests: n, minRequests: n, seconds: 0, warmupRequests: 0, timeoutMs: o.timeoutMs, out,
    };
    const { code } = await runChild([...TSX, 'bench/load.ts', JSON.stringify(spec)]);
    if (code !== 0) throw new Error(`the soak load generator exited with code ${code}`);
    return JSON.parse(readFileSync(out, 'utf8')) as LoadResult;
  };
  await run(warmup, 'warmup');
  const afterWarmup = sample();
  const main = await run(o.requests - warmup, 'main');
  const end = sample();
  await sleep(2000);
  const endIdle = sample();
  clearInterval(timer);
  const ok = main.samples.filter((s) => s.status === 200).length;
  const r: SoakResult = {
    model: o.model, requests: o.requests, concurrency: o.concurrency, format: 'jpeg', warmupRequests: warmup,
    rssAfterWarmupMiB: afterWarmup, rssEndMiB: end, rssEndIdleMiB: endIdle, peakRssMiB: peakHwm / 1024,
    growthPct: (100 * (end - afterWarmup)) / afterWarmup,
    growthIdlePct: (100 * (endIdle - afterWarmup)) / afterWarmup,
    rssSeriesMiB: series, imagesPerSec: (ok * 1000) / main.wallMs, errors: main.errors,
  };
  log(`  soak ${o.model}: ${o.requests} requests, RSS ${afterWarmup.toFixed(0)} → ${end.toFixed(0)} MiB (${r.growthPct.toFixed(1)} %), peak ${r.peakRssMiB.toFixed(0)} MiB`);
  return r;
}

// ---------------------------------------------------------------- models

async function ensureLargeModel(path: string): Promise<{ ok: boolean; why?: string }> {
  if (existsSync(path)) return { ok: true };
  const convert = join(ROOT, 'src/models/convert.ts');
  const make = join(ROOT, 'scripts/make-seeded-vae.ts');
  if (!existsSync(convert) || !existsSync(make)) {
    return { ok: false, why: `TODO: ${relative(ROOT, existsSync(convert) ? make : convert)} is missing, so the ch=128 model could not be built` };
  }
  mkdirSync(dirname(path), { recursive: true });
  const weights = path.replace(/\.onnx$/, '') + '.safetensors';
  log(`building the ch=128 decoder: seeded LDM weights → ${relative(ROOT, weights)} → ${relative(ROOT, path)}`);
  const a = await runChild([...TSX, 'scripts/make-seeded-vae.ts', weights, '--ch', '128', '--seed', '1']);
  if (a.code !== 0) return { ok: false, why: 'scripts/make-seeded-vae.ts failed' };
  const code = `import('./src/convert/convert.ts').then((m) => m.convertCheckpoint({ weights: ${JSON.stringify(weights)}, out: ${JSON.stringify(path)}, writeConfig: false, name: 'sdvae-ch128' }))` +
    `.then((r) => console.log(JSON.stringify(r.config)))`;
  const b = await runChild([...TSX, '-e', code]);
  if (b.code !== 0 || !existsSync(path)) return { ok: false, why: 'convertCheckpoint failed' };
  return { ok: true };
}

function plans(mode: 'quick' | 'full' | 'gpu', small: string, large: string, maxBatch: number): ModelPlan[] {
  if (mode === 'gpu') {
    // a GPU decodes a 512² image in tens of ms: both models get the full treatment
    const phase = (c: number): { warmup: number; min: number; max: number; seconds: number } => ({ warmup: Math.max(8, 2 * c), min: Math.max(40, 3 * c), max: 20_000, seconds: 15 });
    const levels = [...new Set([1, 4, maxBatch, 16, 64])].sort((a, b) => a - b);
    const rawBatches = [...new Set([1, 4, maxBatch, 16])].sort((a, b) => a - b);
    return [
      {
        key: 'small', label: 'fixture sdvae-ch32 (16×16 → 128×128)', path: small, side: 16, formats: ['jpeg', 'png'], levels, phase,
        probeAt: { format: 'jpeg', concurrency: 16, dedicated: true, seconds: 10 }, rawBatches, rawFloat: true, raw: { minIters: 10, maxIters: 2000, minSeconds: 4, warm: 'all' },
        soakRequests: 1000, soakConcurrency: 16, zeroDelayCheck: true, timeoutMs: 30_000,
      },
      {
        key: 'large', label: 'full-width sdvae-ch128 (64×64 → 512×512)', path: large, side: 64, formats: ['jpeg', 'png'], levels, phase,
        probeAt: { format: 'jpeg', concurrency: 16, dedicated: true, seconds: 10 }, rawBatches, rawFloat: true, raw: { minIters: 10, maxIters: 2000, minSeconds: 4, warm: 'all' },
        soakRequests: 1000, soakConcurrency: 16, zeroDelayCheck: false, timeoutMs: 60_000,
        note: 'GPU mode: full levels for the full-width model; TFLOP/s = images/s × 2.5 TFLOP per 512² image',
      },
    ];
  }
  if (mode === 'quick') {
    return [{
      key: 'small', label: 'fixture sdvae-ch32 (16×16 → 128×128)', path: small, side: 16,
      formats: ['jpeg', 'png'], levels: [1, maxBatch],
      phase: (c) => ({ warmup: Math.max(4, c), min: Math.max(10, 2 * c), max: 400, seconds: 4 }),
      probeAt: { format: 'jpeg', concurrency: maxBatch, dedicated: true, seconds: 4 },
      rawBatches: [1, maxBatch], rawFloat: true, raw: { minIters: 3, maxIters: 100, minSeconds: 1.5, warm: 'all' },
      soakRequests: 150, soakConcurrency: maxBatch, zeroDelayCheck: false, timeoutMs: 30_000,
      note: 'quick mode: short phases (4 s), levels 1 and MAX_BATCH_SIZE only, 150-request soak',
    }];
  }
  return [
    {
      key: 'small', label: 'fixture sdvae-ch32 (16×16 → 128×128)', path: small, side: 16,
      formats: ['jpeg', 'png'], levels: [1, 4, 16, 64],
      phase: (c) => ({ warmup: Math.max(8, c), min: Math.max(40, 3 * c), max: 5000, seconds: 15 }),
      probeAt: { format: 'jpeg', concurrency: 16, dedicated: true, seconds: 10 },
      rawBatches: [1, 4, 8, 16], rawFloat: true, raw: { minIters: 5, maxIters: 500, minSeconds: 4, warm: 'all' },
      soakRequests: 1000, soakConcurrency: 16, zeroDelayCheck: true, timeoutMs: 30_000,
    },
    {
      key: 'large', label: 'full-width sdvae-ch128 (64×64 → 512×512)', path: large, side: 64,
      formats: ['jpeg', 'png'], levels: [1, maxBatch],
      // ~15-20 s per image on this CPU: a handful of requests per level
      phase: (c) => (c === 1 ? { warmup: 0, min: 2, max: 2, seconds: 0 } : { warmup: 0, min: c, max: c, seconds: 0 }),
      probeAt: { format: 'jpeg', concurrency: maxBatch },
      rawBatches: [1, maxBatch], rawFloat: false, raw: { minIters: 1, maxIters: 2, minSeconds: 0, warm: 'first' },
      soakRequests: 0, soakConcurrency: 0, zeroDelayCheck: false, timeoutMs: 1_800_000,
      note: 'full-width model: ~15-20 s per image here, so concurrency 1 (2 requests) and MAX_BATCH_SIZE (one full batch) per format, ' +
        'raw at batch 1 (2 runs) and MAX_BATCH_SIZE (1-2 runs), no soak; its first service request (untimed) warms the 64×64 shape',
    },
  ];
}

// ---------------------------------------------------------------- main

async function main(): Promise<void> {
  const started = performance.now();
  const { values } = parseArgs({
    options: {
      quick: { type: 'boolean', default: false },
      small: { type: 'string', default: resolve(ROOT, 'test/fixtures/sdvae-ch32/torch-export.onnx') },
      large: { type: 'string', default: join(TMP, 'models/sdvae-ch128.onnx') },
      'no-large': { type: 'boolean', default: false },
      'only-large': { type: 'boolean', default: false },
      env: { type: 'string', multiple: true, default: [] },
      'no-profile': { type: 'boolean', default: false },
      dist: { type: 'boolean', default: false },
      out: { type: 'string', default: join(ROOT, 'bench/results') },
      'quiet-wait': { type: 'string' },
      gpu: { type: 'boolean', default: false },
    },
  });
  const quick = values.quick;
  quietBudgetS = Number(values['quiet-wait'] ?? (quick ? 15 : 300));
  mkdirSync(TMP, { recursive: true });
  const extraEnv = Object.fromEntries(values.env.map((kv) => {
    const i = kv.indexOf('=');
    if (i < 1) throw new Error(`--env ${kv}: expected KEY=VALUE`);
    return [kv.slice(0, i), kv.slice(i + 1)];
  }));
  if (values.dist && !existsSync(join(ROOT, 'dist/main.js'))) throw new Error('--dist: dist/main.js is missing; run `npm run build` first');
  const baseEnv: Record<string, string> = {
    EXECUTION_PROVIDERS: values.gpu ? 'cuda' : 'cpu',
    MAX_BATCH_SIZE: '8',
    MAX_QUEUE_DELAY_MS: '5',
    MAX_QUEUE_SIZE: '64',
    LOG_LEVEL: 'info',
    ...extraEnv,
  };
  const maxBatch = Number(baseEnv.MAX_BATCH_SIZE);
  const machine = machineInfo();
  log(`machine: ${machine.cpuModel}, ${machine.cores} cores, ${machine.ramGiB} GiB, node ${machine.node}, ORT ${machine.ort}; mode ${quick ? 'quick' : 'full'}`);

  let modelPlans = plans(values.gpu ? 'gpu' : quick ? 'quick' : 'full', resolve(values.small), resolve(values.large), maxBatch);
  if (values['no-large']) modelPlans = modelPlans.filter((p) => p.key !== 'large');
  if (values['only-large']) modelPlans = modelPlans.filter((p) => p.key === 'large');

  const bodyDir = join(TMP, 'bodies');
  mkdirSync(bodyDir, { recursive: true });
  const models: ModelResult[] = [];
  for (const plan of modelPlans) {
    const env = { ...baseEnv, MODEL_PATH: plan.path, REQUEST_TIMEOUT_MS: String(plan.timeoutMs) };
    const mr: ModelResult = { key: plan.key, label: plan.label, path: relative(ROOT, plan.path), side: plan.side, imageSide: plan.side * 8, note: plan.note, phases: [], serviceEnv: env };
    models.push(mr);
    if (plan.key === 'large') {
      const m = await ensureLargeModel(plan.path);
      if (!m.ok) { mr.skipped = m.why; log(`skipping the full-width model: ${m.why}`); continue; }
    }
    if (!existsSync(plan.path)) { mr.skipped = `model file ${plan.path} not found`; log(mr.skipped); continue; }
    const bodyFile = join(bodyDir, `latents-1x4x${plan.side}x${plan.side}.f32`);
    const lat = gaussianLatents(4 * plan.side * plan.side, 42);
    writeFileSync(bodyFile, Buffer.from(lat.buffer, lat.byteOffset, lat.byteLength));

    // 1. raw ceiling, alone on the machine (as far as this benchmark goes)
    await waitQuiet([]);
    log(`${plan.key}: raw ORT, batches ${plan.rawBatches.join(',')}`);
    const rawOut = join(TMP, `raw-${plan.key}.json`);
    const rawArgs = [...TSX, 'bench/raw-ort.ts', '--model', plan.path, '--side', String(plan.side), '--batches', plan.rawBatches.join(','),
      '--min-iters', String(plan.raw.minIters), '--max-iters', String(plan.raw.maxIters), '--min-seconds', String(plan.raw.minSeconds), '--warm', plan.raw.warm,
      '--out', rawOut, ...(plan.rawFloat ? ['--float'] : [])];
    const rr = await runChild(rawArgs, { ...process.env, ...env }, join(TMP, `raw-${plan.key}.stdout`));
    if (rr.code !== 0) throw new Error(`bench/raw-ort.ts exited with code ${rr.code}`);
    mr.raw = JSON.parse(readFileSync(rawOut, 'utf8')) as RawResult;

    // 2. the service
    log(`${plan.key}: starting the service (${values.dist ? 'node dist/main.js' : 'node --import tsx src/main.ts'})`);
    const svc = await startService(env, { dist: values.dist, tag: plan.key });
    mr.startupMs = svc.startupMs;
    try {
      if (plan.key === 'large') {
        // the service warms up on 8×8 latents; the first 64×64 run plans and allocates
        await loadPhase(svc, { model: plan.key, side: plan.side, format: 'jpeg', concurrency: 1, bodyFile, warmup: 0, min: 1, max: 1, seconds: 0, timeoutMs: plan.timeoutMs, probe: false, label: 'shape-warmup' });
      }
      for (const format of plan.formats) {
        for (const c of plan.levels) {
          const ph = plan.phase(c);
          const probe = !plan.probeAt.dedicated && plan.probeAt.format === format && plan.probeAt.concurrency === c;
          mr.phases.push(await loadPhase(svc, { model: plan.key, side: plan.side, format, concurrency: c, bodyFile, ...ph, timeoutMs: plan.timeoutMs, probe }));
        }
      }
      if (plan.probeAt.dedicated) {
        const c = plan.probeAt.concurrency;
        mr.probePhase = await loadPhase(svc, { model: plan.key, side: plan.side, format: plan.probeAt.format, concurrency: c, bodyFile,
          ...plan.phase(c), seconds: plan.probeAt.seconds ?? 10, timeoutMs: plan.timeoutMs, probe: true, label: 'healthz' });
      }
      if (plan.soakRequests > 0) {
        mr.soak = await soakPhase(svc, { model: plan.key, side: plan.side, bodyFile, requests: plan.soakRequests, concurrency: plan.soakConcurrency, timeoutMs: plan.timeoutMs });
      }
    } finally {
      await stopService(svc);
    }
    if (plan.zeroDelayCheck) {
      log(`${plan.key}: diagnostic — c=1 with MAX_QUEUE_DELAY_MS=0`);
      const svc0 = await startService({ ...env, MAX_QUEUE_DELAY_MS: '0' }, { dist: values.dist, tag: `${plan.key}-delay0` });
      try {
        const ph = plan.phase(1);
        mr.zeroDelay = await loadPhase(svc0, { model: plan.key, side: plan.side, format: 'jpeg', concurrency: 1, bodyFile, ...ph, timeoutMs: plan.timeoutMs, probe: false, label: 'delay0' });
      } finally {
        await stopService(svc0);
      }
    }
  }

  // 3. a CPU profile of the service under load (full mode): where the main thread's time goes
  let profile: BenchResult['profile'];
  const small = modelPlans.find((p) => p.key === 'small');
  if (!quick && !values['no-profile'] && small) {
    const dir = join(TMP, `cpu-prof-${Date.now()}`);
    mkdirSync(dir, { recursive: true });
    log('profile: service with --cpu-prof, c=1 and c=16 JPEG, 10 s each');
    const env = { ...baseEnv, MODEL_PATH: small.path, REQUEST_TIMEOUT_MS: '30000' };
    const svc = await startService(env, { dist: values.dist, cpuProfDir: dir, tag: 'profile' });
    const bodyFile = join(bodyDir, `latents-1x4x${small.side}x${small.side}.f32`);
    try {
      for (const c of [1, 16]) {
        await loadPhase(svc, { model: 'small', side: small.side, format: 'jpeg', concurrency: c, bodyFile, warmup: 8, min: 20, max: 5000, seconds: 10, timeoutMs: 30_000, probe: false, label: 'profiled' });
      }
    } finally {
      await stopService(svc);
    }
    const files = readdirSync(dir).filter((f) => f.endsWith('.cpuprofile')).map((f) => join(dir, f));
    if (files.length) {
      const skip = svc.startupMs + 500;
      profile = { ...summarizeProfiles(files, skip), note: `service run with --cpu-prof (${relative(ROOT, dir)}), fixture model, 10 s at c=1 then 10 s at c=16, JPEG; the first ${(skip / 1000).toFixed(1)} s (start-up to ready) left out` };
    }
  }

  const result: BenchResult = {
    date: new Date().toISOString(),
    mode: values.gpu ? 'gpu' : quick ? 'quick' : 'full',
    machine,
    command: `npm run bench${process.argv.length > 2 ? ' -- ' + process.argv.slice(2).join(' ') : ''}`,
    serviceCommand: values.dist ? 'node dist/main.js' : 'node --import tsx src/main.ts',
    settings: {
      ...baseEnv,
      ORT_INTRA_OP_THREADS: baseEnv.ORT_INTRA_OP_THREADS ?? '(unset: ORT default)',
      UV_THREADPOOL_SIZE: baseEnv.UV_THREADPOOL_SIZE ?? '(unset: libuv default 4)',
    },
    models,
    profile,
    durationS: (performance.now() - started) / 1000,
    quietWaitedS,
    metricsAvailable: metricsSeen,
  };
  const stem = `${result.date.slice(0, 10)}-${machine.hostname}${values.gpu ? '-gpu' : quick ? '-quick' : ''}`;
  mkdirSync(values.out, { recursive: true });
  const base = join(values.out, stem);
  writeFileSync(`${base}.json`, JSON.stringify(result, null, 1));
  writeFileSync(`${base}.svg`, renderChart(result));
  writeFileSync(`${base}.md`, renderMarkdown(result, `${stem}.svg`));
  log(`wrote ${relative(ROOT, base)}.{md,json,svg} in ${result.durationS.toFixed(0)} s`);
}

main().then(() => process.exit(0), (e: unknown) => {
  process.stderr.write(`bench failed: ${(e as Error).stack ?? String(e)}\n`);
  process.exit(1);
});
