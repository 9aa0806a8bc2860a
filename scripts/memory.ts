// Peak memory of the service under a given load: for each (arena setting, load) it starts the
// service as a child process on one model, waits for /readyz, records the idle RSS, sends the load,
// and reports the peak RSS during the load and the RSS a few seconds after it (is memory given
// back?). Each load gets a fresh process, because a process's peak (VmHWM) only ever grows and an
// ORT arena keeps what an earlier load took: a shared process would report the first load's peak
// for every later one.
//   npx tsx scripts/memory.ts [--model PATH] [--loads 8x64,2x128,16*1x64] [--arena off,on]
//     [--idle-ms 3000] [--env K=V,K=V] [--out FILE.json]
// A load is `[K*]NxS[@C]`: K requests (default 1) of N×4×S×S float32 latents, at most C in flight
// (default K: all at once). `8x64` = one request of 8 samples at 64×64; `16*1x64` = a burst of 16
// concurrent single-sample requests; `8*8x64@2` = 8 requests of 8 samples, 2 in flight (throughput).
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { request } from 'undici';
import { ROOT, sleep, startService, stopService, TMP, type Service } from '../bench/proc.js';

const argv = process.argv.slice(2);
function arg(name: string, def: string): string {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 && argv[i + 1] !== undefined ? argv[i + 1]! : def;
}

const MODEL = resolve(arg('model', join(ROOT, 'test/fixtures/sdvae-ch32/torch-export.onnx')));
const ARENAS = arg('arena', 'off,on').split(',').map((a) => a.trim()) as ('off' | 'on')[];
const IDLE_MS = Number(arg('idle-ms', '3000'));
const SAMPLE_MS = 50;
const OUT = resolve(arg('out', join(TMP, `memory-${new Date().toISOString().replace(/[:.]/g, '-')}.json`)));
const EXTRA_ENV: Record<string, string> = Object.fromEntries(
  arg('env', '').split(',').filter(Boolean).map((kv) => {
    const i = kv.indexOf('=');
    if (i <= 0) throw new Error(`--env expects K=V pairs, got ${JSON.stringify(kv)}`);
    return [kv.slice(0, i), kv.slice(i + 1)];
  }),
);

interface Load { spec: string; requests: number; n: number; side: number; concurrency: number }

function parseLoad(spec: string): Load {
  const m = /^(?:(\d+)\*)?(\d+)x(\d+)(?:@(\d+))?$/.exec(spec.trim());
  if (!m) throw new Error(`bad load ${JSON.stringify(spec)}: expected [K*]NxS[@C], e.g. 8x64, 16*1x64, 8*8x64@2`);
  const requests = Number(m[1] ?? 1);
  return { spec: spec.trim(), requests, n: Number(m[2]), side: Number(m[3]), concurrency: Number(m[4] ?? requests) };
}
const LOADS = arg('loads', '8x64,2x128,16x128,16*1x64').split(',').map(parseLoad);

/** kB fields of /proc/<pid>/status, in MB (10^6 bytes). */
function procStatus(pid: number): { rss: number; hwm: number } {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    throw new Error(`the service (pid ${pid}) is gone: it exited or was killed (OOM?); see its log in ${TMP}`);
  }
  const kb = (key: string): number => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? NaN);
  return { rss: (kb('VmRSS') * 1024) / 1e6, hwm: (kb('VmHWM') * 1024) / 1e6 };
}

/**
 * CPU seconds the service has used, all threads (utime + stime, /proc/<pid>/stat fields 14 and 15,
 * in clock ticks of 1/100 s): on a shared machine the wall time of a load swings with what others
 * run, the CPU time it costs much less, so the arena's throughput cost is also read from this.
 */
function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // the name in parentheses may hold spaces
  return (Number(fields[11]) + Number(fields[12])) / 100; // fields 14 and 15, counted from field 3
}

/**
 * Resets VmHWM to the current RSS (Linux ≥ 4.0, own process), so the peak read after the load is
 * the load's and not the start's (loading and optimizing the model has a peak of its own). If the
 * kernel refuses, the sampled maximum is used instead; it can miss a spike shorter than 50 ms.
 */
function resetPeak(pid: number): boolean {
  try {
    writeFileSync(`/proc/${pid}/clear_refs`, '5');
    return true;
  } catch {
    return false;
  }
}

/** Latents with values of a real latent's magnitude (a decoder fed zeros or NaNs is not representative of any work it does). */
function body(n: number, side: number): Buffer {
  const f = new Float32Array(n * 4 * side * side);
  let s = 12345;
  for (let i = 0; i < f.length; i++) {
    s = (s * 1103515245 + 12345) >>> 0;
    f[i] = (s / 2 ** 32) * 2 - 1;
  }
  return Buffer.from(f.buffer);
}

interface Result {
  model: string; arena: 'off' | 'on'; load: string; samples: number;
  startupMs: number; startupPeakMb: number; baselineMb: number; peakMb: number; peakSource: 'VmHWM' | 'sampled';
  afterMb: number; loadS: number; imagesPerS: number; cpuS: number; statuses: Record<string, number>;
  samplesMb: [number, number][]; // (ms since the load started, RSS MB), every SAMPLE_MS
}

async function send(svc: Service, load: Load, payload: Buffer): Promise<number[]> {
  const url = `${svc.origin}/decode?shape=${load.n},4,${load.side},${load.side}&scaling_factor=1&format=jpeg`;
  const statuses: number[] = [];
  let next = 0;
  // C workers pulling from one counter: at most C requests in flight, the next sent as one ends.
  const worker = async (): Promise<void> => {
    while (next < load.requests) {
      next++;
      // no client timeouts: a full-width batch at 128² runs longer than undici's default 300 s
      const r = await request(url, {
        method: 'POST', body: payload, headers: { 'content-type': 'application/octet-stream' }, headersTimeout: 0, bodyTimeout: 0,
      });
      await r.body.arrayBuffer(); // images are read and dropped: the client's memory is not measured
      statuses.push(r.statusCode);
    }
  };
  await Promise.all(Array.from({ length: Math.min(load.concurrency, load.requests) }, worker));
  return statuses;
}

