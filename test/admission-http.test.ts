// Admission over HTTP (issue 14, finding 5): a tiled request reserves every tile from its query
// string before its body is read, so it is refused before the upload or never refused after it;
// every way a request can end — answered, refused, aborted mid-upload, timed out, failed — gives
// its reservation back.
import assert from 'node:assert/strict';
import net from 'node:net';
import { test, type TestContext } from 'node:test';
import { planTiles } from '../src/tiling/plan.js';
import { loadFixture, startService, type TestService } from './helpers/service.js';

interface Upload {
  /** Resolves with the status line's code and the body, or null if the connection closed first. */
  answer: Promise<{ status: number; body: string } | null>;
  send(b: Buffer): void;
  destroy(): void;
}

/** A POST whose body is sent when the test says: the head and `first` go out now. */
function upload(t: TestContext, port: number, url: string, declared: number, first: Buffer, type = 'application/octet-stream'): Upload {
  const sock = net.connect(port, '127.0.0.1');
  t.after(() => sock.destroy()); // before the app closes: it waits for open connections
  let data = Buffer.alloc(0);
  const answer = new Promise<{ status: number; body: string } | null>((resolve) => {
    sock.on('data', (d: Buffer) => {
      data = Buffer.concat([data, d]);
      const end = data.indexOf('\r\n\r\n');
      if (end < 0) return;
      const len = Number(/content-length: (\d+)/i.exec(data.subarray(0, end).toString('latin1'))?.[1] ?? 0);
      if (data.length - end - 4 >= len) resolve({ status: Number(data.toString('latin1', 9, 12)), body: data.toString('utf8', end + 4, end + 4 + len) });
    });
    sock.on('close', () => resolve(null));
    sock.on('error', () => {});
  });
  sock.write(`POST ${url} HTTP/1.1\r\nHost: localhost\r\nContent-Type: ${type}\r\nContent-Length: ${declared}\r\n\r\n`);
  sock.write(first);
  return { answer, send: (b) => sock.write(b), destroy: () => sock.destroy() };
}

