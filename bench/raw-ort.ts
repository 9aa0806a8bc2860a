// The raw ceiling: the same ONNX model called directly through InferenceSession.run, in its own
// process (no HTTP, no event loop shared with anything), with the session options the service's
// worker uses (graphOptimizationLevel 'all', intra-op threads from ORT_INTRA_OP_THREADS, else ORT's
// default) and the same in-graph postprocess (withPostprocess → fetch `image`, uint8 NHWC).
// For reference it also times the original model fetching its float32 output.
//
//   node --import tsx bench/raw-ort.ts --model M.onnx --side 16 --batches 1,4,8 \
//     [--min-iters 5] [--min-seconds 3] [--max-iters 200] [--float] [--warm all|first] [--out result.json]
//
// Prints (and writes to --out) a JSON RawResult.
import { readFile, writeFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import '../src/inference/telemetry.cjs'; // before onnxruntime-node: telemetry off, as in the service
import * as ort from 'onnxruntime-node';
import { IMAGE_OUTPUT, withPostprocess } from '../src/onnx/postprocess.js';
import { gaussianLatents, summarize, type Summary } from './stats.js';

export interface RawPoint {
  output: 'image' | 'sample';
  batch: number;
  iters: number;
  /** session.run wall time per call, ms. */
  runMs: Summary;
  /** batch / mean run time. */
  imagesPerSec: number;
  /** Process CPU time during the timed runs ÷ their wall time, % (200 % = two cores busy). */
  cpuPct: number;
}

export interface RawResult {
  model: string;
  side: number;
  intraOpThreads: number | 'default';
  loadMs: number;
  points: RawPoint[];
}

async function timeRuns(session: ort.InferenceSession, input: string, fetch: string, batch: number, side: number,
  o: { minIters: number; maxIters: number; minSeconds: number; warm: boolean }): Promise<{ times: number[]; cpuPct: number }> {
  const dims = [batch, 4, side, side];
  const data = gaussianLatents(batch * 4 * side * side, 7 + batch);
  // one untimed run per shape: the first run of a new shape allocates and plans
  if (o.warm) await session.run({ [input]: new ort.Tensor('float32', data.slice(), dims) }, [fetch]);
  const times: number[] = [];
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  while (times.length < o.maxIters && (times.length < o.minIters || performance.now() - t0 < o.minSeconds * 1000)) {
    // a fresh tensor per call, as the service builds one per batch
    const t = performance.now();
    const res = await session.run({ [input]: new ort.Tensor('float32', data.slice(), dims) }, [fetch]);
    times.push(performance.now() - t);
    if (!res[fetch]) throw new Error(`no output ${fetch}`);
  }
  const cpu = process.cpuUsage(cpu0);
  return { times, cpuPct: ((cpu.user + cpu.system) / 1000 / (performance.now() - t0)) * 100 };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      model: { type: 'string' },
      side: { type: 'string', default: '16' },
      batches: { type: 'string', default: '1,4,8' },
      'min-iters': { type: 'string', default: '5' },
      'max-iters': { type: 'string', default: '500' },
      'min-seconds': { type: 'string', default: '3' },
      float: { type: 'boolean', default: false },
      // 'first': only the first batch size gets an untimed run (for models where one run is minutes)
      warm: { type: 'string', default: 'all' },
      out: { type: 'string' },
    },
  });
  if (!values.model) throw new Error('--model is required');
  const side = Number(values.side);
  const batches = values.batches.split(',').map(Number);
  const o = { minIters: Number(values['min-iters']), maxIters: Number(values['max-iters']), minSeconds: Number(values['min-seconds']) };
  const threads = Number(process.env.ORT_INTRA_OP_THREADS ?? 0);
  const sessionOpts: ort.InferenceSession.SessionOptions = {
    executionProviders: [process.env.EXECUTION_PROVIDERS?.split(',')[0]?.trim() || 'cpu'],
    graphOptimizationLevel: 'all',
    ...(threads > 0 ? { intraOpNumThreads: threads } : {}),
    // as the service's worker: ORT's CPU arena only with ORT_CPU_MEM_ARENA=1, memory patterns on
    enableCpuMemArena: process.env.ORT_CPU_MEM_ARENA === '1',
    enableMemPattern: true,
    // as the service's worker: intra-op threads sleep instead of spin-waiting unless ORT_ALLOW_SPINNING=1
    extra: { session: { intra_op: { allow_spinning: process.env.ORT_ALLOW_SPINNING === '1' ? '1' : '0' } } },
  };

  const t0 = performance.now();
  const original = await readFile(values.model);
  const { bytes, io } = withPostprocess(original);
  const session = await ort.InferenceSession.create(bytes, sessionOpts);
  const loadMs = performance.now() - t0;
  const points: RawPoint[] = [];
  for (const [i, b] of batches.entries()) {
    const { times, cpuPct } = await timeRuns(session, io.input, IMAGE_OUTPUT, b, side, { ...o, warm: values.warm === 'all' || i === 0 });
    const s = summarize(times);
    points.push({ output: 'image', batch: b, iters: times.length, runMs: s, imagesPerSec: (b * 1000) / s.mean, cpuPct });
    process.stderr.write(`raw image b=${b}: ${s.mean.toFixed(1)} ms/run, ${((b * 1000) / s.mean).toFixed(2)} img/s (${times.length} runs, CPU ${cpuPct.toFixed(0)} %)\n`);
  }
  await session.release();

  if (values.float) {
    // the original graph, float32 NCHW output, no postprocess: what a client doing its own
    // postprocess would get
    const plain = await ort.InferenceSession.create(original, sessionOpts);
    for (const [i, b] of batches.entries()) {
      const { times, cpuPct } = await timeRuns(plain, io.input, io.output, b, side, { ...o, warm: values.warm === 'all' || i === 0 });
      const s = summarize(times);
      points.push({ output: 'sample', batch: b, iters: times.length, runMs: s, imagesPerSec: (b * 1000) / s.mean, cpuPct });
      process.stderr.write(`raw float b=${b}: ${s.mean.toFixed(1)} ms/run, ${((b * 1000) / s.mean).toFixed(2)} img/s (${times.length} runs, CPU ${cpuPct.toFixed(0)} %)\n`);
    }
    await plain.release();
  }
  const result: RawResult = { model: values.model, side, intraOpThreads: threads > 0 ? threads : 'default', loadMs, points };
  const json = JSON.stringify(result);
  if (values.out) await writeFile(values.out, json);
  process.stdout.write(json + '\n');
}

await main();
