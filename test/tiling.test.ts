// Tiled decoding: the pure planner and blender against a direct transcription of diffusers'
// tiled_decode, then through HTTP on the real fixture decoder against the golden tiled fixture
// (diffusers' algorithm, tile 16, overlap 0.25), with batching, deadlines and failures.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { ConfigError, loadConfig } from '../src/config.js';
import { toFloat32 } from '../src/tensor/dtype.js';
import { readNpy } from '../src/tensor/npy.js';
import { TileAssembler, toLevel } from '../src/tiling/assemble.js';
import { needsTiling, pixelLayout, planTiles, tileGroups } from '../src/tiling/plan.js';
import { fixture } from './helpers/paths.js';
import { fragileModel } from './helpers/models.js';
import { bytesOf, loadFixture, maxAbsDiff, pixels, sampleLatents, startService, tempDir, type TestService } from './helpers/service.js';

// ---- pure: planning and blending ----

test('tiling plan: tile starts, edge tiles, blend extent and output size as diffusers computes them', () => {
  const g = planTiles(40, 40, 16, 0.25);
  assert.equal(g.stride, 12);
  assert.deepEqual(g.rows, [{ start: 0, size: 16 }, { start: 12, size: 16 }, { start: 24, size: 16 }, { start: 36, size: 4 }]);
  const px = pixelLayout(g, 8);
  assert.equal(px.blend, 32);
  assert.equal(px.rowLimit, 96);
  assert.deepEqual(px.rowOffsets, [0, 96, 192, 288, 320]);
  assert.deepEqual([px.height, px.width], [320, 320]);
  assert.deepEqual(tileGroups(g).map((x) => [`${x.h}x${x.w}`, x.tiles.length]), [['16x16', 9], ['16x4', 3], ['4x16', 3], ['4x4', 1]]);
  // Default settings on 512² latents (4096² px): tiles every 96 latents, the last one 32 wide.
  const big = planTiles(512, 512, 128, 0.25);
  assert.deepEqual(big.rows.map((r) => r.start), [0, 96, 192, 288, 384, 480]);
  assert.deepEqual(pixelLayout(big, 8).height, 4096);
  // t·f not whole: diffusers' crops (int(8t·f)) outgrow the stride and its image is larger than 8h.
  const odd = pixelLayout(planTiles(40, 40, 16, 0.3), 8);
  assert.deepEqual([odd.blend, odd.rowLimit, odd.height], [38, 90, 326]);
  assert.equal(needsTiling(16, 16, 16), false);
  assert.equal(needsTiling(16, 17, 16), true);
  assert.equal(needsTiling(999, 999, 0), false);
  assert.throws(() => planTiles(40, 40, 1, 0.5), /stride of 0/);
});

type Tile = { h: number; w: number; d: Float32Array }; // [n, 3, h, w]

/** diffusers' tiled_decode after the decoder: blend_v, blend_h in place, crop, concatenate. */
function diffusersBlend(tiles: Tile[][], n: number, tileSample: number, overlap: number): { h: number; w: number; d: Float32Array } {
  const blendExtent = Math.trunc(tileSample * overlap);
  const rowLimit = tileSample - blendExtent;
  const at = (t: Tile, p: number, y: number, x: number): number => (p * t.h + y) * t.w + x;
  for (let i = 0; i < tiles.length; i++) {
    for (let j = 0; j < tiles[i]!.length; j++) {
      const b = tiles[i]![j]!;
      if (i > 0) {
        const a = tiles[i - 1]![j]!;
        const e = Math.min(a.h, b.h, blendExtent);
        for (let p = 0; p < n * 3; p++) for (let y = 0; y < e; y++) for (let x = 0; x < b.w; x++) {
          b.d[at(b, p, y, x)] = a.d[at(a, p, a.h - e + y, x)]! * (1 - y / e) + b.d[at(b, p, y, x)]! * (y / e);
        }
      }
      if (j > 0) {
        const a = tiles[i]![j - 1]!;
        const e = Math.min(a.w, b.w, blendExtent);
        for (let p = 0; p < n * 3; p++) for (let y = 0; y < b.h; y++) for (let x = 0; x < e; x++) {
          b.d[at(b, p, y, x)] = a.d[at(a, p, y, a.w - e + x)]! * (1 - x / e) + b.d[at(b, p, y, x)]! * (x / e);
        }
      }
    }
  }
  const hs = tiles.map((r) => Math.min(rowLimit, r[0]!.h));
  const ws = tiles[0]!.map((t) => Math.min(rowLimit, t.w));
  const H = hs.reduce((a, b) => a + b, 0);
  const W = ws.reduce((a, b) => a + b, 0);
  const out = new Float32Array(n * 3 * H * W);
  let oy = 0;
  tiles.forEach((r, i) => {
    let ox = 0;
    r.forEach((t, j) => {
      for (let p = 0; p < n * 3; p++) for (let y = 0; y < hs[i]!; y++) for (let x = 0; x < ws[j]!; x++) out[(p * H + oy + y) * W + ox + x] = t.d[at(t, p, y, x)]!;
      ox += ws[j]!;
    });
    oy += hs[i]!;
  });
  return { h: H, w: W, d: out };
}

