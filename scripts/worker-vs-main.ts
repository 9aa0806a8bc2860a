// ONNX Runtime's run time on the main thread against a worker thread, same session options as the
// service's worker: does the thread a session lives in change its speed (glibc's per-thread heaps)?
//   node --import tsx scripts/worker-vs-main.ts [--model M] [--side 64] [--runs 4] [--threads N (0: ORT's default)]
//   WARM8=1 … runs an 8×8 first, as the old CPU warm-up did (then every 64×64 run is ~1.8× slower)
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import '../src/inference/telemetry.cjs';
import * as ort from 'onnxruntime-node';
import { IMAGE_OUTPUT, withPostprocess } from '../src/onnx/postprocess.js';

interface Job { model: string; side: number; runs: number; threads: number }

async function measure(j: Job): Promise<{ ms: number[]; cpu: NodeJS.CpuUsage }> {
  const { bytes, io } = withPostprocess(readFileSync(j.model));
  const s = await ort.InferenceSession.create(bytes, {
    executionProviders: ['cpu'], graphOptimizationLevel: 'all', enableCpuMemArena: false, enableMemPattern: true,
    ...(j.threads > 0 ? { intraOpNumThreads: j.threads } : {}),
    extra: { session: { intra_op: { allow_spinning: '0' } } },
  });
  if (process.env.WARM8) await s.run({ [io.input]: new ort.Tensor('float32', new Float32Array(4 * 8 * 8), [1, 4, 8, 8]) }, [IMAGE_OUTPUT]);
  const dims = [1, 4, j.side, j.side];
  const data = new Float32Array(4 * j.side * j.side).map((_, i) => Math.sin(i));
  await s.run({ [io.input]: new ort.Tensor('float32', data.slice(), dims) }, [IMAGE_OUTPUT]);
  const ms: number[] = [];
  const c0 = process.cpuUsage();
  for (let i = 0; i < j.runs; i++) {
    const t = performance.now();
    await s.run({ [io.input]: new ort.Tensor('float32', data.slice(), dims) }, [IMAGE_OUTPUT]);
    ms.push(Math.round(performance.now() - t));
  }
  const cpu = process.cpuUsage(c0);
  await s.release();
  return { ms, cpu };
}

if (isMainThread) {
  const { values } = parseArgs({ options: {
    model: { type: 'string', default: resolve('test/fixtures/sdvae-ch32/torch-export.onnx') },
    side: { type: 'string', default: '64' }, runs: { type: 'string', default: '4' }, threads: { type: 'string', default: '0' } } });
  const job: Job = { model: values.model, side: Number(values.side), runs: Number(values.runs), threads: Number(values.threads) };
  const fmt = (name: string, r: { ms: number[]; cpu: NodeJS.CpuUsage }): string =>
    `${name}: run ms ${r.ms.join(' ')}; CPU user ${(r.cpu.user / 1000 / job.runs).toFixed(0)} sys ${(r.cpu.system / 1000 / job.runs).toFixed(0)} ms per run`;
  console.log(fmt('main thread', await measure(job)));
  // Node 20 does not apply loader hooks to a worker's entry file: register tsx, then import it (as src/inference/runner.ts)
  const api = import.meta.resolve('tsx/esm/api');
  const boot = `import(${JSON.stringify(api)}).then((t) => { t.register(); return import(${JSON.stringify(import.meta.url)}); })`;
  const w = new Worker(boot, { eval: true, workerData: job });
  const r = await new Promise<{ ms: number[]; cpu: NodeJS.CpuUsage }>((res, rej) => { w.once('message', res); w.once('error', rej); });
  console.log(fmt('worker thread', r));
  await w.terminate();
} else {
  parentPort!.postMessage(await measure(workerData as Job));
}