async function measure(arena: 'off' | 'on', load: Load): Promise<Result> {
  const env: Record<string, string> = {
    MODEL_PATH: MODEL, EXECUTION_PROVIDERS: 'cpu', LOG_LEVEL: 'warn',
    ORT_CPU_MEM_ARENA: arena === 'on' ? '1' : '0',
    // a full-width 8-sample batch takes minutes on 2 cores: the default 30 s deadline would cut it off
    REQUEST_TIMEOUT_MS: '3600000',
    ...EXTRA_ENV,
  };
  const svc = await startService(env, { dist: false, tag: `memory-${arena}-${load.spec.replace(/[^0-9a-z]/gi, '_')}` });
  try {
    const payload = body(load.n, load.side); // built before the baseline: it is the client's, but do not let it delay the load
    await sleep(1000); // let the start's garbage and ORT's warm-up settle
    const startupPeakMb = procStatus(svc.pid).hwm;
    const baselineMb = procStatus(svc.pid).rss;
    const reset = resetPeak(svc.pid);
    const cpu0 = cpuSeconds(svc.pid);
    const t0 = performance.now();
    const samplesMb: [number, number][] = [];
    const timer = setInterval(() => {
      try { samplesMb.push([Math.round(performance.now() - t0), procStatus(svc.pid).rss]); } catch { /* exited */ }
    }, SAMPLE_MS);
    let statuses: number[] = [];
    let loadMs = 0;
    let cpuS = 0;
    try {
      statuses = await send(svc, load, payload);
    } finally {
      loadMs = performance.now() - t0;
      cpuS = cpuSeconds(svc.pid) - cpu0;
      // keep sampling through the idle period: the curve shows whether and when memory is returned
      await sleep(IDLE_MS);
      clearInterval(timer);
    }
    const end = procStatus(svc.pid);
    const sampledPeak = Math.max(baselineMb, ...samplesMb.map(([, mb]) => mb));
    const counts: Record<string, number> = {};
    for (const s of statuses) counts[s] = (counts[s] ?? 0) + 1;
    const samples = load.requests * load.n;
    return {
      model: MODEL, arena, load: load.spec, samples,
      startupMs: Math.round(svc.startupMs), startupPeakMb, baselineMb,
      peakMb: reset ? Math.max(end.hwm, sampledPeak) : sampledPeak, peakSource: reset ? 'VmHWM' : 'sampled',
      afterMb: end.rss, loadS: loadMs / 1000, imagesPerS: samples / (loadMs / 1000), cpuS, statuses: counts, samplesMb,
    };
  } finally {
    await stopService(svc);
  }
}

const mb = (x: number): string => x.toFixed(0);

function table(results: Result[]): string {
  const rows = [
    '| load | arena | idle RSS MB | load peak MB | peak − idle | RSS 3 s after MB | kept (after − idle) | start peak MB | load s | images/s | service CPU s | statuses |',
    '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |',
  ];
  for (const r of results) {
    rows.push(`| ${r.load} | ${r.arena} | ${mb(r.baselineMb)} | ${mb(r.peakMb)}${r.peakSource === 'sampled' ? '*' : ''} | ${mb(r.peakMb - r.baselineMb)} | ` +
      `${mb(r.afterMb)} | ${mb(r.afterMb - r.baselineMb)} | ${mb(r.startupPeakMb)} | ${r.loadS.toFixed(1)} | ${r.imagesPerS.toFixed(2)} | ${r.cpuS.toFixed(1)} | ` +
      `${Object.entries(r.statuses).map(([k, v]) => `${v}×${k}`).join(' ')} |`);
  }
  return rows.join('\n');
}

async function main(): Promise<void> {
  mkdirSync(dirname(OUT), { recursive: true });
  mkdirSync(TMP, { recursive: true });
  const results: Result[] = [];
  const failures: string[] = [];
  // load-major order: the two arena settings of one load run back to back, so that other users of
  // the (shared) machine weigh on both alike
  for (const load of LOADS) {
    for (const arena of ARENAS) {
      process.stderr.write(`[memory ${new Date().toISOString().slice(11, 19)}] ${load.spec} arena=${arena} …\n`);
      let r: Result;
      try {
        r = await measure(arena, load);
      } catch (e) {
        // one failed run (a crash, an OOM kill) is itself a finding: say so and go on with the rest
        process.stderr.write(`  failed: ${(e as Error).message}\n`);
        failures.push(`${load.spec} arena=${arena}: ${(e as Error).message}`);
        continue;
      }
      results.push(r);
      process.stderr.write(`  idle ${mb(r.baselineMb)} MB, peak ${mb(r.peakMb)} MB, after ${mb(r.afterMb)} MB, ${r.loadS.toFixed(1)} s\n`);
      // written after every run: a long series cut short still leaves what it measured
      writeFileSync(OUT, JSON.stringify({ model: MODEL, idleMs: IDLE_MS, sampleMs: SAMPLE_MS, env: EXTRA_ENV, failures, results }, null, 1));
    }
  }
  process.stdout.write(`model: ${MODEL}\n\n${table(results)}\n${failures.map((f) => `\nfailed: ${f}`).join('')}\nJSON: ${OUT}\n`);
  if (failures.length > 0) process.exitCode = 1;
}

await main();
