// Downloads a diffusers VAE (config.json + safetensors) from the Hugging Face Hub into a cache
// under the models folder, resuming interrupted downloads and verifying size and sha256, then
// converts it into a model repository folder `<modelsDir>/<name>/`.
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import { MODEL_FILE } from '../serving/model-config.js';
import { convertCheckpoint, type ConvertOptions, type ConvertResult } from './convert.js';

const NAME_RE = /^[a-z0-9][a-z0-9._-]{0,63}$/i;
const REPO_RE = /^[\w.-]+(\/[\w.-]+)?$/;
const PATH_PART_RE = /^[\w.-]+(\/[\w.-]+)*$/;
const WEIGHT_FILES = ['diffusion_pytorch_model.safetensors', 'diffusion_pytorch_model.fp16.safetensors'];
const MAX_REDIRECTS = 10;
const ATTEMPTS = 3;

export interface PullOptions {
  revision?: string;
  subfolder?: string;
  name?: string;
  /** Passed to convertCheckpoint: sets the factors and is recorded in the model. */
  family?: ConvertOptions['family'];
  fp16?: boolean;
  modelsDir: string;
  endpoint?: string;
  token?: string;
  onProgress?: (phase: 'download' | 'convert', done: number, total: number) => void;
}

export interface PullResult extends ConvertResult {
  dir: string;
}

/** A model name becomes a folder under the models directory, so it must stay a single plain segment. */
export function validateModelName(name: string): string {
  if (!NAME_RE.test(name) || name.includes('..')) {
    throw new Error(`invalid model name ${JSON.stringify(name)}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit, without '..'`);
  }
  return name;
}

export async function pull(repoId: string, opts: PullOptions): Promise<PullResult> {
  const revision = opts.revision ?? 'main';
  const subfolder = opts.subfolder ?? 'vae';
  if (!REPO_RE.test(repoId) || repoId.includes('..')) throw new Error(`invalid Hugging Face repository id ${JSON.stringify(repoId)}`);
  for (const [what, v] of [['revision', revision], ['subfolder', subfolder]] as const) {
    if (v !== '' && (!PATH_PART_RE.test(v) || v.split('/').includes('..'))) throw new Error(`invalid ${what} ${JSON.stringify(v)}`);
  }
  const name = validateModelName(opts.name ?? repoId.split('/').at(-1)!.toLowerCase());
  const endpoint = (opts.endpoint ?? process.env.HF_ENDPOINT ?? 'https://huggingface.co').replace(/\/+$/, '');
  const token = opts.token ?? process.env.HF_TOKEN;
  const cacheDir = join(opts.modelsDir, '.cache', repoId.replace('/', '--'), revision.replaceAll('/', '--'), subfolder);
  await mkdir(cacheDir, { recursive: true });
  const fileUrl = (file: string) =>
    `${endpoint}/${repoId}/resolve/${encodeURIComponent(revision)}/${subfolder ? `${subfolder}/` : ''}${file}`;
  const dl = new Downloader(new URL(endpoint).origin, token, (d, t) => opts.onProgress?.('download', d, t));

  const configPath = await dl.fetchTo(fileUrl('config.json'), join(cacheDir, 'config.json'));
  if (!configPath) throw new Error(`${fileUrl('config.json')} was not found (404): is ${repoId} a diffusers repository with a '${subfolder}' folder?`);
  const hubConfig = JSON.parse(await readFile(configPath, 'utf8')) as { scaling_factor?: unknown; shift_factor?: unknown };

  let weightsPath: string | undefined;
  for (const file of WEIGHT_FILES) {
    weightsPath = await dl.fetchTo(fileUrl(file), join(cacheDir, file));
    if (weightsPath) break;
  }
  if (!weightsPath) throw new Error(`none of ${WEIGHT_FILES.join(', ')} exists under ${fileUrl('')}`);

  const dir = join(opts.modelsDir, name);
  const result = await convertCheckpoint({
    weights: weightsPath,
    out: join(dir, MODEL_FILE),
    fp16: opts.fp16,
    family: opts.family,
    name,
    scalingFactor: typeof hubConfig.scaling_factor === 'number' ? hubConfig.scaling_factor : undefined,
    shiftFactor: typeof hubConfig.shift_factor === 'number' ? hubConfig.shift_factor : undefined,
    source: `hf:${repoId}@${revision}${subfolder ? `/${subfolder}` : ''}`,
    onProgress: (d, t) => opts.onProgress?.('convert', d, t),
  });
  return { ...result, dir };
}

interface Expected {
  size?: number;
  sha256?: string;
}

