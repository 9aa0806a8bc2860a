// The batcher alone, with a fake runner: it is pure, so its rules are testable exactly.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Batcher, BatchTooLargeError, DeadlineError, QueueFullError, type Batch } from '../src/batching/batcher.js';

type P = { id: string };

/** A runner whose runs end when the test says so. */
function fakeRunner() {
  const runs: { batch: Batch<P>; resolve: (v: string) => void; reject: (e: Error) => void }[] = [];
  const run = (batch: Batch<P>): Promise<string> => new Promise((resolve, reject) => runs.push({ batch, resolve, reject }));
  return { runs, run };
}

const opts = { maxBatchSize: 4, maxQueueDelayMs: 20, maxQueueSize: 16 };
const tick = (ms = 0): Promise<void> => new Promise((r) => setTimeout(r, ms));
const ids = (b: Batch<P>): string => b.slices.map((s) => `${s.payload.id}:${s.start}+${s.count}`).join(' ');

test('batcher: a full batch is released at once, a partial one after the queue delay', async () => {
  const { runs, run } = fakeRunner();
  const b = new Batcher(run, opts);
  const jobs = ['a', 'b', 'c', 'd', 'e'].map((id) => b.submit('k', { id }, 1));
  await tick();
  assert.equal(runs.length, 1, 'four samples fill a batch');
  assert.equal(ids(runs[0]!.batch), 'a:0+1 b:0+1 c:0+1 d:0+1');
  runs[0]!.resolve('r0');
  await tick(5);
  assert.equal(runs.length, 1, 'e waits for the delay');
  await tick(25);
  assert.equal(runs.length, 2);
  assert.equal(ids(runs[1]!.batch), 'e:0+1');
  runs[1]!.resolve('r1');
  const results = await Promise.all(jobs);
  assert.deepEqual(results.map((r) => r.parts.map((p) => [p.result, p.batchOffset])), [[['r0', 0]], [['r0', 1]], [['r0', 2]], [['r0', 3]], [['r1', 0]]]);
});

test('batcher: with delay 0 an idle runner starts at once; the next batch forms while it runs', async () => {
  const { runs, run } = fakeRunner();
  const b = new Batcher(run, { ...opts, maxQueueDelayMs: 0 });
  const first = b.submit('k', { id: 'a' }, 1);
  assert.equal(runs.length, 1, 'released synchronously');
  const rest = ['b', 'c'].map((id) => b.submit('k', { id }, 1));
  assert.equal(runs.length, 1, 'one run at a time');
  assert.equal(b.waitingSamples, 2);
  runs[0]!.resolve('r0');
  await first;
  assert.equal(runs.length, 2);
  assert.equal(ids(runs[1]!.batch), 'b:0+1 c:0+1', 'what queued meanwhile shares the next run');
  runs[1]!.resolve('r1');
  await Promise.all(rest);
});

test('batcher: counts samples, splits a large request across runs and reassembles it in order', async () => {
  const { runs, run } = fakeRunner();
  const b = new Batcher(run, { ...opts, maxQueueDelayMs: 0 });
  const small = b.submit('k', { id: 'a' }, 3);
  const big = b.submit('k', { id: 'b' }, 6);
  runs[0]!.resolve('r0');
  await tick();
  assert.equal(ids(runs[1]!.batch), 'b:0+4');
  runs[1]!.resolve('r1');
  await tick();
  assert.equal(ids(runs[2]!.batch), 'b:4+2');
  runs[2]!.resolve('r2');
  const r = await big;
  assert.deepEqual(r.parts.map((p) => [p.result, p.start, p.count, p.batchOffset]), [['r1', 0, 4, 0], ['r2', 4, 2, 0]]);
  assert.equal((await small).parts[0]!.count, 3);
});

test('batcher: a request fills the rest of a batch and its remainder leads the next', async () => {
  const { runs, run } = fakeRunner();
  const b = new Batcher(run, { ...opts, maxQueueDelayMs: 10 });
  void b.submit('k', { id: 'a' }, 3);
  void b.submit('k', { id: 'b' }, 3);
  await tick();
  assert.equal(ids(runs[0]!.batch), 'a:0+3 b:0+1');
  runs[0]!.resolve('r0');
  await tick(15);
  assert.equal(ids(runs[1]!.batch), 'b:1+2');
  runs[1]!.resolve('r1');
});

