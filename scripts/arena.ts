// ONNX Runtime's memory options side by side: throughput, CPU per image and the memory a batch
// leaves behind, each option in a fresh process (a process's peak only grows; an arena keeps what
// an earlier run took). The session runs in a worker thread, as in the service (glibc gives each
// thread its own malloc arena, which changes what `free` returns to the system).
//   npx tsx scripts/arena.ts [--model PATH] [--side 32] [--batch 4] [--runs 8] [--variants a,b,...]
//     [--out FILE.json]
// Prints one Markdown table row per variant; MB = 10^6 bytes, CPU = utime + stime of the whole
// process over the timed runs (all threads), from process.cpuUsage().
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { Worker } from 'node:worker_threads';
import * as ort from 'onnxruntime-node';
import { IMAGE_OUTPUT, withPostprocess } from '../src/onnx/postprocess.js';

interface Variant {
  name: string;
  session: ort.InferenceSession.SessionOptions;
  run?: ort.InferenceSession.RunOptions;
  env?: Record<string, string>;
  /** Run on the process's main thread instead of a worker. */
  main?: boolean;
}

const NO_SPIN = { session: { intra_op: { allow_spinning: '0' } } };
// glibc: blocks up to 1 GiB come from the heap (no mmap/munmap and page faults per run) and the
// heap's free top above 64 MiB is given back (malloc_trim) when a block is freed.
const GLIBC_HEAP = 'glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=67108864';

export const VARIANTS: Variant[] = [
  { name: 'arena off, patterns on (main thread)', session: { enableCpuMemArena: false, enableMemPattern: true }, main: true },
  { name: 'arena off, patterns on (today)', session: { enableCpuMemArena: false, enableMemPattern: true } },
  { name: 'arena off, patterns off', session: { enableCpuMemArena: false, enableMemPattern: false } },
  { name: 'arena on, patterns on', session: { enableCpuMemArena: true, enableMemPattern: true } },
  { name: 'arena on + run option shrinkage', session: { enableCpuMemArena: true, enableMemPattern: true }, run: { extra: { memory: { enable_memory_arena_shrinkage: 'cpu:0' } } } },
  { name: 'arena off, no spinning', session: { enableCpuMemArena: false, enableMemPattern: true, extra: NO_SPIN } },
  { name: 'arena on, no spinning', session: { enableCpuMemArena: true, enableMemPattern: true, extra: NO_SPIN } },
  { name: 'arena off, glibc heap', session: { enableCpuMemArena: false, enableMemPattern: true }, env: { GLIBC_TUNABLES: GLIBC_HEAP } },
  { name: 'arena off, glibc heap, no spinning', session: { enableCpuMemArena: false, enableMemPattern: true, extra: NO_SPIN }, env: { GLIBC_TUNABLES: GLIBC_HEAP } },
  { name: 'arena off, no spinning (main thread)', session: { enableCpuMemArena: false, enableMemPattern: true, extra: NO_SPIN }, main: true },
  // one malloc arena for all threads: the worker's frees go back to the heap the main arena grows
  { name: 'arena off, no spinning, MALLOC_ARENA_MAX=1', session: { enableCpuMemArena: false, enableMemPattern: true, extra: NO_SPIN }, env: { MALLOC_ARENA_MAX: '1' } },
];

interface ChildResult { idleMb: number; peakMb: number; afterMb: number; ms: number; userMs: number; sysMs: number; images: number }

function status(): { rss: number; hwm: number } {
  const text = readFileSync('/proc/self/status', 'utf8');
  const kb = (key: string): number => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? NaN);
  return { rss: (kb('VmRSS') * 1024) / 1e6, hwm: (kb('VmHWM') * 1024) / 1e6 };
}

/** The timed part, in whichever thread runs the session: returns wall ms of the timed runs. */
async function runSession(model: string, v: Variant, side: number, batch: number, runs: number, onIdle: () => Promise<void>, onDone: () => Promise<void>): Promise<number> {
  const { bytes, io } = withPostprocess(readFileSync(model));
  const session = await ort.InferenceSession.create(bytes, { executionProviders: ['cpu'], graphOptimizationLevel: 'all', ...v.session });
  const dims = [batch, 4, side, side];
  const data = new Float32Array(batch * 4 * side * side).map((_, i) => Math.sin(i));
  const once = (d: number[], x: Float32Array): Promise<unknown> => session.run({ [io.input]: new ort.Tensor('float32', x, d) }, [IMAGE_OUTPUT], v.run ?? {});
  await once([1, 4, 8, 8], new Float32Array(256)); // the service's CPU warm-up
  await onIdle();
  const t0 = performance.now();
  for (let i = 0; i < runs; i++) await once(dims, data.slice());
  const ms = performance.now() - t0;
  await onDone(); // what the process keeps while the session lives
  await session.release();
  return ms;
}