class Downloader {
  constructor(
    private readonly origin: string,
    private readonly token: string | undefined,
    private readonly onProgress: (done: number, total: number) => void,
  ) {}

  /**
   * Downloads `url` to `dest` through `dest.part`, resuming from what an earlier attempt (or an
   * earlier run) left there. Returns undefined on 404. A complete `dest` is reused as is.
   */
  async fetchTo(url: string, dest: string): Promise<string | undefined> {
    if (await fileSize(dest) !== undefined) return dest;
    const part = `${dest}.part`;
    let lastError: unknown;
    for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
      try {
        const expected = await this.download(url, part);
        if (!expected) return undefined;
        await verify(url, part, expected);
        await rename(part, dest);
        return dest;
      } catch (err) {
        if (err instanceof ChecksumError) throw err;
        lastError = err;
      }
    }
    throw new Error(`downloading ${url} failed after ${ATTEMPTS} attempts: ${(lastError as Error).message}`);
  }

  private async download(url: string, part: string): Promise<Expected | undefined> {
    const have = (await fileSize(part)) ?? 0;
    const { res, expected } = await this.request(url, have > 0 ? { Range: `bytes=${have}-` } : {});
    if (res.status === 404) return undefined;
    if (res.status === 416) {
      // the part file is no prefix of the remote file (it changed, or the part is already whole)
      await res.body?.cancel();
      await rm(part, { force: true });
      throw new Error('the server refused to resume (416); restarting');
    }
    if (res.status !== 200 && res.status !== 206) {
      await res.body?.cancel();
      throw new Error(`${url}: HTTP ${res.status} ${res.statusText}`);
    }
    const resumed = res.status === 206;
    const offset = resumed ? have : 0;
    const total = expected.size ?? totalFromHeaders(res, offset);
    if (total !== undefined) expected.size = total;
    if (!res.body) throw new Error(`${url}: the response has no body`);
    let done = offset;
    const body = Readable.fromWeb(res.body as WebReadableStream<Uint8Array>);
    body.on('data', (chunk: Buffer) => this.onProgress((done += chunk.length), total ?? 0));
    await pipeline(body, createWriteStream(part, { flags: resumed ? 'a' : 'w' }));
    const size = await fileSize(part);
    if (total !== undefined && size !== total) throw new Error(`${url}: the connection closed at ${size} of ${total} bytes`);
    return expected;
  }

  /** Follows redirects by hand: the Hub puts the LFS size and sha256 on the redirect, not on the CDN's answer. */
  private async request(url: string, headers: Record<string, string>): Promise<{ res: Response; expected: Expected }> {
    const expected: Expected = {};
    let current = new URL(url);
    for (let hop = 0; hop <= MAX_REDIRECTS; hop++) {
      const h: Record<string, string> = { ...headers };
      // the token is for the Hub only, never for the storage host a download redirects to
      if (this.token && current.origin === this.origin) h.Authorization = `Bearer ${this.token}`;
      const res = await fetch(current, { headers: h, redirect: 'manual' });
      const etag = (res.headers.get('x-linked-etag') ?? res.headers.get('etag') ?? '').replace(/^W\//, '').replace(/"/g, '');
      if (/^[0-9a-f]{64}$/i.test(etag)) expected.sha256 ??= etag.toLowerCase();
      const linkedSize = Number(res.headers.get('x-linked-size') ?? NaN);
      if (Number.isSafeInteger(linkedSize)) expected.size ??= linkedSize;
      const location = res.headers.get('location');
      if (res.status >= 300 && res.status < 400 && location) {
        await res.body?.cancel();
        current = new URL(location, current);
        continue;
      }
      return { res, expected };
    }
    throw new Error(`${url}: more than ${MAX_REDIRECTS} redirects`);
  }
}

class ChecksumError extends Error {}

async function verify(url: string, path: string, expected: Expected): Promise<void> {
  if (expected.sha256 === undefined) return;
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  const actual = hash.digest('hex');
  if (actual !== expected.sha256) {
    await rm(path, { force: true });
    throw new ChecksumError(`checksum mismatch for ${url}: expected sha256 ${expected.sha256}, got ${actual}; the download was deleted`);
  }
}

function totalFromHeaders(res: Response, offset: number): number | undefined {
  const range = /\/(\d+)\s*$/.exec(res.headers.get('content-range') ?? '');
  if (range) return Number(range[1]);
  const length = res.headers.get('content-length');
  return length === null ? undefined : offset + Number(length);
}

async function fileSize(path: string): Promise<number | undefined> {
  try {
    return (await stat(path)).size;
  } catch {
    return undefined;
  }
}
