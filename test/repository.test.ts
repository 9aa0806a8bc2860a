// The model repository checks what it loads (issue 14, finding 17): regular files only (a link
// followed once), MAX_MODEL_BYTES, config.json a JSON object with typed fields, one warning per
// skipped entry; and a model whose weights hold NaN is unavailable, naming the tensor (finding 18).
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { loadConfig } from '../src/config.js';
import { GraphBuilder, attr, decodeModel, encodeModel, onnx } from '../src/onnx/graph.js';
import { describeNonFinite, nonFiniteWeights } from '../src/onnx/finite.js';
import { discoverModels } from '../src/serving/registry.js';
import { FIXTURE_MODEL, bytesOf, loadFixture, sampleLatents, startService, tempDir } from './helpers/service.js';

type Warning = { entry: string; reason: string; msg: string };
const collect = (): { warnings: Warning[]; log: { warn(o: object, msg: string): void } } => {
  const warnings: Warning[] = [];
  return { warnings, log: { warn: (o, msg) => warnings.push({ ...(o as { entry: string; reason: string }), msg }) } };
};
const mkfifo = (p: string): void => void execFileSync('mkfifo', [p]);

test('repository: links are followed once, non-regular and oversized model files are skipped with one warning each, never read', { timeout: 10_000 }, async (t) => {
  const root = tempDir(t);
  const dir = path.join(root, 'models');
  const real = path.join(root, 'elsewhere', 'linked-vae');
  mkdirSync(real, { recursive: true });
  copyFileSync(FIXTURE_MODEL, path.join(real, 'model.onnx'));
  mkdirSync(dir);
  const folder = (name: string): string => { mkdirSync(path.join(dir, name)); return path.join(dir, name, 'model.onnx'); };
  copyFileSync(FIXTURE_MODEL, folder('plain'));
  symlinkSync(real, path.join(dir, 'linked')); // a symlinked model folder: followed once
  symlinkSync('/dev/zero', folder('zero'));
  mkfifo(folder('fifo'));
  symlinkSync(path.join(dir, 'loop', 'b'), folder('loop'));
  symlinkSync(path.join(dir, 'loop', 'model.onnx'), path.join(dir, 'loop', 'b'));
  const limit = statSync(FIXTURE_MODEL).size;
  writeFileSync(folder('big'), Buffer.alloc(limit + 1));
  mkdirSync(path.join(dir, 'empty'));
  writeFileSync(path.join(dir, 'notes.txt'), 'hello');
  mkdirSync(path.join(dir, '.cache')); // hidden: the Hugging Face cache lives here, skipped silently

  const again = collect();
  const served = await discoverModels(loadConfig({ MODELS_DIR: dir, MAX_MODEL_BYTES: String(limit) }), again.log);
  assert.deepEqual(served.filter((s) => !s.builtin).map((s) => [s.name, s.modelPath]),
    [['linked', path.join(dir, 'linked', 'model.onnx')], ['plain', path.join(dir, 'plain', 'model.onnx')]]);
  const why = new Map(again.warnings.map((w) => [path.basename(w.entry), w.reason]));
  assert.equal(again.warnings.length, why.size, 'one warning per entry');
  assert.deepEqual([...why.keys()].sort(), ['big', 'empty', 'fifo', 'loop', 'notes.txt', 'zero'], 'one warning per skipped entry, none for .cache');
  assert.match(why.get('big')!, new RegExp(`big/model\\.onnx: ${limit + 1} bytes .*, over MAX_MODEL_BYTES \\(${limit} bytes`));
  assert.match(why.get('zero')!, /model\.onnx: a character device \(a link to \/dev\/zero\), not a regular file/);
  assert.match(why.get('fifo')!, /model\.onnx: a FIFO \(named pipe\), not a regular file/);
  assert.match(why.get('loop')!, /a symbolic link to another link .*chains and loops are refused/);
  assert.match(why.get('empty')!, /no model\.onnx \(nor encoder\.onnx\) in it/);
  assert.match(why.get('notes.txt')!, /not a folder but a regular file/);
  for (const w of again.warnings) assert.match(w.msg, new RegExp(`^model repository: skipping ${w.entry.split('/').pop()!.replace('.', '\\.')}: `));
});

