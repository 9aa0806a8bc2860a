// FLUX.2 (diffusers AutoencoderKLFlux2) both ways against Flux2Pipeline's own results
// (test/fixtures/encode): --family flux2 keeps the BatchNorm statistics; /decode takes the
// denoiser's patchified or packed latents; /encode gives them.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { convertCheckpoint } from '../src/convert/convert.js';
import { parseNpy } from '../src/tensor/npy.js';
import { encodeFixture, maxAbs, npy } from './helpers/encode-fixtures.js';
import { bytesOf, startService, tempDir } from './helpers/service.js';

test('FLUX.2: convert keeps the BatchNorm statistics; /decode of patchified and packed latents matches the pipeline within a level; /encode gives its normalised latents', async (t) => {
  const dir = tempDir(t);
  const r = await convertCheckpoint({ weights: encodeFixture('flux2-diffusers.safetensors'), out: join(dir, 'flux2', 'model.onnx'), family: 'flux2' });
  const config = JSON.parse(await readFile(join(dir, 'flux2', 'config.json'), 'utf8')) as Record<string, unknown>;
  assert.deepEqual([r.config.family, config.latentChannels, config.patchSize, config.batchNormEps, (config.latentsMean as number[]).length, (config.latentsStd as number[]).length],
    ['flux2', 32, 2, 1e-4, 128, 128]);
  assert.ok(r.encoder, 'the encoder is written beside the decoder');
  const { app } = await startService(t, { MODEL_PATH: '', MODELS_DIR: dir });

  const rgb = (parseNpy(await readFile(encodeFixture('flux2-reference-rgb.npy')))).data as Uint8Array;
  const decode = async (url: string, file: string): Promise<number> => {
    const res = await app.inject({ method: 'POST', url, payload: bytesOf(await npy(file)) });
    assert.equal(res.statusCode, 200, res.body);
    assert.deepEqual(JSON.parse(res.headers.shape as string), [1, 96, 128, 3]);
    return maxAbs(res.rawPayload, rgb);
  };
  const tail = 'output_type=pt&partial_postprocess=true';
  const patched = await decode(`/decode?shape=1,128,6,8&${tail}`, 'flux2-latents.npy');
  const packed = await decode(`/decode?shape=1,48,128&height=96&width=128&${tail}`, 'flux2-latents-packed.npy');
  t.diagnostic(`decode: patchified ${patched} level(s), packed ${packed} level(s) from the pipeline`);
  assert.ok(patched <= 1 && packed <= 1);

  const png = await readFile(encodeFixture('image-96x64.png'));
  const enc = async (url: string): Promise<{ shape: number[]; data: Float32Array }> => {
    const res = await app.inject({ method: 'POST', url, payload: png });
    assert.equal(res.statusCode, 200, res.body);
    return { shape: JSON.parse(res.headers.shape as string) as number[], data: new Float32Array(res.rawPayload.buffer.slice(res.rawPayload.byteOffset, res.rawPayload.byteOffset + res.rawPayload.byteLength)) };
  };
  const mean = await enc('/encode?do_scaling=false');
  assert.deepEqual(mean.shape, [1, 32, 8, 12]);
  const dMean = maxAbs(mean.data, await npy('flux2-encode-96x64-mean.npy'));
  const latents = await enc('/encode');
  assert.deepEqual(latents.shape, [1, 128, 4, 6]);
  const dLatents = maxAbs(latents.data, await npy('flux2-encode-96x64-latents.npy'));
  const pk = await enc('/encode?pack=true');
  assert.deepEqual(pk.shape, [1, 24, 128]);
  const dPacked = maxAbs(pk.data, await npy('flux2-encode-96x64-latents-packed.npy'));
  t.diagnostic(`encode: mean ${dMean.toExponential(2)}, normalised ${dLatents.toExponential(2)}, packed ${dPacked.toExponential(2)}`);
  assert.ok(dMean <= 0.0005 && dLatents <= 0.003 && dPacked <= 0.003);

  const odd = await app.inject({ method: 'POST', url: '/encode?resize=false', payload: await readFile(encodeFixture('image-64x64.png')) });
  assert.equal(odd.statusCode, 200, 'a 64x64 image is a multiple of 16');
});
