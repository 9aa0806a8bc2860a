// The converter checks what it reads and where it writes (issue 14, finding 18; issue 18,
// finding 7): non-finite weights refused by name (or --allow-nan with a warning), safetensors
// byte ranges back to back, non-regular inputs and outputs refused before they are opened, and
// a folder it cannot write named with the way out.
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { convertCheckpoint } from '../src/convert/convert.js';
import { SafetensorsFile } from '../src/convert/safetensors.js';
import { REPO_ROOT, fixture, rewriteCheckpoint, tempDir } from './helpers/convert-fixtures.js';

const NAN_TENSOR = 'first_stage_model.decoder.conv_in.weight';

function cli(args: string[], opts: { uid?: number; gid?: number } = {}) {
  return spawnSync(process.execPath, ['--import', 'tsx', 'src/cli.ts', ...args], { cwd: REPO_ROOT, encoding: 'utf8', timeout: 60_000, ...opts });
}

/** The LDM fixture with one NaN in conv_in's weight. */
function withNan(dir: string): Promise<string> {
  return rewriteCheckpoint(fixture('ldm.safetensors'), join(dir, 'nan.safetensors'), (ts) => ts.map((x) => {
    if (x.name !== NAN_TENSOR) return x;
    const data = (x.data as Float32Array).slice();
    data[7] = NaN;
    return { ...x, data };
  }));
}

test('convert: a NaN weight is refused naming the tensor, nothing written; --allow-nan converts with one warning per tensor', async (t) => {
  const dir = tempDir(t);
  const weights = await withNan(dir);
  const out = join(dir, 'm', 'model.onnx');
  await assert.rejects(convertCheckpoint({ weights, out }), (err: Error) =>
    err.message.startsWith(`${weights}: tensor ${NAN_TENSOR} (F32 [128, 4, 3, 3]) holds 1 NaN or infinite value, the first NaN at index 7`) &&
    err.message.includes('--allow-nan'));
  assert.deepEqual(readdirSync(join(dir, 'm')), [], 'no model, no partial file');

  const warnings: string[] = [];
  const r = await convertCheckpoint({ weights, out, allowNonFinite: true, warn: (m) => warnings.push(m) });
  assert.equal(r.config.name, 'm');
  assert.equal(warnings.length, 1);
  assert.match(warnings[0]!, new RegExp(`tensor ${NAN_TENSOR} .* converting it anyway \\(--allow-nan\\)`));

  const refused = cli(['convert', weights, join(dir, 'cli.onnx')]);
  assert.equal(refused.status, 1);
  assert.match(refused.stderr, new RegExp(`^latent-decoder: .*tensor ${NAN_TENSOR} .*pass --allow-nan`));
  const allowed = cli(['convert', weights, join(dir, 'cli.onnx'), '--allow-nan']);
  assert.equal(allowed.status, 0, allowed.stderr);
  assert.match(allowed.stderr, new RegExp(`^latent-decoder: warning: .*${NAN_TENSOR}`));
});

