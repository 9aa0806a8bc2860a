// Process and machine readings from /proc: RSS, CPU time, load; and the machine description.
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { cpus, hostname, loadavg, totalmem } from 'node:os';
import { createRequire } from 'node:module';

export interface MemReading {
  rssKiB: number;
  hwmKiB: number;
}

export function readMem(pid: number): MemReading | undefined {
  try {
    const s = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kib = (k: string): number => Number(new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(s)?.[1] ?? NaN);
    return { rssKiB: kib('VmRSS'), hwmKiB: kib('VmHWM') };
  } catch {
    return undefined;
  }
}

const TICK = 100; // USER_HZ on Linux

/** CPU seconds (user + system) used by the process so far, all its threads. */
export function processCpuSeconds(pid: number): number {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / TICK; // utime, stime (fields 14, 15)
  } catch {
    return NaN;
  }
}

/** Machine-wide busy and total CPU seconds (all cores) since boot. */
export function systemCpuSeconds(): { busy: number; total: number } {
  const line = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  const idle = (line[3] ?? 0) + (line[4] ?? 0);
  const total = line.slice(0, 8).reduce((a, b) => a + b, 0);
  return { busy: (total - idle) / TICK, total: total / TICK };
}

export interface CpuWindow {
  /** Share of all cores the service used, % (200 % = both of 2 cores). */
  servicePct: number;
  /** Machine-wide busy share of all cores, %. */
  systemPct: number;
  /** Busy share not spent by the service, % of all cores (load generator, prober, other users). */
  otherPct: number;
  loadavgStart: number;
  loadavgEnd: number;
}

export function cpuWindow(pid: number): () => CpuWindow {
  const p0 = processCpuSeconds(pid);
  const s0 = systemCpuSeconds();
  const l0 = loadavg()[0]!;
  return () => {
    const p1 = processCpuSeconds(pid);
    const s1 = systemCpuSeconds();
    const total = s1.total - s0.total;
    const busy = s1.busy - s0.busy;
    const svc = p1 - p0;
    return {
      servicePct: (100 * svc * cpus().length) / total,
      systemPct: (100 * busy) / total,
      otherPct: (100 * (busy - svc)) / total,
      loadavgStart: l0,
      loadavgEnd: loadavg()[0]!,
    };
  };
}

export interface MachineInfo {
  hostname: string;
  cpuModel: string;
  cores: number;
  ramGiB: number;
  node: string;
  ort: string;
  sharp: string;
  fastify: string;
  kernel: string;
}

function pkgVersion(name: string): string {
  try {
    // the package's own package.json, found from its entry point (some packages do not export it)
    const require = createRequire(import.meta.url);
    let dir = dirname(require.resolve(name));
    while (!existsSync(join(dir, 'package.json')) || !dir.includes(name)) dir = dirname(dir);
    return (JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { version: string }).version;
  } catch {
    return 'unknown';
  }
}

export function machineInfo(): MachineInfo {
  let cpuModel = cpus()[0]?.model ?? 'unknown';
  try {
    const m = /^model name\s*:\s*(.+)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'));
    if (m) cpuModel = m[1]!.trim();
  } catch { /* not Linux */ }
  let kernel = 'unknown';
  try { kernel = readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim(); } catch { /* not Linux */ }
  return {
    hostname: hostname(),
    cpuModel,
    cores: cpus().length,
    ramGiB: Math.round((totalmem() / 2 ** 30) * 10) / 10,
    node: process.version,
    ort: pkgVersion('onnxruntime-node'),
    sharp: pkgVersion('sharp'),
    fastify: pkgVersion('fastify'),
    kernel,
  };
}
