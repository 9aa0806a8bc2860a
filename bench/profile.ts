// Summarizes V8 .cpuprofile files (from `node --cpu-prof`): per thread, the share of samples in
// (idle), (garbage collector), (program) and the top functions by self time, grouped by
// function + file + line; and self time by package (node_modules/<pkg>, node:internal, src/...).
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';

interface CallFrame { functionName: string; url: string; lineNumber: number }
interface ProfileNode { id: number; callFrame: CallFrame; hitCount?: number; children?: number[] }
interface CpuProfile { nodes: ProfileNode[]; startTime: number; endTime: number; samples: number[]; timeDeltas: number[] }

export interface ThreadProfile {
  file: string;
  /** "main thread" or "worker thread N" (from the file name node gives it). */
  thread: string;
  totalMs: number;
  idlePct: number;
  gcPct: number;
  programPct: number;
  /** Share of the non-idle time. */
  top: { fn: string; where: string; selfMs: number; pctBusy: number }[];
  byArea: { area: string; selfMs: number; pctBusy: number }[];
}

export interface ProfileSummary {
  threads: ThreadProfile[];
}

function area(url: string): string {
  if (!url) return '(native / V8)';
  if (url.startsWith('node:')) return 'node core';
  const nm = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (nm) return nm[1]!;
  const src = /\/(src|bench|scripts)\/(.+)$/.exec(url);
  if (src) return `${src[1]}/${src[2]!.split('/')[0]}`;
  return basename(url);
}

const SPECIAL = new Set(['(idle)', '(program)', '(garbage collector)', '(root)']);

function load(file: string): CpuProfile {
  return JSON.parse(readFileSync(file, 'utf8')) as CpuProfile;
}

/** `fromUs`: ignore samples taken before this time (the profiles' own clock, µs): start-up. */
export function summarizeProfile(file: string, fromUs = -Infinity): ThreadProfile {
  const p = load(file);
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const self = new Map<number, number>();
  let t = p.startTime;
  for (let i = 0; i < p.samples.length; i++) {
    t += p.timeDeltas[i] ?? 0;
    if (t < fromUs) continue;
    const dt = (p.timeDeltas[i + 1] ?? p.timeDeltas[i] ?? 0) / 1000; // µs → ms, delta to the next sample
    self.set(p.samples[i]!, (self.get(p.samples[i]!) ?? 0) + dt);
  }
  let total = 0;
  let idle = 0;
  let gc = 0;
  let program = 0;
  const fns = new Map<string, { fn: string; where: string; selfMs: number }>();
  const areas = new Map<string, number>();
  for (const [id, ms] of self) {
    const n = byId.get(id)!;
    const name = n.callFrame.functionName || '(anonymous)';
    total += ms;
    if (name === '(idle)') { idle += ms; continue; }
    if (name === '(garbage collector)') gc += ms;
    if (name === '(program)') program += ms;
    const where = n.callFrame.url ? `${n.callFrame.url.replace(/^.*\/(node_modules|src|bench)\//, '$1/')}:${n.callFrame.lineNumber + 1}` : '';
    const k = `${name}@${where}`;
    const e = fns.get(k) ?? { fn: name, where, selfMs: 0 };
    e.selfMs += ms;
    fns.set(k, e);
    const a = SPECIAL.has(name) ? name : area(n.callFrame.url);
    areas.set(a, (areas.get(a) ?? 0) + ms);
  }
  const busy = Math.max(total - idle, 1e-9);
  const tid = /\.(\d+)\.\d+\.cpuprofile$/.exec(file)?.[1];
  return {
    file: basename(file),
    thread: tid === undefined ? 'thread' : tid === '0' ? 'main thread' : `worker thread ${tid}`,
    totalMs: total,
    idlePct: (100 * idle) / total,
    gcPct: (100 * gc) / total,
    programPct: (100 * program) / total,
    top: [...fns.values()].sort((a, b) => b.selfMs - a.selfMs).slice(0, 15).map((e) => ({ ...e, pctBusy: (100 * e.selfMs) / busy })),
    byArea: [...areas.entries()].sort((a, b) => b[1] - a[1]).slice(0, 12).map(([a, ms]) => ({ area: a, selfMs: ms, pctBusy: (100 * ms) / busy })),
  };
}

/** `skipMs`: leave out the first skipMs of the process (start-up, module loading, warm-up). */
export function summarizeProfiles(files: string[], skipMs = 0): ProfileSummary {
  const start = Math.min(...files.map((f) => load(f).startTime));
  const threads = files.map((f) => summarizeProfile(f, start + skipMs * 1000))
    .sort((a, b) => (a.thread === 'main thread' ? -1 : b.thread === 'main thread' ? 1 : b.totalMs * (100 - b.idlePct) - a.totalMs * (100 - a.idlePct)));
  return { threads };
}

if (process.argv[1]?.endsWith('profile.ts') && process.argv.length > 2) {
  process.stdout.write(JSON.stringify(summarizeProfiles(process.argv.slice(2)), null, 1) + '\n');
}
