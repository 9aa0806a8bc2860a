// The batcher alone, with a gated fake runner and mocked timers: it is pure, so its rules are
// testable exactly, with no dependence on the machine's speed.
import assert from 'node:assert/strict';
import { mock, test, type TestContext } from 'node:test';
import { Batcher, BatchTooLargeError, DeadlineError, QueueFullError, type Batch, type BatcherOptions } from '../src/batching/batcher.js';

type P = { id: string };

/** A runner whose runs end when the test says so. */
function fakeRunner() {
  const runs: { batch: Batch<P>; resolve: (v: string) => void; reject: (e: Error) => void }[] = [];
  const run = (batch: Batch<P>): Promise<string> => new Promise((resolve, reject) => runs.push({ batch, resolve, reject }));
  return { runs, run };
}

const opts = { maxBatchSize: 4, maxQueueDelayMs: 20, maxQueueSize: 16 };
const ids = (b: Batch<P>): string => b.slices.map((s) => `${s.payload.id}:${s.start}+${s.count}`).join(' ');

/** Mocked setTimeout/setImmediate/Date from 0; `step(ms)` settles promises, advances, settles again. */
function clock(t: TestContext) {
  mock.timers.enable({ apis: ['setTimeout', 'setImmediate', 'Date'], now: 0 });
  t.after(() => mock.timers.reset());
  const flush = async (): Promise<void> => {
    for (let i = 0; i < 10; i++) await Promise.resolve();
  };
  return {
    now: () => Date.now(),
    step: async (ms = 0): Promise<void> => {
      await flush();
      mock.timers.tick(ms);
      await flush();
    },
  };
}

function setup(t: TestContext, o: Partial<BatcherOptions> = {}) {
  const c = clock(t);
  const { runs, run } = fakeRunner();
  const b = new Batcher(run, { ...opts, now: c.now, ...o });
  return { ...c, runs, b };
}

test('batcher: a full batch is released at once, a partial one after the queue delay', async (t) => {
  const { b, runs, step } = setup(t);
  const jobs = ['a', 'b', 'c', 'd', 'e'].map((id) => b.submit('k', { id }, 1));
  await step();
  assert.equal(runs.length, 1, 'four samples fill a batch');
  assert.equal(ids(runs[0]!.batch), 'a:0+1 b:0+1 c:0+1 d:0+1');
  runs[0]!.resolve('r0');
  await step(19);
  assert.equal(runs.length, 1, 'e waits for the delay');
  await step(1);
  assert.equal(runs.length, 2);
  assert.equal(ids(runs[1]!.batch), 'e:0+1');
  runs[1]!.resolve('r1');
  const results = await Promise.all(jobs);
  assert.deepEqual(results.map((r) => r.parts.map((p) => [p.result, p.batchOffset])), [[['r0', 0]], [['r0', 1]], [['r0', 2]], [['r0', 3]], [['r1', 0]]]);
});

test('batcher: idle dispatch: with delay 0 a lone request runs on the next turn, without waiting for company', async (t) => {
  const { b, runs, step } = setup(t, { maxQueueDelayMs: 0 });
  const a = b.submit('k', { id: 'a' }, 1);
  assert.equal(runs.length, 0, 'dispatch waits for the end of the turn');
  await step(0);
  assert.equal(runs.length, 1, 'and no longer: no timer had to fire');
  assert.equal(ids(runs[0]!.batch), 'a:0+1');
  runs[0]!.resolve('r0');
  assert.equal((await a).queueMs, 0);
});

test('batcher: a burst submitted in one turn shares the first run instead of the first request running alone', async (t) => {
  const { b, runs, step } = setup(t, { maxQueueDelayMs: 0 });
  for (const id of ['a', 'b', 'c', 'd', 'e', 'f']) void b.submit('k', { id }, 1);
  await step();
  assert.equal(ids(runs[0]!.batch), 'a:0+1 b:0+1 c:0+1 d:0+1');
  runs[0]!.resolve('r0');
  await step();
  assert.equal(ids(runs[1]!.batch), 'e:0+1 f:0+1');
  runs[1]!.resolve('r1');
});

test('batcher: requests arriving during a run accumulate and the next batch takes them all when it ends', async (t) => {
  const { b, runs, step } = setup(t, { maxQueueDelayMs: 0 });
  const first = b.submit('k', { id: 'a' }, 1);
  await step();
  const rest = ['b', 'c'].map((id) => b.submit('k', { id }, 1));
  await step(1000);
  assert.equal(runs.length, 1, 'one run at a time on one instance, however long it takes');
  assert.equal(b.waitingSamples, 2);
  runs[0]!.resolve('r0');
  await first;
  await step();
  assert.equal(runs.length, 2);
  assert.equal(ids(runs[1]!.batch), 'b:0+1 c:0+1', 'what queued meanwhile shares the next run');
  runs[1]!.resolve('r1');
  await Promise.all(rest);
});

