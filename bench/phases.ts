// Measurements against one running service: a closed-loop load phase (with an optional /healthz
// prober), the memory soak, the bare /healthz round trip, and simultaneous bursts. Each drives
// the service from a separate process (bench/load.ts, bench/probe.ts, bench/burst.ts) so that the
// client never shares the service's event loop, and reads the results back from a JSON file.
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { LoadResult, LoadSpec, Sample } from './load.js';
import type { ProbeResult } from './probe.js';
import type { BurstSpec } from './burst.js';
import { batchCounters, batchesFromTimings } from './metrics.js';
import { log, ROOT, runChild, sleep, TMP, TSX, waitQuiet, type Service } from './proc.js';
import { summarize, type Summary } from './stats.js';
import { cpuWindow, readMem } from './sys.js';
import type { BurstResult, Format, PhaseResult, PhaseShape, SoakResult, Stages } from './types.js';

/** Set once any phase saw the batch counters on /metrics (the report says where mean batch came from). */
export const metricsState = { seen: false };

const decodePath = (side: number, format: Format): string => `/decode?shape=1,4,${side},${side}&format=${format}&scaling_factor=1`;

async function runLoad(spec: LoadSpec): Promise<LoadResult> {
  const { code } = await runChild([...TSX, 'bench/load.ts', JSON.stringify(spec)]);
  if (code !== 0) throw new Error(`the load generator exited with code ${code}`);
  return JSON.parse(readFileSync(spec.out, 'utf8')) as LoadResult;
}

export async function loadPhase(svc: Service, o: PhaseShape & {
  model: string; side: number; format: Format; concurrency: number; bodyFile: string; timeoutMs: number; probe: boolean; label?: string;
}): Promise<PhaseResult> {
  const out = join(TMP, `load-${o.model}-${o.format}-c${o.concurrency}${o.label ? '-' + o.label : ''}.json`);
  const spec: LoadSpec = {
    origin: svc.origin, path: decodePath(o.side, o.format), bodyFile: o.bodyFile, concurrency: o.concurrency,
    maxRequests: o.max, minRequests: o.min, seconds: o.seconds, warmupRequests: o.warmup, timeoutMs: o.timeoutMs, out,
  };
  // Warm-up runs inside the load process; counters and CPU are read from after it, so they are
  // approximate at the edges (a warm-up batch may still be running when the window opens).
  await waitQuiet([svc.pid]);
  const before = await batchCounters(svc.origin);
  const cpu = cpuWindow(svc.pid);
  let prober: ChildProcess | undefined;
  let probeDone: Promise<unknown> | undefined;
  const probeOut = join(TMP, `probe-${o.model}-${o.format}-c${o.concurrency}.json`);
  if (o.probe) {
    prober = spawn(process.execPath, [...TSX, 'bench/probe.ts', JSON.stringify({ origin: svc.origin, intervalMs: 10, seconds: 0, out: probeOut })],
      { cwd: ROOT, stdio: ['ignore', 'inherit', 'inherit'] });
    probeDone = new Promise((r) => prober!.on('exit', r));
  }
  const r = await runLoad(spec);
  const cpuUse = cpu();
  const after = await batchCounters(svc.origin);
  let healthz: PhaseResult['healthz'];
  if (prober) {
    prober.kill('SIGTERM');
    await probeDone;
    const p = JSON.parse(readFileSync(probeOut, 'utf8')) as ProbeResult;
    healthz = { n: p.latenciesMs.length, sent: p.sent, failures: p.failures, ms: summarize(p.latenciesMs) };
  }
  const ok = r.samples.filter((s) => s.status === 200);
  const stages = stagesOf(ok);
  let meanBatch: PhaseResult['meanBatch'];
  if (before && after && after.batches > before.batches) {
    metricsState.seen = true;
    const b = after.batches - before.batches;
    meanBatch = { value: (after.samples - before.samples) / b, source: 'metrics', batches: b };
  } else {
    const est = batchesFromTimings(r.samples);
    meanBatch = { value: est.batches ? est.samples / est.batches : NaN, source: 'server-timing', batches: est.batches };
  }
  const res: PhaseResult = {
    model: o.model, format: o.format, concurrency: o.concurrency, label: o.label,
    ok: ok.length, errors: r.errors, wallMs: r.wallMs,
    imagesPerSec: (ok.length * 1000) / r.wallMs,
    latency: summarize(ok.map((s) => s.ms)),
    stages, meanBatch, healthz, cpu: cpuUse,
    meanBytes: ok.length ? ok.reduce((a, s) => a + s.bytes, 0) / ok.length : 0,
  };
  log(`  ${o.model} ${o.format} c=${o.concurrency}${o.label ? ' ' + o.label : ''}: ${res.imagesPerSec.toFixed(2)} img/s, p50 ${res.latency.p50.toFixed(1)} ms, ` +
    `p99 ${res.latency.p99.toFixed(1)} ms, batch ${res.meanBatch.value.toFixed(2)}, overhead p50 ${stages.overhead.p50.toFixed(2)} ms` +
    (stages.serverOverhead ? ` (server-side ${stages.serverOverhead.p50.toFixed(2)} ms)` : '') +
    (healthz ? `, healthz p99 ${healthz.ms.p99.toFixed(1)} ms` : '') + (Object.keys(r.errors).length ? `, errors ${JSON.stringify(r.errors)}` : '') +
    `, svc cpu ${cpuUse.servicePct.toFixed(0)}%, other ${cpuUse.otherPct.toFixed(0)}%`);
  return res;
}

