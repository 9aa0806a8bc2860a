// Fidelity: the real ORT session on the golden fixture decoder, real sharp, through HTTP.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { toFloat32 } from '../src/tensor/dtype.js';
import { encodeNpy } from '../src/tensor/npy.js';
import { LATENT, RGB, bytesOf, loadFixture, maxAbsDiff, pixels, sampleLatents, startService } from './helpers/service.js';

const Q = 'scaling_factor=1'; // the fixture latents are already in decoder space

test('decode: each body encoding gives the reference image within one level', async (t) => {
  const { app } = await startService(t);
  const f = await loadFixture();
  for (let i = 0; i < 2; i++) {
    const lat = sampleLatents(f, i);
    const want = f.rgb.subarray(i * RGB, (i + 1) * RGB);
    const bodies = [
      { name: 'raw octet-stream', headers: { 'content-type': 'application/octet-stream' }, url: `/decode?shape=1,4,16,16&${Q}`, payload: bytesOf(lat) },
      { name: 'raw without content-type, shape inferred', headers: {}, url: `/decode?${Q}`, payload: bytesOf(lat) },
      { name: 'raw tensor/binary, repeated shape keys', headers: { 'content-type': 'tensor/binary' }, url: `/decode?shape=1&shape=4&shape=16&shape=16&dtype=float32&${Q}`, payload: bytesOf(lat) },
      { name: "curl --data-binary's default label", headers: { 'content-type': 'application/x-www-form-urlencoded' }, url: `/decode?shape=1,4,16,16&${Q}`, payload: bytesOf(lat) },
      { name: 'npy', headers: { 'content-type': 'application/x-npy' }, url: `/decode?${Q}`, payload: encodeNpy({ dtype: '<f4', shape: [1, 4, 16, 16], data: lat }) },
      { name: 'json', headers: { 'content-type': 'application/json' }, url: '/decode',
        payload: JSON.stringify({ latents: bytesOf(lat).toString('base64'), shape: [1, 4, 16, 16], dtype: 'float32', scaling_factor: 1 }) },
    ];
    for (const b of bodies) {
      const res = await app.inject({ method: 'POST', url: b.url, headers: b.headers, payload: b.payload });
      assert.equal(res.statusCode, 200, `${b.name}: ${res.body}`);
      assert.equal(res.headers['content-type'], 'image/png', b.name);
      const img = await pixels(res.rawPayload);
      assert.deepEqual([img.width, img.height, img.channels], [128, 128, 3], b.name);
      assert.ok(maxAbsDiff(img.data, want) <= 1, `${b.name}: sample ${i} differs by ${maxAbsDiff(img.data, want)} levels`);
    }
  }
});

test('decode: N=2 answers JSON images in request order', async (t) => {
  const { app } = await startService(t);
  const f = await loadFixture();
  const res = await app.inject({ method: 'POST', url: `/decode?shape=2,4,16,16&${Q}`, payload: bytesOf(f.latents), headers: { 'content-type': 'application/octet-stream' } });
  assert.equal(res.statusCode, 200, res.body);
  const body = res.json<{ images: { contentType: string; data: string }[] }>();
  assert.equal(body.images.length, 2);
  for (let i = 0; i < 2; i++) {
    assert.equal(body.images[i]!.contentType, 'image/png');
    const img = await pixels(Buffer.from(body.images[i]!.data, 'base64'));
    assert.ok(maxAbsDiff(img.data, f.rgb.subarray(i * RGB, (i + 1) * RGB)) <= 1);
  }
});

test('decode: output_type=pt returns the float tensor within 1e-4, partial_postprocess the uint8 images', async (t) => {
  const { app } = await startService(t);
  const f = await loadFixture();
  const float = await app.inject({ method: 'POST', url: `/decode?shape=2,4,16,16&output_type=pt&${Q}`, payload: bytesOf(f.latents) });
  assert.equal(float.statusCode, 200, float.body);
  assert.equal(float.headers.shape, '[2,3,128,128]');
  assert.equal(float.headers.dtype, 'float32');
  assert.match(String(float.headers['server-timing']), /^parse;dur=[\d.]+, queue;dur=[\d.]+, infer;dur=[\d.]+, encode;dur=[\d.]+, total;dur=[\d.]+$/);
  const out = toFloat32(float.rawPayload, 'float32');
  assert.ok(maxAbsDiff(out, f.reference) <= 1e-4, `max diff ${maxAbsDiff(out, f.reference)}`);

  const u8 = await app.inject({ method: 'POST', url: `/decode?shape=2,4,16,16&output_type=pt&partial_postprocess=True&${Q}`, payload: bytesOf(f.latents) });
  assert.equal(u8.statusCode, 200, u8.body);
  assert.equal(u8.headers.shape, '[2,128,128,3]');
  assert.equal(u8.headers.dtype, 'uint8');
  assert.ok(maxAbsDiff(u8.rawPayload, f.rgb) <= 1);
});