test('batcher: two instances run two batches at once, each on its own slot', async (t) => {
  const { b, runs, step } = setup(t, { maxQueueDelayMs: 0, concurrency: 2 });
  const a = b.submit('k', { id: 'a' }, 1);
  await step();
  const c = b.submit('k', { id: 'c' }, 1);
  await step();
  assert.equal(runs.length, 2, 'the second request did not wait for the first run');
  assert.deepEqual(runs.map((r) => r.batch.slot), [0, 1]);
  assert.equal(b.runningBatches, 2);
  void b.submit('k', { id: 'd' }, 1);
  await step();
  assert.equal(runs.length, 2, 'no third slot');
  runs[1]!.resolve('r1');
  await c;
  await step();
  assert.equal(runs[2]!.batch.slot, 1, 'the freed slot runs the next batch');
  runs[0]!.resolve('r0');
  runs[2]!.resolve('r2');
  await a;
  await b.idle();
});

test('batcher: with two instances a batch takes its share of what waits, so both instances run', async (t) => {
  const { b, runs, step } = setup(t, { maxQueueDelayMs: 0, maxBatchSize: 8, concurrency: 2 });
  // one request of 7 samples reaching two idle instances: ⌈7/2⌉ on one, ⌈3/2⌉ on the other at once,
  // the last on whichever frees first (done by 4 runs' time, as 4 + 3 would be)
  const big = b.submit('k', { id: 'big' }, 7);
  await step();
  assert.deepEqual(runs.map((r) => [r.batch.slot, r.batch.sampleCount]), [[0, 4], [1, 2]]);
  runs[1]!.resolve('r1');
  await step();
  assert.deepEqual([runs[2]!.batch.slot, runs[2]!.batch.sampleCount], [1, 1]);
  runs[0]!.resolve('r0');
  runs[2]!.resolve('r2');
  const r = await big;
  assert.deepEqual(r.parts.map((p) => [p.start, p.count]), [[0, 4], [4, 2], [6, 1]]);
  // 5 single-sample requests queued while one instance is busy: the free one takes ⌈5/2⌉, not 5,
  // so the busy one has work when it frees
  const hold = b.submit('k', { id: 'hold' }, 1);
  await step();
  const rest = [1, 2, 3, 4, 5].map((i) => b.submit('k', { id: `q${i}` }, 1));
  await step();
  assert.equal(runs[4]!.batch.sampleCount, 3);
  runs[3]!.resolve('r3');
  await hold;
  await step();
  assert.equal(runs[5]!.batch.sampleCount, 1, 'the other instance, once free, takes its share of the 2 left');
  runs[4]!.resolve('r4');
  await step();
  assert.equal(runs[6]!.batch.sampleCount, 1);
  runs[5]!.resolve('r5');
  runs[6]!.resolve('r6');
  await Promise.all(rest);
  await b.idle();
});

test('batcher: a request split across two instances reports the wall time its runs cover, not their sum', async (t) => {
  const { b, runs, step } = setup(t, { maxQueueDelayMs: 0, maxBatchSize: 1, concurrency: 2 });
  const req = b.submit('k', { id: 'r' }, 4);
  await step();
  assert.equal(runs.length, 2, 'two runs at once');
  await step(100);
  runs[0]!.resolve('a');
  runs[1]!.resolve('b');
  await step();
  assert.equal(runs.length, 4);
  await step(100);
  runs[2]!.resolve('c');
  runs[3]!.resolve('d');
  const r = await req;
  assert.equal(r.runMs, 200, 'two rounds of two parallel 100 ms runs take 200 ms, not 400');
  await b.idle();
});

test('batcher: with MAX_QUEUE_DELAY_MS, the rest of a request split by the per-instance share runs on a free instance at once', async (t) => {
  const { b, runs, step } = setup(t, { maxQueueDelayMs: 50, maxBatchSize: 8, concurrency: 2 });
  // a full batch's worth reaches two idle instances: its share on one, the rest on the other now,
  // not 50 ms later
  const req = b.submit('k', { id: 'a' }, 8);
  await step();
  assert.deepEqual(runs.map((r) => r.batch.sampleCount), [4, 2]);
  runs.forEach((r) => r.resolve('x'));
  await step();
  assert.deepEqual(runs.slice(2).map((r) => r.batch.sampleCount), [1, 1], 'what is left runs as soon as the instances free');
  runs[2]!.resolve('y');
  runs[3]!.resolve('z');
  await req;
  await b.idle();
});

