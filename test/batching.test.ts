// Dynamic batching against the real ORT session on the fixture decoder, through HTTP.
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { test } from 'node:test';
import { toFloat32 } from '../src/tensor/dtype.js';
import { fragileModel } from './helpers/models.js';
import { RGB, bytesOf, loadFixture, maxAbsDiff, sampleLatents, startService, tempDir, type TestService } from './helpers/service.js';

const U8 = 'output_type=pt&partial_postprocess=true&scaling_factor=1';

function decode(s: TestService, lat: Float32Array, shape: string, headers: Record<string, string> = {}) {
  return s.app.inject({ method: 'POST', url: `/decode?shape=${shape}&${U8}`, payload: bytesOf(lat), headers });
}

test('batching: 16 concurrent requests share runs and each gets its own image', async (t) => {
  const f = await loadFixture();
  const latents = Array.from({ length: 16 }, (_, k) => sampleLatents(f, k % 2, 1 + Math.floor(k / 2) * 0.05));
  // Each request alone first, as the reference for the batched answers.
  const single = await startService(t, { MAX_BATCH_SIZE: '1', MAX_QUEUE_DELAY_MS: '0' });
  const alone = await Promise.all(latents.map(async (l) => (await decode(single, l, '1,4,16,16')).rawPayload));

  const s = await startService(t, { MAX_BATCH_SIZE: '8', MAX_QUEUE_DELAY_MS: '50' });
  const res = await Promise.all(latents.map((l) => decode(s, l, '1,4,16,16')));
  for (let k = 0; k < 16; k++) {
    assert.equal(res[k]!.statusCode, 200, res[k]!.body);
    assert.ok(maxAbsDiff(res[k]!.rawPayload, alone[k]!) <= 1, `request ${k} got another request's image`);
  }
  // The unscaled ones are the fixture latents themselves: the golden references apply.
  assert.ok(maxAbsDiff(res[0]!.rawPayload, f.rgb.subarray(0, RGB)) <= 1);
  assert.ok(maxAbsDiff(res[1]!.rawPayload, f.rgb.subarray(RGB)) <= 1);
  assert.ok(maxAbsDiff(res[2]!.rawPayload, res[0]!.rawPayload) > 1, 'distinct latents give distinct images');
  const runs = s.batches.filter((b) => b.sampleCount > 0);
  t.diagnostic(`16 requests ran in ${runs.length} runs of ${runs.map((b) => b.sampleCount).join(', ')} samples`);
  assert.ok(runs.length < 16, `the model ran ${runs.length} times`);
  assert.equal(runs.reduce((a, b) => a + b.sampleCount, 0), 16);
});

test('batching: a request larger than MAX_BATCH_SIZE is split across runs and reassembled in order', async (t) => {
  const f = await loadFixture();
  const s = await startService(t, { MAX_BATCH_SIZE: '4', MAX_QUEUE_DELAY_MS: '0' });
  const n = 10;
  const all = new Float32Array(n * 4 * 16 * 16);
  for (let k = 0; k < n; k++) all.set(sampleLatents(f, k % 2, 1 + k * 0.03), k * 4 * 16 * 16);
  const res = await decode(s, all, `${n},4,16,16`);
  assert.equal(res.statusCode, 200, res.body);
  assert.equal(res.headers.shape, `[${n},128,128,3]`);
  assert.deepEqual(s.batches.map((b) => b.sampleCount), [4, 4, 2]);
  for (let k = 0; k < n; k++) {
    const one = await decode(s, all.slice(k * 1024, (k + 1) * 1024), '1,4,16,16');
    assert.ok(maxAbsDiff(res.rawPayload.subarray(k * RGB, (k + 1) * RGB), one.rawPayload) <= 1, `sample ${k} out of order`);
  }
  // The float output of a split request is reassembled too.
  const float = (lat: Float32Array, shape: string) => s.app.inject({ method: 'POST', url: `/decode?shape=${shape}&output_type=pt&scaling_factor=1`, payload: bytesOf(lat) });
  const all32 = toFloat32((await float(all, `${n},4,16,16`)).rawPayload, 'float32');
  for (const k of [0, 5, 9]) {
    const one = toFloat32((await float(all.slice(k * 1024, (k + 1) * 1024), '1,4,16,16')).rawPayload, 'float32');
    assert.ok(maxAbsDiff(all32.subarray(k * RGB, (k + 1) * RGB), one) <= 1e-5, `float sample ${k} out of order`);
  }
});

/** A real latent big enough that a run takes a while on this CPU (4x32x32 → 256x256). */
function bigLatent(seed: number): Float32Array {
  const a = new Float32Array(4 * 32 * 32);
  for (let i = 0; i < a.length; i++) a[i] = Math.sin(i * 0.37 + seed);
  return a;
}

/** Waits until one batch runs and `waiting` samples queue behind it (requests start in no fixed order). */
async function busyModel(s: TestService, waiting: number): Promise<void> {
  const b = s.registry.get(undefined)!.batcher;
  while (b.runningBatches !== 1 || b.waitingSamples !== waiting) await new Promise((r) => setTimeout(r, 2));
}

