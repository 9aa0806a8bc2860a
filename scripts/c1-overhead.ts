// Usage: npx tsx scripts/c1-overhead.ts  (C1_ENV=K=V,K=V for the service)
// c=1 overhead by the measure: e2e − infer − encode − (the same POST refused at parse), p50.
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { runChild, TMP, TSX, withService } from '../bench/proc.js';
import type { LoadResult, LoadSpec } from '../bench/load.js';
import { summarize } from '../bench/stats.js';
mkdirSync(join(TMP, 'bodies'), { recursive: true });
const body = join(TMP, 'bodies', 'c1-1x4x16x16.f32');
writeFileSync(body, Buffer.from(new Float32Array(4 * 16 * 16).map((_, i) => Math.sin(i)).buffer));
const env = { EXECUTION_PROVIDERS: 'cpu', MAX_BATCH_SIZE: '8', MAX_QUEUE_SIZE: '64', LOG_LEVEL: 'warn', MODEL_PATH: 'test/fixtures/sdvae-ch32/torch-export.onnx', ...Object.fromEntries((process.env.C1_ENV ?? '').split(',').filter(Boolean).map((kv): [string, string] => { const [k = '', v = ''] = kv.split('='); return [k, v]; })) } as Record<string, string>;
await withService(env, { dist: false, tag: 'c1' }, async (svc) => {
  const load = async (path: string, n: number, method: 'GET' | 'POST' = 'POST'): Promise<LoadResult> => {
    const spec: LoadSpec = { origin: svc.origin, path, bodyFile: body, method, concurrency: 1, maxRequests: n, minRequests: n, seconds: 0, warmupRequests: 20, timeoutMs: 30000, out: join(TMP, 'c1.json') };
    await runChild([...TSX, 'bench/load.ts', JSON.stringify(spec)]);
    return JSON.parse(readFileSync(spec.out, 'utf8')) as LoadResult;
  };
  for (let round = 0; round < 2; round++) {
    const ok = await load('/decode?shape=1,4,16,16&format=jpeg&scaling_factor=1', 150);
    const refused = await load('/decode?shape=1,4,16,17&format=jpeg&scaling_factor=1', 150);
    const hz = await load('/healthz', 150, 'GET');
    const s = ok.samples.filter((x) => x.status === 200);
    const rest = summarize(s.map((x) => x.ms - (x.infer ?? 0) - (x.encode ?? 0))).p50;
    const server = summarize(s.map((x) => (x.total ?? 0) - (x.infer ?? 0) - (x.encode ?? 0))).p50;
    const ref = summarize(refused.samples.map((x) => x.ms)).p50;
    console.log(`round ${round}: e2e p50 ${summarize(s.map((x) => x.ms)).p50.toFixed(2)} ms; e2e−infer−encode ${rest.toFixed(2)}; refused POST ${ref.toFixed(2)} (status ${refused.samples[0]?.status}); overhead ${(rest - ref).toFixed(2)} ms; server-side ${server.toFixed(2)}; bare /healthz ${summarize(hz.samples.map((x) => x.ms)).p50.toFixed(2)}`);
  }
});
