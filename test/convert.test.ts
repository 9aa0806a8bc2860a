import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFile, readdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { convertCheckpoint } from '../src/convert/convert.js';
import { encodeNpy, parseNpy, readNpy } from '../src/tensor/npy.js';
import { halfBitsToFloat32, toFloat16Bits } from '../src/tensor/dtype.js';
import { writeSafetensors } from '../src/convert/safetensors.js';
import type { VaeConfig } from '../src/convert/vae-weights.js';
import { seededVae } from '../scripts/make-seeded-vae.js';
import { REPO_ROOT, compareWithReference, fixture, modelMetadata, rewriteCheckpoint, runDecoder, tempDir } from './helpers/convert-fixtures.js';

const TOLERANCE = 1e-4; // what the fixture README promises for a correct float32 decoder
const MIN_FP16_PSNR = 40;

test('LDM checkpoint (F32, first_stage_model. prefix, unrelated keys) converts and matches reference.npy', async (t) => {
  const dir = tempDir(t);
  const out = join(dir, 'sd', 'model.onnx');
  const r = await convertCheckpoint({ weights: fixture('ldm.safetensors'), out });
  assert.deepEqual(
    { ...r.config },
    { name: 'sd', latentChannels: 4, scalingFactor: 0.18215, shiftFactor: 0, precision: 'fp32', source: 'ldm.safetensors', ch: 32, chMult: [1, 2, 4, 4], numResBlocks: 2 },
  );
  assert.equal(r.bytes, (await stat(out)).size);
  const { maxAbs, dims } = await compareWithReference(out);
  t.diagnostic(`max abs error ${maxAbs.toExponential(2)}`);
  assert.deepEqual(dims, [2, 3, 128, 128]);
  assert.ok(maxAbs <= TOLERANCE, `max abs error ${maxAbs}`);
  assert.deepEqual(JSON.parse(await readFile(join(dir, 'sd', 'config.json'), 'utf8')), {
    name: 'sd', latentChannels: 4, scalingFactor: 0.18215, shiftFactor: 0, precision: 'fp32', source: 'ldm.safetensors',
  });
  assert.deepEqual(await modelMetadata(out), {
    name: 'sd', scaling_factor: '0.18215', shift_factor: '0', latent_channels: '4', precision: 'fp32', source: 'ldm.safetensors',
  });
  assert.deepEqual((await readdir(join(dir, 'sd'))).sort(), ['config.json', 'model.onnx'], 'no .partial file is left behind');
});

test('diffusers checkpoint (F16) converts and matches reference.npy; a bare .onnx path writes no config.json', async (t) => {
  const dir = tempDir(t);
  const out = join(dir, 'vae.onnx');
  const r = await convertCheckpoint({ weights: fixture('diffusers.safetensors'), out, scalingFactor: 0.13025, shiftFactor: 0.1 });
  assert.equal(r.config.name, 'vae');
  assert.equal(r.config.scalingFactor, 0.13025);
  const { maxAbs } = await compareWithReference(out);
  assert.ok(maxAbs <= TOLERANCE, `max abs error ${maxAbs}`);
  assert.deepEqual(await readdir(dir), ['vae.onnx']);
  assert.equal((await modelMetadata(out)).shift_factor, '0.1');
});

test('--fp16 conversion stays within 40 dB PSNR of reference.npy at half the size', async (t) => {
  const dir = tempDir(t);
  const fp32 = await convertCheckpoint({ weights: fixture('ldm.safetensors'), out: join(dir, 'fp32.onnx') });
  const out = join(dir, 'fp16.onnx');
  const r = await convertCheckpoint({ weights: fixture('ldm.safetensors'), out, fp16: true });
  assert.equal(r.config.precision, 'fp16');
  assert.ok(r.bytes < fp32.bytes * 0.55, `fp16 model ${r.bytes} bytes vs fp32 ${fp32.bytes}`);
  const { psnr, maxAbs, dims } = await compareWithReference(out);
  t.diagnostic(`fp16 PSNR ${psnr.toFixed(1)} dB (data range 2), max abs error ${maxAbs.toExponential(2)}`);
  assert.deepEqual(dims, [2, 3, 128, 128]);
  assert.ok(psnr >= MIN_FP16_PSNR, `PSNR ${psnr} dB`);
});

test("diffusers' legacy attention names (query/key/value/proj_attn) convert", async (t) => {
  const dir = tempDir(t);
  const legacy: Record<string, string> = { to_q: 'query', to_k: 'key', to_v: 'value', 'to_out.0': 'proj_attn' };
  const weights = await rewriteCheckpoint(fixture('diffusers.safetensors'), join(dir, 'legacy.safetensors'), (ts) =>
    ts.map((x) => ({ ...x, name: x.name.replace(/attentions\.0\.(to_q|to_k|to_v|to_out\.0)\./, (_, n: string) => `attentions.0.${legacy[n]}.`) })));
  const out = join(dir, 'legacy.onnx');
  await convertCheckpoint({ weights, out });
  const { maxAbs } = await compareWithReference(out);
  assert.ok(maxAbs <= TOLERANCE, `max abs error ${maxAbs}`);
});