/** The stage split of answered requests; `total` and the server-side overhead only when the service sends `total`. */
export function stagesOf(ok: Sample[]): Stages {
  const num = (f: (s: Sample) => number | undefined): number[] => ok.map(f).filter((v): v is number => v !== undefined && Number.isFinite(v));
  const totals = num((s) => s.total);
  return {
    parse: summarize(num((s) => s.parse)),
    queue: summarize(num((s) => s.queue)),
    infer: summarize(num((s) => s.infer)),
    encode: summarize(num((s) => s.encode)),
    overhead: summarize(num((s) => (s.infer !== undefined && s.encode !== undefined ? s.ms - s.infer - s.encode : undefined))),
    unaccounted: summarize(num((s) => (s.infer !== undefined && s.encode !== undefined ? s.ms - (s.parse ?? 0) - (s.queue ?? 0) - s.infer - s.encode : undefined))),
    ...(totals.length ? {
      total: summarize(totals),
      serverOverhead: summarize(num((s) => (s.total !== undefined && s.infer !== undefined && s.encode !== undefined ? s.total - s.infer - s.encode : undefined))),
    } : {}),
  };
}

/**
 * Bare GET /healthz round trips at c=1, from the same load generator on the same kind of
 * connection (one keep-alive undici connection) as the c=1 decode phase: the HTTP floor that
 * the client-side c=1 overhead cannot go below.
 */
export async function healthzRttPhase(svc: Service, o: { model: string; requests: number }): Promise<{ n: number; ms: Summary }> {
  await waitQuiet([svc.pid]);
  const r = await runLoad({
    origin: svc.origin, path: '/healthz', method: 'GET', concurrency: 1, maxRequests: o.requests, minRequests: o.requests,
    seconds: 0, warmupRequests: 20, timeoutMs: 10_000, out: join(TMP, `healthz-rtt-${o.model}.json`),
  });
  const ms = summarize(r.samples.filter((s) => s.status === 200).map((s) => s.ms));
  log(`  ${o.model} bare /healthz c=1: p50 ${ms.p50.toFixed(2)} ms, p99 ${ms.p99.toFixed(2)} ms (${ms.n})`);
  return { n: ms.n, ms };
}

export async function burstPhase(svc: Service, o: { model: string; side: number; bodyFile: string; size: number; repeats: number; timeoutMs: number }): Promise<BurstResult> {
  await waitQuiet([svc.pid]);
  const spec: BurstSpec = {
    origin: svc.origin, path: decodePath(o.side, 'jpeg'), bodyFile: o.bodyFile, size: o.size, repeats: o.repeats,
    gapMs: 300, timeoutMs: o.timeoutMs, out: join(TMP, `burst-${o.model}-${o.size}.json`),
  };
  const { code } = await runChild([...TSX, 'bench/burst.ts', JSON.stringify(spec)]);
  if (code !== 0) throw new Error(`bench/burst.ts exited with code ${code}`);
  const r = JSON.parse(readFileSync(spec.out, 'utf8')) as BurstResult;
  log(`  ${o.model} burst of ${o.size}: ${r.runs.map((x) => `[${x.sizes.join(',')}]`).join(' ')}`);
  return r;
}

export async function soakPhase(svc: Service, o: { model: string; side: number; bodyFile: string; requests: number; concurrency: number; timeoutMs: number }): Promise<SoakResult> {
  const series: { t: number; rss: number }[] = [];
  const t0 = performance.now();
  let peakHwm = 0;
  const sample = (): number => {
    const m = readMem(svc.pid);
    if (!m) return NaN;
    peakHwm = Math.max(peakHwm, m.hwmKiB);
    const rss = m.rssKiB / 1024;
    series.push({ t: Math.round(performance.now() - t0), rss: Math.round(rss * 10) / 10 });
    return rss;
  };
  const timer = setInterval(sample, 250);
  const warmup = Math.max(1, Math.round(o.requests / 10));
  const run = (n: number, tag: string): Promise<LoadResult> => runLoad({
    origin: svc.origin, path: decodePath(o.side, 'jpeg'), bodyFile: o.bodyFile, concurrency: o.concurrency,
    maxRequests: n, minRequests: n, seconds: 0, warmupRequests: 0, timeoutMs: o.timeoutMs, out: join(TMP, `soak-${o.model}-${tag}.json`),
  });
  await run(warmup, 'warmup');
  const afterWarmup = sample();
  const main = await run(o.requests - warmup, 'main');
  const end = sample();
  await sleep(2000);
  const endIdle = sample();
  clearInterval(timer);
  const ok = main.samples.filter((s) => s.status === 200).length;
  const r: SoakResult = {
    model: o.model, requests: o.requests, concurrency: o.concurrency, format: 'jpeg', warmupRequests: warmup,
    rssAfterWarmupMiB: afterWarmup, rssEndMiB: end, rssEndIdleMiB: endIdle, peakRssMiB: peakHwm / 1024,
    growthPct: (100 * (end - afterWarmup)) / afterWarmup,
    growthIdlePct: (100 * (endIdle - afterWarmup)) / afterWarmup,
    rssSeriesMiB: series, imagesPerSec: (ok * 1000) / main.wallMs, errors: main.errors,
  };
  log(`  soak ${o.model}: ${o.requests} requests, RSS ${afterWarmup.toFixed(0)} → ${end.toFixed(0)} MiB (${r.growthPct.toFixed(1)} %), peak ${r.peakRssMiB.toFixed(0)} MiB`);
  return r;
}
