// Simultaneous bursts at an idle service: `size` requests sent in the same tick on `size`
// pre-opened keep-alive connections, `repeats` times, with the service left idle in between.
// Reports the batch sizes each burst was split into, from the requests' Server-Timing (the
// requests of one batch share its `infer` value and start), checked against the /metrics batch
// counters' deltas where the service has them. Its own process, like bench/load.ts, so the sends
// are not delayed by the orchestrator's work.
//
//   node --import tsx bench/burst.ts '<json BurstSpec>'   → writes spec.out (JSON BurstResult)
import { readFile, writeFile } from 'node:fs/promises';
import { Pool } from 'undici';
import { parseServerTiming, type Sample } from './load.js';
import { batchCountersOf, batchSizesFromTimings, scrape } from './metrics.js';
import type { BurstResult, BurstRun } from './types.js';

export interface BurstSpec {
  origin: string;
  path: string;
  bodyFile: string;
  size: number;
  repeats: number;
  /** Idle time before each burst, ms: the previous burst's batches and encodes are over. */
  gapMs: number;
  timeoutMs: number;
  out: string;
}

async function main(): Promise<void> {
  const spec = JSON.parse(process.argv[2]!) as BurstSpec;
  const body = await readFile(spec.bodyFile);
  const pool = new Pool(spec.origin, { connections: spec.size, pipelining: 1, headersTimeout: spec.timeoutMs, bodyTimeout: spec.timeoutMs, keepAliveTimeout: 60_000 });
  // every connection open before the first burst: a connect inside the burst would stagger it
  await Promise.all(Array.from({ length: spec.size }, async () => {
    const r = await pool.request({ method: 'GET', path: '/healthz' });
    await r.body.dump();
  }));
  const runs: BurstRun[] = [];
  for (let i = 0; i < spec.repeats; i++) {
    await new Promise((r) => setTimeout(r, spec.gapMs));
    const before = batchCountersOf(await scrape(spec.origin));
    let errors = 0;
    const t0 = performance.now();
    const samples = await Promise.all(Array.from({ length: spec.size }, async (): Promise<Sample | undefined> => {
      const start = performance.now();
      try {
        const res = await pool.request({ method: 'POST', path: spec.path, body, headers: { 'content-type': 'application/octet-stream', 'content-length': String(body.length) } });
        const buf = Buffer.from(await res.body.arrayBuffer());
        const st = parseServerTiming(res.headers['server-timing']);
        if (res.statusCode !== 200) errors++;
        return { t: start - t0, ms: performance.now() - start, status: res.statusCode, bytes: buf.length, parse: st.parse, queue: st.queue, infer: st.infer, encode: st.encode };
      } catch {
        errors++;
        return undefined;
      }
    }));
    const spanMs = performance.now() - t0;
    const after = batchCountersOf(await scrape(spec.origin));
    const ok = samples.filter((s): s is Sample => s !== undefined);
    runs.push({
      sizes: batchSizesFromTimings(ok),
      metrics: before && after ? { batches: after.batches - before.batches, samples: after.samples - before.samples } : undefined,
      spanMs, errors,
    });
  }
  await pool.close();
  const result: BurstResult = { size: spec.size, runs };
  await writeFile(spec.out, JSON.stringify(result));
}

if (process.argv[2]) await main();
