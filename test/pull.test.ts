// `pull` against a local stand-in for the Hub (the real one is an external service): the Python
// cache layout, reuse by commit, a moved branch, checksums, resume, and the CLI.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile, readdir, readlink, writeFile, mkdir } from 'node:fs/promises';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import pino from 'pino';
import { hubCacheDir } from '../src/convert/hf-cache.js';
import { pull, validateModelName } from '../src/convert/hub.js';
import { loadConfig } from '../src/config.js';
import { ModelRegistry } from '../src/serving/registry.js';
import { compareWithReference, fixture, REPO_ROOT, tempDir } from './helpers/convert-fixtures.js';

const REPO = 'acme/tiny-sd';
const REPO_DIR = 'models--acme--tiny-sd';
const COMMIT_A = 'a'.repeat(40);
const COMMIT_B = 'b'.repeat(40);
const hubConfig = (scaling: number) => Buffer.from(JSON.stringify({ _class_name: 'AutoencoderKL', latent_channels: 4, scaling_factor: scaling, shift_factor: null }));
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const gitBlobSha1 = (b: Buffer) => createHash('sha1').update(`blob ${b.length}\0`).update(b).digest('hex');

interface HubOptions {
  weightsFile?: string;
  /** Close the connection after this many body bytes, on the first storage request only. */
  cutAfter?: number;
  /** X-Linked-Etag of LFS files: a string replaces the sha256, null leaves the header out. */
  lfsEtag?: string | null;
  /** Answer a resumed request with a Content-Range that starts at 0. */
  badContentRange?: boolean;
}

/**
 * A stand-in for the Hub, answering what huggingface.co answers on
 * HEAD/GET /{repo}/resolve/{revision}/{path}: X-Repo-Commit (the commit the revision points to);
 * a small file is 200 with its git blob sha1 as ETag; an LFS file (*.safetensors) is a 302 to
 * storage carrying X-Linked-Size and X-Linked-Etag (its sha256); storage honours Range. A
 * missing file is 404 with X-Error-Code EntryNotFound. `refs` can be moved between pulls.
 */
async function fakeHub(t: TestContext, opts: HubOptions = {}) {
  const weightsA = await readFile(fixture('diffusers.safetensors'));
  const weightsB = await readFile(fixture('ldm.safetensors'));
  const weightsFile = opts.weightsFile ?? 'diffusion_pytorch_model.safetensors';
  const commits: Record<string, Record<string, Buffer>> = {
    [COMMIT_A]: { 'vae/config.json': hubConfig(0.13025), [`vae/${weightsFile}`]: weightsA },
    [COMMIT_B]: { 'vae/config.json': hubConfig(0.5), [`vae/${weightsFile}`]: weightsB },
  };
  const refs: Record<string, string> = { main: COMMIT_A };
  const blobs = new Map([weightsA, weightsB].map((b) => [sha256(b), b]));
  const requests: { method: string; url: string; range?: string; auth?: string }[] = [];
  let cut = opts.cutAfter;
  const log = (req: IncomingMessage) =>
    requests.push({ method: req.method ?? '', url: req.url ?? '', range: req.headers.range, auth: req.headers.authorization });
  // LFS storage is another host (another origin), as cdn-lfs.hf.co is for huggingface.co
  const storage = await listen(t, (req, res) => {
    log(req);
    const m = /^\/storage\/([0-9a-f]{64})\?signed=1$/.exec(req.url ?? '');
    const blob = m && blobs.get(m[1]!);
    if (!blob) return void res.writeHead(404).end('Entry not found');
    const start = Number(/^bytes=(\d+)-$/.exec(req.headers.range ?? '')?.[1] ?? 0);
    const rangeStart = opts.badContentRange ? 0 : start;
    const body = blob.subarray(rangeStart);
    res.writeHead(start > 0 ? 206 : 200, {
      'content-length': String(body.length),
      ...(start > 0 ? { 'content-range': `bytes ${rangeStart}-${blob.length - 1}/${blob.length}` } : {}),
    });
    if (cut !== undefined) {
      res.write(body.subarray(0, cut), () => res.destroy());
      cut = undefined;
    } else {
      res.end(body);
    }
  });
  const endpoint = await listen(t, (req, res) => {
    log(req);
    const resolve = /^\/acme\/tiny-sd\/resolve\/([^/]+)\/(.+)$/.exec(req.url ?? '');
    if (!resolve) return void res.writeHead(404, { 'x-error-code': 'RepoNotFound' }).end();
    const rev = decodeURIComponent(resolve[1]!);
    const commit = refs[rev] ?? (commits[rev] ? rev : undefined);
    if (!commit) return void res.writeHead(404, { 'x-error-code': 'RevisionNotFound' }).end();
    const body = commits[commit]![resolve[2]!];
    if (!body) return void res.writeHead(404, { 'x-error-code': 'EntryNotFound', 'x-repo-commit': commit }).end();
    if (resolve[2]!.endsWith('.safetensors')) {
      const etag = opts.lfsEtag === undefined ? sha256(body) : opts.lfsEtag;
      res.writeHead(302, {
        location: `${storage}/storage/${sha256(body)}?signed=1`,
        'x-repo-commit': commit,
        'x-linked-size': String(body.length),
        ...(etag === null ? {} : { 'x-linked-etag': `"${etag}"` }),
      });
      return void res.end();
    }
    res.writeHead(200, { 'content-type': 'application/json', etag: `"${gitBlobSha1(body)}"`, 'x-repo-commit': commit, 'content-length': String(body.length) });
    res.end(req.method === 'HEAD' ? undefined : body);
  });
  return { endpoint, requests, refs, weightsA, weightsB, configA: commits[COMMIT_A]!['vae/config.json']! };
}