test('batching: past MAX_QUEUE_SIZE requests get 429 with Retry-After', async (t) => {
  const s = await startService(t, { MAX_BATCH_SIZE: '1', MAX_QUEUE_DELAY_MS: '0', MAX_QUEUE_SIZE: '2' });
  const res = await Promise.all(Array.from({ length: 8 }, (_, k) => decode(s, bigLatent(k), '1,4,32,32')));
  const codes = res.map((r) => r.statusCode);
  // All eight reach the batcher in one turn, before the first dispatch: two fit the queue.
  assert.deepEqual(codes, [200, 200, 429, 429, 429, 429, 429, 429]);
  const rejected = res.filter((r) => r.statusCode === 429);
  for (const r of rejected) {
    assert.equal((r.json() as { error: { code: string } }).error.code, 'QUEUE_FULL');
    assert.match(String(r.headers['retry-after']), /^[1-9]\d*$/);
  }
  assert.equal((await decode(s, bigLatent(9), '1,4,32,32')).statusCode, 200, 'served again once drained');
});

test('batching: a short deadline gives 504 and the request is dropped before its run', async (t) => {
  const s = await startService(t, { MAX_BATCH_SIZE: '1', MAX_QUEUE_DELAY_MS: '0' });
  const busy = [decode(s, bigLatent(1), '1,4,32,32'), decode(s, bigLatent(2), '1,4,32,32')];
  await busyModel(s, 1);
  const late = await decode(s, bigLatent(3), '1,4,32,32', { 'x-request-timeout-ms': '30' });
  assert.equal(late.statusCode, 504, late.body);
  assert.equal((late.json() as { error: { code: string } }).error.code, 'DEADLINE_EXCEEDED');
  await Promise.all(busy);
  assert.equal(s.batches.length, 2, 'only the two busy requests ran');
  const bad = await decode(s, bigLatent(4), '1,4,32,32', { 'x-request-timeout-ms': 'soon' });
  assert.equal(bad.statusCode, 400);
});

test('batching: a client that disconnects is removed from the queue and its work dropped', async (t) => {
  const s = await startService(t, { MAX_BATCH_SIZE: '1', MAX_QUEUE_DELAY_MS: '0' });
  await s.app.listen({ port: 0, host: '127.0.0.1' });
  const { port } = s.app.server.address() as AddressInfo;
  const busy = decode(s, bigLatent(1), '1,4,32,32');
  await busyModel(s, 0);
  const body = bytesOf(bigLatent(2));
  await new Promise<void>((resolve) => {
    const req = http.request({ host: '127.0.0.1', port, method: 'POST', path: `/decode?shape=1,4,32,32&${U8}`,
      headers: { 'content-type': 'application/octet-stream', 'content-length': body.length } });
    req.on('error', () => resolve());
    req.end(body, () => setTimeout(() => { req.destroy(); resolve(); }, 50));
  });
  await busy;
  await s.registry.idle();
  assert.equal(s.batches.length, 1, 'the disconnected request never ran');
  assert.equal(s.host.inflight, 0, 'and was settled');
  assert.equal((await decode(s, bigLatent(3), '1,4,32,32')).statusCode, 200);
});


test('batching: an ONNX Runtime failure fails only its batch, with a 500 naming the cause', async (t) => {
  const s = await startService(t, { MODEL_PATH: fragileModel(tempDir(t)), MAX_QUEUE_DELAY_MS: '0', WARMUP_LATENT_SIZES: '16x16' });
  const [bad, good] = await Promise.all([
    decode(s, new Float32Array(4 * 8 * 8), '1,4,8,8'),
    decode(s, new Float32Array(4 * 16 * 16), '1,4,16,16'),
  ]);
  assert.equal(bad.statusCode, 500);
  const err = (bad.json() as { error: { code: string; message: string } }).error;
  assert.equal(err.code, 'INFERENCE_FAILED');
  assert.match(err.message, /fragile.*1x4x8x8.*Reshape|reshape/i);
  assert.equal(good.statusCode, 200, good.body);
  assert.equal((await decode(s, new Float32Array(4 * 16 * 16), '1,4,16,16')).statusCode, 200, 'the loop keeps serving');
});

test('batching: a dead inference worker is restarted; /readyz is 503 meanwhile and a request sent then waits for it', async (t) => {
  const s = await startService(t, { MAX_BATCH_SIZE: '1', MAX_QUEUE_DELAY_MS: '0' });
  const worker = (s.registry.get(undefined)!.runners[0] as unknown as { worker: import('node:worker_threads').Worker }).worker;
  // A worker that dies between runs (a JavaScript-level crash; a native crash takes the process).
  await worker.terminate();
  assert.equal((await s.app.inject('/readyz')).statusCode, 503, 'not ready while the worker restarts');
  const during = await decode(s, bigLatent(1), '1,4,32,32');
  assert.equal(during.statusCode, 200, during.body);
  assert.equal((await s.app.inject('/readyz')).statusCode, 200, 'ready again');
  assert.notEqual((s.registry.get(undefined)!.runners[0] as unknown as { worker: unknown }).worker, worker, 'a new worker serves');
});
