// ONNX Runtime's telemetry is off in every process that can load it (src/inference/telemetry.cts):
// the server (ORT runs in its worker threads), the CLI (the --fp16 guard runs ORT in the main
// thread) and the --require preload. What is checked is what ORT does, not only the variable: with
// telemetry on, creating the first session writes ~/.cache/Microsoft/DeveloperTools/.onnxruntime/
// (a device id and an event database); with it off, nothing. HOME is a fresh folder and the
// environment holds no CI variable (ORT also stays quiet when it sees one, e.g. CI=true), so on a
// process without the opt-out these checks fail.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { REPO, fixture, tempDir } from './helpers/paths.js';
import { emitPreload } from './helpers/preload.js';
import { startProcess } from './helpers/process.js';

const TSX = import.meta.resolve('tsx');
const telemetryDir = (home: string): string => path.join(home, '.cache', 'Microsoft');

test('telemetry: the server starts, loads and runs a model with ONNX Runtime telemetry off; its log is JSON only', async (t) => {
  const home = tempDir(t);
  const svc = await startProcess(t, ['--import', TSX, path.join(REPO, 'src', 'server.ts')], { HOME: home }, { cwd: tempDir(t) });
  const latent = new Float32Array(4 * 8 * 8).fill(0.5);
  const res = await fetch(`${svc.url}/decode`, { method: 'POST', body: new Uint8Array(latent.buffer) });
  assert.equal(res.status, 200, await res.clone().text());
  svc.child.kill('SIGTERM');
  assert.equal(await svc.exited, 0);
  assert.equal(existsSync(telemetryDir(home)), false, 'ONNX Runtime wrote its telemetry files under HOME');
  assert.doesNotMatch(svc.output(), /telemetry/i);
  for (const line of svc.output().split('\n').filter((l) => l.trim() !== '')) {
    assert.doesNotThrow(() => JSON.parse(line) as unknown, `a log line is not JSON: ${line}`);
  }
});

test('telemetry: the CLI runs ONNX Runtime (convert --fp16 guard) with telemetry off', (t) => {
  const home = tempDir(t);
  const out = path.join(tempDir(t), 'm', 'model.onnx');
  const res = spawnSync(process.execPath, ['--import', TSX, path.join(REPO, 'src', 'cli.ts'), 'convert', fixture('diffusers.safetensors'), out, '--fp16'], {
    cwd: REPO, env: { PATH: process.env.PATH ?? '', HOME: home }, encoding: 'utf8', timeout: 60_000,
  });
  assert.equal(res.status, 0, res.stderr);
  assert.match(res.stdout, /float16 check: .*PSNR/, 'the guard ran its ONNX Runtime sessions');
  assert.equal(existsSync(telemetryDir(home)), false, 'ONNX Runtime wrote its telemetry files under HOME');
  assert.doesNotMatch(res.stdout + res.stderr, /telemetry/i);
});

test('telemetry: the preload sets ORT_DISABLE_TELEMETRY=1 unless the operator set it', (t) => {
  const preload = emitPreload(tempDir(t));
  const seen = (value?: string): string => spawnSync(process.execPath, ['--require', preload, '-p', 'process.env.ORT_DISABLE_TELEMETRY'], {
    env: { PATH: process.env.PATH ?? '', ...(value === undefined ? {} : { ORT_DISABLE_TELEMETRY: value }) }, encoding: 'utf8',
  }).stdout.trim();
  assert.equal(seen(), '1');
  assert.equal(seen(''), '1', 'empty counts as unset');
  assert.equal(seen('0'), '0', 'ORT_DISABLE_TELEMETRY=0 turns telemetry on');
});
