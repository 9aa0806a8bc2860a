// The load generator: a closed loop of `concurrency` clients, each on its own keep-alive
// connection, POSTing the same latents to /decode until `requests` are answered or `seconds`
// have passed (whichever comes first; a phase also stops early when both minimums are met).
// Runs as its own process so it does not share the service's event loop. Records, per request:
// client send time, end-to-end latency, status, and the Server-Timing stages.
//
//   node --import tsx bench/load.ts '<json LoadSpec>'   → writes spec.out (JSON LoadResult)
import { readFile, writeFile } from 'node:fs/promises';
import { Pool } from 'undici';

export interface LoadSpec {
  origin: string;
  /** Path and query, e.g. /decode?shape=1,4,16,16&format=jpeg&scaling_factor=1 */
  path: string;
  /** The POST body; absent with method GET. */
  bodyFile?: string;
  /** GET sends no body (the bare /healthz round trip); default POST. */
  method?: 'GET' | 'POST';
  concurrency: number;
  /** Stop after this many answered requests (after warm-up). */
  maxRequests: number;
  /** ...or after this many seconds, once minRequests are answered. */
  seconds: number;
  minRequests: number;
  /** Requests answered and discarded before measuring (sent at the same concurrency). */
  warmupRequests: number;
  timeoutMs: number;
  out: string;
}

export interface Sample {
  /** ms since the measured phase began, at send. */
  t: number;
  /** end-to-end client latency, ms (headers + full body received). */
  ms: number;
  status: number;
  bytes: number;
  parse?: number;
  queue?: number;
  infer?: number;
  encode?: number;
  /** The whole handler as the service sees it (Server-Timing `total`, when sent). */
  total?: number;
}

export interface LoadResult {
  spec: Omit<LoadSpec, 'out'>;
  wallMs: number;
  samples: Sample[];
  errors: Record<string, number>;
}

export function parseServerTiming(h: string | string[] | undefined): Partial<Record<string, number>> {
  const out: Partial<Record<string, number>> = {};
  const v = Array.isArray(h) ? h.join(',') : h;
  if (!v) return out;
  for (const part of v.split(',')) {
    const m = /^\s*([\w-]+)\s*;.*?dur=([\d.]+)/.exec(part);
    if (m) out[m[1]!] = Number(m[2]);
  }
  return out;
}

async function main(): Promise<void> {
  const spec = JSON.parse(process.argv[2]!) as LoadSpec;
  const get = spec.method === 'GET';
  const body = get || !spec.bodyFile ? Buffer.alloc(0) : await readFile(spec.bodyFile);
  const pool = new Pool(spec.origin, {
    connections: spec.concurrency,
    pipelining: 1,
    headersTimeout: spec.timeoutMs,
    bodyTimeout: spec.timeoutMs,
    keepAliveTimeout: 60_000,
  });
  const errors: Record<string, number> = {};
  const samples: Sample[] = [];

  const one = async (t0: number): Promise<Sample | undefined> => {
    const start = performance.now();
    try {
      const res = await pool.request(get ? { method: 'GET', path: spec.path } : {
        method: 'POST', path: spec.path, body,
        headers: { 'content-type': 'application/octet-stream', 'content-length': String(body.length) },
      });
      const buf = Buffer.from(await res.body.arrayBuffer());
      const ms = performance.now() - start;
      const st = parseServerTiming(res.headers['server-timing']);
      if (res.statusCode !== 200) errors[`HTTP ${res.statusCode}`] = (errors[`HTTP ${res.statusCode}`] ?? 0) + 1;
      return { t: start - t0, ms, status: res.statusCode, bytes: buf.length, parse: st.parse, queue: st.queue, infer: st.infer, encode: st.encode, total: st.total };
    } catch (e) {
      const k = (e as Error).name + ': ' + (e as Error).message.slice(0, 80);
      errors[k] = (errors[k] ?? 0) + 1;
      return undefined;
    }
  };

  // open every connection first (cheap GETs, all at once): otherwise connection set-up staggers
  // the first requests of a phase by several ms, wider than MAX_QUEUE_DELAY_MS
  await Promise.all(Array.from({ length: spec.concurrency }, async () => {
    const r = await pool.request({ method: 'GET', path: '/healthz' });
    await r.body.dump();
  }));

  // warm-up: same concurrency, results dropped
  if (spec.warmupRequests > 0) {
    let left = spec.warmupRequests;
    const t0 = performance.now();
    await Promise.all(Array.from({ length: Math.min(spec.concurrency, spec.warmupRequests) }, async () => {
      while (left > 0) { left--; await one(t0); }
    }));
  }

  const t0 = performance.now();
  let sent = 0;
  const more = (): boolean => {
    if (sent >= spec.maxRequests) return false;
    const elapsed = (performance.now() - t0) / 1000;
    return elapsed < spec.seconds || sent < spec.minRequests;
  };
  await Promise.all(Array.from({ length: spec.concurrency }, async () => {
    while (more()) {
      sent++;
      const s = await one(t0);
      if (s) samples.push(s);
    }
  }));
  const wallMs = performance.now() - t0;
  await pool.close();
  const { out, ...rest } = spec;
  const result: LoadResult = { spec: rest, wallMs, samples, errors };
  await writeFile(out, JSON.stringify(result));
}

if (process.argv[2]) await main();
