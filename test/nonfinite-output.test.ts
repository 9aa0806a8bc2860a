// No silent garbage: finite latents that drive the decoder to NaN/Inf get a clear error, never a
// black image or a tensor of NaN with status 200.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { bytesOf, loadFixture, sampleLatents, startService } from './helpers/service.js';

test('non-finite output: latents of 1e38 make the decoder overflow: 422 NON_FINITE_OUTPUT naming the sample, for images and tensors', async (t) => {
  const { app } = await startService(t);
  const f = await loadFixture();
  const good = sampleLatents(f, 0);
  const huge = new Float32Array(good.length).fill(1e38);
  const two = new Float32Array([...good, ...huge]);
  for (const out of ['format=png', 'output_type=pt', 'output_type=pt&partial_postprocess=true']) {
    const res = await app.inject({ method: 'POST', url: `/decode?shape=2,4,16,16&scaling_factor=1&${out}`, payload: bytesOf(two) });
    assert.equal(res.statusCode, 422, `${out}: ${res.body}`);
    const err = res.json().error as { code: string; message: string };
    assert.equal(err.code, 'NON_FINITE_OUTPUT');
    assert.match(err.message, /NaN or infinite values for sample 1 of 2/);
  }
  const ok = await app.inject({ method: 'POST', url: '/decode?shape=1,4,16,16&scaling_factor=1', payload: bytesOf(good) });
  assert.equal(ok.statusCode, 200, 'a finite sample in the same model still decodes');
});