async function until(what: string, ok: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > end) throw new Error(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

async function listen(s: TestService): Promise<number> {
  await s.app.listen({ port: 0, host: '127.0.0.1' });
  return (s.app.server.address() as net.AddressInfo).port;
}

// 40x40 latents in tiles of 16 (stride 12): 4 x 4 = 16 tiles of 4 shapes.
const TILED = '/decode?shape=1,4,40,40&tile_size=16&tile_overlap=0.25&scaling_factor=1&output_type=pt&partial_postprocess=1';
const TILED_BYTES = 4 * 4 * 40 * 40;
const TILES = (() => {
  const g = planTiles(40, 40, 16, 0.25);
  return g.rows.length * g.cols.length;
})();

function latents(bytes: number): Buffer {
  const a = new Float32Array(bytes / 4);
  for (let i = 0; i < a.length; i++) a[i] = Math.sin(i * 0.37);
  return Buffer.from(a.buffer);
}

test('admission HTTP: a tiled request that cannot be queued is refused from its query string, before its body', async (t) => {
  const s = await startService(t, { MAX_QUEUE_SIZE: '20' });
  const port = await listen(s);
  const batcher = s.registry.get(undefined)!.batcher;
  const other = batcher.reserve({ key: '64x64', sampleCount: 5, cost: 4096 }); // another request's room
  t.after(() => other.release());
  assert.equal(TILES, 16);
  // 16 tiles do not fit in the 15 free: the answer comes with 1 KB of the body sent.
  const u = upload(t, port, TILED, TILED_BYTES, Buffer.alloc(1024));
  const a = await u.answer;
  u.destroy();
  assert.ok(a, 'answered before the body');
  assert.equal(a.status, 429, a.body);
  assert.match(a.body, /QUEUE_FULL.*5 reserved of its 20; this request needs 16/);
  assert.equal(batcher.reservedSamples, 5, 'the refused request holds nothing');
});

test('admission HTTP: a tiled request admitted before its body keeps its room: no 429 after the upload though the queue filled meanwhile', async (t) => {
  const s = await startService(t, { MAX_QUEUE_SIZE: '20' });
  const port = await listen(s);
  const batcher = s.registry.get(undefined)!.batcher;
  const body = latents(TILED_BYTES);
  const u = upload(t, port, TILED, TILED_BYTES, body.subarray(0, 1024));
  await until('the request holds its tiles', () => batcher.reservedSamples === TILES);
  // Another client takes all the room left while the first one uploads.
  const filler = batcher.reserve({ key: '8x8', sampleCount: 20 - TILES, cost: 64 });
  assert.throws(() => batcher.reserve({ key: '8x8', sampleCount: 1, cost: 64 }), /QueueFull|queue holds/);
  u.send(body.subarray(1024));
  const a = await u.answer;
  u.destroy();
  filler.release();
  assert.ok(a);
  assert.equal(a.status, 200, a.body);
  assert.equal(batcher.reservedSamples, 0);
  const tiles = s.batches.reduce((n, b) => n + b.sampleCount, 0);
  assert.equal(tiles, TILES, 'every tile ran');
});

test('admission HTTP: no reservation outlives its request: aborted upload, body timeout, bad latents, a JSON body', async (t) => {
  const s = await startService(t, { MAX_QUEUE_SIZE: '64', BODY_TIMEOUT_MS: '1000' });
  const port = await listen(s);
  const batcher = s.registry.get(undefined)!.batcher;

  // The client goes away mid-upload.
  const gone = upload(t, port, TILED, TILED_BYTES, Buffer.alloc(1024));
  await until('the upload holds its tiles', () => batcher.reservedSamples === TILES);
  gone.destroy();
  await until('an aborted upload gives its room back', () => batcher.reservedSamples === 0, 2000);

  // The client stalls: Node answers 408 after BODY_TIMEOUT_MS.
  const stalled = upload(t, port, TILED, TILED_BYTES, Buffer.alloc(1024));
  await until('the stalled upload holds its tiles', () => batcher.reservedSamples === TILES);
  const timedOut = await stalled.answer;
  stalled.destroy();
  assert.equal(timedOut?.status ?? 408, 408);
  await until('a timed-out upload gives its room back', () => batcher.reservedSamples === 0, 2000);

  // The body is read and refused: NaN latents are a 400 after admission.
  const nan = new Float32Array(4 * 16 * 16).fill(Number.NaN);
  const bad = await s.app.inject({ method: 'POST', url: '/decode?shape=1,4,16,16', payload: Buffer.from(nan.buffer) });
  assert.equal(bad.statusCode, 400, bad.body);
  assert.equal(batcher.reservedSamples, 0);

  // A JSON body reserves once its fields are read, through the same rule.
  const f = await loadFixture();
  const json = await s.app.inject({ method: 'POST', url: '/decode', headers: { 'content-type': 'application/json' }, payload: JSON.stringify({
    latents: Buffer.from(f.latents.buffer, 0, 4 * 4 * 16 * 16).toString('base64'), shape: [1, 4, 16, 16], scaling_factor: 1, output_type: 'pt',
  }) });
  assert.equal(json.statusCode, 200, json.body);
  assert.equal(batcher.reservedSamples, 0);
  assert.equal(batcher.waitingSamples, 0);
});

test('admission HTTP (finding 13): after one batch of 8 that took T, a lone request with a deadline under T still runs', async (t) => {
  const s = await startService(t, { MAX_BATCH_SIZE: '8', MAX_QUEUE_DELAY_MS: '0' });
  const url = (n: number): string => `/decode?shape=${n},4,8,8&scaling_factor=1&output_type=pt&partial_postprocess=1`;
  const eight = await s.app.inject({ method: 'POST', url: url(8), payload: latents(8 * 4 * 8 * 8 * 4) });
  assert.equal(eight.statusCode, 200, eight.body);
  assert.deepEqual(s.batches.map((b) => b.sampleCount), [8]);
  const t8 = s.batches[0]!.runMs;
  // Old main estimated "an 8x8 run takes T" whatever the batch and refused this within a millisecond.
  const deadline = Math.max(1, Math.round(t8 * 0.75));
  const lone = await s.app.inject({ method: 'POST', url: url(1), headers: { 'x-request-timeout-ms': String(deadline) }, payload: latents(4 * 8 * 8 * 4) });
  t.diagnostic(`8 samples ran in ${Math.round(t8)} ms; the lone request (deadline ${deadline} ms) got ${lone.statusCode} after a run of ${Math.round(s.batches[1]?.runMs ?? NaN)} ms`);
  assert.doesNotMatch(lone.body, /cannot finish before its deadline/);
  assert.deepEqual(s.batches.map((b) => b.sampleCount), [8, 1], 'the lone request reached the model');
});
