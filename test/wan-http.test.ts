import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import sharp from 'sharp';
import { findFfmpeg } from '../src/video/ffmpeg.js';
import { bytesOf, startService } from './helpers/service.js';
import { FLOAT_TOLERANCE, maxAbs, npy, wanModels } from './helpers/wan.js';

const query = (o: Record<string, string | number | boolean>): string => new URLSearchParams(Object.entries(o).map(([k, v]) => [k, String(v)])).toString();

test('Wan video through POST /decode (both layouts converted; the SD fixture as the image model)', async (root) => {
  const svc = await startService(root, { MODELS_DIR: await wanModels(root), MAX_VIDEO_FRAMES: '6' });
  for (const model of ['wan-diffusers', 'wan-original']) {
    await root.test(`POST /decode: pipeline-space video latents to ${model} answer diffusers' reference (pt float and uint8)`, async (t) => {
      const { app } = svc;
      const lat = await npy('video-latents-pipeline.npy');
      const ref = await npy('video-reference.npy');
      const rgb = await npy('video-reference-rgb.npy');
      const float = await app.inject({ method: 'POST', url: `/decode?${query({ model, shape: lat.shape.join(','), output_type: 'pt' })}`, payload: bytesOf(lat.data as Float32Array) });
      assert.equal(float.statusCode, 200, float.body);
      assert.deepEqual(JSON.parse(float.headers.shape as string), [1, 3, 9, 64, 64]);
      const got = new Float32Array(float.rawPayload.buffer.slice(float.rawPayload.byteOffset, float.rawPayload.byteOffset + float.rawPayload.byteLength));
      const err = maxAbs(got, ref.data);
      t.diagnostic(`max abs error ${err.toExponential(2)}`);
      assert.ok(err <= FLOAT_TOLERANCE, `float error ${err}`);
      const u8 = await app.inject({ method: 'POST', url: `/decode?${query({ model, shape: lat.shape.join(','), output_type: 'pt', partial_postprocess: true })}`, payload: bytesOf(lat.data as Float32Array) });
      assert.equal(u8.statusCode, 200, u8.body);
      assert.deepEqual(JSON.parse(u8.headers.shape as string), [1, 9, 64, 64, 3]);
      assert.ok(maxAbs(u8.rawPayload, rgb.data) <= 1);
    });
  }

  await root.test('POST /decode: a batch of 2 non-square videos in decoder space (do_scaling=false, .npy body) → one animated WebP each', async () => {
    const { app } = svc;
    const lat = await npy('batch-latents-decoder.npy');
    const rgb = await npy('batch-reference-rgb.npy');
    const { encodeNpy } = await import('../src/tensor/npy.js');
    const res = await app.inject({ method: 'POST', url: `/decode?${query({ model: 'wan-original', do_scaling: false, format: 'webp', quality: 100 })}`, headers: { 'content-type': 'application/x-npy' }, payload: encodeNpy(lat) });
    assert.equal(res.statusCode, 200, res.body);
    const { videos } = res.json<{ videos: { contentType: string; data: string }[] }>();
    assert.equal(videos.length, 2);
    for (const v of videos) {
      assert.equal(v.contentType, 'image/webp');
      const img = sharp(Buffer.from(v.data, 'base64'), { pages: -1 });
      const meta = await img.metadata();
      assert.deepEqual([meta.pages, meta.width, meta.pageHeight], [5, 96, 64]);
      assert.deepEqual(meta.delay, [63, 63, 63, 63, 63], '16 fps');
    }
    // the pt answer of the same batch matches the RGB reference exactly (±1)
    const pt = await app.inject({ method: 'POST', url: `/decode?${query({ model: 'wan-original', do_scaling: false, output_type: 'pt', partial_postprocess: true })}`, headers: { 'content-type': 'application/x-npy' }, payload: encodeNpy(lat) });
    assert.deepEqual(JSON.parse(pt.headers.shape as string), [2, 5, 64, 96, 3]);
    assert.ok(maxAbs(pt.rawPayload, rgb.data) <= 1);
  });

  await root.test('GET /v1/models says which models are video decoders and their normalisation', async () => {
    const { models } = (await svc.app.inject('/v1/models')).json<{ models: { name: string; kind: string; family: string | null; latentsStd?: number[] }[] }>();
    const byName = new Map(models.map((m) => [m.name, m]));
    assert.equal(byName.get('wan-original')!.kind, 'video');
    assert.equal(byName.get('wan-original')!.family, 'qwen-image');
    assert.equal(byName.get('wan-diffusers')!.latentsStd!.length, 16);
    assert.equal(byName.get('torch-export')!.kind, 'image');
  });

  await root.test('POST /decode: a JSON body (base64 latents, options as fields) with a 5-D shape decodes the video', async () => {
    const { app } = svc;
    const lat = await npy('video-latents-pipeline.npy');
    const ref = await npy('video-reference.npy');
    const res = await app.inject({ method: 'POST', url: '/decode', payload: { model: 'wan-original', latents: bytesOf(lat.data as Float32Array).toString('base64'), shape: lat.shape, output_type: 'pt' } });
    assert.equal(res.statusCode, 200, res.body);
    const got = new Float32Array(res.rawPayload.buffer.slice(res.rawPayload.byteOffset, res.rawPayload.byteOffset + res.rawPayload.byteLength));
    assert.ok(maxAbs(got, ref.data) <= FLOAT_TOLERANCE);
  });

  await root.test('POST /decode: one frame (4-D body, and Qwen-Image packed [N, seq, 64]) to a Wan model answers an image like any decoder', async () => {
    const { app } = svc;
    const lat = await npy('image-latents-pipeline.npy'); // [1, 16, 1, 8, 8]
    const rgb = await npy('image-reference-rgb.npy');
    const png = await app.inject({ method: 'POST', url: `/decode?${query({ model: 'wan-diffusers', shape: '1,16,8,8' })}`, payload: bytesOf(lat.data as Float32Array) });
    assert.equal(png.statusCode, 200, png.body);
    assert.equal(png.headers['content-type'], 'image/png');
    const px = await sharp(png.rawPayload).raw().toBuffer({ resolveWithObject: true });
    assert.deepEqual([px.info.width, px.info.height], [64, 64]);
    assert.ok(maxAbs(px.data, rgb.data) <= 1);
    // diffusers' _pack_latents: [B, C, H/2, 2, W/2, 2] → [B, (H/2)(W/2), 4C]
    const src = lat.data as Float32Array;
    const packed = new Float32Array(src.length);
    let i = 0;
    for (let py = 0; py < 4; py++) for (let px2 = 0; px2 < 4; px2++) for (let c = 0; c < 16; c++) for (let k = 0; k < 4; k++) packed[i++] = src[c * 64 + (2 * py + (k >> 1)) * 8 + 2 * px2 + (k & 1)]!;
    const q = await app.inject({ method: 'POST', url: `/decode?${query({ model: 'wan-original', shape: '1,16,64', height: 64, width: 64, output_type: 'pt', partial_postprocess: true })}`, payload: bytesOf(packed) });
    assert.equal(q.statusCode, 200, q.body);
    assert.deepEqual(JSON.parse(q.headers.shape as string), [1, 64, 64, 3]);
    assert.ok(maxAbs(q.rawPayload, rgb.data) <= 1);
  });

  await root.test('POST /decode video bad input: image model, channels, MAX_VIDEO_FRAMES (413 before the body), formats, stream', async () => {
    const { app } = svc;
    const post = (q: Record<string, string | number | boolean>, payload: Buffer = Buffer.alloc(16 * 3 * 64 * 4)) => app.inject({ method: 'POST', url: `/decode?${query(q)}`, payload });
    let r = await post({ model: 'torch-export', shape: '1,4,3,8,8' }, Buffer.alloc(4 * 3 * 64 * 4));
    assert.equal(r.statusCode, 400);
    assert.match(r.json<{ error: { message: string } }>().error.message, /model torch-export is an image decoder.*\[N, C, T, h, w\]/);
    r = await post({ model: 'wan-diffusers', shape: '1,4,3,8,8' }, Buffer.alloc(4 * 3 * 64 * 4));
    assert.equal(r.json<{ error: { code: string } }>().error.code, 'CHANNEL_MISMATCH');
    assert.match(r.body, /4 channels but model wan-diffusers takes 16/);
    r = await post({ model: 'wan-diffusers', shape: '1,4,8,8' }, Buffer.alloc(4 * 64 * 4));
    assert.match(r.body, /model wan-diffusers is a video decoder \(wan2\.1\): it takes \[N, 16, T, h, w\]/);
    // 413 from the query alone: the body is never read (content-length announces 10 MB, none is sent)
    r = await app.inject({ method: 'POST', url: `/decode?${query({ model: 'wan-diffusers', shape: '1,16,7,8,8' })}`, headers: { 'content-length': '10000000' }, payload: Buffer.alloc(0) });
    assert.equal(r.statusCode, 413);
    assert.equal(r.json<{ error: { code: string } }>().error.code, 'VIDEO_TOO_LONG');
    r = await post({ model: 'wan-diffusers', shape: '1,16,3,8,8', format: 'avi' }, Buffer.alloc(16 * 3 * 64 * 4));
    assert.equal(r.statusCode, 400);
    assert.match(r.body, /format \\"avi\\" is not supported by a video model: use mp4, webm, webp, gif, png, jpeg/);
    r = await post({ model: 'torch-export', shape: '1,4,8,8', format: 'mp4' }, Buffer.alloc(4 * 64 * 4));
    assert.match(r.body, /use png, jpeg \(jpg\) or webp/);
    r = await post({ model: 'wan-diffusers', shape: '1,16,3,8,8', format: 'gif', stream: true }, Buffer.alloc(16 * 3 * 64 * 4));
    assert.match(r.body, /stream=true sends one video .* not gif/);
    r = await post({ model: 'wan-diffusers', shape: '1,16,3,8,8', scaling_factor: 0.5 }, Buffer.alloc(16 * 3 * 64 * 4));
    assert.match(r.body, /de-normalises each channel/);
  });

  await root.test('POST /decode: per-frame PNGs as JSON; mp4 via ffmpeg (frame count, size, PSNR vs the reference)', async (t) => {
    const { app } = svc;
    const lat = await npy('video-latents-pipeline.npy');
    const rgb = (await npy('video-reference-rgb.npy')).data as Uint8Array;
    const json = await app.inject({ method: 'POST', url: `/decode?${query({ model: 'wan-diffusers', shape: lat.shape.join(','), format: 'png' })}`, payload: bytesOf(lat.data as Float32Array) });
    const { frames, fps } = json.json<{ fps: number; frames: { contentType: string; data: string }[] }>();
    assert.equal(fps, 16);
    assert.equal(frames.length, 9);
    const last = await sharp(Buffer.from(frames[8]!.data, 'base64')).raw().toBuffer();
    assert.ok(maxAbs(last, rgb.subarray(8 * 64 * 64 * 3)) <= 1);
    const bin = findFfmpeg();
    if (!bin) return t.skip('no ffmpeg (npm i @ffmpeg-installer/ffmpeg)');
    // exactly what diffusers' remote_decode(tensor, output_type="mp4") sends (utils/remote_utils.py prepare())
    const remote = `image_format=jpg&output_type=mp4&partial_postprocess=False&${lat.shape.map((d) => `shape=${d}`).join('&')}&dtype=float32&do_scaling=True`;
    const mp4 = await app.inject({ method: 'POST', url: `/decode?model=wan-diffusers&${remote}`, payload: bytesOf(lat.data as Float32Array) });
    assert.equal(mp4.statusCode, 200, mp4.body);
    assert.equal(mp4.headers['content-type'], 'video/mp4');
    // decode it back with the same ffmpeg: 9 frames of 64×64 RGB
    const back = spawnSync(bin, ['-v', 'error', '-i', 'pipe:0', '-f', 'rawvideo', '-pix_fmt', 'rgb24', 'pipe:1'], { input: mp4.rawPayload, maxBuffer: 1 << 24 });
    assert.equal(back.status, 0, back.stderr.toString());
    assert.equal(back.stdout.length, 9 * 64 * 64 * 3, 'frame count × size');
    let se = 0;
    for (let i = 0; i < rgb.length; i++) se += (back.stdout[i]! - rgb[i]!) ** 2;
    const psnr = 10 * Math.log10(255 ** 2 / (se / rgb.length));
    t.diagnostic(`mp4 PSNR vs the reference ${psnr.toFixed(1)} dB`);
    // The fixture's seeded-random decoder draws high-frequency colour: yuv420p's chroma subsampling
  // alone costs it most of this (even at CRF 0 the round trip is 23.7 dB; on natural frames, ~40)
  assert.ok(psnr > 20, `PSNR ${psnr}`);
  });
});