test('batcher: a batch is capped by cost (latent area) as well as samples; one sample over the cap runs alone', async (t) => {
  const { b, runs, step } = setup(t, { maxQueueDelayMs: 0, maxBatchSize: 8, maxBatchCost: 8 });
  void b.submit('big', { id: 'a' }, 5, { cost: 4 });
  void b.submit('huge', { id: 'h' }, 1, { cost: 16 });
  await step();
  const batches: string[] = [];
  for (let i = 0; i < 4; i++) {
    batches.push(ids(runs[i]!.batch));
    runs[i]!.resolve('r');
    await step();
  }
  assert.deepEqual(batches, ['a:0+2', 'a:2+2', 'a:4+1', 'h:0+1'], 'cost 4 per sample: two per batch; cost 16 alone');
  await b.idle();
});

test('batcher: counts samples, splits a large request across runs and reassembles it in order', async (t) => {
  const { b, runs, step } = setup(t, { maxQueueDelayMs: 0 });
  const small = b.submit('k', { id: 'a' }, 3);
  const big = b.submit('k', { id: 'b' }, 6);
  await step();
  assert.equal(ids(runs[0]!.batch), 'a:0+3 b:0+1');
  runs[0]!.resolve('r0');
  await step();
  assert.equal(ids(runs[1]!.batch), 'b:1+4');
  runs[1]!.resolve('r1');
  await step();
  assert.equal(ids(runs[2]!.batch), 'b:5+1');
  runs[2]!.resolve('r2');
  const r = await big;
  assert.deepEqual(r.parts.map((p) => [p.result, p.start, p.count, p.batchOffset]), [['r0', 0, 1, 3], ['r1', 1, 4, 0], ['r2', 5, 1, 0]]);
  assert.equal((await small).parts[0]!.count, 3);
});

test('batcher: different keys never share a run; the oldest request goes first', async (t) => {
  const { b, runs, step } = setup(t, { maxQueueDelayMs: 5 });
  void b.submit('64x64', { id: 'a' }, 1);
  await step(1);
  void b.submit('32x32', { id: 'b' }, 1);
  await step(10);
  assert.equal(runs.length, 1);
  assert.equal(runs[0]!.batch.key, '64x64');
  runs[0]!.resolve('r');
  await step();
  assert.equal(runs[1]!.batch.key, '32x32');
  runs[1]!.resolve('r');
});

test('batcher: Retry-After is the measured time to run what waits, by cost; an impossible request is told so', async (t) => {
  const { b, runs, step } = setup(t, { maxBatchSize: 2, maxQueueDelayMs: 0, maxQueueSize: 4 });
  assert.equal(b.retryAfter(), 1, 'nothing measured yet');
  const first = b.submit('k', { id: 'a' }, 2, { cost: 1000 });
  await step();
  await step(500); // a batch of 2 × 1000 in 500 ms: 4 cost per ms
  runs[0]!.resolve('r0');
  await first;
  const ok = [b.submit('k', { id: 'b' }, 2, { cost: 1000 }), b.submit('k', { id: 'c' }, 2, { cost: 1000 })];
  await step();
  // b runs; c (2 samples × 1000) waits: 2000 / 4 per ms = 0.5 s → 1 s. Fill the queue behind it.
  const d = b.submit('k', { id: 'd' }, 2, { cost: 1000 });
  await assert.rejects(b.submit('k', { id: 'e' }, 1, { cost: 1000 }), (e: unknown) => e instanceof QueueFullError && e.retryAfterSeconds === 1);
  await assert.rejects(b.submit('k', { id: 'f' }, 5), BatchTooLargeError);
  assert.equal(b.retryAfter(), 1);
  const big = new Batcher(fakeRunner().run, { maxBatchSize: 2, maxQueueDelayMs: 0, maxQueueSize: 100 });
  assert.equal(big.retryAfter(), 1);
  for (let i = 1; i < 4; i++) {
    runs[i]!.resolve(`r${i}`);
    await step();
  }
  await Promise.all([...ok, d]);
  assert.equal(b.waitingSamples, 0);
});

test('batcher: Retry-After grows with the work queued ahead: 64 waiting samples at 2 per second say 32 s', async (t) => {
  const { b, runs, step } = setup(t, { maxBatchSize: 1, maxQueueDelayMs: 0, maxQueueSize: 64 });
  const warm = b.submit('k', { id: 'w' }, 1, { cost: 4096 });
  await step();
  await step(500); // one 64×64 sample per 500 ms
  runs[0]!.resolve('r');
  await warm;
  const queued = Array.from({ length: 64 }, (_, i) => b.submit('k', { id: `q${i}` }, 1, { cost: 4096 }));
  await step(); // one runs, 63 wait
  queued.push(b.submit('k', { id: 'q64' }, 1, { cost: 4096 }));
  await assert.rejects(b.submit('k', { id: 'x' }, 1, { cost: 4096 }), (e: unknown) => e instanceof QueueFullError && e.retryAfterSeconds === 32);
  for (const p of queued) p.catch(() => {});
});

