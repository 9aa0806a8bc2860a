// The service as a real process: zero-config start on the built-in preview model (built output,
// what `npm start` runs). Draining and slow clients: shutdown.test.ts.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { test } from 'node:test';
import sharp from 'sharp';
import { REPO, bytesOf, tempDir } from './helpers/service.js';
import { startProcess } from './helpers/process.js';

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
