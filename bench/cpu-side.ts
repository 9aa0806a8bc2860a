// The CPU side's ceiling: the service on the null decoder (bench/null-decoder.ts: a model that
// costs next to nothing, 64×64 latents → 512² images), per answer format and concurrency: the
// service process's CPU time per image (all threads: event loop, worker, ORT, sharp's libuv
// pool), images/s, and images/s per core used = what one core can feed a GPU. Next to it the
// floors: sharp's own encode of the same pixels and raw ORT running the null decoder with the
// in-graph postprocess, both measured in this process with process.cpuUsage().
//
//   npx tsx bench/cpu-side.ts [--quick] [--env K=V ...] [--out FILE.md]   (alone)
//   npm run bench                                                          (a section of the report)
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import * as ort from 'onnxruntime-node';
import sharp from 'sharp';
import { loadConfig } from '../src/config.js';
import { IMAGE_OUTPUT, withPostprocess } from '../src/onnx/postprocess.js';
import { buildPreviewDecoder } from '../src/onnx/preview.js';
import type { LoadResult, LoadSpec } from './load.js';
import { writeNullDecoder } from './null-decoder.js';
import { log, runChild, TMP, TSX, waitQuiet, withService } from './proc.js';
import { summarize } from './stats.js';
import { processCpuSeconds } from './sys.js';

const SIDE = 64;
// the service's session options (ORT_ALLOW_SPINNING unset)
const NO_SPIN = { session: { intra_op: { allow_spinning: '0' } } };
const PX = SIDE * 8;

/** What the client asks for: the query after `shape`, and the samples per request. */
export const ANSWERS = {
  jpeg: { query: 'format=jpeg', n: 1 },
  png: { query: 'format=png', n: 1 },
  webp: { query: 'format=webp', n: 1 },
  'raw uint8': { query: 'output_type=pt&partial_postprocess=1', n: 1 },
  'float tensor': { query: 'output_type=pt', n: 1 },
  'JSON base64 JPEG ×4': { query: 'format=jpeg', n: 4 },
  // the built-in preview decoder (a 1×1 conv and an 8× resize), served next to MODEL_PATH
  'JPEG, preview decoder': { query: 'format=jpeg&model=sd15-preview', n: 1 },
} as const;
export type Answer = keyof typeof ANSWERS;

export interface CpuSidePoint {
  answer: Answer;
  concurrency: number;
  images: number;
  wallS: number;
  /** Service process CPU seconds (utime + stime, all threads) over the phase. */
  cpuS: number;
  cpuMsPerImage: number;
  imagesPerSec: number;
  /** cpuS ÷ wallS: cores the service kept busy. */
  coresUsed: number;
  /** 1000 ÷ cpuMsPerImage. */
  imagesPerSecPerCore: number;
  /** p50 ms: client end-to-end and the Server-Timing stages. */
  e2e: number;
  stages: Partial<Record<'parse' | 'queue' | 'infer' | 'encode' | 'total', number>>;
  errors: Record<string, number>;
}

export interface CpuSideResult {
  note: string;
  settings: Record<string, string>;
  /** CPU-ms per 512² image, measured in the orchestrator. */
  floors: { name: string; cpuMs: number; bytes?: number }[];
  points: CpuSidePoint[];
}

async function cpuMsPer(fn: () => Promise<unknown>, reps: number, rounds = 3): Promise<number> {
  let best = Infinity;
  for (let r = 0; r < rounds; r++) {
    const c0 = process.cpuUsage();
    for (let i = 0; i < reps; i++) await fn();
    const c = process.cpuUsage(c0);
    best = Math.min(best, (c.user + c.system) / 1000 / reps);
  }
  return best;
}

