// The thread-pool preload (src/threadpool.cts, run as `node --require ./dist/threadpool.cjs`) must
// size the pool libuv really starts, not just set a variable: each case runs a Node process and
// counts the pool's threads. Linux only (/proc), like the images.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { tempDir } from './helpers/paths.js';
import { emitPreload } from './helpers/preload.js';

// Opens 64 FIFOs for reading: each open() blocks one pool thread (no writer ever comes), so the
// threads then sitting in openat(2) are exactly the pool's. SIGKILL: a normal exit would wait for
// the blocked threads.
const PROBE = `
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
const dir = fs.mkdtempSync(path.join(process.env.PROBE_DIR, 'fifo-'));
for (let i = 0; i < 64; i++) {
  const f = path.join(dir, 'f' + i);
  execFileSync('mkfifo', [f]);
  fs.open(f, 'r', () => {});
}
setTimeout(() => {
  const openat = process.arch === 'arm64' ? '56' : '257';
  const n = fs.readdirSync('/proc/self/task').filter((t) => {
    try { return fs.readFileSync('/proc/self/task/' + t + '/syscall', 'utf8').split(' ')[0] === openat; } catch { return false; }
  }).length;
  fs.writeSync(1, String(n));
  process.kill(process.pid, 'SIGKILL');
}, 500);
`;

function poolSize(dir: string, nodeArgs: string[], env: Record<string, string>): number {
  const base = { ...process.env, UV_THREADPOOL_SIZE: undefined, CPU_LIMIT: undefined };
  const res = spawnSync(process.execPath, [...nodeArgs, path.join(dir, 'probe.mjs')], { env: { ...base, PROBE_DIR: dir, ...env }, encoding: 'utf8', timeout: 30_000 });
  assert.match(res.stdout, /^\d+$/, res.stderr);
  return Number(res.stdout);
}

test('threadpool: the --require preload sizes the pool libuv starts; on Node 20 an ES module setting the variable is too late', { skip: process.platform !== 'linux' && 'needs /proc' }, (t) => {
  const dir = tempDir(t);
  writeFileSync(path.join(dir, 'probe.mjs'), PROBE);
  // what tsc emits as dist/threadpool.cjs (and the module it requires)
  const preload = emitPreload(dir);
  writeFileSync(path.join(dir, 'set7.mjs'), "process.env.UV_THREADPOOL_SIZE = '7';\n");
  writeFileSync(path.join(dir, 'esm-first.mjs'), "import './set7.mjs';\nimport './probe.mjs';\n");

  assert.equal(poolSize(dir, [], {}), 4, "libuv's default");
  assert.equal(poolSize(dir, ['--require', preload], { CPU_LIMIT: '6' }), 6, 'one thread per CPU of the limit');
  assert.equal(poolSize(dir, ['--require', preload], { CPU_LIMIT: '2' }), 4, 'never below 4');
  assert.equal(poolSize(dir, ['--require', preload], { CPU_LIMIT: '6', UV_THREADPOOL_SIZE: '5' }), 5, 'an explicit UV_THREADPOOL_SIZE wins');
  // why the preload exists: on Node 20 the first import of an ES module runs after the ESM loader
  // started the pool. Node 22 (measured on 22.23) starts it later, so there the import is in
  // time too; the preload serves both.
  const esmFirst = spawnSync(process.execPath, [path.join(dir, 'esm-first.mjs')], { env: { ...process.env, UV_THREADPOOL_SIZE: undefined, PROBE_DIR: dir }, encoding: 'utf8', timeout: 30_000 });
  assert.equal(esmFirst.stdout, Number(process.versions.node.split('.')[0]) >= 22 ? '7' : '4');
});