test('batcher: different keys never share a run', async () => {
  const { runs, run } = fakeRunner();
  const b = new Batcher(run, { ...opts, maxQueueDelayMs: 5 });
  void b.submit('64x64', { id: 'a' }, 1);
  void b.submit('32x32', { id: 'b' }, 1);
  await tick(10);
  assert.equal(runs.length, 1);
  assert.equal(runs[0]!.batch.key, '64x64', 'the oldest request goes first');
  runs[0]!.resolve('r');
  await tick();
  assert.equal(runs[1]!.batch.key, '32x32');
  runs[1]!.resolve('r');
});

test('batcher: past the queue limit a request is refused with a retry estimate; an impossible one is told so', async () => {
  const { runs, run } = fakeRunner();
  const b = new Batcher(run, { maxBatchSize: 2, maxQueueDelayMs: 0, maxQueueSize: 4 });
  const ok = [b.submit('k', { id: 'a' }, 2), b.submit('k', { id: 'b' }, 4)];
  await assert.rejects(b.submit('k', { id: 'c' }, 1), (e: unknown) => e instanceof QueueFullError && e.retryAfterSeconds >= 1);
  await assert.rejects(b.submit('k', { id: 'd' }, 5), BatchTooLargeError);
  for (let i = 0; i < 3; i++) {
    runs[i]!.resolve(`r${i}`);
    await tick();
  }
  await Promise.all(ok);
  assert.equal(b.waitingSamples, 0);
});

test('batcher: a request past its deadline is dropped before its run', async () => {
  const { runs, run } = fakeRunner();
  let now = 0;
  const b = new Batcher(run, { ...opts, maxQueueDelayMs: 0, now: () => now });
  const first = b.submit('k', { id: 'a' }, 4);
  const late = b.submit('k', { id: 'b' }, 1, { deadline: 50 });
  const fine = b.submit('k', { id: 'c' }, 1, { deadline: 500 });
  now = 100;
  runs[0]!.resolve('r0');
  await first;
  await assert.rejects(late, DeadlineError);
  assert.equal(ids(runs[1]!.batch), 'c:0+1', 'the late request never reached the runner');
  runs[1]!.resolve('r1');
  await fine;
});

test('batcher: a request that cannot finish in time, judged by measured run time, is dropped early', async () => {
  const { runs, run } = fakeRunner();
  let now = 0;
  const b = new Batcher(run, { ...opts, maxQueueDelayMs: 0, now: () => now });
  const first = b.submit('k', { id: 'a' }, 1);
  now = 100; // runs take 100 ms
  runs[0]!.resolve('r0');
  await first;
  await assert.rejects(b.submit('k', { id: 'b' }, 1, { deadline: 150 }), /cannot finish before its deadline/);
  assert.equal(runs.length, 1);
});

test('batcher: an aborted request leaves the queue and a cancelled running one gets nothing', async () => {
  const { runs, run } = fakeRunner();
  const b = new Batcher(run, { ...opts, maxQueueDelayMs: 0 });
  const running = new AbortController();
  const queued = new AbortController();
  const a = b.submit('k', { id: 'a' }, 1, { signal: running.signal });
  const q = b.submit('k', { id: 'b' }, 2, { signal: queued.signal });
  const c = b.submit('k', { id: 'c' }, 1);
  queued.abort(new Error('client gone'));
  await assert.rejects(q, /client gone/);
  assert.equal(b.waitingSamples, 1);
  running.abort(new Error('client gone too'));
  await assert.rejects(a, /client gone too/);
  runs[0]!.resolve('r0');
  await tick();
  assert.equal(ids(runs[1]!.batch), 'c:0+1');
  runs[1]!.resolve('r1');
  await c;
  await b.idle();
});

test('batcher: a failed run fails its requests only, each once, and the loop goes on', async () => {
  const { runs, run } = fakeRunner();
  const b = new Batcher(run, { ...opts, maxBatchSize: 2, maxQueueDelayMs: 5 });
  const settled: string[] = [];
  const track = (id: string, p: Promise<unknown>) => p.then(() => settled.push(`${id} ok`), () => settled.push(`${id} failed`));
  const all = [
    track('a', b.submit('k', { id: 'a' }, 1)),
    track('b', b.submit('k', { id: 'b' }, 3)), // split: b:0+1 fails with a; the rest is dropped
    track('c', b.submit('k', { id: 'c' }, 1)),
  ];
  await tick(10);
  assert.equal(ids(runs[0]!.batch), 'a:0+1 b:0+1');
  runs[0]!.reject(new Error('ORT exploded'));
  await tick(10);
  assert.equal(ids(runs[1]!.batch), 'c:0+1', 'b is not run again after failing');
  runs[1]!.resolve('r1');
  await Promise.all(all);
  assert.deepEqual(settled.sort(), ['a failed', 'b failed', 'c ok']);
  await b.idle();
});