/** sharp's own encodes and raw ORT on the null decoder: the floors the service is held to. */
async function floors(model: string, pngLevel: number): Promise<CpuSideResult['floors']> {
  const preview = await ort.InferenceSession.create(withPostprocess(buildPreviewDecoder()).bytes, { executionProviders: ['cpu'], graphOptimizationLevel: 'all', enableCpuMemArena: false, logSeverityLevel: 3, extra: NO_SPIN });
  const latents = new Float32Array(4 * SIDE * SIDE).map((_, i) => Math.sin(i / 97));
  const previewMs = await cpuMsPer(() => preview.run({ latent_sample: new ort.Tensor('float32', latents.slice(), [1, 4, SIDE, SIDE]) }, [IMAGE_OUTPUT]), 20);
  await preview.release();
  const { bytes, io } = withPostprocess(readFileSync(model));
  const session = await ort.InferenceSession.create(bytes, { executionProviders: ['cpu'], graphOptimizationLevel: 'all', enableCpuMemArena: false, logSeverityLevel: 3, extra: NO_SPIN });
  const out: CpuSideResult['floors'] = [{ name: 'raw ORT, preview decoder + in-graph postprocess, batch 1', cpuMs: previewMs }];
  let pixels: Uint8Array | undefined;
  for (const b of [1, 8]) {
    const run = async (): Promise<void> => {
      const res = await session.run({ [io.input]: new ort.Tensor('float32', new Float32Array(b * 4 * SIDE * SIDE), [b, 4, SIDE, SIDE]) }, [IMAGE_OUTPUT]);
      pixels ??= (res[IMAGE_OUTPUT]!.data as Uint8Array).slice(0, PX * PX * 3);
    };
    await run();
    out.push({ name: `raw ORT, null decoder + in-graph postprocess, batch ${b}`, cpuMs: (await cpuMsPer(run, b === 1 ? 20 : 4)) / b });
  }
  await session.release();
  sharp.concurrency(1);
  const img = (): ReturnType<typeof sharp> => sharp(Buffer.from(pixels!), { raw: { width: PX, height: PX, channels: 3 } });
  const encoders: [string, () => Promise<Buffer>][] = [
    ['sharp JPEG q90', () => img().jpeg({ quality: 90 }).toBuffer()],
    [`sharp PNG level ${pngLevel}`, () => img().png({ compressionLevel: pngLevel }).toBuffer()],
    ['sharp WebP q90', () => img().webp({ quality: 90 }).toBuffer()],
  ];
  for (const [name, fn] of encoders) out.push({ name, cpuMs: await cpuMsPer(fn, 10), bytes: (await fn()).length });
  return out;
}

async function phase(origin: string, pid: number, answer: Answer, concurrency: number, bodyFile: string, seconds: number): Promise<CpuSidePoint> {
  const a = ANSWERS[answer];
  const out = join(TMP, `cpu-side-${answer.replace(/\W+/g, '_')}-c${concurrency}.json`);
  const spec = (secs: number, min: number): LoadSpec => ({
    origin, path: `/decode?shape=${a.n},4,${SIDE},${SIDE}&scaling_factor=1&${a.query}`, bodyFile, concurrency,
    maxRequests: 1_000_000, minRequests: min, seconds: secs, warmupRequests: 0, timeoutMs: 60_000, out,
  });
  const load = async (s: LoadSpec): Promise<LoadResult> => {
    const { code } = await runChild([...TSX, 'bench/load.ts', JSON.stringify(s)]);
    if (code !== 0) throw new Error(`the load generator exited with code ${code}`);
    return JSON.parse(readFileSync(s.out, 'utf8')) as LoadResult;
  };
  await load(spec(0, concurrency * 2)); // warm-up: connections, JIT, sharp's first encodes
  await waitQuiet([pid]);
  const cpu0 = processCpuSeconds(pid);
  const r = await load(spec(seconds, concurrency * 3));
  const cpuS = processCpuSeconds(pid) - cpu0;
  const ok = r.samples.filter((s) => s.status === 200);
  const images = ok.length * a.n;
  const wallS = r.wallMs / 1000;
  const p50 = (f: (s: (typeof ok)[number]) => number | undefined): number | undefined => {
    const v = ok.map(f).filter((x): x is number => x !== undefined);
    return v.length ? summarize(v).p50 : undefined;
  };
  const point: CpuSidePoint = {
    answer, concurrency, images, wallS, cpuS,
    cpuMsPerImage: (cpuS * 1000) / images,
    imagesPerSec: images / wallS,
    coresUsed: cpuS / wallS,
    imagesPerSecPerCore: images / cpuS,
    e2e: p50((s) => s.ms) ?? NaN,
    stages: { parse: p50((s) => s.parse), queue: p50((s) => s.queue), infer: p50((s) => s.infer), encode: p50((s) => s.encode), total: p50((s) => s.total) },
    errors: r.errors,
  };
  log(`  cpu-side ${answer} c=${concurrency}: ${point.imagesPerSec.toFixed(1)} img/s, ${point.cpuMsPerImage.toFixed(2)} CPU-ms/img, ${point.coresUsed.toFixed(2)} cores`);
  return point;
}