test('a 16-channel decoder without post_quant_conv: inferred, and both layouts give the same output', async (t) => {
  const dir = tempDir(t);
  const cfg: VaeConfig = { ch: 32, chMult: [1, 2], numResBlocks: 1, latentChannels: 16, hasPostQuantConv: false };
  const outputs = [];
  for (const layout of ['ldm', 'diffusers'] as const) {
    const weights = join(dir, `${layout}.safetensors`);
    await writeSafetensors(weights, seededVae(cfg, { seed: 7, layout, prefix: layout === 'ldm' ? 'vae.' : '' }));
    await assert.rejects(convertCheckpoint({ weights, out: join(dir, 'x.onnx') }), /16-channel VAE's scaling factor cannot be inferred/);
    const out = join(dir, `${layout}.onnx`);
    const r = await convertCheckpoint({ weights, out, scalingFactor: 1.5305, shiftFactor: 0.0609 });
    assert.deepEqual([r.config.latentChannels, r.config.ch, r.config.chMult, r.config.numResBlocks], [16, 32, [1, 2], 1]);
    assert.equal((await modelMetadata(out)).latent_channels, '16');
    const latents = Float32Array.from({ length: 1 * 16 * 6 * 5 }, (_, i) => Math.sin(i * 0.37));
    outputs.push(await runDecoder(out, latents, [1, 16, 6, 5]));
  }
  const [ldm, diffusers] = outputs as [Awaited<ReturnType<typeof runDecoder>>, Awaited<ReturnType<typeof runDecoder>>];
  assert.deepEqual(ldm.dims, [1, 3, 12, 10]); // one upsampling level: 2×
  assert.ok(ldm.data.every(Number.isFinite));
  assert.ok(ldm.data.some((v) => Math.abs(v) > 1e-3), 'output is not all zeros');
  assert.deepEqual(diffusers.data, ldm.data);
});

test('BF16 weights are widened to float32 and convert', async (t) => {
  const dir = tempDir(t);
  const toBf16 = (x: Float32Array) => {
    const words = new Uint32Array(x.buffer, x.byteOffset, x.length);
    return Uint16Array.from(words, (w) => (w + 0x7fff + ((w >>> 16) & 1)) >>> 16); // round to nearest even
  };
  const weights = await rewriteCheckpoint(fixture('ldm.safetensors'), join(dir, 'bf16.safetensors'), (ts) =>
    ts.map((x) => ({ ...x, dtype: 'BF16' as const, data: toBf16(x.data as Float32Array) })));
  const out = join(dir, 'bf16.onnx');
  await convertCheckpoint({ weights, out });
  const { psnr } = await compareWithReference(out);
  t.diagnostic(`bfloat16 weights: PSNR ${psnr.toFixed(1)} dB`);
  assert.ok(psnr >= 30 && psnr < 100, `PSNR ${psnr} dB: bfloat16's 8-bit mantissa must cost some accuracy, not all of it`);
});

test('extra unrelated keys (UNet, text encoder, quant_conv) are ignored', async (t) => {
  const dir = tempDir(t);
  const extra = (name: string) => ({ name, dtype: 'F32' as const, shape: [3], data: new Float32Array([1, 2, 3]) });
  const weights = await rewriteCheckpoint(fixture('ldm.safetensors'), join(dir, 'full.safetensors'), (ts) =>
    [extra('model.diffusion_model.x'), extra('cond_stage_model.transformer.y'), ...ts]);
  const out = join(dir, 'full.onnx');
  await convertCheckpoint({ weights, out });
  assert.ok((await compareWithReference(out)).maxAbs <= TOLERANCE);
});

test('a truncated checkpoint and a bad header fail with messages naming the file and tensor', async (t) => {
  const dir = tempDir(t);
  const truncated = join(dir, 'truncated.safetensors');
  const src = await readFile(fixture('ldm.safetensors'));
  await writeFile(truncated, src.subarray(0, src.length - 1000));
  await assert.rejects(convertCheckpoint({ weights: truncated, out: join(dir, 'a.onnx') }),
    (err: Error) => err.message.includes(truncated) && /is truncated: tensor \S+ needs bytes/.test(err.message));
  const headerCut = join(dir, 'header-cut.safetensors');
  await writeFile(headerCut, src.subarray(0, 100));
  await assert.rejects(convertCheckpoint({ weights: headerCut, out: join(dir, 'b.onnx') }), /header-cut\.safetensors is truncated: the header needs/);
  const garbage = join(dir, 'garbage.safetensors');
  const bad = Buffer.alloc(16);
  bad.writeBigUInt64LE(8n, 0);
  bad.write('{"a": [', 8);
  await writeFile(garbage, bad);
  await assert.rejects(convertCheckpoint({ weights: garbage, out: join(dir, 'c.onnx') }), /garbage\.safetensors has a bad safetensors header/);
  assert.deepEqual((await readdir(dir)).filter((f) => f.includes('.onnx')), [], 'nothing is written on failure');
});

test('a missing or mis-shaped tensor fails naming the tensor and the file', async (t) => {
  const dir = tempDir(t);
  const missing = await rewriteCheckpoint(fixture('diffusers.safetensors'), join(dir, 'missing.safetensors'), (ts) =>
    ts.filter((x) => x.name !== 'decoder.up_blocks.1.resnets.2.conv2.weight'));
  await assert.rejects(convertCheckpoint({ weights: missing, out: join(dir, 'a.onnx') }),
    (err: Error) => err.message === `${missing}: missing tensor decoder.up_blocks.1.resnets.2.conv2.weight`);
  const misshaped = await rewriteCheckpoint(fixture('ldm.safetensors'), join(dir, 'misshaped.safetensors'), (ts) =>
    ts.map((x) => (x.name.endsWith('mid.attn_1.v.bias') ? { ...x, shape: [64], data: x.data.subarray(0, 64) } : x)));
  await assert.rejects(convertCheckpoint({ weights: misshaped, out: join(dir, 'b.onnx') }),
    (err: Error) => err.message === `${misshaped}: tensor first_stage_model.decoder.mid.attn_1.v.bias has shape [64], expected [128]`);
});

test('npy: reads the fixtures and round-trips <f4, <f2 and |u1', async () => {
  const rgb = await readNpy(fixture('reference-rgb.npy'));
  assert.equal(rgb.dtype, '|u1');
  assert.deepEqual(rgb.shape, [2, 128, 128, 3]);
  const ref = (await readNpy(fixture('reference.npy'))).data as Float32Array;
  // reference-rgb.npy is round(clamp(x/2 + 0.5, 0, 1) * 255) in NHWC of reference.npy (NCHW)
  const x = ref[(1 * 3 + 2) * 128 * 128 + 5 * 128 + 7]!;
  assert.equal(rgb.data[((1 * 128 + 5) * 128 + 7) * 3 + 2], Math.round(Math.min(1, Math.max(0, x / 2 + 0.5)) * 255));
  const half = toFloat16Bits(new Float32Array([1, -2.5, 65504, 1e-7, 0.1]));
  for (const arr of [
    { dtype: '<f4' as const, shape: [2, 2], data: new Float32Array([1, 2, 3, 4]) },
    { dtype: '<f2' as const, shape: [5], data: half },
    { dtype: '|u1' as const, shape: [1, 3], data: new Uint8Array([0, 128, 255]) },
  ]) {
    const back = parseNpy(encodeNpy(arr));
    assert.deepEqual(back, arr);
  }
  assert.deepEqual([...halfBitsToFloat32(half)], [1, -2.5, 65504, 1.1920928955078125e-7, 0.0999755859375]);
});

test('npy: truncated data is refused', () => {
  const bytes = encodeNpy({ dtype: '<f4', shape: [4], data: new Float32Array(4) });
  assert.throws(() => parseNpy(bytes.subarray(0, bytes.length - 1), 'x.npy'), /x\.npy is truncated: shape \(4\) <f4 needs 16 data bytes, got 15/);
});

function cli(args: string[]) {
  return spawnSync(process.execPath, ['--import', 'tsx', 'src/cli.ts', ...args], { cwd: REPO_ROOT, encoding: 'utf8' });
}

test('CLI: --help exits 0; usage errors exit 2; convert works end to end; failures exit 1 without a stack', async (t) => {
  const help = cli(['--help']);
  assert.equal(help.status, 0);
  assert.match(help.stdout, /latent-decoder <command>/);
  const convertHelp = cli(['convert', '--help']);
  assert.equal(convertHelp.status, 0);
  assert.match(convertHelp.stdout, /--scaling-factor F/);
  const usage = cli(['convert', 'only-one-arg']);
  assert.equal(usage.status, 2);
  assert.match(usage.stderr, /convert takes 2 arguments, got 1/);
  assert.equal(cli(['convert', 'a', 'b', '--scaling-factor', 'abc']).status, 2);

  const dir = tempDir(t);
  const out = join(dir, 'models', 'sd-fp16', 'model.onnx');
  const run = cli(['convert', fixture('diffusers.safetensors'), out, '--fp16', '--name', 'sd-fp16']);
  assert.equal(run.status, 0, run.stderr);
  assert.equal(run.stderr, '', 'no progress output when stderr is not a TTY');
  assert.match(run.stdout, /sd-fp16, 4 latent channels, ch 32 × \[1, 2, 4, 4\], 2 res blocks, fp16/);
  assert.ok((await compareWithReference(out)).psnr >= MIN_FP16_PSNR);
  const models = cli(['models', '--models-dir', join(dir, 'models')]);
  assert.equal(models.status, 0);
  assert.match(models.stdout, /^sd-fp16\s+4\s+fp16\s+0\.18215\s+0\s+\d+\.\d MiB\s+decode$/m);

  const fail = cli(['convert', join(dir, 'nope.safetensors'), join(dir, 'x.onnx')]);
  assert.equal(fail.status, 1);
  assert.match(fail.stderr, /^latent-decoder: ENOENT/);
  assert.doesNotMatch(fail.stderr, /\n\s+at /);
});
