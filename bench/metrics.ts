// What the service says about itself: /metrics (Prometheus text), batch sizes recovered from
// Server-Timing, and its JSON log lines. Every reader here tolerates absence (an older or newer
// service build), answering undefined rather than failing the run.
import { readFileSync } from 'node:fs';
import { request } from 'undici';
import type { Sample } from './load.js';

export async function scrape(origin: string): Promise<string | undefined> {
  try {
    const r = await request(`${origin}/metrics`);
    const text = await r.body.text();
    return r.statusCode === 200 ? text : undefined;
  } catch {
    return undefined;
  }
}

/** Every sample of metric `name` (no suffix matching: `name{labels} value`), with its raw label string. */
export function metricSamples(text: string, name: string): { labels: string; value: number }[] {
  const re = new RegExp(`^${name}(\\{[^}]*\\})?\\s+([-+\\d.eE]+|NaN)`);
  const out: { labels: string; value: number }[] = [];
  for (const line of text.split('\n')) {
    const m = re.exec(line);
    if (m) out.push({ labels: m[1] ?? '', value: Number(m[2]) });
  }
  return out;
}

export function metricSum(text: string, name: string): number | undefined {
  const s = metricSamples(text, name);
  return s.length ? s.reduce((a, x) => a + x.value, 0) : undefined;
}

export interface BatchCounters { batches: number; samples: number }

export function batchCountersOf(text: string | undefined): BatchCounters | undefined {
  if (text === undefined) return undefined;
  const batches = metricSum(text, 'latent_decoder_batches_total');
  const samples = metricSum(text, 'latent_decoder_batch_samples_total');
  return batches !== undefined && samples !== undefined ? { batches, samples } : undefined;
}

/** Sums of the batch counters, if the service exposes them. */
export async function batchCounters(origin: string): Promise<BatchCounters | undefined> {
  return batchCountersOf(await scrape(origin));
}

/** latent_decoder_model_warmup_seconds per model (label `model`), if exposed. */
export function warmupSecondsOf(text: string | undefined): Record<string, number> | undefined {
  if (text === undefined) return undefined;
  const s = metricSamples(text, 'latent_decoder_model_warmup_seconds');
  if (!s.length) return undefined;
  return Object.fromEntries(s.map(({ labels, value }) => [/model="([^"]*)"/.exec(labels)?.[1] ?? (labels || '(no label)'), value]));
}

/**
 * Batches from Server-Timing alone: every request of a batch gets the same `infer` value (the
 * batch's run time) and the same batch start (client send + parse + queue, ± send skew); two
 * batches with equal run times start at least a run apart, since one runner runs one at a time.
 * Returns the batch sizes, in start order.
 */
export function batchSizesFromTimings(samples: Sample[]): number[] {
  const groups = new Map<string, number[]>();
  for (const s of samples) {
    if (s.infer === undefined || s.status !== 200) continue;
    const k = s.infer.toFixed(2);
    const arr = groups.get(k) ?? [];
    arr.push(s.t + (s.parse ?? 0) + (s.queue ?? 0));
    groups.set(k, arr);
  }
  const batches: { start: number; n: number }[] = [];
  for (const [k, starts] of groups) {
    const tol = Math.max(2, Number(k) / 2);
    starts.sort((a, b) => a - b);
    let last = -Infinity;
    for (const t of starts) {
      if (t - last > tol) batches.push({ start: t, n: 0 });
      batches[batches.length - 1]!.n++;
      last = t;
    }
  }
  return batches.sort((a, b) => a.start - b.start).map((b) => b.n);
}

export function batchesFromTimings(samples: Sample[]): BatchCounters {
  const sizes = batchSizesFromTimings(samples);
  return { batches: sizes.length, samples: sizes.reduce((a, b) => a + b, 0) };
}

/** The service's JSON log lines (pino), skipping anything that is not JSON. */
export function logLines(file: string): Record<string, unknown>[] {
  let text = '';
  try { text = readFileSync(file, 'utf8'); } catch { return []; }
  const out: Record<string, unknown>[] = [];
  for (const line of text.split('\n')) {
    if (!line.startsWith('{')) continue;
    try { out.push(JSON.parse(line) as Record<string, unknown>); } catch { /* a partial line */ }
  }
  return out;
}

export interface LoggedWarmup { model?: string; msg: string; shapes?: unknown; ms?: number }

/**
 * Warm-up as the service logged it: info lines whose msg mentions warm-up (issue 11's worker
 * logs `warm-up` with `{ shapes, ms }`), and each model's "ready" line `warmupMs` (older builds).
 * Error lines are left out: a 503's "loading and warming up" is not a warm-up report.
 */
export function warmupFromLog(file: string): { logged: LoggedWarmup[]; readyLineMs?: Record<string, number>; instances?: number } {
  const logged: LoggedWarmup[] = [];
  const ready: Record<string, number> = {};
  let instances: number | undefined;
  for (const l of logLines(file)) {
    if (typeof l.level === 'number' && l.level > 30) continue;
    const msg = typeof l.msg === 'string' ? l.msg : '';
    const model = typeof l.model === 'string' ? l.model : undefined;
    if (/warm-?up/i.test(msg)) logged.push({ model, msg, shapes: l.shapes, ms: typeof l.ms === 'number' ? l.ms : undefined });
    if (typeof l.warmupMs === 'number') ready[model ?? '(model?)'] = l.warmupMs;
    // MODEL_INSTANCES, if the service logs it under any of these names
    for (const k of ['instances', 'modelInstances', 'MODEL_INSTANCES']) if (typeof l[k] === 'number') instances = l[k];
  }
  return { logged, readyLineMs: Object.keys(ready).length ? ready : undefined, instances };
}