/** Runs the whole CPU-side measurement; `quick`: JPEG and raw uint8 at c=8 only, 3 s each. */
export async function runCpuSide(o: { quick: boolean; env: Record<string, string>; dist: boolean }): Promise<CpuSideResult> {
  mkdirSync(join(TMP, 'models'), { recursive: true });
  mkdirSync(join(TMP, 'bodies'), { recursive: true });
  const model = join(TMP, 'models', `null-decoder-${SIDE}.onnx`);
  writeNullDecoder(model, SIDE);
  const bodies: Record<number, string> = {};
  for (const n of [1, 4]) {
    bodies[n] = join(TMP, 'bodies', `zeros-${n}x4x${SIDE}x${SIDE}.f32`);
    writeFileSync(bodies[n], Buffer.alloc(n * 4 * SIDE * SIDE * 4));
  }
  // A GPU's layout: one session, batches of up to 8 (PERFORMANCE_HINT=latency; the CPU's default
  // throughput layout — two sessions, one sample per run — is for models that run on the CPU).
  const settings: Record<string, string> = { EXECUTION_PROVIDERS: 'cpu', PERFORMANCE_HINT: 'latency', MAX_BATCH_SIZE: '8', MAX_QUEUE_SIZE: '64', LOG_LEVEL: 'warn', ...o.env, MODEL_PATH: model };
  const answers: Answer[] = o.quick ? ['jpeg', 'raw uint8'] : (Object.keys(ANSWERS) as Answer[]);
  const levels = o.quick ? [8] : [1, 4, 16, 64];
  const seconds = o.quick ? 3 : 6;
  log(`cpu-side: null decoder ${SIDE}² latents → ${PX}² px, ${answers.length} answers × c=${levels.join(',')}, ${seconds} s each`);
  const fl = await floors(model, loadConfig(settings).pngCompressionLevel);
  const points = await withService(settings, { dist: o.dist, tag: 'cpu-side' }, async (svc) => {
    const pts: CpuSidePoint[] = [];
    for (const answer of answers) {
      // more samples in flight than the queue holds would measure 429s
      for (const c of levels.filter((l) => l * ANSWERS[answer].n <= Number(settings.MAX_QUEUE_SIZE))) {
        pts.push(await phase(svc.origin, svc.pid, answer, c, bodies[ANSWERS[answer].n]!, seconds));
      }
    }
    return pts;
  });
  return {
    note: `null decoder (bench/null-decoder.ts), ${SIDE}×${SIDE} latents → ${PX}² px, MODEL_PATH of a service started as in the rest of the benchmark; ${seconds} s per phase after a warm-up; CPU = /proc/<pid>/stat utime+stime of the service process`,
    settings, floors: fl, points,
  };
}

const f = (v: number | undefined, d = 2): string => (v === undefined || !Number.isFinite(v) ? '–' : v.toFixed(d));

/** The report's section: floors, the table by answer and concurrency, the chart's file. */
export function cpuSideMarkdown(r: CpuSideResult, chartFile?: string): string {
  const lines = [
    '## CPU side (null decoder)', '', r.note + '.', '',
    '| floor (measured in the orchestrator) | CPU-ms per 512² image | bytes |', '| --- | ---: | ---: |',
    ...r.floors.map((x) => `| ${x.name} | ${f(x.cpuMs)} | ${x.bytes ?? ''} |`), '',
    '| answer | c | img/s | cores used | **CPU-ms/img** | img/s per core | e2e p50 ms | parse | queue | infer | encode | total | errors |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |',
    ...r.points.map((p) => `| ${p.answer} | ${p.concurrency} | ${f(p.imagesPerSec, 1)} | ${f(p.coresUsed)} | **${f(p.cpuMsPerImage)}** | ${f(p.imagesPerSecPerCore, 0)} | ${f(p.e2e, 1)} | ` +
      `${f(p.stages.parse)} | ${f(p.stages.queue)} | ${f(p.stages.infer)} | ${f(p.stages.encode)} | ${f(p.stages.total)} | ${Object.keys(p.errors).length ? JSON.stringify(p.errors) : ''} |`),
    '', 'Stage columns are Server-Timing p50 wall ms per request (a JSON ×4 request carries 4 images); CPU-ms/img is the service process\'s CPU over the phase ÷ images answered.',
  ];
  if (chartFile) lines.push('', `![images/s against cores used](${chartFile})`);
  return lines.join('\n');
}

