// Channel-last and FLUX-packed latents: reordered into NCHW in the scaling pass, they decode to
// exactly what the same latents sent as NCHW decode to.
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import { toDecoderSpace } from '../src/latents/fuse.js';
import { parseOptions } from '../src/latents/options.js';
import { planLatents } from '../src/latents/parse.js';
import { GraphBuilder, attr, encodeModel } from '../src/onnx/graph.js';
import { encodeNpy, readNpy } from '../src/tensor/npy.js';
import { bytesOf, loadFixture, sampleLatents, startService, tempDir } from './helpers/service.js';

const TAESD = path.join(import.meta.dirname, 'fixtures', 'taesd');
const raw = { 'content-type': 'application/octet-stream' };
const npy = { 'content-type': 'application/x-npy' };
const json = { 'content-type': 'application/json' };

/** [n, c, h, w] → [n, h, w, c]. */
function toNhwc(src: Float32Array, [n, c, h, w]: number[]): Float32Array {
  const out = new Float32Array(src.length);
  let i = 0;
  for (let s = 0; s < n!; s++) {
    for (let y = 0; y < h!; y++) {
      for (let x = 0; x < w!; x++) {
        for (let ch = 0; ch < c!; ch++) out[i++] = src[((s * c! + ch) * h! + y) * w! + x]!;
      }
    }
  }
  return out;
}

test('layout=nhwc: channel-last latents decode to the same bytes as NCHW, raw, .npy and JSON', async (t) => {
  const { app } = await startService(t);
  const f = await loadFixture();
  const nchw = f.latents; // [2, 4, 16, 16]
  const nhwc = toNhwc(nchw, [2, 4, 16, 16]);
  assert.notDeepEqual(nhwc, nchw);
  const want = await app.inject({ method: 'POST', url: '/decode?shape=2,4,16,16&output_type=pt', headers: raw, payload: bytesOf(nchw) });
  assert.equal(want.statusCode, 200, want.body);
  const b64 = bytesOf(nhwc).toString('base64');
  const bodies = [
    { name: 'raw', url: '/decode?shape=2,16,16,4&layout=nhwc&output_type=pt', headers: raw, payload: bytesOf(nhwc) },
    { name: 'npy', url: '/decode?layout=nhwc&output_type=pt', headers: npy, payload: encodeNpy({ dtype: '<f4', shape: [2, 16, 16, 4], data: nhwc }) },
    { name: 'json', url: '/decode', headers: json, payload: JSON.stringify({ latents: b64, shape: [2, 16, 16, 4], layout: 'nhwc', output_type: 'pt' }) },
  ];
  for (const b of bodies) {
    const res = await app.inject({ method: 'POST', ...b });
    assert.equal(res.statusCode, 200, `${b.name}: ${res.body}`);
    assert.equal(res.headers.shape, '[2,3,128,128]', b.name);
    assert.ok(res.rawPayload.equals(want.rawPayload), `${b.name}: NHWC decodes to other bytes than NCHW`);
  }
  // Without a shape, raw bytes are one square latent: the layout still says their order.
  const one = await app.inject({ method: 'POST', url: '/decode?layout=nhwc&output_type=pt', headers: raw, payload: bytesOf(toNhwc(sampleLatents(f, 1), [1, 4, 16, 16])) });
  assert.equal(one.statusCode, 200, one.body);
  assert.ok(one.rawPayload.equals(want.rawPayload.subarray(want.rawPayload.length / 2)), 'an inferred-shape NHWC sample decodes like its NCHW twin');
});

test('layout=nhwc: float16 channel-last latents decode like float16 NCHW', async (t) => {
  const { app } = await startService(t);
  const f = await loadFixture();
  const { toFloat16Bits } = await import('../src/tensor/dtype.js');
  const a = toFloat16Bits(sampleLatents(f, 0));
  const b = toFloat16Bits(toNhwc(sampleLatents(f, 0), [1, 4, 16, 16]));
  const q = 'dtype=float16&output_type=pt';
  const want = await app.inject({ method: 'POST', url: `/decode?shape=1,4,16,16&${q}`, headers: raw, payload: Buffer.from(a.buffer) });
  const got = await app.inject({ method: 'POST', url: `/decode?shape=1,16,16,4&layout=nhwc&${q}`, headers: raw, payload: Buffer.from(b.buffer) });
  assert.equal(got.statusCode, 200, got.body);
  assert.ok(got.rawPayload.equals(want.rawPayload));
});

test('packed: the FLUX-packed fixture unpacks to the 16-channel latents exactly', async () => {
  const packed = await readNpy(path.join(TAESD, 'taesd16-latents-flux-packed.npy'));
  const unpacked = await readNpy(path.join(TAESD, 'taesd16-latents.npy'));
  assert.deepEqual(packed.shape, [2, 64, 64]);
  const options = parseOptions({ shape: packed.shape.join(','), height: '128', width: '128' });
  assert.equal(options.packed, true);
  const model = { name: 'flux16', channels: 16, scalingFactor: 1, shiftFactor: 0, maxLatentSide: 128 };
  const data = packed.data as Float32Array;
  const plan = planLatents({ options, byteLength: data.byteLength, bytes: async () => bytesOf(data) }, model);
  assert.deepEqual(plan.shape, [2, 16, 16, 16]);
  const tensor = await toDecoderSpace(plan, bytesOf(data));
  assert.deepEqual(tensor.shape, unpacked.shape);
  assert.ok(Buffer.from(tensor.data.buffer).equals(bytesOf(unpacked.data as Float32Array)), 'unpacking differs from the fixture');
});

