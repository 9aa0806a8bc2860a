// The service as a real process: zero-config start on the built-in preview model (built output,
// what `npm start` runs), and SIGTERM draining with requests in flight.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { test } from 'node:test';
import sharp from 'sharp';
import { FIXTURE_MODEL, REPO, bytesOf, tempDir } from './helpers/service.js';
import { startProcess } from './helpers/process.js';

const TSX = import.meta.resolve('tsx');

test('process: with no configuration the built service serves the preview model: 512x512 PNG for a 64x64 latent', async (t) => {
  execFileSync(process.execPath, [path.join(REPO, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.build.json'], { cwd: REPO, stdio: 'inherit' });
  // An empty working directory: no models/ folder, no environment beyond PORT.
  const svc = await startProcess(t, [path.join(REPO, 'dist', 'server.js')], {}, { cwd: tempDir(t) });
  const latent = new Float32Array(4 * 64 * 64).map((_, i) => Math.cos(i / 97));
  const res = await fetch(`${svc.url}/decode`, { method: 'POST', body: new Uint8Array(bytesOf(latent)) });
  assert.equal(res.status, 200, await res.clone().text());
  assert.equal(res.headers.get('content-type'), 'image/png');
  const meta = await sharp(Buffer.from(await res.arrayBuffer())).metadata();
  assert.deepEqual([meta.format, meta.width, meta.height], ['png', 512, 512]);
  const models = await (await fetch(`${svc.url}/v1/models`)).json() as { defaultModel: string; models: { provider: string }[] };
  assert.equal(models.defaultModel, 'sd15-preview');
  assert.equal(models.models[0]!.provider, 'cpu', 'CUDA is absent here: the default cuda,cpu falls back to CPU');
  assert.match(svc.output(), /preview decoder/, 'the log says the preview is approximate');
  assert.match(svc.output(), /execution provider cuda not installed .*not tried/, 'the absent CUDA library is noticed, not tried');
  assert.doesNotMatch(svc.output(), /onnxruntime_providers_cuda|Failed to load library/, 'no ONNX Runtime error about it');
  svc.child.kill('SIGTERM');
  assert.equal(await svc.exited, 0);
});

test('process: SIGTERM answers every accepted request, refuses new ones with 503, then exits 0', async (t) => {
  const svc = await startProcess(t, ['--import', TSX, path.join(REPO, 'src', 'server.ts')], {
    MODEL_PATH: FIXTURE_MODEL, MODELS_DIR: tempDir(t), EXECUTION_PROVIDERS: 'cpu', MAX_BATCH_SIZE: '1', MAX_QUEUE_DELAY_MS: '0',
  }, { cwd: REPO });
  const latent = new Uint8Array(bytesOf(new Float32Array(4 * 32 * 32).map((_, i) => Math.sin(i / 31))));
  const inflight = Array.from({ length: 5 }, () =>
    fetch(`${svc.url}/decode?shape=1,4,32,32&scaling_factor=1`, { method: 'POST', body: latent }).then(async (r) => ({ status: r.status, bytes: (await r.arrayBuffer()).byteLength })));
  await new Promise((r) => setTimeout(r, 300)); // all five accepted: one runs, four wait
  svc.child.kill('SIGTERM');
  await new Promise((r) => setTimeout(r, 100));
  const ready = await fetch(`${svc.url}/readyz`);
  assert.equal(ready.status, 503, 'readiness turns 503 while draining');
  const late = await fetch(`${svc.url}/decode?shape=1,4,32,32&scaling_factor=1`, { method: 'POST', body: latent });
  assert.equal(late.status, 503);
  assert.equal(((await late.json()) as { error: { code: string } }).error.code, 'SHUTTING_DOWN');
  const answers = await Promise.all(inflight);
  assert.deepEqual(answers.map((a) => a.status), [200, 200, 200, 200, 200]);
  assert.ok(answers.every((a) => a.bytes > 1000));
  assert.equal(await svc.exited, 0, svc.output());
  assert.match(svc.output(), /draining/);
});