async function listen(t: TestContext, handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<string> {
  const server = createServer(handler);
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  t.after(() => new Promise<void>((ok) => server.close(() => ok())));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

const storageGets = <R extends { url: string }>(requests: R[]): R[] => requests.filter((q) => q.url.startsWith('/storage/'));

test('pull fills the Python cache layout (refs, blobs, snapshots) and converts a model the registry serves', async (t) => {
  const hub = await fakeHub(t);
  const home = tempDir(t);
  const modelsDir = tempDir(t);
  const cacheDir = hubCacheDir({ HF_HOME: home });
  assert.equal(cacheDir, join(home, 'hub'));
  const r = await pull(REPO, { modelsDir, cacheDir, endpoint: hub.endpoint, token: 'hf_secret' });

  const repo = join(cacheDir, REPO_DIR);
  assert.equal(await readFile(join(repo, 'refs', 'main'), 'utf8'), COMMIT_A);
  assert.deepEqual((await readdir(join(repo, 'blobs'))).sort(), [gitBlobSha1(hub.configA), sha256(hub.weightsA)].sort());
  assert.deepEqual((await readdir(join(repo, 'snapshots', COMMIT_A, 'vae'))).sort(), ['config.json', 'diffusion_pytorch_model.safetensors']);
  // relative links, as huggingface_hub makes them, so the cache can be moved or mounted elsewhere
  assert.equal(await readlink(join(repo, 'snapshots', COMMIT_A, 'vae', 'diffusion_pytorch_model.safetensors')), join('..', '..', '..', 'blobs', sha256(hub.weightsA)));
  assert.equal(r.commit, COMMIT_A);
  assert.equal(r.downloaded, 2);

  assert.equal(r.dir, join(modelsDir, 'tiny-sd'));
  assert.deepEqual(JSON.parse(await readFile(join(r.dir, 'config.json'), 'utf8')), {
    name: 'tiny-sd', latentChannels: 4, scalingFactor: 0.13025, shiftFactor: 0, precision: 'fp32', source: `hf:acme/tiny-sd@${COMMIT_A}/vae`,
  });
  assert.ok((await compareWithReference(join(r.dir, 'model.onnx'))).maxAbs <= 1e-4);
  assert.ok(hub.requests.filter((q) => q.url.startsWith('/acme/')).every((q) => q.auth === 'Bearer hf_secret'), 'the Hub gets the token');
  assert.ok(storageGets(hub.requests).every((q) => q.auth === undefined), 'storage never gets the token');

  const registry = await ModelRegistry.load(loadConfig({ MODEL_PATH: '', MODELS_DIR: modelsDir, EXECUTION_PROVIDERS: 'cpu' }), pino({ level: 'silent' }));
  t.after(() => registry.close());
  assert.equal(registry.defaultName, 'tiny-sd');
  assert.equal(registry.get('tiny-sd')?.spec.file.scalingFactor, 0.13025);
});

test('a second pull of the same commit downloads nothing; a commit pin needs no network at all', async (t) => {
  const hub = await fakeHub(t);
  const cacheDir = tempDir(t);
  const modelsDir = tempDir(t);
  await pull(REPO, { modelsDir, cacheDir, endpoint: hub.endpoint });
  const before = hub.requests.length;
  const again = await pull(REPO, { modelsDir, cacheDir, endpoint: hub.endpoint });
  assert.equal(again.downloaded, 0);
  // one HEAD resolves the branch; the weights are then asked for at that commit, already cached
  assert.deepEqual(hub.requests.slice(before).map((q) => `${q.method} ${q.url}`), ['HEAD /acme/tiny-sd/resolve/main/vae/config.json']);

  const pinned = hub.requests.length;
  const r = await pull(REPO, { modelsDir, cacheDir, endpoint: hub.endpoint, revision: COMMIT_A, name: 'pinned' });
  assert.equal(hub.requests.length, pinned);
  assert.equal(r.config.scalingFactor, 0.13025);
});

test('with the Hub unreachable, a branch pulled before is taken from refs/ with a warning', async (t) => {
  const hub = await fakeHub(t);
  const cacheDir = tempDir(t);
  await pull(REPO, { modelsDir: tempDir(t), cacheDir, endpoint: hub.endpoint });
  const warnings: string[] = [];
  // nothing listens on port 9 (discard) of localhost: the connection is refused
  const r = await pull(REPO, { modelsDir: tempDir(t), cacheDir, endpoint: 'http://127.0.0.1:9', warn: (m) => warnings.push(m) });
  assert.equal(r.commit, COMMIT_A);
  assert.equal(warnings.length, 1);
  assert.match(warnings[0]!, /127\.0\.0\.1:9 is unreachable .*using the cached commit a{40} of main/);
  await assert.rejects(pull(REPO, { modelsDir: tempDir(t), cacheDir, endpoint: 'http://127.0.0.1:9', revision: 'dev' }), /fetch failed/);
});

test('a branch that moved is resolved to its new commit, whose files are downloaded', async (t) => {
  const hub = await fakeHub(t);
  const cacheDir = tempDir(t);
  const modelsDir = tempDir(t);
  await pull(REPO, { modelsDir, cacheDir, endpoint: hub.endpoint });
  hub.refs.main = COMMIT_B;
  const before = hub.requests.length;
  const r = await pull(REPO, { modelsDir, cacheDir, endpoint: hub.endpoint });
  assert.equal(r.commit, COMMIT_B);
  assert.equal(r.downloaded, 2);
  assert.deepEqual(storageGets(hub.requests.slice(before)).map((q) => q.url), [`/storage/${sha256(hub.weightsB)}?signed=1`]);
  const repo = join(cacheDir, REPO_DIR);
  assert.equal(await readFile(join(repo, 'refs', 'main'), 'utf8'), COMMIT_B);
  assert.deepEqual((await readdir(join(repo, 'snapshots'))).sort(), [COMMIT_A, COMMIT_B]);
  const config = JSON.parse(await readFile(join(r.dir, 'config.json'), 'utf8')) as { scalingFactor: number; source: string };
  assert.deepEqual([config.scalingFactor, config.source], [0.5, `hf:acme/tiny-sd@${COMMIT_B}/vae`]);
  // commit B holds the same VAE in LDM naming: the converted model decodes the same
  assert.ok((await compareWithReference(join(r.dir, 'model.onnx'))).maxAbs <= 1e-4);
});

test('a file without a SHA-256 is refused; --no-verify downloads it with a warning', async (t) => {
  for (const lfsEtag of ['opaque-etag-1', null]) {
    const hub = await fakeHub(t, { lfsEtag });
    const cacheDir = tempDir(t);
    const modelsDir = tempDir(t);
    await assert.rejects(pull(REPO, { modelsDir, cacheDir, endpoint: hub.endpoint }),
      /the Hub gave no SHA-256 for .*diffusion_pytorch_model\.safetensors .*refusing an unverifiable download \(--no-verify accepts it\)/);
    assert.deepEqual(storageGets(hub.requests), [], 'nothing is downloaded');
    assert.deepEqual(await readdir(modelsDir), []);

    const warnings: string[] = [];
    const r = await pull(REPO, { modelsDir, cacheDir, endpoint: hub.endpoint, verify: false, warn: (m) => warnings.push(m) });
    assert.equal(warnings.length, 1);
    assert.match(warnings[0]!, /no SHA-256 .*downloading it unverified \(--no-verify\)/);
    assert.ok((await compareWithReference(join(r.dir, 'model.onnx'))).maxAbs <= 1e-4);
    // a blob is named by its ETag, or by its content when there is none
    const blobs = await readdir(join(cacheDir, REPO_DIR, 'blobs'));
    assert.ok(blobs.includes(lfsEtag ?? sha256(hub.weightsA)), blobs.join());
  }
});

test('a wrong sha256 is refused and the download deleted', async (t) => {
  const hub = await fakeHub(t, { lfsEtag: 'f'.repeat(64) });
  const cacheDir = tempDir(t);
  const modelsDir = tempDir(t);
  await assert.rejects(pull(REPO, { modelsDir, cacheDir, endpoint: hub.endpoint }), /checksum mismatch .*expected sha256 f{64}, got [0-9a-f]{64}; the download was deleted/);
  assert.equal(storageGets(hub.requests).length, 1, 'a mismatch is not retried');
  assert.deepEqual(await readdir(join(cacheDir, REPO_DIR, 'blobs')), [gitBlobSha1(hub.configA)]);
  assert.deepEqual(await readdir(modelsDir), [], 'no model folder is created');
});

test('an interrupted download resumes with a Range request (and the .fp16 weights name is the fallback)', async (t) => {
  const hub = await fakeHub(t, { weightsFile: 'diffusion_pytorch_model.fp16.safetensors', cutAfter: 1_000_000 });
  const r = await pull(REPO, { modelsDir: tempDir(t), cacheDir: tempDir(t), endpoint: hub.endpoint, name: 'resumed', fp16: true });
  const blobRequests = storageGets(hub.requests);
  assert.equal(blobRequests.length, 2);
  assert.equal(blobRequests[0]!.range, undefined);
  // the client keeps whatever arrived before the cut, at most what the server sent
  const resumedAt = Number(/^bytes=(\d+)-$/.exec(blobRequests[1]!.range ?? '')?.[1]);
  assert.ok(resumedAt > 0 && resumedAt <= 1_000_000, `resumed at ${blobRequests[1]!.range}`);
  assert.ok(hub.requests.some((q) => q.url.endsWith('/vae/diffusion_pytorch_model.safetensors')), 'the plain name was tried first');
  assert.equal(r.config.precision, 'fp16');
  assert.ok((await compareWithReference(join(r.dir, 'model.onnx'))).psnr >= 40);
});

test('a 206 whose Content-Range does not start at the resume offset is refused', async (t) => {
  const hub = await fakeHub(t, { cutAfter: 1_000_000, badContentRange: true });
  const cacheDir = tempDir(t);
  const modelsDir = tempDir(t);
  await assert.rejects(pull(REPO, { modelsDir, cacheDir, endpoint: hub.endpoint }),
    /asked to resume at byte [1-9]\d*, the server answered 206 with Content-Range "bytes 0-\d+\/\d+"; refusing/);
  assert.equal(storageGets(hub.requests).length, 2, 'refused, not retried');
  assert.ok(!existsSync(join(cacheDir, REPO_DIR, 'blobs', sha256(hub.weightsA))), 'nothing enters blobs/');
  assert.deepEqual(await readdir(modelsDir), []);
});

test('a blob already in the cache (e.g. from Python) is linked, not downloaded', async (t) => {
  const hub = await fakeHub(t);
  const cacheDir = tempDir(t);
  const blobs = join(cacheDir, REPO_DIR, 'blobs');
  await mkdir(blobs, { recursive: true });
  await writeFile(join(blobs, sha256(hub.weightsA)), hub.weightsA);
  const r = await pull(REPO, { modelsDir: tempDir(t), cacheDir, endpoint: hub.endpoint });
  assert.equal(r.downloaded, 1, 'only config.json');
  assert.deepEqual(storageGets(hub.requests), []);
});

test('a revision or repository the Hub does not know is an error that says which', async (t) => {
  const hub = await fakeHub(t);
  const opts = { modelsDir: tempDir(t), cacheDir: tempDir(t), endpoint: hub.endpoint };
  await assert.rejects(pull(REPO, { ...opts, revision: 'v9' }), /acme\/tiny-sd has no revision "v9" \(RevisionNotFound\)/);
  await assert.rejects(pull('acme/other', opts), /HTTP 404 RepoNotFound: no such repository, or a private or gated one that needs HF_TOKEN/);
  await assert.rejects(pull(REPO, { ...opts, subfolder: 'unet' }), /no unet\/config\.json at main: is it a diffusers repository with a 'unet' folder\?/);
});

test('model names, repository ids and revisions cannot escape the models folder', async (t) => {
  const modelsDir = tempDir(t);
  for (const name of ['..', '../x', 'a/b', '.hidden', '', 'x'.repeat(65)]) assert.throws(() => validateModelName(name), /invalid model name/);
  assert.equal(validateModelName('sd-vae-ft-mse_1.0'), 'sd-vae-ft-mse_1.0');
  await assert.rejects(pull('acme/tiny', { modelsDir, name: '../evil' }), /invalid model name/);
  await assert.rejects(pull('../../etc', { modelsDir }), /invalid Hugging Face repository id/);
  await assert.rejects(pull('acme/tiny', { modelsDir, revision: '../../x' }), /invalid revision/);
  assert.deepEqual(await readdir(modelsDir), []);
});

const run = promisify(execFile);
const cli = (args: string[], env: Record<string, string>) =>
  run(process.execPath, ['--import', 'tsx', 'src/cli.ts', ...args], { cwd: REPO_ROOT, env: { ...process.env, ...env }, encoding: 'utf8' })
    .catch((err: { code: number; stdout: string; stderr: string }) => ({ ...err, failed: err.code }));

test('CLI: pull uses HF_HOME and HF_ENDPOINT, refuses an unverifiable file, and --no-verify accepts it', async (t) => {
  const help = await cli(['pull', '--help'], {});
  assert.match(help.stdout, /--no-verify/);
  assert.match(help.stdout, /HF_HOME/);
  const hub = await fakeHub(t, { lfsEtag: 'opaque' });
  const home = tempDir(t);
  const modelsDir = tempDir(t);
  const env = { HF_HOME: home, HF_ENDPOINT: hub.endpoint, HF_HUB_CACHE: '' };
  const refused = await cli(['pull', REPO, '--models-dir', modelsDir], env);
  assert.equal((refused as { failed?: number }).failed, 1);
  assert.match(refused.stderr, /^latent-decoder: the Hub gave no SHA-256/);
  const ok = await cli(['pull', REPO, '--models-dir', modelsDir, '--no-verify'], env);
  assert.match(ok.stderr, /^warning: the Hub gave no SHA-256 .*unverified/m);
  assert.match(ok.stdout, /tiny-sd, 4 latent channels/);
  assert.ok(existsSync(join(home, 'hub', REPO_DIR, 'snapshots', COMMIT_A, 'vae', 'diffusion_pytorch_model.safetensors')));
});