test('without ffmpeg, mp4 is 501 FFMPEG_UNAVAILABLE naming the fixes (from the query, before the body), and webp still works', async (t) => {
  const { app } = await startService(t, { MODEL_PATH: '', MODELS_DIR: await wanModels(t), FFMPEG_PATH: '/nonexistent/ffmpeg' });
  const lat = await npy('video-latents-pipeline.npy');
  const url = (format: string): string => `/decode?${query({ model: 'wan-diffusers', shape: lat.shape.join(','), format })}`;
  const mp4 = await app.inject({ method: 'POST', url: url('mp4'), payload: bytesOf(lat.data as Float32Array) });
  assert.equal(mp4.statusCode, 501);
  const { error } = mp4.json<{ error: { code: string; message: string } }>();
  assert.equal(error.code, 'FFMPEG_UNAVAILABLE');
  assert.match(error.message, /FFMPEG_PATH=\/nonexistent\/ffmpeg.*@ffmpeg-installer\/ffmpeg.*apt-get install ffmpeg.*webp, gif, png, jpeg/);
  const webp = await app.inject({ method: 'POST', url: url('webp'), payload: bytesOf(lat.data as Float32Array) });
  assert.equal(webp.statusCode, 200);
  assert.equal(webp.headers['content-type'], 'image/webp');
});

