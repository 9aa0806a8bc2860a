// The inference runner's faults: a worker that cannot be restarted is given up on after a bounded
// number of tries with backoff, and says so (the server then exits non-zero); runs meanwhile fail.
import assert from 'node:assert/strict';
import { copyFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { InferenceRunner } from '../src/inference/runner.js';
import { FIXTURE_MODEL, tempDir } from './helpers/service.js';

const quiet = { info() {}, warn() {}, error() {} };

test('runner: after maxRestarts failed restarts it gives up, calls onFatal once, and refuses runs with the reason', async (t) => {
  const file = path.join(tempDir(t), 'model.onnx');
  copyFileSync(FIXTURE_MODEL, file);
  const warned: unknown[] = [];
  const fatal: Error[] = [];
  let gaveUp!: () => void;
  const givenUp = new Promise<void>((resolve) => (gaveUp = resolve));
  const r = await InferenceRunner.start({ modelPath: file, providers: ['cpu'], intraOpThreads: 1, cpuMemArena: false, maxBatchSize: 1 }, { ...quiet, warn: (o) => warned.push(o) }, {
    maxRestarts: 3, restartDelayMs: 10, onFatal: (e) => { fatal.push(e); gaveUp(); },
  });
  t.after(() => r.close());
  assert.equal(r.healthy, true);
  rmSync(file); // the next worker cannot load the model
  await (r as unknown as { worker: { terminate(): Promise<number> } }).worker.terminate();
  assert.equal(r.healthy, false, 'unhealthy while restarting');
  await givenUp;
  await assert.rejects(r.run(new Float32Array(4 * 8 * 8), [1, 4, 8, 8], ['image']), /did not restart after 3 attempts/);
  assert.equal(fatal.length, 1);
  assert.match(fatal[0]!.message, /did not restart after 3 attempts/);
  assert.deepEqual(warned.map((w) => (w as { delayMs: number }).delayMs), [10, 20, 40], 'backoff doubles');
});

/** The runner's current worker, as the test kills it (and its thread id: -1 once it has exited). */
const workerOf = (r: InferenceRunner): { threadId: number; terminate(): Promise<number> } => (r as unknown as { worker: { threadId: number; terminate(): Promise<number> } }).worker;

test('runner: close during the restart backoff cancels the restart: no new worker is started, close resolves at once', async (t) => {
  const file = path.join(tempDir(t), 'model.onnx');
  copyFileSync(FIXTURE_MODEL, file);
  const warmups: unknown[] = [];
  const log = { ...quiet, info: (_o: object, msg: string) => { if (msg === 'warm-up') warmups.push(msg); } };
  const r = await InferenceRunner.start({ modelPath: file, providers: ['cpu'], intraOpThreads: 1, cpuMemArena: false, maxBatchSize: 1 }, log, { restartDelayMs: 300 });
  assert.equal(warmups.length, 1);
  const first = workerOf(r);
  await first.terminate();
  const t0 = performance.now();
  await r.close();
  assert.ok(performance.now() - t0 < 250, `close waited ${Math.round(performance.now() - t0)} ms: it did not cancel the backoff`);
  await new Promise((resolve) => setTimeout(resolve, 1500)); // past the backoff and a model load
  assert.equal(workerOf(r), first, 'no worker was spawned after close');
  assert.equal(warmups.length, 1, 'no worker warmed up after close');
  await assert.rejects(r.run(new Float32Array(4 * 8 * 8), [1, 4, 8, 8], ['image']), /closed/);
});

test('runner: close while a restarted worker is loading waits for it to be ready and exit', async (t) => {
  const file = path.join(tempDir(t), 'model.onnx');
  copyFileSync(FIXTURE_MODEL, file);
  const r = await InferenceRunner.start({ modelPath: file, providers: ['cpu'], intraOpThreads: 1, cpuMemArena: false, maxBatchSize: 1 }, quiet, { restartDelayMs: 1 });
  const first = workerOf(r);
  await first.terminate();
  const end = Date.now() + 5000;
  while (workerOf(r) === first && Date.now() < end) await new Promise((resolve) => setTimeout(resolve, 1));
  const starting = workerOf(r);
  assert.notEqual(starting, first, 'a new worker is starting');
  assert.notEqual(starting.threadId, -1);
  await r.close();
  assert.equal(starting.threadId, -1, 'close resolved only once the starting worker had exited');
  assert.equal(r.healthy, false);
});
