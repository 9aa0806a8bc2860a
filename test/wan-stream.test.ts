import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { spawnSync } from 'node:child_process';
import sharp from 'sharp';
import { findFfmpeg } from '../src/video/ffmpeg.js';
import { bytesOf, startService } from './helpers/service.js';
import { npy, wanModels } from './helpers/wan.js';

const T = 6;
const MODEL = 'wan-diffusers';

/** The fixture video's 3 latent frames, repeated to T: [1, 16, T, 8, 8]. */
async function longVideo(): Promise<Buffer> {
  const lat = (await npy('video-latents-pipeline.npy')).data as Float32Array;
  const out = new Float32Array(16 * T * 64);
  for (let c = 0; c < 16; c++) for (let t = 0; t < T; t++) out.set(lat.subarray((c * 3 + (t % 3)) * 64, (c * 3 + (t % 3) + 1) * 64), (c * T + t) * 64);
  return bytesOf(out);
}

test('stream=true, fairness, disconnects: a long video through a real socket', async (root) => {
  const svc = await startService(root, { MODEL_PATH: '', MODELS_DIR: await wanModels(root), MAX_VIDEO_FRAMES: String(T) });
  await svc.app.listen({ host: '127.0.0.1', port: 0 });
  const port = (svc.app.server.address() as AddressInfo).port;
  const body = await longVideo();
  const steps = (): number => svc.batches.filter((b) => b.model === MODEL && b.key.startsWith('video:')).length;
  const post = (q: string, data: Buffer): http.ClientRequest => {
    const req = http.request({ host: '127.0.0.1', port, method: 'POST', path: `/decode?model=${MODEL}&${q}`, headers: { 'content-type': 'application/octet-stream', 'content-length': data.length } });
    req.end(data);
    return req;
  };

  await root.test('png frames arrive as multipart parts, the first before the last step has run', async (t) => {
    const before = steps();
    const res = await new Promise<http.IncomingMessage>((resolve) => post(`shape=1,16,${T},8,8&format=png&stream=true`, body).once('response', resolve));
    assert.equal(res.statusCode, 200);
    const boundary = /boundary=(\S+)/.exec(res.headers['content-type']!)![1]!;
    const chunks: Buffer[] = [];
    let stepsAtFirstByte = -1;
    for await (const c of res) {
      if (stepsAtFirstByte < 0) stepsAtFirstByte = steps() - before;
      chunks.push(c as Buffer);
    }
    t.diagnostic(`steps done when the first byte arrived: ${stepsAtFirstByte} of ${T}`);
    assert.ok(stepsAtFirstByte >= 1 && stepsAtFirstByte < T, `first byte after ${stepsAtFirstByte} steps`);
    const all = Buffer.concat(chunks).toString('latin1');
    assert.ok(all.endsWith(`--${boundary}--\r\n`), 'the closing boundary marks a complete answer');
    const parts = all.split(`--${boundary}`).slice(1, -1);
    assert.equal(parts.length, 1 + 4 * (T - 1));
    const png = Buffer.from(parts[20]!.slice(parts[20]!.indexOf('\r\n\r\n') + 4, -2), 'latin1');
    const meta = await sharp(png).metadata();
    assert.deepEqual([meta.format, meta.width, meta.height], ['png', 64, 64]);
  });

  await root.test('mp4: a fragmented MP4 whose first fragments arrive before the last step has run', async (t) => {
    const bin = findFfmpeg();
    if (!bin) return t.skip('no ffmpeg');
    const before = steps();
    const res = await new Promise<http.IncomingMessage>((resolve) => post(`shape=1,16,${T},8,8&format=mp4&fps=4&stream=true`, body).once('response', resolve));
    assert.equal(res.headers['content-type'], 'video/mp4');
    const chunks: Buffer[] = [];
    let stepsAtMedia = -1;
    for await (const c of res) {
      chunks.push(c as Buffer);
      if (stepsAtMedia < 0 && Buffer.concat(chunks).includes('mdat')) stepsAtMedia = steps() - before;
    }
    t.diagnostic(`steps done when the first media fragment arrived: ${stepsAtMedia} of ${T}`);
    assert.ok(stepsAtMedia >= 1 && stepsAtMedia < T);
    const back = spawnSync(bin, ['-v', 'error', '-i', 'pipe:0', '-f', 'rawvideo', '-pix_fmt', 'rgb24', 'pipe:1'], { input: Buffer.concat(chunks), maxBuffer: 1 << 24 });
    assert.equal(back.stdout.length, (1 + 4 * (T - 1)) * 64 * 64 * 3, 'every frame is in the stream');
  });

  await root.test('a one-frame request to the same model is answered before a long video finishes (one step at a time)', async () => {
    const order: string[] = [];
    const video = new Promise<void>((resolve) => post(`shape=1,16,${T},8,8&output_type=pt`, body).once('response', (res) => { res.resume(); res.once('end', () => { order.push('video'); resolve(); }); }));
    const start = steps();
    while (steps() === start) await new Promise((r) => setTimeout(r, 2)); // the video's first step has run
    const image = new Promise<void>((resolve) => post('shape=1,16,8,8&format=png', body.subarray(0, 16 * 64 * 4)).once('response', (res) => { res.resume(); res.once('end', () => { order.push('image'); resolve(); }); }));
    await Promise.all([video, image]);
    assert.deepEqual(order, ['image', 'video']);
  });

  for (const format of ['png', 'mp4']) await root.test(`${format}: a deadline that passes after the first byte resets the connection: no silently short video`, async (t) => {
    if (format === 'mp4' && !findFfmpeg()) return t.skip('no ffmpeg');
    const runs = svc.batches.filter((b) => b.model === MODEL && b.key.startsWith('video:')).map((b) => b.runMs).sort((a, b) => a - b);
    const stepMs = runs[Math.floor(runs.length / 2)]!; // the median step: the deadline falls after step 0 (ffmpeg starting included), before step 5
    const timeout = Math.round(stepMs * 3.5);
    const req = http.request({ host: '127.0.0.1', port, method: 'POST', path: `/decode?model=${MODEL}&shape=1,16,${T},8,8&format=${format}&stream=true`,
      headers: { 'content-type': 'application/octet-stream', 'content-length': body.length, 'x-request-timeout-ms': String(timeout) } });
    req.end(body);
    // a reset before ffmpeg's first byte reaches the socket is seen as a request error, no status
    const seen = await new Promise<{ status?: number; outcome: string; bytes: number }>((resolve) => {
      req.once('error', () => resolve({ outcome: 'reset before the status', bytes: 0 }));
      req.once('response', (res) => {
        const chunks: Buffer[] = [];
        const done = (outcome: string) => () => resolve({ status: res.statusCode, outcome, bytes: Buffer.concat(chunks).length, ...(format === 'png' ? { closed: Buffer.concat(chunks).toString('latin1').trimEnd().endsWith('--') } : {}) });
        res.on('data', (c: Buffer) => chunks.push(c));
        res.once('end', done('end'));
        res.once('aborted', done('aborted'));
        res.once('error', done('error'));
      });
    });
    t.diagnostic(`median step ${stepMs.toFixed(0)} ms, deadline ${timeout} ms: ${JSON.stringify(seen)}, ${steps()} steps in all`);
    assert.notEqual(seen.outcome, 'end', 'the answer must not end normally');
    assert.ok(seen.status === undefined || seen.status === 200, 'the deadline passes after the first step');
    assert.ok(!('closed' in seen) || seen.closed === false, 'no closing boundary');
  });

  await root.test('a client that disconnects mid-stream stops the video at the next step', async () => {
    const before = steps();
    await new Promise<void>((resolve) => {
      const req = post(`shape=1,16,${T},8,8&format=jpeg&stream=true`, body);
      req.once('response', (res) => res.once('data', () => { req.destroy(); resolve(); }));
    });
    await new Promise((r) => setTimeout(r, 500));
    const ran = steps() - before;
    assert.ok(ran < T, `${ran} of ${T} steps ran`);
  });
});