test('video admission: a video reserves its T steps before its latents are read (413 over the queue, 429 when they do not fit), gives them back, and is counted once', async (t) => {
  const { app } = await startService(t, { MODEL_PATH: '', MODELS_DIR: await wanModels(t), MAX_QUEUE_SIZE: '4' });
  const model = app.models.registry!.get('wan-diffusers')!;
  const lat = await npy('video-latents-pipeline.npy'); // [1, 16, 3, 8, 8]
  const body = bytesOf(lat.data as Float32Array);
  const url = (shape: string): string => `/decode?${query({ model: 'wan-diffusers', shape, output_type: 'pt' })}`;
  const code = (r: { json: <T>() => T }): string => r.json<{ error: { code: string } }>().error.code;
  // 5 steps can never fit a queue of 4: 413 from the query string, the announced body never read
  let r = await app.inject({ method: 'POST', url: url('1,16,5,8,8'), headers: { 'content-length': String(16 * 5 * 64 * 4) }, payload: Buffer.alloc(0) });
  assert.equal(r.statusCode, 413, r.body);
  assert.equal(code(r), 'BATCH_TOO_LARGE');
  assert.match(r.body, /5 latent frames of 1x8x8 \(one queue entry each\) is more than the queue holds \(4\)/);
  // another request holds 2 of the 4 entries: 3 steps do not fit (429 with Retry-After, before the
  // body for a raw body, after its fields for JSON), 2 do
  const held = model.batcher.reserve({ sampleCount: 2 });
  try {
    r = await app.inject({ method: 'POST', url: url('1,16,3,8,8'), headers: { 'content-length': String(body.byteLength) }, payload: Buffer.alloc(0) });
    assert.equal(r.statusCode, 429, r.body);
    assert.equal(code(r), 'QUEUE_FULL');
    assert.ok(Number(r.headers['retry-after']) >= 1);
    const json = { latents: Buffer.from(body).toString('base64'), shape: lat.shape, model: 'wan-diffusers', output_type: 'pt' };
    r = await app.inject({ method: 'POST', url: '/decode', payload: json });
    assert.equal(r.statusCode, 429, r.body);
    const two = Buffer.from(body.subarray(0, 16 * 2 * 64 * 4)); // frames 0..1 of each channel are not contiguous: any values do
    r = await app.inject({ method: 'POST', url: url('1,16,2,8,8'), payload: two });
    assert.equal(r.statusCode, 200, r.body);
    assert.deepEqual(JSON.parse(r.headers.shape as string), [1, 3, 5, 64, 64]);
  } finally {
    held.release();
  }
  r = await app.inject({ method: 'POST', url: url('1,16,3,8,8'), payload: body });
  assert.equal(r.statusCode, 200, r.body);
  assert.equal(model.batcher.reservedSamples, 0, 'every step submitted or given back');
  assert.equal(model.batcher.waitingSamples, 0);
  const metrics = (await app.inject({ method: 'GET', url: '/metrics' })).body;
  const count = (outcome: string): number => Number(new RegExp(`^latent_decoder_requests_total\\{[^}]*model="wan-diffusers"[^}]*outcome="${outcome}"[^}]*\\} (\\d+)$`, 'm').exec(metrics)?.[1] ?? 0);
  assert.deepEqual([count('ok'), count('rejected'), count('bad_request')], [2, 2, 1]);
});
