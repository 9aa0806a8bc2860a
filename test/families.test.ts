// Family presets (--family → factors, recorded in config.json and the metadata) and the --fp16
// guard, on the KL VAE and TAESD golden fixtures.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { convertCheckpoint } from '../src/convert/convert.js';
import { writeSafetensors } from '../src/convert/safetensors.js';
import type { VaeConfig } from '../src/convert/vae-weights.js';
import { loadConfig } from '../src/config.js';
import { discoverModels } from '../src/serving/registry.js';
import { FAMILIES } from '../src/serving/model-config.js';
import { decodeModel, encodeModel } from '../src/onnx/graph.js';
import { startService } from './helpers/service.js';
import { seededVae } from '../scripts/make-seeded-vae.js';
import { REPO_ROOT, compareWithReference, fixture, modelMetadata, rewriteCheckpoint, tempDir } from './helpers/convert-fixtures.js';

const taesd = (file: string): string => join(REPO_ROOT, 'test', 'fixtures', 'taesd', file);
/** Multiplies one tensor of a checkpoint (float32) by `k`. */
const scaled = (name: string, k: number) => (ts: Parameters<Parameters<typeof rewriteCheckpoint>[2]>[0]) =>
  ts.map((x) => (x.name === name ? { ...x, data: (x.data as Float32Array).map((v) => v * k) } : x));

test('--family sets the factors and is recorded; explicit factors win; the table holds every family', async (t) => {
  const dir = tempDir(t);
  assert.deepEqual(Object.keys(FAMILIES), ['sd1', 'sd2', 'sdxl', 'sd3', 'flux', 'flux2', 'taesd', 'taesdxl', 'taesd3', 'taef1', 'wan2.1', 'qwen-image']);
  const out = join(dir, 'sdxl', 'model.onnx');
  const r = await convertCheckpoint({ weights: fixture('ldm.safetensors'), out, family: 'sdxl' });
  assert.deepEqual([r.config.scalingFactor, r.config.shiftFactor, r.config.family], [0.13025, 0, 'sdxl']);
  assert.equal((JSON.parse(await readFile(join(dir, 'sdxl', 'config.json'), 'utf8')) as { family: string }).family, 'sdxl');
  const meta = await modelMetadata(out);
  assert.deepEqual([meta.scaling_factor, meta.family], ['0.13025', 'sdxl']);
  const own = await convertCheckpoint({ weights: fixture('ldm.safetensors'), out: join(dir, 'own.onnx'), family: 'sd2', scalingFactor: 0.2 });
  assert.deepEqual([own.config.scalingFactor, own.config.shiftFactor, own.config.family], [0.2, 0, 'sd2']);
  await assert.rejects(convertCheckpoint({ weights: fixture('ldm.safetensors'), out: join(dir, 'x.onnx'), family: 'flux' }),
    /family flux takes a 16-channel KL VAE decoder, but the weights hold a 4-channel KL VAE decoder; choose one of sd1, sd2, sdxl/);
  await assert.rejects(convertCheckpoint({ weights: fixture('ldm.safetensors'), out: join(dir, 'y.onnx'), family: 'sd15' as never }),
    /unknown family "sd15": choose one of sd1, sd2, sdxl, sd3, flux, flux2, taesd, taesdxl, taesd3, taef1/);
});