/** A safetensors file with the given tensors' (F32) offsets and `dataBytes` of data. */
function handMade(file: string, offsets: Record<string, [number, number]>, dataBytes: number): string {
  const header: Record<string, unknown> = {};
  for (const [name, [b, e]] of Object.entries(offsets)) header[name] = { dtype: 'F32', shape: [(e - b) / 4], data_offsets: [b, e] };
  const json = Buffer.from(JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  writeFileSync(file, Buffer.concat([len, json, Buffer.alloc(dataBytes)]));
  return file;
}

test('safetensors: overlapping ranges, gaps and trailing bytes are refused naming the tensors; back-to-back ranges in any key order open', async (t) => {
  const dir = tempDir(t);
  await assert.rejects(SafetensorsFile.open(handMade(join(dir, 'overlap.safetensors'), { a: [0, 8], b: [4, 12] }, 12)),
    /overlap\.safetensors has a bad safetensors header: tensor b starts at data offset 4, inside a \(0–8\): tensors overlap/);
  await assert.rejects(SafetensorsFile.open(handMade(join(dir, 'alias.safetensors'), { a: [0, 8], b: [0, 8] }, 8)), /tensors overlap/);
  await assert.rejects(SafetensorsFile.open(handMade(join(dir, 'gap.safetensors'), { a: [0, 8], b: [12, 20] }, 20)),
    /tensor b starts at data offset 12, leaving a gap after a, which ends at 8/);
  await assert.rejects(SafetensorsFile.open(handMade(join(dir, 'late.safetensors'), { a: [4, 12] }, 12)), /tensor a starts at data offset 4, leaving a gap after the header/);
  await assert.rejects(SafetensorsFile.open(handMade(join(dir, 'tail.safetensors'), { a: [0, 8] }, 16)), /the tensors end at byte \d+ but the file has \d+/);
  const ok = await SafetensorsFile.open(handMade(join(dir, 'ok.safetensors'), { b: [8, 16], a: [0, 8] }, 16));
  assert.deepEqual(ok.keys().sort(), ['a', 'b']);
  await ok.close();
});

test('convert: a FIFO, a device or a folder as input is refused before it is opened', { timeout: 15_000 }, async (t) => {
  const dir = tempDir(t);
  const fifo = join(dir, 'weights.safetensors');
  execFileSync('mkfifo', [fifo]);
  await assert.rejects(convertCheckpoint({ weights: fifo, out: join(dir, 'a.onnx') }), /weights\.safetensors: a FIFO \(named pipe\), not a regular file/);
  await assert.rejects(convertCheckpoint({ weights: '/dev/zero', out: join(dir, 'b.onnx') }), /\/dev\/zero: a character device, not a regular file/);
  await assert.rejects(convertCheckpoint({ weights: dir, out: join(dir, 'c.onnx') }), /: a directory, not a regular file/);
});

test('convert: an output that is not a regular file (FIFO, device, /proc) is refused before the weights are read', { timeout: 15_000 }, async (t) => {
  const dir = tempDir(t);
  const fifo = join(dir, 'out.onnx');
  execFileSync('mkfifo', [fifo]);
  const weights = fixture('ldm.safetensors');
  await assert.rejects(convertCheckpoint({ weights, out: fifo }), /output .*out\.onnx is a FIFO \(named pipe\), not a regular file: choose another output path/);
  await assert.rejects(convertCheckpoint({ weights, out: '/dev/null' }), /output \/dev\/null is a character device, not a regular file/);
  await assert.rejects(convertCheckpoint({ weights, out: '/proc/self/latent-decoder-test/model.onnx' }), /\/proc\/self is on procfs, a kernel filesystem that holds no model files/);
  mkdirSync(join(dir, 'file-parent'));
  writeFileSync(join(dir, 'file-parent', 'x'), '');
  await assert.rejects(convertCheckpoint({ weights, out: join(dir, 'file-parent', 'x', 'model.onnx') }), /x is a regular file, not a folder/);
  const cliRun = cli(['convert', weights, '/proc/self/x/model.onnx']);
  assert.equal(cliRun.status, 1);
  assert.match(cliRun.stderr, /^latent-decoder: cannot write \/proc\/self\/x\/model\.onnx: \/proc\/self is on procfs/);
});

test('CLI: a folder the user cannot write is named with the way out (EACCES)', { timeout: 60_000 }, async (t) => {
  const dir = tempDir(t);
  const models = join(dir, 'models');
  mkdirSync(models);
  // root ignores permissions: run the CLI as nobody instead of making the folder read-only
  const asRoot = process.getuid?.() === 0;
  if (asRoot) chmodSync(dir, 0o755);
  else chmodSync(models, 0o555);
  const run = cli(['convert', fixture('ldm.safetensors'), join(models, 'conv', 'model.onnx')], asRoot ? { uid: 65534, gid: 65534 } : {});
  assert.equal(run.status, 1, run.stderr);
  assert.doesNotMatch(run.stderr, /\n\s+at /);
  assert.match(run.stderr, new RegExp(`^latent-decoder: cannot create ${models}/conv: ${models} is not writable by user \\d+ \\(EACCES on mkdir\\)\\. ` +
    'Mount it writable for that user .*, or choose another output path .*MODELS_DIR'));

  // a checkpoint the user cannot read is a read problem, not a folder to make writable
  const secret = join(dir, 'secret.safetensors');
  copyFileSync(fixture('ldm.safetensors'), secret);
  chmodSync(secret, asRoot ? 0o600 : 0o000);
  const writable = join(dir, 'out');
  mkdirSync(writable);
  chmodSync(writable, 0o777);
  const read = cli(['convert', secret, join(writable, 'x.onnx')], asRoot ? { uid: 65534, gid: 65534 } : {});
  assert.equal(read.status, 1, read.stderr);
  assert.match(read.stderr, /^latent-decoder: cannot read \S+secret\.safetensors: it is not readable by user \d+ \(EACCES on open\)/);
});
