// POST /encode through the real service: the fixture SD VAE (decoder and encoder converted from
// one LDM checkpoint) and an encode-only TAESD, real sharp, real ONNX Runtime, against diffusers'
// references (test/fixtures/encode).
import { after, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import sharp from 'sharp';
import { convertCheckpoint } from '../src/convert/convert.js';
import { encodeNpy, parseNpy } from '../src/tensor/npy.js';
import { encodeFixture, imageTensor, maxAbs, npy } from './helpers/encode-fixtures.js';
import { bytesOf, REPO, startService, tempDir } from './helpers/service.js';

// One service for the file (converting and loading three models costs seconds): closed after the last test.
const cleanups: (() => unknown)[] = [];
const fileScope = { after: (fn: () => unknown) => cleanups.push(fn) } as unknown as TestContext;
after(async () => {
  for (const fn of cleanups.reverse()) await fn();
});
let shared: ReturnType<typeof startService> | undefined;
function service(_t: TestContext): ReturnType<typeof startService> {
  shared ??= (async () => {
    const dir = tempDir(fileScope);
    await convertCheckpoint({ weights: encodeFixture('sd-ldm.safetensors'), out: join(dir, 'sd', 'model.onnx') });
    await convertCheckpoint({ weights: encodeFixture('taesd-encoder-original.safetensors'), out: join(dir, 'taesd', 'model.onnx') });
    return startService(fileScope, { MODEL_PATH: '', MODELS_DIR: dir, MAX_IMAGE_PIXELS: '10000' });
  })();
  return shared;
}

type ErrorBody = { error: { code: string; message: string } };

const png = (size: string): Promise<Buffer> => readFile(encodeFixture(`image-${size}.png`));
const f32 = (body: Buffer): Float32Array => new Float32Array(body.buffer.slice(body.byteOffset, body.byteOffset + body.byteLength));

test('a PNG with no Content-Type (as remote_encode sends it) encodes to the scaled posterior mean; do_scaling=false, .npy and JSON answers', async (t) => {
  const { app } = await service(t);
  const res = await app.inject({ method: 'POST', url: '/encode', payload: await png('96x64') });
  assert.equal(res.statusCode, 200, res.body);
  assert.equal(res.headers['content-type'], 'application/octet-stream');
  assert.deepEqual([JSON.parse(res.headers.shape as string), res.headers.dtype], [[1, 4, 8, 12], 'float32']);
  assert.match(res.headers['server-timing'] as string, /parse;dur=.*queue;dur=.*infer;dur=.*encode;dur=.*total;dur=/);
  const scaled = maxAbs(f32(res.rawPayload), await npy('sd-96x64-scaled.npy'));
  t.diagnostic(`scaled: max |Δ| ${scaled.toExponential(2)}`);
  assert.ok(scaled <= 0.0005, `scaled latents differ by ${scaled}`);

  const raw = await app.inject({ method: 'POST', url: '/encode?do_scaling=false', headers: { accept: 'application/x-npy' }, payload: await png('96x64') });
  assert.equal(raw.headers['content-type'], 'application/x-npy');
  const arr = parseNpy(raw.rawPayload);
  assert.deepEqual(arr.shape, [1, 4, 8, 12]);
  assert.ok(maxAbs(arr.data, await npy('sd-96x64-mean.npy')) <= 0.002);

  const js = await app.inject({ method: 'POST', url: '/encode?output_dtype=float16', headers: { accept: 'application/json', 'content-type': 'image/png' }, payload: await png('64x64') });
  const body = js.json<{ latents: string; shape: number[]; dtype: string }>();
  assert.deepEqual([body.shape, body.dtype], [[1, 4, 8, 8], 'float16']);
  assert.equal(Buffer.from(body.latents, 'base64').length, 4 * 8 * 8 * 2);
});

test('a tensor body (raw with shape and dtype, as remote_encode sends a torch tensor) gives what the image gives; nhwc and FLUX packing reorder it', async (t) => {
  const { app } = await service(t);
  const img = await imageTensor('image-96x64.png');
  const fromTensor = await app.inject({ method: 'POST', url: '/encode?shape=1&shape=3&shape=64&shape=96&dtype=float32&scaling_factor=0.18215', payload: bytesOf(img.data) });
  assert.equal(fromTensor.statusCode, 200, fromTensor.body);
  const nchw = f32(fromTensor.rawPayload);
  assert.ok(maxAbs(nchw, await npy('sd-96x64-scaled.npy')) <= 0.0005);
  // two images in one request: one batch, the answer in request order
  const two = new Float32Array(2 * img.data.length);
  two.set(img.data.map((v) => -v));
  two.set(img.data, img.data.length);
  const pair = await app.inject({ method: 'POST', url: '/encode?shape=2,3,64,96&scaling_factor=0.18215', payload: bytesOf(two) });
  assert.deepEqual(JSON.parse(pair.headers.shape as string), [2, 4, 8, 12]);
  assert.ok(maxAbs(f32(pair.rawPayload).subarray(nchw.length), nchw) < 1e-5, 'the second image encodes as it does alone');
  assert.ok(maxAbs(f32(pair.rawPayload).subarray(0, nchw.length), nchw) > 0.1, 'the negated image encodes to other latents');

  const nhwc = await app.inject({ method: 'POST', url: '/encode?layout=nhwc', payload: await png('96x64') });
  assert.deepEqual(JSON.parse(nhwc.headers.shape as string), [1, 8, 12, 4]);
  const v = f32(nhwc.rawPayload);
  assert.equal(v[(3 * 12 + 5) * 4 + 2], nchw[(2 * 8 + 3) * 12 + 5]);

  const packed = await app.inject({ method: 'POST', url: '/encode?pack=true', payload: await png('96x64') });
  assert.deepEqual([JSON.parse(packed.headers.shape as string), packed.headers.height, packed.headers.width], [[1, 24, 16], '64', '96']);
  const p = f32(packed.rawPayload);
  // token (py, px) = (1, 2), feature c·4 + dy·2 + dx = 2·4 + 1·2 + 0: latent (c 2, y 3, x 4)
  assert.equal(p[(1 * 6 + 2) * 16 + 2 * 4 + 2], nchw[(2 * 8 + 3) * 12 + 4]);
});

test('TAESD (an encode-only model) and sample_mode=sample (seeded: repeatable, mean + std·ε)', async (t) => {
  const { app } = await service(t);
  const res = await app.inject({ method: 'POST', url: '/encode?model=taesd', payload: await png('64x64') });
  assert.equal(res.statusCode, 200, res.body);
  const d = maxAbs(f32(res.rawPayload), await npy('taesd-64x64-latents.npy'));
  t.diagnostic(`TAESD: max |Δ| ${d.toExponential(2)}`);
  assert.ok(d <= 0.0001);

  const url = '/encode?sample_mode=sample&seed=7&do_scaling=false';
  const [a, b, c] = await Promise.all([url, url, url.replace('seed=7', 'seed=8')].map(async (u) => f32((await app.inject({ method: 'POST', url: u, payload: await png('96x64') })).rawPayload)));
  assert.deepEqual(a, b, 'the same seed gives the same sample');
  assert.notDeepEqual(a, c);
  const mean = await npy('sd-96x64-mean.npy');
  const std = await npy('sd-96x64-std.npy');
  const z = Array.from(a!, (x, i) => (x - mean[i]!) / std[i]!);
  const m = z.reduce((s, x) => s + x, 0) / z.length;
  const sd = Math.sqrt(z.reduce((s, x) => s + (x - m) ** 2, 0) / z.length);
  t.diagnostic(`ε: mean ${m.toFixed(3)}, sd ${sd.toFixed(3)} over ${z.length}`);
  assert.ok(Math.abs(m) < 0.25 && sd > 0.75 && sd < 1.25, `ε looks wrong: mean ${m}, sd ${sd}`);
});

test('/encode then /decode round-trips to diffusers\' vae.decode(mean) within a level; /v1/models lists the directions', async (t) => {
  const { app } = await service(t);
  const enc = await app.inject({ method: 'POST', url: '/encode?model=sd', payload: await png('64x64') });
  const dec = await app.inject({ method: 'POST', url: '/decode?model=sd&shape=1,4,8,8&output_type=pt&partial_postprocess=true', payload: enc.rawPayload });
  assert.equal(dec.statusCode, 200, dec.body);
  const ref = (parseNpy(await readFile(encodeFixture('sd-64x64-roundtrip-rgb.npy')))).data as Uint8Array;
  const diff = maxAbs(dec.rawPayload, ref);
  t.diagnostic(`round trip: max ${diff} level(s)`);
  assert.ok(diff <= 1);
  const models = (await app.inject({ url: '/v1/models' })).json<{ models: { name: string; directions: string[] }[] }>();
  assert.deepEqual(models.models.map((m) => [m.name, m.directions]), [['sd15-preview', ['decode']], ['sd', ['decode', 'encode']], ['taesd', ['encode']]]);
  const metrics = (await app.inject({ url: '/metrics' })).body;
  assert.match(metrics, /latent_decoder_requests_total\{model="sd",direction="encode",outcome="ok"\} [1-9]/);
  assert.match(metrics, /latent_decoder_batches_total\{model="sd",direction="encode"\} [1-9]/);
  assert.match(metrics, /latent_decoder_requests_total\{model="sd",direction="decode",outcome="ok"\} 1/);
});

test('bad input: not an image nor a tensor, corrupt, too many pixels, too small, not a multiple, out of range, no encoder', async (t) => {
  const { app } = await service(t);
  const post = async (url: string, payload: Buffer, headers: Record<string, string> = {}) => {
    const r = await app.inject({ method: 'POST', url, payload, headers });
    return { status: r.statusCode, ...r.json<ErrorBody>().error };
  };
  let r = await post('/encode', Buffer.from('hello, I am not an image'));
  assert.deepEqual([r.status, r.code], [400, 'BAD_IMAGE']);
  assert.match(r.message, /looks like text starting "hello, I am not an image"/);
  r = await post('/encode', Buffer.from([0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 1, 2, 3]));
  assert.match(r.message, /a GIF image/);
  const full = await png('64x64');
  r = await post('/encode', full.subarray(0, 2000));
  assert.deepEqual([r.status, r.code], [400, 'BAD_IMAGE']);
  const big = await sharp({ create: { width: 200, height: 200, channels: 3, background: '#808080' } }).png().toBuffer();
  r = await post('/encode', big);
  assert.deepEqual([r.status, r.code], [413, 'IMAGE_TOO_LARGE']);
  assert.match(r.message, /200x200 = 40000 pixels, over the limit of 10000/);
  const tiny = await sharp({ create: { width: 4, height: 16, channels: 3, background: '#808080' } }).png().toBuffer();
  r = await post('/encode', tiny);
  assert.deepEqual([r.status, r.code], [400, 'BAD_IMAGE_SIZE']);
  const odd = await sharp({ create: { width: 70, height: 50, channels: 4, background: { r: 10, g: 200, b: 30, alpha: 0.5 } } }).png().toBuffer();
  r = await post('/encode?resize=false', odd);
  assert.deepEqual([r.status, r.code], [400, 'BAD_IMAGE_SIZE']);
  assert.match(r.message, /70x50, not a multiple of 8 on each side: send 64x48/);
  const resized = await app.inject({ method: 'POST', url: '/encode', payload: odd });
  assert.deepEqual(JSON.parse(resized.headers.shape as string), [1, 4, 6, 8]);
  const x = new Float32Array(3 * 8 * 8).fill(0.5);
  x[2 * 64 + 9] = 2;
  r = await post('/encode?shape=1,3,8,8', bytesOf(x));
  assert.deepEqual([r.status, r.code], [400, 'IMAGE_OUT_OF_RANGE']);
  assert.match(r.message, /holds 2 at \[0, 2, 1, 1\]/);
  x[2 * 64 + 9] = NaN;
  r = await post('/encode?shape=1,3,8,8', bytesOf(x));
  assert.deepEqual([r.status, r.code], [400, 'NON_FINITE']);
  r = await post('/encode?shape=1,3,8,8', bytesOf(x.subarray(1)));
  assert.deepEqual([r.status, r.code], [400, 'SIZE_MISMATCH']);
  r = await post('/encode?model=sd15-preview', full);
  assert.deepEqual([r.status, r.code], [404, 'ENCODER_NOT_FOUND']);
  assert.match(r.message, /model "sd15-preview" has no encoder; models that encode: sd, taesd/);
  r = await post('/encode?pack=true&layout=nhwc', full);
  assert.deepEqual([r.status, r.code], [400, 'BAD_PARAMETER']);
});

test('tiled encode (diffusers\' _tiled_encode): tiles encoded alone, moments cross-faded in latent space, cropped and concatenated', async (t) => {
  const { app } = await service(t);
  // a smooth 256 x 192 image as a tensor in [-1, 1]
  const [H, W] = [192, 256];
  const img = new Float32Array(3 * H * W);
  for (let c = 0; c < 3; c++) for (let y = 0; y < H; y++) for (let x = 0; x < W; x++) img[(c * H + y) * W + x] = 0.8 * Math.sin(x / (9 + c) + y / 13) * Math.cos(y / (7 + c));
  const crop = (y0: number, x0: number, h: number, w: number): Float32Array => {
    const out = new Float32Array(3 * h * w);
    for (let c = 0; c < 3; c++) for (let y = 0; y < h; y++) out.set(img.subarray((c * H + y0 + y) * W + x0, (c * H + y0 + y) * W + x0 + w), (c * h + y) * w);
    return out;
  };
  const encode = async (data: Float32Array, h: number, w: number, extra = ''): Promise<Float32Array> => {
    const res = await app.inject({ method: 'POST', url: `/encode?shape=1,3,${h},${w}&do_scaling=false${extra}`, payload: bytesOf(data) });
    assert.equal(res.statusCode, 200, res.body);
    return f32(res.rawPayload);
  };
  // tiles of 16 latents (128 px), overlap 0.25: stride 96 px, blend 4 latents, crops of 12
  const tiled = await encode(img, H, W, '&tile_size=16&tile_overlap=0.25');
  assert.equal(tiled.length, 4 * 24 * 32);
  const whole = await encode(img, H, W, '&tile_size=0');
  t.diagnostic(`tiled vs untiled: max |Δ| ${maxAbs(tiled, whole).toFixed(3)} (GroupNorm statistics are per tile)`);
  const left = await encode(crop(0, 0, 128, 128), 128, 128, '&tile_size=0'); // tile (0, 0): 16 x 16 latents
  const right = await encode(crop(0, 96, 128, 128), 128, 128, '&tile_size=0'); // tile (0, 1)
  let worst = 0;
  for (let c = 0; c < 4; c++) {
    for (let y = 0; y < 12; y++) {
      for (let x = 0; x < 12; x++) worst = Math.max(worst, Math.abs(tiled[(c * 24 + y) * 32 + x]! - left[(c * 16 + y) * 16 + x]!));
      for (let x = 0; x < 4; x++) {
        const want = Math.fround(left[(c * 16 + y) * 16 + 12 + x]! * (1 - x / 4)) + Math.fround(right[(c * 16 + y) * 16 + x]! * (x / 4));
        worst = Math.max(worst, Math.abs(tiled[(c * 24 + y) * 32 + 12 + x]! - want));
      }
    }
  }
  t.diagnostic(`tile (0,0) crop and the (0,0)|(0,1) cross-fade against the tiles encoded alone: max |Δ| ${worst.toExponential(2)}`);
  assert.ok(worst <= 1e-4, `tiled encode differs from the blend of its tiles by ${worst}`);
  // sample_mode=sample tiled: the log-variances are blended too, then clamped and exponentiated
  const sampled = await encode(img, H, W, '&tile_size=16&sample_mode=sample&seed=3');
  const d = maxAbs(sampled, tiled);
  t.diagnostic(`tiled sample vs tiled mean: max |Δ| ${d.toFixed(3)}`);
  assert.ok(sampled.every(Number.isFinite) && d > 0 && d < 10);
  const bad = await app.inject({ method: 'POST', url: `/encode?shape=1,3,${H},${W}&tile_size=16&tile_overlap=0.3`, payload: bytesOf(img) });
  assert.equal(bad.statusCode, 400);
  assert.match(bad.body, /stride of 89 px, not a whole number of latents/);
});

test('refusals before the body: a byte count that does not fit the shape, a model without an encoder, a full queue (429 with Retry-After)', async (t) => {
  const { app, registry } = await service(t);
  const big = Buffer.alloc(200_000);
  const res = await app.inject({ method: 'POST', url: '/encode?shape=1,3,64,64', payload: big });
  assert.deepEqual([res.statusCode, res.json<ErrorBody>().error.code, res.headers.connection], [400, 'SIZE_MISMATCH', 'close']);
  const none = await app.inject({ method: 'POST', url: '/encode?model=nope', payload: big });
  assert.match(none.json<ErrorBody>().error.message, /no model named "nope"; models that encode: sd, taesd/);
  // the whole queue reserved by another request: /encode is refused before its body, with Retry-After
  const enc = registry.encoders.get('sd')!;
  const other = enc.batcher.reserve([{ sampleCount: 64 }]);
  try {
    const full = await app.inject({ method: 'POST', url: '/encode?model=sd', payload: await png('64x64') });
    assert.equal(full.statusCode, 429, full.body);
    assert.equal(full.json<ErrorBody>().error.code, 'QUEUE_FULL');
    assert.match(String(full.headers['retry-after']), /^[1-9]\d*$/);
  } finally {
    other.release();
  }
  assert.equal((await app.inject({ method: 'POST', url: '/encode?model=sd', payload: await png('64x64') })).statusCode, 200, 'served again once released');
});

test('tensor bodies as .npy and as JSON (base64 "latents", options as fields) encode like raw ones; a deadline that passes gives 504', async (t) => {
  const { app } = await service(t);
  const img = await imageTensor('image-96x64.png');
  const raw = f32((await app.inject({ method: 'POST', url: '/encode?shape=1,3,64,96', payload: bytesOf(img.data) })).rawPayload);
  const npyBody = encodeNpy({ dtype: '<f4', shape: [1, 3, 64, 96], data: img.data });
  const fromNpy = await app.inject({ method: 'POST', url: '/encode', headers: { 'content-type': 'application/x-npy' }, payload: npyBody });
  assert.equal(fromNpy.statusCode, 200, fromNpy.body);
  assert.deepEqual(f32(fromNpy.rawPayload), raw);
  const fromJson = await app.inject({
    method: 'POST', url: '/encode', headers: { 'content-type': 'application/json' },
    payload: JSON.stringify({ latents: bytesOf(img.data).toString('base64'), shape: [1, 3, 64, 96], dtype: 'float32', model: 'sd' }),
  });
  assert.equal(fromJson.statusCode, 200, fromJson.body);
  assert.deepEqual(f32(fromJson.rawPayload), raw);
  const both = await app.inject({
    method: 'POST', url: '/encode?model=sd', headers: { 'content-type': 'application/json' },
    payload: JSON.stringify({ latents: bytesOf(img.data).toString('base64'), shape: [1, 3, 64, 96] }),
  });
  assert.equal(both.statusCode, 400);
  assert.match(both.json<ErrorBody>().error.message, /model is in the query string: with a JSON body, give options as JSON fields only/);
  const late = await app.inject({ method: 'POST', url: '/encode', headers: { 'x-request-timeout-ms': '0.001' }, payload: await png('96x64') });
  assert.deepEqual([late.statusCode, late.json<ErrorBody>().error.code], [504, 'DEADLINE_EXCEEDED']);
});

test('an encode-only model: /decode naming it (or a default that only encodes) says it has no decoder; /readyz lists it', async (t) => {
  const { app } = await service(t);
  const lat = bytesOf(new Float32Array(4 * 8 * 8));
  const named = await app.inject({ method: 'POST', url: '/decode?model=taesd&shape=1,4,8,8', payload: lat });
  assert.deepEqual([named.statusCode, named.json<ErrorBody>().error.code], [404, 'MODEL_NOT_FOUND']);
  assert.match(named.json<ErrorBody>().error.message, /model "taesd" has no decoder \(it encodes only\); models that decode: sd15-preview, sd/);
  const ready = (await app.inject({ url: '/readyz' })).json<{ models: string[] }>();
  assert.deepEqual(ready.models, ['sd15-preview', 'sd', 'taesd']);

  const dir = tempDir(t);
  await convertCheckpoint({ weights: encodeFixture('taesd-encoder-original.safetensors'), out: join(dir, 'enc', 'model.onnx') });
  const only = await startService(t, { MODEL_PATH: '', MODELS_DIR: dir, DEFAULT_MODEL: 'enc' });
  const byDefault = await only.app.inject({ method: 'POST', url: '/decode?shape=1,4,8,8', payload: lat });
  assert.deepEqual([byDefault.statusCode, byDefault.json<ErrorBody>().error.code], [404, 'MODEL_NOT_FOUND']);
  assert.match(byDefault.json<ErrorBody>().error.message, /the default model "enc" has no decoder \(it encodes only\): name one with model=; models that decode: sd15-preview/);
  assert.equal((await only.app.inject({ method: 'POST', url: '/encode', payload: await png('64x64') })).statusCode, 200);
});

test('curl --data-binary @image.png (curl\'s default Content-Type, application/x-www-form-urlencoded) is read by its bytes like no Content-Type', async (t) => {
  const { app } = await service(t);
  const img = await png('64x64');
  const plain = await app.inject({ method: 'POST', url: '/encode', payload: img });
  const form = await app.inject({ method: 'POST', url: '/encode', headers: { 'content-type': 'application/x-www-form-urlencoded' }, payload: img });
  assert.equal(form.statusCode, 200, form.body);
  assert.deepEqual(form.rawPayload, plain.rawPayload);
  const x = bytesOf(new Float32Array(3 * 8 * 8).fill(0.25));
  const tensor = await app.inject({ method: 'POST', url: '/encode?shape=1,3,8,8', headers: { 'content-type': 'application/x-www-form-urlencoded' }, payload: x });
  assert.deepEqual([tensor.statusCode, JSON.parse(tensor.headers.shape as string)], [200, [1, 4, 1, 1]]);
});

test('a tensor body over BODY_LIMIT_BYTES is 413 saying to send the image as PNG/JPEG/WebP (not "fewer latents")', async (t) => {
  const { app } = await service(t);
  const limit = app.config.bodyLimitBytes;
  const side = 8 * Math.ceil(Math.sqrt(limit / 12) / 8); // a float32 [1, 3, side, side] just over the limit
  const res = await app.inject({ method: 'POST', url: `/encode?model=sd&shape=1,3,${side},${side}`, payload: Buffer.alloc(12 * side * side) });
  assert.deepEqual([res.statusCode, res.json<ErrorBody>().error.code], [413, 'BODY_TOO_LARGE']);
  assert.match(res.json<ErrorBody>().error.message, /an image as PNG, JPEG or WebP rather than as a tensor/);
});

test('Accept: application/x-npy with output_dtype=bfloat16 is refused before the encoder runs, without the answer\'s headers', async (t) => {
  const { app, batches } = await service(t);
  const before = batches.length;
  const res = await app.inject({ method: 'POST', url: '/encode?model=sd&output_dtype=bfloat16', headers: { accept: 'application/x-npy' }, payload: await png('64x64') });
  assert.deepEqual([res.statusCode, res.json<ErrorBody>().error.code], [400, 'BAD_PARAMETER']);
  assert.match(res.json<ErrorBody>().error.message, /\.npy has no bfloat16/);
  assert.equal(res.headers.dtype, undefined);
  assert.equal(batches.length, before, 'no encoder run for a request whose answer cannot be written');
  const json = await app.inject({
    method: 'POST', url: '/encode', headers: { accept: 'application/x-npy', 'content-type': 'application/json' },
    payload: JSON.stringify({ latents: bytesOf(new Float32Array(3 * 8 * 8)).toString('base64'), shape: [1, 3, 8, 8], model: 'sd', output_dtype: 'bfloat16' }),
  });
  assert.deepEqual([json.statusCode, json.json<ErrorBody>().error.code], [400, 'BAD_PARAMETER']);
  assert.equal(batches.length, before);
});

test('tiling refusals on /encode speak of encoding, not decoding', async (t) => {
  const { app } = await service(t);
  const img = await png('64x64');
  let r = await app.inject({ method: 'POST', url: '/encode?model=sd&tile_size=200', payload: img });
  assert.deepEqual([r.statusCode, r.json<ErrorBody>().error.code], [400, 'BAD_PARAMETER']);
  assert.match(r.json<ErrorBody>().error.message, /tile_size=200 is over the largest latent side encoded in one piece \(128\)/);
  const x = bytesOf(new Float32Array(3 * 8 * 1032));
  r = await app.inject({ method: 'POST', url: '/encode?model=sd&tile_size=0&shape=1,3,8,1032', payload: x });
  assert.deepEqual([r.statusCode, r.json<ErrorBody>().error.code], [400, 'LATENT_TOO_LARGE']);
  assert.match(r.json<ErrorBody>().error.message, /with tiling off \(tile_size=0\); tiled encoding \(tile_size from 1 to 128\) allows up to 512/);
});

/** The PNG without its iCCP chunk (the colour profile), its pixels untouched. */
function withoutIccp(png: Buffer): Buffer {
  const parts = [png.subarray(0, 8)];
  for (let at = 8; at < png.length;) {
    const end = at + 12 + png.readUInt32BE(at);
    if (png.toString('latin1', at + 4, at + 8) !== 'iCCP') parts.push(png.subarray(at, end));
    at = end;
  }
  return Buffer.concat(parts);
}

test('an embedded ICC profile (Display P3) is ignored as PIL ignores it: the latents of the stored values, as diffusers\' local encode gets them', async (t) => {
  const { app } = await service(t);
  const rgb = await sharp(await png('64x64')).removeAlpha().raw().toBuffer();
  const p3 = await sharp(rgb, { raw: { width: 64, height: 64, channels: 3 } }).withIccProfile('p3').png().toBuffer();
  const bare = withoutIccp(p3);
  assert.ok(bare.length < p3.length, 'the PNG had an iCCP chunk');
  const tagged = await app.inject({ method: 'POST', url: '/encode?model=sd', payload: p3 });
  const untagged = await app.inject({ method: 'POST', url: '/encode?model=sd', payload: bare });
  assert.equal(tagged.statusCode, 200, tagged.body);
  const d = maxAbs(f32(tagged.rawPayload), f32(untagged.rawPayload));
  t.diagnostic(`P3-tagged vs untagged latents: max |Δ| ${d}`);
  assert.equal(d, 0);
});

test('an unknown output_dtype is named as output_dtype (not dtype, the tensor body\'s)', async (t) => {
  const { app } = await service(t);
  const r = await app.inject({ method: 'POST', url: '/encode?model=sd&output_dtype=int8', payload: await png('64x64') });
  assert.deepEqual([r.statusCode, r.json<ErrorBody>().error.code], [400, 'UNKNOWN_DTYPE']);
  assert.match(r.json<ErrorBody>().error.message, /^output_dtype "int8" is not supported/);
});

test('CLI `models` shows each model\'s directions, as GET /v1/models does', async (t) => {
  const dir = tempDir(t);
  await convertCheckpoint({ weights: encodeFixture('sd-ldm.safetensors'), out: join(dir, 'sd', 'model.onnx') });
  await convertCheckpoint({ weights: encodeFixture('taesd-encoder-original.safetensors'), out: join(dir, 'taesd', 'model.onnx') });
  const run = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'models', '--models-dir', dir], { cwd: REPO, encoding: 'utf8', env: { ...process.env, MODEL_PATH: '' } });
  assert.equal(run.status, 0, run.stderr);
  assert.match(run.stdout, /^NAME\s+CHANNELS\s+PRECISION\s+SCALING\s+SHIFT\s+SIZE\s+FAMILY\s+DIRECTIONS$/m);
  assert.match(run.stdout, /^sd15-preview\s.*\sdecode$/m);
  assert.match(run.stdout, /^sd\s.*\sdecode,encode$/m);
  assert.match(run.stdout, /^taesd\s.*MiB\s+encode$/m);
});
