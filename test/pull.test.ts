import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFile, readdir } from 'node:fs/promises';
import { createServer, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { pull, validateModelName } from '../src/convert/hub.js';
import { compareWithReference, fixture, tempDir } from './helpers/convert-fixtures.js';

const REPO = 'acme/tiny-sd';
const HUB_CONFIG = JSON.stringify({ _class_name: 'AutoencoderKL', latent_channels: 4, scaling_factor: 0.13025, shift_factor: null });

interface HubOptions {
  weightsFile?: string;
  /** Close the connection after this many body bytes, on the first weights request only. */
  cutAfter?: number;
  etag?: string;
}

/**
 * A stand-in for the Hub: `resolve` URLs answer like huggingface.co — the LFS file redirects
 * to a storage URL with X-Linked-Size and X-Linked-ETag on the redirect, and the storage URL
 * honours Range requests.
 */
async function fakeHub(t: TestContext, opts: HubOptions = {}) {
  const weights = await readFile(fixture('diffusers.safetensors'));
  const sha256 = createHash('sha256').update(weights).digest('hex');
  const weightsFile = opts.weightsFile ?? 'diffusion_pytorch_model.safetensors';
  const requests: { url: string; range?: string; auth?: string }[] = [];
  let cut = opts.cutAfter;
  const server = createServer((req: IncomingMessage, res) => {
    requests.push({ url: req.url ?? '', range: req.headers.range, auth: req.headers.authorization });
    if (req.url === `/${REPO}/resolve/main/vae/config.json`) {
      res.writeHead(200, { 'content-type': 'application/json', etag: '"0123456789abcdef0123456789abcdef01234567"' });
      res.end(HUB_CONFIG);
    } else if (req.url === `/${REPO}/resolve/main/vae/${weightsFile}`) {
      res.writeHead(302, {
        location: '/storage/blob?signed=1',
        'x-linked-size': String(weights.length),
        'x-linked-etag': `"${opts.etag ?? sha256}"`,
      });
      res.end();
    } else if (req.url === '/storage/blob?signed=1') {
      const start = Number(/^bytes=(\d+)-$/.exec(req.headers.range ?? '')?.[1] ?? 0);
      const body = weights.subarray(start);
      res.writeHead(start > 0 ? 206 : 200, {
        'content-length': String(body.length),
        ...(start > 0 ? { 'content-range': `bytes ${start}-${weights.length - 1}/${weights.length}` } : {}),
      });
      if (cut !== undefined) {
        res.write(body.subarray(0, cut), () => res.destroy());
        cut = undefined;
      } else {
        res.end(body);
      }
    } else {
      res.writeHead(404).end('Entry not found');
    }
  });
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  t.after(() => new Promise<void>((ok) => server.close(() => ok())));
  return { endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, requests, size: weights.length };
}

test('pull downloads config.json and weights, verifies them, and converts into <modelsDir>/<name>', async (t) => {
  const hub = await fakeHub(t);
  const modelsDir = await tempDir(t);
  const r = await pull(REPO, { modelsDir, endpoint: hub.endpoint, token: 'hf_secret' });
  assert.equal(r.dir, join(modelsDir, 'tiny-sd'));
  assert.deepEqual(JSON.parse(await readFile(join(r.dir, 'config.json'), 'utf8')), {
    name: 'tiny-sd', latentChannels: 4, scalingFactor: 0.13025, shiftFactor: 0, precision: 'fp32', source: 'hf:acme/tiny-sd@main/vae',
  });
  assert.ok((await compareWithReference(join(r.dir, 'model.onnx'))).maxAbs <= 1e-4);
  assert.equal(hub.requests[0]!.auth, 'Bearer hf_secret');
  assert.deepEqual(await readdir(join(modelsDir, '.cache', 'acme--tiny-sd', 'main', 'vae')), ['config.json', 'diffusion_pytorch_model.safetensors']);
});

test('an interrupted download resumes with a Range request (and the .fp16 weights name is the fallback)', async (t) => {
  const hub = await fakeHub(t, { weightsFile: 'diffusion_pytorch_model.fp16.safetensors', cutAfter: 1_000_000 });
  const modelsDir = await tempDir(t);
  const r = await pull(REPO, { modelsDir, endpoint: hub.endpoint, name: 'resumed', fp16: true });
  const blobRequests = hub.requests.filter((q) => q.url.startsWith('/storage/'));
  assert.equal(blobRequests.length, 2);
  assert.equal(blobRequests[0]!.range, undefined);
  // the client keeps whatever arrived before the cut, at most what the server sent
  const resumedAt = Number(/^bytes=(\d+)-$/.exec(blobRequests[1]!.range ?? '')?.[1]);
  assert.ok(resumedAt > 0 && resumedAt <= 1_000_000, `resumed at ${blobRequests[1]!.range}`);
  assert.ok(hub.requests.some((q) => q.url.endsWith('/vae/diffusion_pytorch_model.safetensors')), 'the plain name was tried first');
  assert.equal(r.config.precision, 'fp16');
  assert.ok((await compareWithReference(join(r.dir, 'model.onnx'))).psnr >= 40);
});

test('a checksum mismatch is refused and the download deleted', async (t) => {
  const hub = await fakeHub(t, { etag: 'f'.repeat(64) });
  const modelsDir = await tempDir(t);
  await assert.rejects(pull(REPO, { modelsDir, endpoint: hub.endpoint }), /checksum mismatch .*expected sha256 f{64}, got [0-9a-f]{64}; the download was deleted/);
  assert.deepEqual(await readdir(join(modelsDir, '.cache', 'acme--tiny-sd', 'main', 'vae')), ['config.json']);
  assert.deepEqual((await readdir(modelsDir)).filter((f) => f !== '.cache'), [], 'no model folder is created');
});

test('model names, repository ids and revisions cannot escape the models folder', async (t) => {
  const modelsDir = await tempDir(t);
  for (const name of ['..', '../x', 'a/b', '.hidden', '', 'x'.repeat(65)]) assert.throws(() => validateModelName(name), /invalid model name/);
  assert.equal(validateModelName('sd-vae-ft-mse_1.0'), 'sd-vae-ft-mse_1.0');
  await assert.rejects(pull('acme/tiny', { modelsDir, name: '../evil' }), /invalid model name/);
  await assert.rejects(pull('../../etc', { modelsDir }), /invalid Hugging Face repository id/);
  await assert.rejects(pull('acme/tiny', { modelsDir, revision: '../../x' }), /invalid revision/);
  assert.deepEqual(await readdir(modelsDir), []);
});