function seeded(seed: number): () => number {
  let s = seed >>> 0;
  return () => ((s = (s * 1664525 + 1013904223) >>> 0) / 2 ** 32) * 2.4 - 1.2;
}

test('tiling blend: tiles arriving in any order give diffusers\' pixels, float and rgb', () => {
  const cases = [
    { h: 40, w: 40, t: 16, f: 0.25, n: 1, up: 8 },
    { h: 21, w: 35, t: 8, f: 0.3, n: 2, up: 4 }, // t·f not whole; N = 2; not square
    { h: 9, w: 30, t: 8, f: 0.5, n: 1, up: 2 }, // one side within a tile; several small edge tiles
    { h: 12, w: 12, t: 5, f: 0, n: 1, up: 8 }, // no overlap: a mosaic
  ];
  for (const [ci, c] of cases.entries()) {
    const grid = planTiles(c.h, c.w, c.t, c.f);
    const rnd = seeded(ci + 1);
    const decoded = grid.rows.map((r) => grid.cols.map((col) => {
      const d = new Float32Array(c.n * 3 * r.size * c.up * col.size * c.up);
      for (let k = 0; k < d.length; k++) d[k] = rnd();
      return { h: r.size * c.up, w: col.size * c.up, d };
    }));
    const order = decoded.flatMap((r, i) => r.map((_, j) => [i, j] as const));
    order.sort((a, b) => ((a[0] * 7 + a[1] * 13) % 5) - ((b[0] * 7 + b[1] * 13) % 5) || b[0] - a[0]); // not raster
    const fl = new TileAssembler(grid, c.n, c.up, 'float');
    const u8 = new TileAssembler(grid, c.n, c.up, 'rgb');
    for (const [i, j] of order) {
      fl.add(i, j, decoded[i]![j]!.d.slice());
      u8.add(i, j, decoded[i]![j]!.d.slice());
      while (fl.step());
      while (u8.step(ci * 50 + 1)); // in pieces of a row or more, as the service steps
    }
    assert.ok(fl.complete && u8.complete, `case ${ci}: every tile blended`);
    const want = diffusersBlend(decoded.map((r) => r.map((t) => ({ ...t, d: t.d.slice() }))), c.n, c.t * c.up, c.f);
    assert.deepEqual([fl.layout.height, fl.layout.width], [want.h, want.w], `case ${ci}: size`);
    assert.ok(maxAbsDiff(fl.float!, want.d) <= 1e-6, `case ${ci}: float differs by ${maxAbsDiff(fl.float!, want.d)}`);
    const rgb = new Uint8Array(want.d.length);
    for (let s = 0; s < c.n; s++) for (let ch = 0; ch < 3; ch++) for (let p = 0; p < want.h * want.w; p++) {
      rgb[(s * want.h * want.w + p) * 3 + ch] = toLevel(want.d[(s * 3 + ch) * want.h * want.w + p]!);
    }
    assert.ok(maxAbsDiff(u8.rgb!, rgb) <= 1, `case ${ci}: rgb differs`);
  }
});

test('tiling blend: a tile waits for its neighbours above and to the left', () => {
  const grid = planTiles(20, 20, 10, 0.2);
  const a = new TileAssembler(grid, 1, 1, 'float');
  const tile = (i: number, j: number): Float32Array => new Float32Array(3 * grid.rows[i]!.size * grid.cols[j]!.size);
  a.add(1, 1, tile(1, 1));
  assert.equal(a.step(), false, '(1,1) needs (0,1) and (1,0)');
  a.add(0, 0, tile(0, 0));
  assert.equal(a.step(), true);
  a.add(0, 1, tile(0, 1));
  assert.equal(a.step(), true);
  assert.equal(a.step(), false, '(1,1) still needs (1,0)');
  assert.throws(() => a.add(1, 0, new Float32Array(5)), /expected/);
});

