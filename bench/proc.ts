// Process helpers for the orchestrator: paths, logging, child processes, the service under test,
// and waiting for other users of the machine to go quiet.
import { spawn, type ChildProcess } from 'node:child_process';
import { openSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { request } from 'undici';
import { freePort } from '../test/helpers/shared.js';
import { processCpuSeconds, systemCpuSeconds } from './sys.js';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
export const TSX = ['--import', 'tsx'];
/** Scratch: per-phase raw samples, service logs, CPU profiles, generated models (git-ignored). */
export const TMP = join(ROOT, 'bench/results/tmp');
export const SERVICE_SOURCE = 'src/server.ts';
export const SERVICE_DIST = 'dist/server.js';

export const log = (msg: string): void => { process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}\n`); };

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export function runChild(args: string[], env: NodeJS.ProcessEnv = process.env, stdoutFile?: string): Promise<{ code: number | null }> {
  return new Promise((res, rej) => {
    const out = stdoutFile ? openSync(stdoutFile, 'w') : 'inherit';
    const c = spawn(process.execPath, args, { cwd: ROOT, env, stdio: ['ignore', out, 'inherit'] });
    c.on('error', rej);
    c.on('exit', (code) => res({ code }));
  });
}

export interface Service {
  child: ChildProcess;
  pid: number;
  origin: string;
  logFile: string;
  startupMs: number;
  exited: Promise<number | null>;
}

export async function startService(env: Record<string, string>, o: { dist: boolean; cpuProfDir?: string; tag: string }): Promise<Service> {
  const port = await freePort();
  const logFile = join(TMP, `service-${o.tag}.log`);
  const args = [
    ...(o.cpuProfDir ? ['--cpu-prof', `--cpu-prof-dir=${o.cpuProfDir}`] : []),
    ...(o.dist ? [SERVICE_DIST] : [...TSX, SERVICE_SOURCE]),
  ];
  const fd = openSync(logFile, 'w');
  const t0 = performance.now();
  const child = spawn(process.execPath, args, {
    cwd: ROOT,
    env: { ...process.env, ...env, PORT: String(port), HOST: '127.0.0.1' },
    stdio: ['ignore', fd, fd],
  });
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  let dead = false;
  void exited.then(() => { dead = true; });
  const origin = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 600_000;
  for (;;) {
    if (dead) throw new Error(`the service exited during start; see ${relative(ROOT, logFile)}:\n${readFileSync(logFile, 'utf8').slice(-2000)}`);
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error('the service did not become ready in 10 minutes');
    }
    try {
      const r = await request(`${origin}/readyz`);
      await r.body.dump();
      if (r.statusCode === 200) break;
    } catch { /* not listening yet */ }
    await sleep(100);
  }
  return { child, pid: child.pid!, origin, logFile, startupMs: performance.now() - t0, exited };
}

export async function stopService(s: Service): Promise<void> {
  s.child.kill('SIGTERM');
  let timer: NodeJS.Timeout | undefined;
  const code = await Promise.race([s.exited, new Promise<'timeout'>((r) => { timer = setTimeout(() => r('timeout'), 60_000); })]);
  clearTimeout(timer);
  if (code === 'timeout') {
    log('service did not exit in 60 s after SIGTERM; killing it');
    s.child.kill('SIGKILL');
    await s.exited;
  }
}

/** Starts a service, runs `body` against it, and always stops it. */
export async function withService<T>(env: Record<string, string>, o: { dist: boolean; cpuProfDir?: string; tag: string }, body: (s: Service) => Promise<T>): Promise<T> {
  const svc = await startService(env, o);
  try {
    return await body(svc);
  } finally {
    await stopService(svc);
  }
}

// ---------------------------------------------------------------- other users of the machine

const quiet = { budgetS: 0, waitedS: 0 };

export function setQuietBudget(seconds: number): void { quiet.budgetS = seconds; }
export function quietWaitedS(): number { return quiet.waitedS; }

/**
 * Waits (within the run's budget) until processes other than `ours` use under `maxPct` % of all
 * cores, measured over 1 s: other work on a 2-core machine moves every number here.
 */
export async function waitQuiet(ours: number[], maxPct = 25): Promise<number> {
  const t0 = performance.now();
  let foreign = 0;
  for (;;) {
    const s0 = systemCpuSeconds();
    const p0 = ours.map(processCpuSeconds);
    await sleep(1000);
    const s1 = systemCpuSeconds();
    const mine = ours.map(processCpuSeconds).reduce((a, v, i) => a + (Number.isFinite(v) ? v - p0[i]! : 0), 0);
    foreign = (100 * (s1.busy - s0.busy - mine)) / (s1.total - s0.total);
    const waited = (performance.now() - t0) / 1000;
    if (foreign < maxPct || quiet.waitedS + waited >= quiet.budgetS) {
      quiet.waitedS += waited;
      if (waited > 1.5) log(`  waited ${waited.toFixed(0)} s for other processes to calm down (now ${foreign.toFixed(0)} % of the cores)`);
      return foreign;
    }
  }
}