test('a 16-channel KL VAE needs --family (the error names the choices); with flux it gets FLUX factors', async (t) => {
  const dir = tempDir(t);
  const cfg: VaeConfig = { ch: 32, chMult: [1, 2], numResBlocks: 1, latentChannels: 16, hasPostQuantConv: false };
  const weights = join(dir, 'flux-vae.safetensors');
  await writeSafetensors(weights, seededVae(cfg, { seed: 3, layout: 'diffusers' }));
  await assert.rejects(convertCheckpoint({ weights, out: join(dir, 'a.onnx') }),
    /16-channel VAE's scaling factor cannot be inferred from its weights \(sd3: 1\.5305 with shift 0\.0609, flux: 0\.3611 with shift 0\.1159\); pass --family sd3\|flux/);
  const r = await convertCheckpoint({ weights, out: join(dir, 'flux.onnx'), family: 'flux' });
  assert.deepEqual([r.config.scalingFactor, r.config.shiftFactor, r.config.family], [0.3611, 0.1159, 'flux']);
});

test('--fp16 guard refuses a KL VAE whose activations overflow float16, naming the cause and the way out; writes nothing', async (t) => {
  const dir = tempDir(t);
  const conv = 'first_stage_model.decoder.up.1.block.0.conv1.weight';
  const weights = await rewriteCheckpoint(fixture('ldm.safetensors'), join(dir, 'overflow.safetensors'), scaled(conv, 1e5));
  // float32 decodes it (GroupNorm renormalizes after the blown-up conv): only float16 is at risk
  await convertCheckpoint({ weights, out: join(dir, 'fp32.onnx') });
  const out = join(dir, 'repo', 'model.onnx');
  await assert.rejects(convertCheckpoint({ weights, out, fp16: true }), (err: Error) => {
    assert.match(err.message, /^--fp16 refused: on seeded latents the decoder's activations reach \d\.\d+e\+\d+ at Conv output \S+ \(after weight decoder\.up\.1\.block\.0\.conv1\.weight\)/);
    assert.match(err.message, /beyond what float16 holds safely \(max 65504; the guard allows 32752\)/);
    assert.match(err.message, /Convert without --fp16/);
    assert.match(err.message, /madebyollin\/sdxl-vae-fp16-fix/);
    return true;
  });
  assert.deepEqual(await readdir(join(dir, 'repo')), [], 'no model, .partial or probe file is left');
});

test('--fp16 guard refuses an overflowing TAESD and accepts the KL fixture (guard time reported)', async (t) => {
  const dir = tempDir(t);
  const weights = await rewriteCheckpoint(taesd('taesd4-original.safetensors'), join(dir, 'overflow.safetensors'), scaled('12.weight', 1e5));
  await assert.rejects(convertCheckpoint({ weights, out: join(dir, 'a.onnx'), fp16: true }),
    /--fp16 refused: .* at Conv output \S+ \(after weight 12\.weight\)/);
  const r = await convertCheckpoint({ weights: fixture('ldm.safetensors'), out: join(dir, 'ok.onnx'), fp16: true });
  const g = r.fp16Check!;
  t.diagnostic(`KL fixture: max activation ${g.maxActivation.toExponential(2)} at ${g.at}; fp16 vs fp32 PSNR ${g.psnr.toFixed(1)} dB; guard ${g.seconds.toFixed(2)} s of ${r.seconds.toFixed(2)} s`);
  assert.ok(g.maxActivation > 1 && g.maxActivation < 32752);
  assert.ok(g.psnr >= 40);
  assert.ok((await compareWithReference(join(dir, 'ok.onnx'))).psnr >= 40);
});

test('config.json with an unknown family is refused at discovery: the folder is skipped naming it', async (t) => {
  const dir = tempDir(t);
  mkdirSync(join(dir, 'm'));
  writeFileSync(join(dir, 'm', 'model.onnx'), '');
  writeFileSync(join(dir, 'm', 'config.json'), JSON.stringify({ family: 'sd15' }));
  const warnings: string[] = [];
  const specs = await discoverModels(loadConfig({ MODELS_DIR: dir }), { warn: (_o: object, msg: string) => warnings.push(msg) });
  assert.ok(!specs.some((s) => s.name === 'm'));
  assert.match(warnings.join('\n'), /skipping m: .*config\.json: family must be one of sd1, .*, got "sd15"/);
});

test('CLI: convert --family taesd records it; an unknown --family is a usage error', async (t) => {
  const cli = (args: string[]) => spawnSync(process.execPath, ['--import', 'tsx', 'src/cli.ts', ...args], { cwd: REPO_ROOT, encoding: 'utf8' });
  const bad = cli(['convert', 'a', 'b', '--family', 'sd15']);
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /--family must be one of sd1, sd2, sdxl, sd3, flux, flux2, taesd, taesdxl, taesd3, taef1, wan2.1, qwen-image, got "sd15"/);
  const badPull = cli(['pull', 'acme/vae', '--family', 'sdxl-turbo']); // refused before any download
  assert.equal(badPull.status, 2);
  assert.match(badPull.stderr, /--family must be one of .*, got "sdxl-turbo"/);
  assert.match(cli(['pull', '--help']).stdout, /--family NAME/);
  const dir = tempDir(t);
  const out = join(dir, 'models', 'taesd', 'model.onnx');
  const run = cli(['convert', taesd('taesd4-diffusers.safetensors'), out, '--family', 'taesd', '--fp16']);
  assert.equal(run.status, 0, run.stderr);
  assert.match(run.stdout, /taesd, 4 latent channels, TAESD \(diffusers layout\), 64 ch, fp16, scaling 1 shift 0, family taesd/);
  assert.match(run.stdout, /float16 check: max activation \S+ \(limit 32752\), PSNR \S+ dB against float32/);
  assert.equal((JSON.parse(await readFile(join(dir, 'models', 'taesd', 'config.json'), 'utf8')) as { family: string }).family, 'taesd');
  const models = cli(['models', '--models-dir', join(dir, 'models')]);
  assert.match(models.stdout, /^NAME\s+CHANNELS\s+PRECISION\s+SCALING\s+SHIFT\s+SIZE\s+FAMILY\s+DIRECTIONS$/m);
  assert.match(models.stdout, /^taesd\s+4\s+fp16\s+1\s+0\s+\d+\.\d MiB\s+taesd\s+decode$/m);
});

test('a served model that names its family but not its factors gets the family\'s factors', async (t) => {
  const dir = tempDir(t);
  const out = join(dir, 'tiny.onnx');
  await convertCheckpoint({ weights: taesd('taesd4-original.safetensors'), out, family: 'taesdxl' });
  const model = decodeModel(await readFile(out));
  model.metadataProps = model.metadataProps.filter((p) => p.key !== 'scaling_factor' && p.key !== 'shift_factor');
  await writeFile(out, encodeModel(model));
  const { registry } = await startService(t, { MODEL_PATH: out });
  const m = registry.get('tiny')!;
  // without the family a 4-channel model would be guessed as SD 1.x (0.18215)
  assert.deepEqual([m.family, m.scalingFactor, m.shiftFactor, m.factorsGuessed], ['taesdxl', 1, 0, false]);
});
