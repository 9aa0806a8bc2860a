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