test('tiling postprocess: diffusers\' round(clamp(x/2 + 0.5, 0, 1)·255), half to even', () => {
  assert.deepEqual([-3, -1, 0, 1, 7, NaN].map(toLevel), [0, 0, 128, 255, 255, 0]);
  let ties = 0;
  for (let k = 0; k < 255; k++) {
    const v = Math.fround((k + 0.5) / 255);
    if (Math.fround(v * 255) !== k + 0.5) continue;
    ties++;
    assert.equal(toLevel((v - 0.5) * 2), k % 2 === 0 ? k : k + 1, `level ${k}.5`);
  }
  assert.ok(ties > 10, `${ties} exact ties checked`);
});

test('tiling config: defaults, MAX_LATENT_SIDE follows tiling, bad values stop the start', () => {
  const d = loadConfig({});
  assert.deepEqual([d.tileLatentSide, d.tileOverlap, d.maxUntiledLatentSide, d.maxLatentSide], [128, 0.25, 128, 512]);
  assert.equal(loadConfig({ TILE_LATENT_SIDE: '0' }).maxLatentSide, 128);
  assert.equal(loadConfig({ TILE_LATENT_SIDE: '64', TILE_OVERLAP: '0.5', MAX_LATENT_SIDE: '300' }).maxLatentSide, 300);
  assert.throws(() => loadConfig({ TILE_OVERLAP: '1' }), ConfigError);
  assert.throws(() => loadConfig({ TILE_LATENT_SIDE: '200' }), /TILE_LATENT_SIDE/);
  assert.throws(() => loadConfig({ TILE_LATENT_SIDE: '1', TILE_OVERLAP: '0.5' }), /no stride/);
});

// ---- through HTTP on the fixture decoder ----

const Q = 'scaling_factor=1'; // the tiled fixture latents are in decoder space
const NPY = { 'content-type': 'application/x-npy' };
const tiledNpy = (): Buffer => readFileSync(fixture('tiled-latents.npy'));

async function tiledReference(): Promise<{ latents: Float32Array; float: Float32Array; rgb: Uint8Array }> {
  return {
    latents: (await readNpy(fixture('tiled-latents.npy'))).data as Float32Array,
    float: (await readNpy(fixture('tiled-reference.npy'))).data as Float32Array,
    rgb: (await readNpy(fixture('tiled-reference-rgb.npy'))).data as Uint8Array,
  };
}

test('tiling HTTP: 40x40 latents in tiles of 16 give the diffusers tiled reference (png, float)', async (t) => {
  const ref = await tiledReference();
  const s = await startService(t, { TILE_LATENT_SIDE: '16' });
  const png = await s.app.inject({ method: 'POST', url: `/decode?${Q}`, headers: NPY, payload: tiledNpy() });
  assert.equal(png.statusCode, 200, png.body);
  const img = await pixels(png.rawPayload);
  assert.deepEqual([img.width, img.height], [320, 320]);
  const rgbDiff = maxAbsDiff(img.data, ref.rgb);
  assert.ok(rgbDiff <= 1, `png differs by ${rgbDiff} levels`);

  const float = await s.app.inject({ method: 'POST', url: `/decode?${Q}&output_type=pt`, headers: NPY, payload: tiledNpy() });
  assert.equal(float.statusCode, 200, float.body);
  assert.equal(float.headers.shape, '[1,3,320,320]');
  const floatDiff = maxAbsDiff(toFloat32(float.rawPayload, 'float32'), ref.float);
  t.diagnostic(`tiled float output vs tiled-reference.npy: max |Δ| ${floatDiff.toExponential(2)}; rgb ${rgbDiff} levels`);
  assert.ok(floatDiff <= 1e-3, `float differs by ${floatDiff}`);

  // Untiled, the same latents decode to a different image: the tiles really were cross-faded.
  const whole = await s.app.inject({ method: 'POST', url: `/decode?${Q}&output_type=pt&partial_postprocess=true&tile_size=0`, headers: NPY, payload: tiledNpy() });
  assert.equal(whole.statusCode, 200, whole.body);
  assert.ok(maxAbsDiff(whole.rawPayload, ref.rgb) > 8, 'one-piece decode differs from the tiled one');
});