test('repository: MODEL_PATH must be a regular file; /dev/zero and a FIFO are refused before they are opened', { timeout: 10_000 }, async (t) => {
  const dir = tempDir(t);
  const fifo = path.join(dir, 'pipe.onnx');
  mkfifo(fifo);
  const none = path.join(dir, 'none');
  await assert.rejects(discoverModels(loadConfig({ MODEL_PATH: '/dev/zero', MODELS_DIR: none })), /MODEL_PATH=\/dev\/zero: a character device, not a regular file/);
  await assert.rejects(discoverModels(loadConfig({ MODEL_PATH: fifo, MODELS_DIR: none })), /pipe\.onnx: a FIFO \(named pipe\), not a regular file/);
  const link = path.join(dir, 'zero.onnx');
  symlinkSync('/dev/zero', link);
  await assert.rejects(discoverModels(loadConfig({ MODEL_PATH: link, MODELS_DIR: none })), /a character device \(a link to \/dev\/zero\)/);
});

test('repository: config.json must be a JSON object whose fields have their types', async (t) => {
  const dir = tempDir(t);
  mkdirSync(path.join(dir, 'm'));
  copyFileSync(FIXTURE_MODEL, path.join(dir, 'm', 'model.onnx'));
  const cases: [string, RegExp][] = [
    ['[1, 2]', /config\.json: expected a JSON object, got an array/],
    ['null', /expected a JSON object, got null/],
    ['"sd"', /expected a JSON object, got string/],
    ['{"latentChannels": "4"}', /latentChannels must be a number, got "4"/],
    ['{"latentChannels": 2.5}', /latentChannels must be a positive integer, got 2.5/],
    ['{"name": 7}', /name must be a string, got 7/],
    ['{"precision": "fp8"}', /precision must be fp32 or fp16, got "fp8"/],
  ];
  for (const [text, message] of cases) {
    writeFileSync(path.join(dir, 'm', 'config.json'), text);
    // A bad config.json skips its folder with one warning naming why; the service starts.
    const warnings: string[] = [];
    const specs = await discoverModels(loadConfig({ MODELS_DIR: dir }), { warn: (_o: object, msg: string) => warnings.push(msg) });
    assert.deepEqual(specs.map((s) => s.name), ['sd15-preview'], text);
    assert.equal(warnings.length, 1, text);
    assert.match(warnings[0]!, /skipping m: /, text);
    assert.match(warnings[0]!, message, text);
    // Named explicitly, the same file stops the start.
    await assert.rejects(discoverModels(loadConfig({ MODEL_PATH: path.join(dir, 'm', 'model.onnx'), MODELS_DIR: path.join(dir, 'none') })), message, text);
  }
  writeFileSync(path.join(dir, 'm', 'config.json'), '{"scalingFactor": 0.13025, "precision": "fp32", "ch": 32}');
  const [, spec] = await discoverModels(loadConfig({ MODELS_DIR: dir }));
  assert.equal(spec!.file.scalingFactor, 0.13025);
});

/** The fixture decoder with one weight value replaced; returns the initializer's name. */
function poisoned(dest: string, value: number): string {
  const model = decodeModel(readFileSync(FIXTURE_MODEL));
  const init = model.graph!.initializer!.find((x) => x.dataType === onnx.TensorProto.DataType.FLOAT && (x.rawData?.length ?? 0) >= 64)!;
  const raw = Buffer.from(init.rawData!);
  raw.writeFloatLE(value, 4 * 5);
  init.rawData = raw;
  writeFileSync(dest, encodeModel(model));
  return init.name!;
}

