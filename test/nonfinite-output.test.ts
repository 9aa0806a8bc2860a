// No silent garbage: latents that would drive the decoder to NaN/Inf get a clear error, never a
// black or flat image or a tensor of NaN with status 200. Out-of-range latents are refused before
// the run (400 LATENT_OUT_OF_RANGE); a decoder that still overflows answers 422 NON_FINITE_OUTPUT.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { overflowingModel } from './helpers/models.js';
import { bytesOf, loadFixture, sampleLatents, startService, tempDir } from './helpers/service.js';

test('non-finite output: a decoder that overflows answers 422 NON_FINITE_OUTPUT naming the sample, for images and tensors', async (t) => {
  const { app } = await startService(t, { MODEL_PATH: overflowingModel(tempDir(t)), WARMUP_LATENT_SIZES: '16x16' });
  const small = new Float32Array(4 * 16 * 16).fill(1e-3);
  const large = new Float32Array(small.length).fill(5e3); // in range: 4 × 5e3 × 1e35 overflows float32
  const two = new Float32Array([...small, ...large]);
  for (const out of ['format=png', 'output_type=pt', 'output_type=pt&partial_postprocess=true']) {
    const res = await app.inject({ method: 'POST', url: `/decode?shape=2,4,16,16&scaling_factor=1&${out}`, payload: bytesOf(two) });
    assert.equal(res.statusCode, 422, `${out}: ${res.body}`);
    const err = res.json().error as { code: string; message: string };
    assert.equal(err.code, 'NON_FINITE_OUTPUT');
    assert.match(err.message, /NaN or infinite values for sample 1 of 2/);
  }
  const ok = await app.inject({ method: 'POST', url: '/decode?shape=1,4,16,16&scaling_factor=1', payload: bytesOf(small) });
  assert.equal(ok.statusCode, 200, 'a finite sample in the same model still decodes');
});

test('non-finite output: latents at the accepted bound (±1e4) decode to a real image; beyond it, 400 before the run', async (t) => {
  const { app } = await startService(t);
  const f = await loadFixture();
  const extreme = new Float32Array(4 * 16 * 16).map((_, i) => (i % 3 === 0 ? 1e4 : i % 3 === 1 ? -1e4 : 5e3));
  const res = await app.inject({ method: 'POST', url: '/decode?shape=1,4,16,16&do_scaling=false&output_type=pt&partial_postprocess=true', payload: bytesOf(extreme) });
  assert.equal(res.statusCode, 200, res.body);
  assert.ok(new Set(res.rawPayload).size > 16, 'not a flat image');
  // Finite latents of 1e20 once made GroupNorm's variance +Inf: a flat grey image with 200.
  const huge = sampleLatents(f, 0).map((v) => v * 1e20);
  const refused = await app.inject({ method: 'POST', url: '/decode?shape=1,4,16,16&scaling_factor=1', payload: bytesOf(huge) });
  assert.equal(refused.statusCode, 400, refused.body);
  assert.equal(refused.json().error.code, 'LATENT_OUT_OF_RANGE');
  assert.match(refused.json().error.message, /at \[0, \d, \d+, \d+\] \(flat index \d+\) is beyond ±10000/);
});
