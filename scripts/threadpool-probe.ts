// Measures the libuv thread pool the built server (dist/server.js, `npm run build` first) really
// runs with, started each way: plain, with UV_THREADPOOL_SIZE in the environment, and with the
// CommonJS preload. Linux only (/proc). Usage: node --import tsx scripts/threadpool-probe.ts
//
// How: Node names no pool thread, and sharp/libvips and ONNX Runtime start threads of their own, so
// counting threads says nothing. Instead a probe preloaded into the server (acting 5 s after the
// start, once the server is up) opens 64 FIFOs for reading at once: each open() blocks one pool
// thread (no writer ever comes), so the threads then sitting in openat(2) — read from
// /proc/self/task/<tid>/syscall — are exactly the pool's threads. The probe then exits.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import os from 'node:os';
import path from 'node:path';

const PROBE = `
const fs = require('node:fs');
const path = require('node:path');
setTimeout(async () => {
  const dir = fs.mkdtempSync(path.join(require('node:os').tmpdir(), 'uvprobe-'));
  const fifos = Array.from({ length: 64 }, (_, i) => path.join(dir, 'f' + i));
  for (const f of fifos) require('node:child_process').execFileSync('mkfifo', [f]);
  for (const f of fifos) fs.open(f, 'r', () => {});
  await new Promise((ok) => setTimeout(ok, 1000));
  // threads sitting in openat(2) now are pool threads blocked on a FIFO (x64: 257, arm64: 56)
  const openat = process.arch === 'arm64' ? '56' : '257';
  let waiting = 0;
  for (const tid of fs.readdirSync('/proc/self/task')) {
    try { if (fs.readFileSync('/proc/self/task/' + tid + '/syscall', 'utf8').split(' ')[0] === openat) waiting++; } catch {}
  }
  fs.writeFileSync(process.env.PROBE_OUT + '.tmp', String(waiting));
  fs.renameSync(process.env.PROBE_OUT + '.tmp', process.env.PROBE_OUT);
}, Number(process.env.PROBE_AFTER_MS)).unref();
`;

const work = mkdtempSync(path.join(os.tmpdir(), 'threadpool-probe-'));
writeFileSync(path.join(work, 'probe.cjs'), PROBE);
// What server.ts did before the preload: its first import set the variable (to 12 here, so that it
// differs from libuv's 4 on any machine); the same module as an --import preload.
writeFileSync(path.join(work, 'set12.mjs'), "process.env.UV_THREADPOOL_SIZE = '12';\n");
writeFileSync(path.join(work, 'esm-first-import.mjs'), `import './set12.mjs';\nimport ${JSON.stringify(path.resolve('dist/server.js'))};\n`);

const RUNS: { label: string; args: string[]; env: Record<string, string> }[] = [
  { label: 'node dist/server.js', args: ['dist/server.js'], env: {} },
  { label: 'first ES import sets UV_THREADPOOL_SIZE=12, then dist/server.js', args: [path.join(work, 'esm-first-import.mjs')], env: {} },
  { label: 'node --import (ESM preload setting 12) dist/server.js', args: ['--import', path.join(work, 'set12.mjs'), 'dist/server.js'], env: {} },
  { label: 'UV_THREADPOOL_SIZE=12 node dist/server.js', args: ['dist/server.js'], env: { UV_THREADPOOL_SIZE: '12' } },
  { label: 'node --require ./dist/threadpool.cjs dist/server.js (CPU_LIMIT unset)', args: ['--require', './dist/threadpool.cjs', 'dist/server.js'], env: {} },
  { label: 'CPU_LIMIT=12 node --require ./dist/threadpool.cjs dist/server.js', args: ['--require', './dist/threadpool.cjs', 'dist/server.js'], env: { CPU_LIMIT: '12' } },
];

async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((ok) => srv.listen(0, '127.0.0.1', ok));
  const port = (srv.address() as { port: number }).port;
  await new Promise((ok) => srv.close(ok));
  return port;
}

async function poolSize(args: string[], env: Record<string, string>): Promise<number> {
  const port = await freePort();
  const out = path.join(work, `out-${port}`);
  const base: Record<string, string | undefined> = { ...process.env, UV_THREADPOOL_SIZE: undefined, CPU_LIMIT: undefined };
  // the probe is required last, after the preload under test; it acts once the server is ready
  const [node, script] = [args.slice(0, -1), args.at(-1)!];
  const child = spawn(process.execPath, [...node, '--require', path.join(work, 'probe.cjs'), script], {
    env: { ...base, MODEL_PATH: '', MODELS_DIR: '/nonexistent', EXECUTION_PROVIDERS: 'cpu', LOG_LEVEL: 'silent', HOST: '127.0.0.1', PORT: String(port), PROBE_OUT: out, PROBE_AFTER_MS: '5000', ...env },
    stdio: 'ignore',
  });
  // the probe's blocked pool threads would hold up a normal exit: kill the server once it answered
  try {
    for (let waited = 0; !existsSync(out); waited += 200) {
      if (waited > 60_000 || child.exitCode !== null) throw new Error(`${args.join(' ')}: no answer from the probe`);
      await new Promise((ok) => setTimeout(ok, 200));
    }
  } finally {
    child.kill('SIGKILL');
  }
  return Number(readFileSync(out, 'utf8'));
}

console.log(`node ${process.version}, os.availableParallelism() = ${os.availableParallelism()}`);
for (const run of RUNS) {
  const t0 = Date.now();
  console.log(`${run.label}: pool of ${await poolSize(run.args, run.env)} threads (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
}