/** A tiny 16-channel decoder: a 1x1 convolution 16 → 3 and an 8x nearest resize, scaling 1. */
function write16ChannelModel(t: TestContext): string {
  const g = new GraphBuilder('flux16_test');
  const x = g.input('latent_sample', 'float32', ['batch', 16, 'height', 'width']);
  const weight = Float32Array.from({ length: 3 * 16 }, (_, i) => ((i * 7) % 11 - 5) / 20);
  const w = g.constant('weight', 'float32', [3, 16, 1, 1], weight);
  const rgb = g.node('Conv', [x, w], { kernel_shape: attr.ints([1, 1]) });
  const scales = g.constant('scales', 'float32', [4], new Float32Array([1, 1, 8, 8]));
  g.node('Resize', [rgb, '', scales], { mode: attr.s('nearest') }, 'sample');
  g.output('sample', 'float32', ['batch', 3, 'height_out', 'width_out']);
  const file = path.join(tempDir(t), 'flux16.onnx');
  writeFileSync(file, encodeModel(g.model({ metadata: { scaling_factor: '0.3611', shift_factor: '0.1159' } })));
  return file;
}

test('packed: a FLUX-packed request answers byte for byte what the unpacked one does, raw, .npy and JSON', async (t) => {
  const { app } = await startService(t, { MODEL_PATH: write16ChannelModel(t) });
  const packed = await readNpy(path.join(TAESD, 'taesd16-latents-flux-packed.npy'));
  const unpacked = await readNpy(path.join(TAESD, 'taesd16-latents.npy'));
  const want = await app.inject({ method: 'POST', url: '/decode?shape=2,16,16,16', headers: raw, payload: bytesOf(unpacked.data as Float32Array) });
  assert.equal(want.statusCode, 200, want.body);
  const images = (want.json() as { images: { data: string }[] }).images;
  assert.equal(images.length, 2);
  assert.notEqual(images[0]!.data, images[1]!.data);
  const data = packed.data as Float32Array;
  const bodies = [
    { name: 'raw', url: '/decode?shape=2,64,64&height=128&width=128', headers: raw, payload: bytesOf(data) },
    { name: 'npy', url: '/decode?height=128&width=128', headers: npy, payload: encodeNpy(packed) },
    { name: 'json', url: '/decode', headers: json, payload: JSON.stringify({ latents: bytesOf(data).toString('base64'), shape: [2, 64, 64], height: 128, width: 128 }) },
  ];
  for (const b of bodies) {
    const res = await app.inject({ method: 'POST', ...b });
    assert.equal(res.statusCode, 200, `${b.name}: ${res.body}`);
    assert.equal(res.body, want.body, `${b.name}: the packed request answers differently`);
  }
  // A 3-D shape without height and width stays [C, h, w].
  const chw = await app.inject({ method: 'POST', url: '/decode?shape=16,16,16&output_type=pt', headers: raw, payload: bytesOf((unpacked.data as Float32Array).subarray(0, 16 * 256)) });
  assert.equal(chw.statusCode, 200, chw.body);
  assert.equal(chw.headers.shape, '[1,3,128,128]');
  // Numbers that disagree name themselves.
  const bad = await app.inject({ method: 'POST', url: '/decode?shape=2,64,64&height=128&width=96', headers: raw, payload: bytesOf(data) });
  assert.equal(bad.statusCode, 400);
  assert.deepEqual(bad.json(), { error: { code: 'BAD_SHAPE', message: 'packed latents [2, 64, 64] with height 128 and width 96: (128/16)·(96/16) = 8·6 = 48 patches, but dimension 1 is 64' } });
});

test('hints: a suggested layout decodes what was meant; height and width that agree with a 4-D shape are accepted', async (t) => {
  const { app } = await startService(t);
  const f = await loadFixture();
  // An 8x8 crop of a fixture sample, channels last: [1, 8, 8, 4] reads as 8-channel NCHW.
  const crop = new Float32Array(4 * 8 * 8).map((_, i) => f.latents[Math.floor(i / 64) * 256 + Math.floor((i % 64) / 8) * 16 + (i % 8)]!);
  const nhwc = toNhwc(crop, [1, 4, 8, 8]);
  const hinted = await app.inject({ method: 'POST', url: '/decode?shape=1,8,8,4&output_type=pt', headers: raw, payload: bytesOf(nhwc) });
  assert.equal(hinted.statusCode, 400);
  const hint = /pass (layout=nhwc)$/.exec(hinted.json().error.message as string)?.[1];
  assert.equal(hint, 'layout=nhwc', hinted.body);
  const followed = await app.inject({ method: 'POST', url: `/decode?shape=1,8,8,4&output_type=pt&${hint}`, headers: raw, payload: bytesOf(nhwc) });
  const nchw = await app.inject({ method: 'POST', url: '/decode?shape=1,4,8,8&output_type=pt', headers: raw, payload: bytesOf(crop) });
  assert.equal(followed.statusCode, 200, followed.body);
  assert.ok(followed.rawPayload.equals(nchw.rawPayload), 'following the hint decodes the latents as meant');
  for (const q of ['height=64&width=64', 'height=64', 'width=64']) {
    const res = await app.inject({ method: 'POST', url: `/decode?shape=1,4,8,8&output_type=pt&${q}`, headers: raw, payload: bytesOf(crop) });
    assert.equal(res.statusCode, 200, `${q}: ${res.body}`);
    assert.ok(res.rawPayload.equals(nchw.rawPayload), q);
  }
});