async function child(model: string, v: Variant, side: number, batch: number, runs: number): Promise<ChildResult> {
  let idle = 0;
  let cpu0 = process.cpuUsage();
  let cpu = cpu0;
  let peak = 0;
  let after = 0;
  const markIdle = (): void => {
    idle = status().rss;
    writeFileSync('/proc/self/clear_refs', '5');
    cpu0 = process.cpuUsage();
  };
  const markDone = async (): Promise<void> => {
    cpu = process.cpuUsage(cpu0);
    peak = status().hwm;
    await new Promise((r) => setTimeout(r, 1000));
    after = status().rss;
  };
  let ms: number;
  if (v.main) {
    ms = await runSession(model, v, side, batch, runs, () => Promise.resolve(markIdle()), markDone);
  } else {
    // Node 20 applies no loader hooks to a worker's entry file: register tsx there first.
    const boot = `import(${JSON.stringify(import.meta.resolve('tsx/esm/api'))}).then((t) => { t.register(); return import(${JSON.stringify(import.meta.url)}); })`;
    const w = new Worker(boot, { eval: true, workerData: { model, variant: v.name, side, batch, runs } });
    ms = await new Promise<number>((res, rej) => {
      w.on('message', (m: { idle?: true; done?: true; ms?: number }) => {
        if (m.idle) {
          markIdle();
          w.postMessage('go');
        } else if (m.done) void markDone().then(() => w.postMessage('go'));
        else res(m.ms!);
      });
      w.on('error', rej);
    });
  }
  return { idleMb: idle, peakMb: peak, afterMb: after, ms, userMs: cpu.user / 1000, sysMs: cpu.system / 1000, images: runs * batch };
}

const threads = await import('node:worker_threads');
const { isMainThread, parentPort } = threads;
const workerData: unknown = threads.workerData;
if (!isMainThread) {
  const d = workerData as { model: string; variant: string; side: number; batch: number; runs: number };
  const v = VARIANTS.find((x) => x.name === d.variant)!;
  const ask = (m: object) => (): Promise<void> => new Promise((r) => {
    parentPort!.once('message', () => r());
    parentPort!.postMessage(m);
  });
  const ms = await runSession(d.model, v, d.side, d.batch, d.runs, ask({ idle: true }), ask({ done: true }));
  parentPort!.postMessage({ ms });
} else {
  const argv = process.argv.slice(2);
  const arg = (name: string, def: string): string => {
    const i = argv.indexOf(`--${name}`);
    return i >= 0 && argv[i + 1] !== undefined ? argv[i + 1]! : def;
  };
  const model = resolve(arg('model', join(import.meta.dirname, '../test/fixtures/sdvae-ch32/torch-export.onnx')));
  const side = Number(arg('side', '32'));
  const batch = Number(arg('batch', '4'));
  const runs = Number(arg('runs', '8'));
  const childName = arg('child', '');
  if (childName) {
    const v = VARIANTS.find((x) => x.name === childName)!;
    process.stdout.write(JSON.stringify(await child(model, v, side, batch, runs)) + '\n');
  } else {
    const picked = arg('variants', '').split(',').filter(Boolean).map(Number);
    const variants = picked.length ? picked.map((i) => VARIANTS[i]!) : VARIANTS;
    const rows: (ChildResult & { variant: string })[] = [];
    console.log(`model ${model}, ${batch}×4×${side}×${side} per run, ${runs} timed runs per variant, fresh process each\n`);
    console.log('| variant | img/s | CPU-ms/img (user+sys) | sys share | idle MB | peak − idle MB | kept 1 s after MB |');
    console.log('| --- | ---: | ---: | ---: | ---: | ---: | ---: |');
    for (const v of variants) {
      const out = await new Promise<string>((res, rej) => {
        const p = spawn(process.execPath, [...process.execArgv, import.meta.filename, '--child', v.name, '--model', model, '--side', String(side), '--batch', String(batch), '--runs', String(runs)],
          { env: { ...process.env, ...v.env }, stdio: ['ignore', 'pipe', 'inherit'] });
        let s = '';
        p.stdout.on('data', (c: Buffer) => (s += c.toString()));
        p.on('exit', (code) => (code === 0 ? res(s) : rej(new Error(`${v.name}: exit ${code}`))));
      });
      const r = JSON.parse(out.trim().split('\n').pop()!) as ChildResult;
      rows.push({ variant: v.name, ...r });
      const cpuPerImg = (r.userMs + r.sysMs) / r.images;
      console.log(`| ${v.name} | ${((r.images * 1000) / r.ms).toFixed(2)} | ${cpuPerImg.toFixed(0)} | ${((100 * r.sysMs) / (r.userMs + r.sysMs)).toFixed(0)} % | ${r.idleMb.toFixed(0)} | ${(r.peakMb - r.idleMb).toFixed(0)} | ${(r.afterMb - r.idleMb).toFixed(0)} |`);
    }
    const out = arg('out', '');
    if (out) writeFileSync(out, JSON.stringify({ model, side, batch, runs, rows }, null, 2));
  }
}