/** images/s against cores used, one line per answer through its concurrency points. */
export function cpuSideChart(r: CpuSideResult): string {
  const W = 560, H = 340, M = { l: 56, r: 170, t: 30, b: 44 };
  const colors = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#8c564b'];
  const xmax = Math.max(0.5, ...r.points.map((p) => p.coresUsed)) * 1.1;
  const ymax = Math.max(1, ...r.points.map((p) => p.imagesPerSec)) * 1.1;
  const xs = (v: number): number => M.l + (v / xmax) * (W - M.l - M.r);
  const ys = (v: number): number => H - M.b - (v / ymax) * (H - M.t - M.b);
  const out = [`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="11">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${(W - M.r + M.l) / 2}" y="18" text-anchor="middle" font-size="13" font-weight="bold">CPU side: images/s against cores used (null decoder, 512²)</text>`,
    `<rect x="${M.l}" y="${M.t}" width="${W - M.l - M.r}" height="${H - M.t - M.b}" fill="none" stroke="#999"/>`];
  for (let i = 0; i <= 4; i++) {
    const xv = (xmax * i) / 4, yv = (ymax * i) / 4;
    out.push(`<text x="${xs(xv)}" y="${H - M.b + 14}" text-anchor="middle">${xv.toFixed(2)}</text>`, `<text x="${M.l - 4}" y="${ys(yv) + 4}" text-anchor="end">${yv.toFixed(0)}</text>`);
  }
  out.push(`<text x="${(W - M.r + M.l) / 2}" y="${H - 8}" text-anchor="middle">cores used by the service (CPU-s per s); labels: concurrency</text>`,
    `<text x="14" y="${H / 2}" transform="rotate(-90 14 ${H / 2})" text-anchor="middle">images/s</text>`);
  const answers = [...new Set(r.points.map((p) => p.answer))];
  answers.forEach((a, i) => {
    const pts = r.points.filter((p) => p.answer === a).sort((x, y) => x.coresUsed - y.coresUsed);
    const c = colors[i % colors.length]!;
    out.push(`<polyline fill="none" stroke="${c}" stroke-width="2" points="${pts.map((p) => `${xs(p.coresUsed).toFixed(1)},${ys(p.imagesPerSec).toFixed(1)}`).join(' ')}"/>`);
    for (const p of pts) out.push(`<circle cx="${xs(p.coresUsed).toFixed(1)}" cy="${ys(p.imagesPerSec).toFixed(1)}" r="3" fill="${c}"/><text x="${(xs(p.coresUsed) + 4).toFixed(1)}" y="${(ys(p.imagesPerSec) - 4).toFixed(1)}" fill="${c}" font-size="9">${p.concurrency}</text>`);
    out.push(`<rect x="${W - M.r + 10}" y="${M.t + i * 18}" width="12" height="3" fill="${c}"/><text x="${W - M.r + 26}" y="${M.t + i * 18 + 5}">${a}</text>`);
  });
  out.push('</svg>');
  return out.join('\n');
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { quick: { type: 'boolean', default: false }, env: { type: 'string', multiple: true, default: [] }, out: { type: 'string' }, dist: { type: 'boolean', default: false } } });
  const env = Object.fromEntries(values.env.map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]));
  const r = await runCpuSide({ quick: values.quick, env, dist: values.dist });
  const stem = values.out ?? join(TMP, `cpu-side-${Date.now()}`);
  writeFileSync(`${stem}.json`, JSON.stringify(r, null, 1));
  writeFileSync(`${stem}.svg`, cpuSideChart(r));
  writeFileSync(`${stem}.md`, cpuSideMarkdown(r, `${stem.split('/').pop()!}.svg`) + '\n');
  process.stdout.write(cpuSideMarkdown(r) + '\n');
}

if (import.meta.url === `file://${process.argv[1]}`) {
  main().then(() => process.exit(0), (e: unknown) => {
    process.stderr.write(`cpu-side failed: ${(e as Error).stack ?? String(e)}\n`);
    process.exit(1);
  });
}