test('decode: float16 and bfloat16 latents decode close to the float32 result', async (t) => {
  const { app } = await startService(t);
  const f = await loadFixture();
  const lat = sampleLatents(f, 0);
  const half = (await import('../src/tensor/dtype.js')).toFloat16Bits(lat);
  const bf16 = new Uint16Array(new Uint32Array(lat.buffer.slice(0)).map((b) => b >>> 16));
  const want = f.rgb.subarray(0, RGB);
  for (const [dtype, data, tol] of [['float16', half, 2], ['bfloat16', bf16, 8]] as const) {
    const res = await app.inject({ method: 'POST', url: `/decode?shape=1,4,16,16&dtype=${dtype}&${Q}`, payload: Buffer.from(data.buffer) });
    assert.equal(res.statusCode, 200, `${dtype}: ${res.body}`);
    const img = await pixels(res.rawPayload);
    const diff = maxAbsDiff(img.data, want);
    t.diagnostic(`${dtype}: max difference from the float32 reference ${diff} levels`);
    assert.ok(diff <= tol, `${dtype} differs by ${diff} levels`);
  }
  assert.equal(LATENT * 2, half.byteLength);
  const npy = await app.inject({ method: 'POST', url: `/decode?${Q}`, headers: { 'content-type': 'application/x-npy' },
    payload: encodeNpy({ dtype: '<f2', shape: [1, 4, 16, 16], data: half }) });
  assert.equal(npy.statusCode, 200, npy.body);
  assert.ok(maxAbsDiff((await pixels(npy.rawPayload)).data, want) <= 2, 'a float16 .npy decodes like float16 raw bytes');
});

test('decode: JPEG and WebP outputs decode to the right size; Accept chooses the format', async (t) => {
  const { app } = await startService(t);
  const f = await loadFixture();
  const payload = bytesOf(sampleLatents(f, 1));
  for (const [query, accept, type] of [
    ['format=jpeg&quality=80', undefined, 'image/jpeg'],
    ['image_format=jpg', undefined, 'image/jpeg'],
    ['', 'image/webp,image/*', 'image/webp'],
    ['format=png', 'image/jpeg', 'image/png'],
  ] as const) {
    const res = await app.inject({ method: 'POST', url: `/decode?shape=1,4,16,16&${Q}&${query}`, payload, headers: accept ? { accept } : {} });
    assert.equal(res.statusCode, 200, res.body);
    assert.equal(res.headers['content-type'], type, query);
    const img = await pixels(res.rawPayload);
    assert.deepEqual([img.width, img.height], [128, 128]);
    // Lossy (the fixture's images are noise-like), but far closer to its reference than to the other.
    const own = meanAbsDiff(img.data, f.rgb.subarray(RGB, 2 * RGB));
    const other = meanAbsDiff(img.data, f.rgb.subarray(0, RGB));
    assert.ok(own < other / 2, `${type}: mean error ${own} vs ${other} to the other image`);
  }
});

function meanAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let sum = 0;
  for (let i = 0; i < b.length; i++) sum += Math.abs(a[i]! - b[i]!);
  return sum / b.length;
}

test('decode: the model scaling factor applies unless the request overrides it', async (t) => {
  const { app } = await startService(t);
  const f = await loadFixture();
  // Latents in the diffusion's scaled space: z * 0.18215. The default factor (0.18215) undoes it.
  const scaled = sampleLatents(f, 0, 0.18215);
  const res = await app.inject({ method: 'POST', url: '/decode?shape=1,4,16,16&output_type=pt&partial_postprocess=1', payload: bytesOf(scaled) });
  assert.equal(res.statusCode, 200, res.body);
  assert.ok(maxAbsDiff(res.rawPayload, f.rgb.subarray(0, RGB)) <= 1);
  const models = (await app.inject('/v1/models')).json<{ models: { name: string; scalingFactor: number; provider: string; default: boolean }[] }>();
  const served = models.models.find((m) => m.default)!;
  assert.equal(served.name, 'torch-export');
  assert.equal(served.scalingFactor, 0.18215);
  assert.equal(served.provider, 'cpu');
});

test('decode: the requests diffusers remote_decode sends work unmodified', async (t) => {
  const { app } = await startService(t);
  const f = await loadFixture();
  const payload = bytesOf(sampleLatents(f, 0));
  // What requests.post(url, params=..., data=tensor_bytes) puts on the wire: repeated shape keys,
  // Python booleans, no Content-Type.
  const base = 'shape=1&shape=4&shape=16&shape=16&dtype=float32&scaling_factor=1';
  const pil = await app.inject({ method: 'POST', url: `/decode?image_format=jpg&output_type=pil&partial_postprocess=False&${base}`, payload });
  assert.equal(pil.statusCode, 200, pil.body);
  assert.equal(pil.headers['content-type'], 'image/jpeg');
  const pt = await app.inject({ method: 'POST', url: `/decode?image_format=jpg&output_type=pt&partial_postprocess=True&${base}`, payload });
  assert.equal(pt.statusCode, 200, pt.body);
  assert.deepEqual(JSON.parse(String(pt.headers.shape)), [1, 128, 128, 3]);
  assert.equal(pt.headers.dtype, 'uint8');
  assert.ok(maxAbsDiff(pt.rawPayload, f.rgb.subarray(0, RGB)) <= 1);
  const raw = await app.inject({ method: 'POST', url: `/decode?image_format=jpg&output_type=pt&partial_postprocess=False&${base}`, payload });
  assert.deepEqual(JSON.parse(String(raw.headers.shape)), [1, 3, 128, 128]);
  assert.equal(raw.headers.dtype, 'float32');
  assert.ok(maxAbsDiff(toFloat32(raw.rawPayload, 'float32'), f.reference.subarray(0, 3 * 128 * 128)) <= 1e-4);
});
