// Usage: npx tsx bench/cpu-side.ts first (it builds the null decoder), then Q=<query> npx tsx scripts/thread-cpu.ts
// Per-thread CPU of the service under one load: which threads the CPU-ms per image go to.
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { runChild, TMP, TSX, withService } from '../bench/proc.js';
import type { LoadResult, LoadSpec } from '../bench/load.js';
const query = process.env.Q ?? 'output_type=pt&partial_postprocess=1';
const ticks = (pid: number): Map<string, { name: string; t: number }> => {
  const m = new Map<string, { name: string; t: number }>();
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      const s = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
      const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
      m.set(tid, { name: readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').trim(), t: Number(f[11]) + Number(f[12]) });
    } catch { /* gone */ }
  }
  return m;
};
await withService({ EXECUTION_PROVIDERS: 'cpu', MAX_BATCH_SIZE: '8', LOG_LEVEL: 'warn', MODEL_PATH: join(TMP, 'models/null-decoder-64.onnx') }, { dist: false, tag: 'threads' }, async (svc) => {
  const spec = (n: number): LoadSpec => ({ origin: svc.origin, path: `/decode?shape=1,4,64,64&scaling_factor=1&${query}`, bodyFile: join(TMP, 'bodies/zeros-1x4x64x64.f32'), concurrency: 8, maxRequests: n, minRequests: n, seconds: 0, warmupRequests: 0, timeoutMs: 30000, out: join(TMP, 'th.json') });
  await runChild([...TSX, 'bench/load.ts', JSON.stringify(spec(100))]);
  const a = ticks(svc.pid);
  await runChild([...TSX, 'bench/load.ts', JSON.stringify(spec(600))]);
  const b = ticks(svc.pid);
  const r = JSON.parse(readFileSync(join(TMP, 'th.json'), 'utf8')) as LoadResult;
  const n = r.samples.filter((s) => s.status === 200).length;
  const rows = [...b].map(([tid, v]) => ({ tid, name: v.name, ms: (v.t - (a.get(tid)?.t ?? 0)) * 10 / n })).filter((x) => x.ms > 0).sort((x, y) => y.ms - x.ms);
  console.log(`${query}: ${n} images; CPU-ms per image by thread (main = ${svc.pid}):`);
  for (const x of rows) console.log(`  ${x.tid === String(svc.pid) ? 'main' : x.tid} ${x.name} ${x.ms.toFixed(2)}`);
  console.log(`  total ${rows.reduce((s, x) => s + x.ms, 0).toFixed(2)}`);
});
