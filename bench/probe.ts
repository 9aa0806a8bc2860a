// The event-loop prober: GET /healthz every `intervalMs` (default 10) from its own process, on a
// small pool of connections so that one slow answer does not hide the ticks behind it (each tick
// is sent on time, whether or not the previous one came back). Stops on SIGTERM / SIGINT or after
// `seconds`, then writes the latencies (ms) as JSON to `out`.
//
//   node --import tsx bench/probe.ts '<json {origin, intervalMs, seconds, out}>'
import { writeFile } from 'node:fs/promises';
import { Pool } from 'undici';

interface ProbeSpec {
  origin: string;
  intervalMs: number;
  seconds: number;
  out: string;
}

export interface ProbeResult {
  intervalMs: number;
  sent: number;
  latenciesMs: number[];
  failures: number;
}

function main(): void {
  const spec = JSON.parse(process.argv[2]!) as ProbeSpec;
  const pool = new Pool(spec.origin, { connections: 16, pipelining: 1, headersTimeout: 120_000, bodyTimeout: 120_000 });
  const latencies: number[] = [];
  let sent = 0;
  let failures = 0;
  const inflight = new Set<Promise<void>>();
  const probe = (): void => {
    sent++;
    const start = performance.now();
    const p = pool.request({ method: 'GET', path: '/healthz' }).then(
      async (res) => {
        await res.body.arrayBuffer();
        if (res.statusCode === 200) latencies.push(performance.now() - start);
        else failures++;
      },
      () => { failures++; },
    ).finally(() => inflight.delete(p));
    inflight.add(p);
  };
  const timer = setInterval(probe, spec.intervalMs);
  let finished = false;
  const finish = async (): Promise<void> => {
    if (finished) return;
    finished = true;
    clearInterval(timer);
    // answers still outstanding when the phase ends are waited for: a stalled loop must show
    await Promise.race([Promise.all(inflight), new Promise((r) => setTimeout(r, 30_000))]);
    const result: ProbeResult = { intervalMs: spec.intervalMs, sent, latenciesMs: latencies, failures };
    await writeFile(spec.out, JSON.stringify(result));
    await pool.close().catch(() => {});
    process.exit(0);
  };
  process.on('SIGTERM', () => void finish());
  process.on('SIGINT', () => void finish());
  if (spec.seconds > 0) setTimeout(() => void finish(), spec.seconds * 1000);
}

if (process.argv[2]) main();
