// Admission (one rule, owned by the batcher: reserve, submit against the ticket, release) and the
// run-time estimate that cannot lock a size out (issue 14, findings 5 and 13). Pure: a fake
// runner and mocked timers.
import assert from 'node:assert/strict';
import { mock, test, type TestContext } from 'node:test';
import { Batcher, BatchTooLargeError, DeadlineError, QueueFullError, type Batch, type BatcherOptions } from '../src/batching/batcher.js';

type P = { id: string };

function setup(t: TestContext, o: Partial<BatcherOptions> = {}) {
  mock.timers.enable({ apis: ['setTimeout', 'setImmediate', 'Date'], now: 0 });
  t.after(() => mock.timers.reset());
  const runs: { batch: Batch<P>; resolve: (v: string) => void }[] = [];
  const run = (batch: Batch<P>): Promise<string> => new Promise((resolve) => runs.push({ batch, resolve }));
  const b = new Batcher(run, { maxBatchSize: 8, maxQueueDelayMs: 0, maxQueueSize: 16, now: () => Date.now(), ...o });
  const step = async (ms = 0): Promise<void> => {
    for (let i = 0; i < 10; i++) await Promise.resolve();
    mock.timers.tick(ms);
    for (let i = 0; i < 10; i++) await Promise.resolve();
  };
  return { b, runs, step };
}

test('admission: reserved samples count against the queue like waiting ones: two requests cannot both take the last room', (t) => {
  const { b } = setup(t, { maxQueueSize: 4 });
  const first = b.reserve({ key: '64x64', sampleCount: 3, cost: 4096 });
  assert.equal(b.reservedSamples, 3);
  assert.throws(() => b.reserve({ key: '64x64', sampleCount: 2, cost: 4096 }), (e: unknown) =>
    e instanceof QueueFullError && e.retryAfterSeconds >= 1 && /0 samples waiting and 3 reserved of its 4; this request needs 2/.test(e.message));
  const last = b.reserve({ key: '64x64', sampleCount: 1, cost: 4096 });
  assert.throws(() => b.reserve({ key: '32x32', sampleCount: 1 }), QueueFullError, 'the last room is taken');
  first.release();
  first.release(); // idempotent
  assert.equal(b.reservedSamples, 1);
  last.release();
  assert.equal(b.reservedSamples, 0);
});

test('admission: a ticket covers several keys and several submits; release returns only what was not submitted', async (t) => {
  const { b, runs, step } = setup(t, { maxQueueSize: 10 });
  // A tiled request: 4 full tiles and 2 edge tiles, reserved at once.
  const ticket = b.reserve([{ key: '16x16', sampleCount: 4, cost: 256 }, { key: '16x4', sampleCount: 2, cost: 64 }]);
  assert.equal(ticket.reservedSamples, 6);
  const a = ticket.submit('16x16', { id: 'a' }, 2);
  const c = ticket.submit('16x16', { id: 'c' }, 2);
  assert.equal(b.reservedSamples, 2, 'submitted samples move from reserved to waiting');
  assert.equal(b.waitingSamples, 4);
  await assert.rejects(ticket.submit('16x16', { id: 'x' }, 1), /the ticket holds 0 for it/, 'no more than reserved under a key');
  await assert.rejects(ticket.submit('8x8', { id: 'y' }, 1), /holds 0/);
  ticket.release();
  assert.equal(b.reservedSamples, 0, 'the edge tiles never submitted are given back');
  assert.equal(b.waitingSamples, 4, 'what was submitted stays queued');
  await assert.rejects(ticket.submit('16x4', { id: 'z' }, 1), /released ticket/);
  await step();
  runs[0]!.resolve('r');
  await Promise.all([a, c]);
  assert.equal(b.waitingSamples, 0);
});

test('admission: a request that can never fit is told so in its own words, and holds nothing', (t) => {
  const { b } = setup(t, { maxQueueSize: 64 });
  assert.throws(() => b.reserve({ key: '4x4', sampleCount: 100, cost: 16 }, { unit: 'tiles of 4 latents (1 latent of 40x40)', advice: 'use larger tiles' }),
    (e: unknown) => e instanceof BatchTooLargeError && e.message === '100 tiles of 4 latents (1 latent of 40x40) is more than the queue holds (64); use larger tiles');
  assert.throws(() => b.reserve({ key: 'k', sampleCount: 65 }), /65 samples is more than the queue holds \(64\); split the request/);
  assert.equal(b.reservedSamples, 0);
});