test('batcher: a request past its deadline is dropped before its run', async (t) => {
  const { b, runs, step } = setup(t, { maxQueueDelayMs: 0 });
  const first = b.submit('k', { id: 'a' }, 4);
  await step();
  const late = b.submit('k', { id: 'b' }, 1, { deadline: 50 });
  const fine = b.submit('k', { id: 'c' }, 1, { deadline: 500 });
  await step(100);
  runs[0]!.resolve('r0');
  await first;
  await step();
  await assert.rejects(late, DeadlineError);
  assert.equal(ids(runs[1]!.batch), 'c:0+1', 'the late request never reached the runner');
  runs[1]!.resolve('r1');
  await fine;
});

test('batcher: a request that cannot finish in time, judged by measured run time, is dropped early', async (t) => {
  const { b, runs, step } = setup(t, { maxQueueDelayMs: 0 });
  const first = b.submit('k', { id: 'a' }, 1);
  await step();
  await step(100); // runs take 100 ms
  runs[0]!.resolve('r0');
  await first;
  const late = b.submit('k', { id: 'b' }, 1, { deadline: 150 });
  await step();
  await assert.rejects(late, /cannot finish before its deadline: 50 ms were left and a run of 1 sample of k takes at least 100 ms \(a run of 1 sample took 100 ms/);
  assert.equal(runs.length, 1);
});

test('batcher: idle() does not resolve while a batch runs, though a deadline drop emptied the queue as it formed', async (t) => {
  const { b, runs, step } = setup(t, { maxQueueDelayMs: 0 });
  const first = b.submit('k', { id: 'a' }, 1);
  await step();
  const late = b.submit('k', { id: 'late' }, 1, { deadline: 5 });
  const next = b.submit('k', { id: 'next' }, 1);
  await step(10);
  runs[0]!.resolve('r0');
  await first;
  let idle = false;
  void b.idle().then(() => { idle = true; });
  await step();
  await assert.rejects(late, DeadlineError);
  assert.equal(ids(runs[1]!.batch), 'next:0+1');
  assert.equal(idle, false, 'next is running');
  runs[1]!.resolve('r1');
  await next;
  await step();
  assert.equal(idle, true);
});

test('batcher: an aborted request leaves the queue and a cancelled running one gets nothing', async (t) => {
  const { b, runs, step } = setup(t, { maxQueueDelayMs: 0 });
  const running = new AbortController();
  const queued = new AbortController();
  const a = b.submit('k', { id: 'a' }, 1, { signal: running.signal });
  await step();
  const q = b.submit('k', { id: 'b' }, 2, { signal: queued.signal });
  const c = b.submit('k', { id: 'c' }, 1);
  queued.abort(new Error('client gone'));
  await assert.rejects(q, /client gone/);
  assert.equal(b.waitingSamples, 1);
  running.abort(new Error('client gone too'));
  await assert.rejects(a, /client gone too/);
  runs[0]!.resolve('r0');
  await step();
  assert.equal(ids(runs[1]!.batch), 'c:0+1');
  runs[1]!.resolve('r1');
  await c;
  await b.idle();
});

test('batcher: a failed run fails its requests only, each once, and the loop goes on', async (t) => {
  const { b, runs, step } = setup(t, { maxBatchSize: 2, maxQueueDelayMs: 5 });
  const settled: string[] = [];
  const track = (id: string, p: Promise<unknown>) => p.then(() => settled.push(`${id} ok`), () => settled.push(`${id} failed`));
  const all = [
    track('a', b.submit('k', { id: 'a' }, 1)),
    track('b', b.submit('k', { id: 'b' }, 3)), // split: b:0+1 fails with a; the rest is dropped
    track('c', b.submit('k', { id: 'c' }, 1)),
  ];
  await step();
  assert.equal(ids(runs[0]!.batch), 'a:0+1 b:0+1', 'full: released without the delay');
  runs[0]!.reject(new Error('ORT exploded'));
  await step(5);
  assert.equal(ids(runs[1]!.batch), 'c:0+1', 'b is not run again after failing');
  runs[1]!.resolve('r1');
  await Promise.all(all);
  assert.deepEqual(settled.sort(), ['a failed', 'b failed', 'c ok']);
  await b.idle();
});