test('tiling HTTP: request options choose tiling; bad settings and sizes get clear 4xx', async (t) => {
  const ref = await tiledReference();
  const s = await startService(t, { MAX_QUEUE_SIZE: '64' }); // default tiles of 128: 40² is not tiled
  const asked = await s.app.inject({ method: 'POST', url: `/decode?${Q}&tile_size=16&tile_overlap=0.25&output_type=pt&partial_postprocess=1`, headers: NPY, payload: tiledNpy() });
  assert.equal(asked.statusCode, 200, asked.body);
  assert.ok(maxAbsDiff(asked.rawPayload, ref.rgb) <= 1, 'tile_size=16 from the query string tiles like TILE_LATENT_SIDE=16');
  assert.equal(asked.headers.shape, '[1,320,320,3]');
  // From JSON fields too: tile_size=0 there turns off the tiling a 129-latent side needs.
  const json = await s.app.inject({ method: 'POST', url: '/decode', headers: { 'content-type': 'application/json' }, payload: JSON.stringify({
    latents: Buffer.alloc(4 * 4 * 129 * 8).toString('base64'), shape: [1, 4, 129, 8], tile_size: 0, tile_overlap: 0.5,
  }) });
  assert.equal(json.statusCode, 400, json.body);
  assert.equal((json.json() as { error: { code: string } }).error.code, 'LATENT_TOO_LARGE');

  const raw = { 'content-type': 'application/octet-stream' };
  const bad = async (url: string, payload: Buffer, status: number, code: string, message: RegExp): Promise<void> => {
    const res = await s.app.inject({ method: 'POST', url, headers: raw, payload });
    assert.equal(res.statusCode, status, `${url}: ${res.body}`);
    const err = (res.json() as { error: { code: string; message: string } }).error;
    assert.equal(err.code, code, url);
    assert.match(err.message, message, url);
  };
  const lat = bytesOf(ref.latents);
  await bad(`/decode?shape=1,4,129,8&tile_size=0&${Q}`, Buffer.alloc(4 * 4 * 129 * 8), 400, 'LATENT_TOO_LARGE', /129x8 is over the maximum side of 128 .* tiling off .* allows up to 512/);
  await bad(`/decode?shape=1,4,40,40&tile_overlap=1&${Q}`, lat, 400, 'BAD_PARAMETER', /tile_overlap="1"/);
  await bad(`/decode?shape=1,4,40,40&tile_size=-2&${Q}`, lat, 400, 'BAD_PARAMETER', /tile_size="-2"/);
  await bad(`/decode?shape=1,4,40,40&tile_size=200&${Q}`, lat, 400, 'BAD_PARAMETER', /tile_size=200 is over .* \(128\)/);
  await bad(`/decode?shape=1,4,40,40&tile_size=2&tile_overlap=0.6&${Q}`, lat, 400, 'BAD_PARAMETER', /no stride/);
  await bad(`/decode?shape=1,4,40,40&tile_size=4&tile_overlap=0&${Q}`, lat, 413, 'BATCH_TOO_LARGE', /100 tiles .* queue holds \(64\)/);
  assert.equal(s.registry.get(undefined)!.batcher.waitingSamples, 0);
});

test('tiling HTTP: tiles split across runs and share a run with another request of their shape', async (t) => {
  const ref = await tiledReference();
  const f = await loadFixture();
  const s = await startService(t, { TILE_LATENT_SIDE: '16', MAX_BATCH_SIZE: '4', MAX_QUEUE_DELAY_MS: '20' });
  const batcher = s.registry.get(undefined)!.batcher;
  const tiled = s.app.inject({ method: 'POST', url: `/decode?${Q}&output_type=pt&partial_postprocess=1`, headers: NPY, payload: tiledNpy() });
  while (batcher.runningBatches === 0) await new Promise((r) => setTimeout(r, 1)); // the first 4 tiles run
  const other = s.app.inject({ method: 'POST', url: `/decode?shape=1,4,16,16&${Q}&output_type=pt&partial_postprocess=1`, payload: bytesOf(sampleLatents(f, 1)) });
  const [a, b] = await Promise.all([tiled, other]);
  assert.equal(a.statusCode, 200, a.body);
  assert.ok(maxAbsDiff(a.rawPayload, ref.rgb) <= 1, 'tiles from several runs assemble into the reference');
  assert.equal(b.statusCode, 200, b.body);
  assert.ok(maxAbsDiff(b.rawPayload, f.rgb.subarray(128 * 128 * 3)) <= 1, 'the other request gets its own image');
  const runs = (key: string): number[] => s.batches.filter((x) => x.key === key).map((x) => x.sampleCount);
  t.diagnostic(`runs: ${s.batches.map((x) => `${x.key}:${x.sampleCount}`).join(', ')}`);
  assert.ok(s.batches.every((x) => x.sampleCount <= 4), 'no run over MAX_BATCH_SIZE');
  assert.deepEqual([runs('16x4'), runs('4x16'), runs('4x4')], [[3], [3], [1]], 'each edge shape in one run');
  // 9 full tiles + 1 other sample in 3 runs of at most 4: one run held both requests.
  assert.equal(runs('16x16').reduce((x, y) => x + y, 0), 10);
  assert.equal(runs('16x16').length, 3);
});