test('admission: replace resizes a reservation reusing its own room; room held without a key serves any key', async (t) => {
  const { b, runs, step } = setup(t, { maxQueueSize: 4 });
  // A body whose shape is inside it: one sample held until it is read.
  const ticket = b.reserve({ sampleCount: 1 });
  const other = b.reserve({ key: 'k', sampleCount: 2 });
  ticket.replace([{ key: '8x8', sampleCount: 2, cost: 64 }]);
  assert.equal(b.reservedSamples, 4, 'the full queue did not refuse room the ticket holds plus what is free');
  assert.throws(() => ticket.replace([{ key: '8x8', sampleCount: 3, cost: 64 }]), QueueFullError);
  assert.equal(ticket.reservedSamples, 2, 'a refused replace keeps what was held');
  other.release();
  const keyless = b.reserve({ sampleCount: 1 });
  const job = keyless.submit('16x16', { id: 'k' }, 1);
  assert.equal(keyless.reservedSamples, 0);
  ticket.release();
  keyless.release();
  assert.equal(b.reservedSamples, 0);
  await step();
  runs[0]!.resolve('r');
  await job;
});

test('admission: Batcher.submit is reserve + submit + release: nothing stays reserved, the rule is the same', async (t) => {
  const { b, runs, step } = setup(t, { maxQueueSize: 2 });
  const hold = b.reserve({ key: 'k', sampleCount: 1 });
  const one = b.submit('k', { id: 'a' }, 1);
  await assert.rejects(b.submit('k', { id: 'b' }, 1), QueueFullError, 'one waiting and one reserved fill a queue of 2');
  assert.equal(b.reservedSamples, 1);
  hold.release();
  await step();
  runs[0]!.resolve('r');
  await one;
});

test('estimate (finding 13): after one slow 8-batch that outlived its deadline, a lone request of that size still runs', async (t) => {
  const { b, runs, step } = setup(t, { maxBatchSize: 8, maxQueueSize: 64 });
  // REQUEST_TIMEOUT_MS=3000: an 8 x 64² request takes 5.7 s; its client gets 504 at 3 s (the route's timer).
  const timeout = new AbortController();
  const eight = b.submit('64x64', { id: 'eight' }, 8, { cost: 4096, deadline: Date.now() + 3000, signal: timeout.signal });
  await step();
  assert.equal(runs.length, 1);
  await step(3000);
  timeout.abort(new DeadlineError('the request did not finish before its deadline'));
  await assert.rejects(eight, DeadlineError);
  await step(2700);
  runs[0]!.resolve('late'); // the run ends at 5.7 s, measured
  await step();

  // A lone 1 x 64² request (its own run ~0.7 s) is run, not refused: old main refused it within 10 ms, every time.
  const lone = b.submit('64x64', { id: 'lone' }, 1, { cost: 4096, deadline: Date.now() + 3000 });
  await step();
  assert.equal(runs.length, 2, 'the lone request reached the runner');
  await step(700);
  runs[1]!.resolve('ok');
  assert.equal((await lone).parts[0]!.result, 'ok');

  // Another 8-batch alone cannot make 3 s on what was measured: refused, saying what was estimated.
  const again = b.submit('64x64', { id: 'again' }, 8, { cost: 4096, deadline: Date.now() + 3000 });
  await step();
  await assert.rejects(again, /3000 ms were left and a run of 8 samples of 64x64 takes at least \d+ ms \(a run of 8 samples took 5700 ms, measured \d+ ms ago\)/);
  assert.equal(runs.length, 2);

  // The measurement decays: two half-lives later (120 s) the bound is ~1.4 s and the 8-batch is tried again.
  await step(120_000);
  const retried = b.submit('64x64', { id: 'retried' }, 8, { cost: 4096, deadline: Date.now() + 3000 });
  await step();
  assert.equal(runs.length, 3, 'an old slow run no longer refuses work');
  runs[2]!.resolve('fine');
  await retried;
});

test('estimate: a request that would make a forming batch miss a member\'s deadline waits for the next run instead', async (t) => {
  const { b, runs, step } = setup(t, { maxBatchSize: 8, maxQueueSize: 64 });
  const warm = b.submit('k', { id: 'w' }, 8);
  await step();
  await step(800); // 8 samples: 800 ms; one sample's bound is 100 ms
  runs[0]!.resolve('r');
  await warm;
  const blocker = b.submit('k', { id: 'blocker' }, 1);
  await step();
  const urgent = b.submit('k', { id: 'urgent' }, 1, { deadline: Date.now() + 300 });
  const bulk = b.submit('k', { id: 'bulk' }, 7);
  await step(50);
  runs[1]!.resolve('r');
  await blocker;
  await step();
  assert.deepEqual(runs[2]!.batch.slices.map((s) => s.payload.id), ['urgent'], 'bulk would make the batch an 800 ms run: it waits');
  runs[2]!.resolve('r');
  await urgent;
  await step();
  assert.deepEqual(runs[3]!.batch.slices.map((s) => s.payload.id), ['bulk']);
  runs[3]!.resolve('r');
  await bulk;
});