test('repository: nonFiniteWeights names the tensor, the value and its index', (t) => {
  const file = path.join(tempDir(t), 'm.onnx');
  const name = poisoned(file, -Infinity);
  const bad = nonFiniteWeights(decodeModel(readFileSync(file)));
  assert.deepEqual(bad.map((b) => [b.name, b.index, b.value, b.count]), [[name, 5, '-Infinity', 1]]);
  assert.match(describeNonFinite(bad), new RegExp(`^weight ${name.replace(/\./g, '\\.')} \\(float32 \\[[\\d, ]+\\]\\) holds 1 NaN or infinite value, the first -Infinity at index 5`));
  assert.deepEqual(nonFiniteWeights(decodeModel(readFileSync(FIXTURE_MODEL))), []);
});

test('repository: a model with a NaN weight is unavailable (503 naming the tensor), the service unready, other models serve', async (t) => {
  const dir = tempDir(t);
  mkdirSync(path.join(dir, 'broken'));
  const tensor = poisoned(path.join(dir, 'broken', 'model.onnx'), NaN);
  const { app } = await startService(t, { MODELS_DIR: dir });
  const ready = await app.inject('/readyz');
  assert.equal(ready.statusCode, 503);
  assert.match(ready.body, new RegExp(`model broken cannot serve: weight ${tensor.replace(/\./g, '\\.')} .*holds 1 NaN`));
  const list = (await app.inject('/v1/models')).json<{ models: { name: string; ready: boolean; error?: string }[] }>();
  const broken = list.models.find((m) => m.name === 'broken')!;
  assert.equal(broken.ready, false);
  assert.match(broken.error!, new RegExp(`weight ${tensor.replace(/\./g, '\\.')}`));
  const f = await loadFixture();
  const res = await app.inject({ method: 'POST', url: '/decode?model=broken&shape=1,4,16,16', payload: bytesOf(sampleLatents(f, 0)) });
  assert.equal(res.statusCode, 503, res.body);
  const err = res.json<{ error: { code: string; message: string } }>().error;
  assert.equal(err.code, 'MODEL_UNAVAILABLE');
  assert.match(err.message, /model broken cannot serve: weight .* re-convert or re-download it/);
  const good = await app.inject({ method: 'POST', url: '/decode?model=torch-export&shape=1,4,16,16', payload: bytesOf(sampleLatents(f, 0)) });
  assert.equal(good.statusCode, 200, good.body);
});

test('repository: a model whose warm-up on zero latents comes out NaN (finite weights) is unavailable, saying so', async (t) => {
  // sample = y / y with y a 1x1 conv of the latents: finite weights, NaN wherever the latents are 0
  const g = new GraphBuilder('nan_on_zero');
  const x = g.input('latent_sample', 'float32', ['batch', 4, 'height', 'width']);
  const y = g.node('Conv', [x, g.constant('w', 'float32', [3, 4, 1, 1], new Float32Array(12).fill(0.25))], { kernel_shape: attr.ints([1, 1]) });
  const ratio = g.node('Div', [y, y]);
  g.node('Resize', [ratio, '', g.constant('scales', 'float32', [4], new Float32Array([1, 1, 8, 8]))], { mode: attr.s('nearest') }, 'sample');
  g.output('sample', 'float32', ['batch', 3, 'h8', 'w8']);
  const file = path.join(tempDir(t), 'nan-on-zero.onnx');
  writeFileSync(file, encodeModel(g.model()));
  const { app } = await startService(t, { MODEL_PATH: file });
  const ready = await app.inject('/readyz');
  assert.equal(ready.statusCode, 503);
  assert.match(ready.body, /model nan-on-zero cannot serve: warm-up on zero latents \[1, 4, 8, 8\] produced NaN or infinite values/);
  const res = await app.inject({ method: 'POST', url: '/decode?shape=1,4,8,8', payload: Buffer.alloc(4 * 4 * 64, 1) });
  assert.equal(res.statusCode, 503, res.body);
  assert.equal(res.json<{ error: { code: string } }>().error.code, 'MODEL_UNAVAILABLE');
});