test('tiling HTTP: a deadline that passes mid-way gives 504, drops the remaining tiles, leaves the batcher idle', async (t) => {
  const s = await startService(t, { TILE_LATENT_SIDE: '16', MAX_BATCH_SIZE: '1', MAX_QUEUE_DELAY_MS: '0' });
  const res = await s.app.inject({ method: 'POST', url: `/decode?${Q}`, headers: { ...NPY, 'x-request-timeout-ms': '40' }, payload: tiledNpy() });
  assert.equal(res.statusCode, 504, res.body);
  assert.equal((res.json() as { error: { code: string } }).error.code, 'DEADLINE_EXCEEDED');
  await s.registry.idle();
  const batcher = s.registry.get(undefined)!.batcher;
  assert.equal(batcher.waitingSamples, 0);
  assert.equal(batcher.runningBatches, 0);
  assert.ok(s.batches.length < 16, `${s.batches.length} of 16 tiles ran`);
  assert.equal(s.host.inflight, 0);
  const again = await s.app.inject({ method: 'POST', url: `/decode?${Q}&output_type=pt&partial_postprocess=1`, headers: NPY, payload: tiledNpy() });
  assert.equal(again.statusCode, 200, 'the next tiled request is served');
});


test('tiling HTTP: one tile failing fails the request and drops its other tiles', async (t) => {
  const s: TestService = await startService(t, { MODEL_PATH: fragileModel(tempDir(t)), TILE_LATENT_SIDE: '16', MAX_BATCH_SIZE: '1', MAX_QUEUE_DELAY_MS: '0', WARMUP_LATENT_SIZES: '16x16' });
  // 32x40: tiles of 16x16 (fine), 16x4 and 4x16 edges... the 16x4 ones fail (64 values per channel).
  const res = await s.app.inject({ method: 'POST', url: `/decode?shape=1,4,32,40&${Q}`, payload: Buffer.alloc(4 * 4 * 32 * 40) });
  assert.equal(res.statusCode, 500, res.body);
  assert.equal((res.json() as { error: { code: string } }).error.code, 'INFERENCE_FAILED');
  await s.registry.idle();
  assert.equal(s.registry.get(undefined)!.batcher.waitingSamples, 0);
  assert.equal(s.registry.get(undefined)!.batcher.reservedSamples, 0, 'the failed request gave back the tiles it never queued');
  const planned = planTiles(32, 40, 16, 0.25);
  const tiles = planned.rows.length * planned.cols.length;
  assert.ok(s.batches.length < tiles, `${s.batches.length} of ${tiles} tiles ran`);
  assert.ok(s.batches.some((b) => !b.ok));
});

test('tiling HTTP: a tile whose output is not finite is named as a tile, not a sample', async (t) => {
  const s = await startService(t, { TILE_LATENT_SIDE: '16', MAX_QUEUE_DELAY_MS: '0' });
  const huge = new Float32Array(4 * 40 * 40).fill(1e38);
  const res = await s.app.inject({ method: 'POST', url: `/decode?shape=1,4,40,40&${Q}`, payload: bytesOf(huge) });
  assert.equal(res.statusCode, 422, res.body);
  const err = (res.json() as { error: { code: string; message: string } }).error;
  assert.equal(err.code, 'NON_FINITE_OUTPUT');
  assert.match(err.message, /NaN or infinite values for tile \d+,\d+ \(latent rows \d+–\d+, columns \d+–\d+\) of sample 0 of 1/);
  await s.registry.idle();
  assert.equal(s.registry.get(undefined)!.batcher.reservedSamples, 0);
});
