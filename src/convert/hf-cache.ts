// Downloads single files of a Hub repository into the Hugging Face cache, in the layout Python's
// huggingface_hub uses, so that both share one cache (HF_HUB_CACHE, else HF_HOME/hub):
//
//   models--owner--name/refs/<revision>              the commit a branch or tag resolved to
//   models--owner--name/blobs/<etag>                 file contents, named by sha256 (LFS) or git blob sha1
//   models--owner--name/snapshots/<commit>/<path>    relative symlinks into blobs/
//
// Why not @huggingface/hub's downloadFileToCacheDir (2.17.5, read in node_modules): it names the
// snapshot after the commit that last touched each file (paths-info `lastCommit`), not the commit
// the revision points to, and writes no refs/, so its snapshots are not Python's; it rewrites
// `.incomplete` from byte 0 (no resume of multi-GB weights) and verifies no checksum; and
// snapshotDownload fetches every file of the repository (a full pipeline repo is many GB) when we
// need two. This module does what Python's hf_hub_download does — HEAD
// /{repo}/resolve/{rev}/{path} for X-Repo-Commit, X-Linked-Etag/ETag and X-Linked-Size, then GET
// with Range resume — and additionally verifies every file before it enters blobs/.
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, readFile, rename, rm, stat, symlink, writeFile, copyFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';

const COMMIT_RE = /^[0-9a-f]{40}$/;
const SHA256_RE = /^[0-9a-f]{64}$/;
const SAFE_ETAG_RE = /^[A-Za-z0-9._-]{1,128}$/;
const MAX_REDIRECTS = 10;
const ATTEMPTS = 3;

/** Where Python's huggingface_hub keeps its cache: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub. */
export function hubCacheDir(env: Record<string, string | undefined> = process.env): string {
  if (env.HF_HUB_CACHE) return env.HF_HUB_CACHE;
  const home = env.HF_HOME || join(env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'huggingface');
  return join(home, 'hub');
}

/** What the cache needs to check a download: SHA-256 for LFS files, the git blob SHA-1 for small ones. */
export type Checksum = { kind: 'sha256' | 'git-blob-sha1'; hex: string };

/** A failure that another attempt cannot fix: a checksum mismatch, a missing checksum, a lying server. */
export class RefusedDownloadError extends Error {}

export interface HubCacheOptions {
  cacheDir: string;
  repoId: string;
  endpoint: string;
  token?: string;
  /** false: accept a file the Hub gives no checksum for (a warning is logged). */
  verify: boolean;
  warn: (message: string) => void;
  onProgress?: (done: number, total: number) => void;
}

export interface CachedFile {
  /** snapshots/<commit>/<path> */
  path: string;
  commit: string;
  /** Whether the file's bytes came over the network in this call. */
  downloaded: boolean;
}

interface Remote {
  commit: string;
  etag?: string;
  size?: number;
  checksum?: Checksum;
}

export class HubCache {
  readonly repoDir: string;
  private readonly origin: string;

  constructor(private readonly o: HubCacheOptions) {
    this.repoDir = join(o.cacheDir, `models--${o.repoId.replaceAll('/', '--')}`);
    this.origin = new URL(o.endpoint).origin;
  }

  private url(revision: string, file: string): string {
    return `${this.o.endpoint}/${this.o.repoId}/resolve/${encodeURIComponent(revision)}/${file}`;
  }

  /**
   * Makes `file` at `revision` present in the cache; undefined when the revision has no such file.
   * A commit already in snapshots/ needs no network; a branch or tag is always resolved anew (one
   * HEAD), so a moved branch fetches the new commit's files.
   */
  async fetch(revision: string, file: string): Promise<CachedFile | undefined> {
    if (COMMIT_RE.test(revision) && (await exists(this.pointer(revision, file)))) {
      return { path: this.pointer(revision, file), commit: revision, downloaded: false };
    }
    let remote: Remote | undefined;
    try {
      remote = await this.head(revision, file);
    } catch (err) {
      // Hub unreachable: like huggingface_hub, use the commit refs/ last resolved the revision to
      const cached = err instanceof TypeError ? await this.cachedPointer(revision, file) : undefined;
      if (!cached) throw err;
      this.o.warn(`${this.o.endpoint} is unreachable (${(err as Error).message}): using the cached commit ${cached.commit} of ${revision}`);
      return cached;
    }
    if (!remote) return undefined;
    if (revision !== remote.commit) {
      await mkdir(dirname(join(this.repoDir, 'refs', revision)), { recursive: true });
      await writeFile(join(this.repoDir, 'refs', revision), remote.commit);
    }
    const pointer = this.pointer(remote.commit, file);
    if (await exists(pointer)) return { path: pointer, commit: remote.commit, downloaded: false };
    if (!remote.checksum) {
      const why = `the Hub gave no SHA-256 for ${this.url(remote.commit, file)} (ETag ${JSON.stringify(remote.etag ?? null)})`;
      if (this.o.verify) throw new RefusedDownloadError(`${why}: refusing an unverifiable download (--no-verify accepts it)`);
      this.o.warn(`${why}: downloading it unverified (--no-verify)`);
    }
    // Blobs are named by their ETag like Python's; an ETag unfit for a file name is hashed.
    const blobName = remote.etag === undefined ? undefined
      : SAFE_ETAG_RE.test(remote.etag) ? remote.etag : createHash('sha256').update(remote.etag).digest('hex');
    let blob = blobName && join(this.repoDir, 'blobs', blobName);
    let downloaded = false;
    if (!blob || !(await exists(blob))) {
      const incomplete = `${blob ?? join(this.repoDir, 'blobs', `unnamed-${remote.commit}-${createHash('sha256').update(file).digest('hex').slice(0, 16)}`)}.incomplete`;
      await mkdir(dirname(incomplete), { recursive: true });
      await this.downloadTo(this.url(remote.commit, file), incomplete, remote);
      // Without an ETag (--no-verify only), the blob is named by its content.
      blob ??= join(this.repoDir, 'blobs', await hashFile(incomplete, 'sha256'));
      await rename(incomplete, blob);
      downloaded = true;
    }
    await mkdir(dirname(pointer), { recursive: true });
    await symlink(relative(dirname(pointer), blob), pointer).catch(async (err: NodeJS.ErrnoException) => {
      if (err.code === 'EEXIST') return;
      if (err.code === 'EPERM') return copyFile(blob, pointer); // no symlinks (Windows without developer mode): Python copies too
      throw err;
    });
    return { path: pointer, commit: remote.commit, downloaded };
  }

  private async cachedPointer(revision: string, file: string): Promise<CachedFile | undefined> {
    const ref = await readFile(join(this.repoDir, 'refs', revision), 'utf8').catch(() => '');
    const commit = ref.trim();
    if (!COMMIT_RE.test(commit) || !(await exists(this.pointer(commit, file)))) return undefined;
    return { path: this.pointer(commit, file), commit, downloaded: false };
  }

  private pointer(commit: string, file: string): string {
    return join(this.repoDir, 'snapshots', commit, file);
  }

  /**
   * HEAD on the resolve URL, like huggingface_hub: redirects within the Hub (a renamed repository)
   * are followed; the first redirect elsewhere (LFS storage) carries the file's metadata.
   */
  private async head(revision: string, file: string): Promise<Remote | undefined> {
    const url = this.url(revision, file);
    let current = new URL(url);
    for (let hop = 0; hop <= MAX_REDIRECTS; hop++) {
      const res = await fetch(current, { method: 'HEAD', headers: this.headers(current, {}), redirect: 'manual' });
      const location = res.headers.get('location');
      if (res.status >= 300 && res.status < 400 && location && new URL(location, current).origin === this.origin && !res.headers.get('x-repo-commit')) {
        current = new URL(location, current);
        continue;
      }
      // The Hub says what is missing in X-Error-Code (huggingface_hub reads the same codes).
      const code = res.headers.get('x-error-code');
      if (res.status === 404 && (code === null || code === 'EntryNotFound')) return undefined;
      if (code === 'RevisionNotFound') throw new Error(`${this.o.repoId} has no revision ${JSON.stringify(revision)} (RevisionNotFound)`);
      if (code === 'RepoNotFound' || code === 'GatedRepo' || res.status === 401 || res.status === 403) {
        throw new Error(`${url}: HTTP ${res.status}${code ? ` ${code}` : ''}: no such repository, or a private or gated one that needs HF_TOKEN with access to it`);
      }
      if (!res.ok && !(res.status >= 300 && res.status < 400)) throw new Error(`${url}: HTTP ${res.status} ${res.statusText}`);
      const commit = res.headers.get('x-repo-commit') ?? '';
      if (!COMMIT_RE.test(commit)) throw new Error(`${url}: the server did not say which commit ${JSON.stringify(revision)} is (no X-Repo-Commit header); is ${this.o.endpoint} a Hugging Face Hub?`);
      const linked = res.headers.get('x-linked-etag');
      const etag = normalizeEtag(linked ?? res.headers.get('etag'));
      const size = Number(res.headers.get('x-linked-size') ?? (res.ok ? res.headers.get('content-length') : null) ?? NaN);
      return { commit, etag, size: Number.isSafeInteger(size) ? size : undefined, checksum: checksumOf(etag, linked !== null) };
    }
    throw new Error(`${url}: more than ${MAX_REDIRECTS} redirects`);
  }

  private headers(url: URL, extra: Record<string, string>): Record<string, string> {
    // identity: a compressed answer would break Range resume and the size check
    const h: Record<string, string> = { 'accept-encoding': 'identity', ...extra };
    // the token is for the Hub only, never for the storage host a download redirects to
    if (this.o.token && url.origin === this.origin) h.authorization = `Bearer ${this.o.token}`;
    return h;
  }

  /** GET into `part`, resuming what an earlier attempt or run left there, then verify. */
  private async downloadTo(url: string, part: string, remote: Remote): Promise<void> {
    let lastError: unknown;
    for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
      try {
        await this.getOnce(url, part, remote.size);
        if (remote.checksum) await verify(url, part, remote.checksum);
        return;
      } catch (err) {
        if (err instanceof RefusedDownloadError) throw err;
        lastError = err;
      }
    }
    throw new Error(`downloading ${url} failed after ${ATTEMPTS} attempts: ${(lastError as Error).message}`);
  }

  private async getOnce(url: string, part: string, size: number | undefined): Promise<void> {
    const have = (await fileSize(part)) ?? 0;
    const res = await this.get(url, have > 0 ? { range: `bytes=${have}-` } : {});
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
    if (resumed) {
      // Appending bytes that start elsewhere than where the part file ends would corrupt it.
      const range = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(res.headers.get('content-range') ?? '');
      if (!range || Number(range[1]) !== have || (size !== undefined && range[3] !== '*' && Number(range[3]) !== size)) {
        await res.body?.cancel();
        throw new RefusedDownloadError(`${url}: asked to resume at byte ${have}, the server answered 206 with Content-Range ${JSON.stringify(res.headers.get('content-range'))}; refusing (delete ${part} to start over)`);
      }
    }
    const offset = resumed ? have : 0;
    const length = res.headers.get('content-length');
    const total = size ?? (length === null ? undefined : offset + Number(length));
    if (!res.body) throw new Error(`${url}: the response has no body`);
    let done = offset;
    const body = Readable.fromWeb(res.body as WebReadableStream<Uint8Array>);
    body.on('data', (chunk: Buffer) => this.o.onProgress?.((done += chunk.length), total ?? 0));
    await pipeline(body, createWriteStream(part, { flags: resumed ? 'a' : 'w' }));
    const got = await fileSize(part);
    if (total !== undefined && got !== total) {
      if (got !== undefined && got > total) await rm(part, { force: true });
      throw new Error(`${url}: got ${got} of ${total} bytes`);
    }
  }

  private async get(url: string, extra: Record<string, string>): Promise<Response> {
    let current = new URL(url);
    for (let hop = 0; hop <= MAX_REDIRECTS; hop++) {
      const res = await fetch(current, { headers: this.headers(current, extra), redirect: 'manual' });
      const location = res.headers.get('location');
      if (res.status >= 300 && res.status < 400 && location) {
        await res.body?.cancel();
        current = new URL(location, current);
        continue;
      }
      return res;
    }
    throw new Error(`${url}: more than ${MAX_REDIRECTS} redirects`);
  }
}

function normalizeEtag(raw: string | null): string | undefined {
  const etag = raw?.replace(/^W\//, '').replaceAll('"', '').trim();
  return etag ? etag : undefined;
}

/**
 * An LFS file's ETag (X-Linked-Etag) is its SHA-256; a small file's ETag is its git blob SHA-1,
 * which also identifies its content. Anything else (a mirror's opaque ETag) is no checksum.
 */
function checksumOf(etag: string | undefined, linked: boolean): Checksum | undefined {
  if (!etag) return undefined;
  if (SHA256_RE.test(etag.toLowerCase())) return { kind: 'sha256', hex: etag.toLowerCase() };
  if (!linked && COMMIT_RE.test(etag)) return { kind: 'git-blob-sha1', hex: etag };
  return undefined;
}

async function hashFile(path: string, kind: Checksum['kind']): Promise<string> {
  const hash = createHash(kind === 'sha256' ? 'sha256' : 'sha1');
  if (kind === 'git-blob-sha1') hash.update(`blob ${(await stat(path)).size}\0`);
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

async function verify(url: string, path: string, expected: Checksum): Promise<void> {
  const actual = await hashFile(path, expected.kind);
  if (actual !== expected.hex) {
    await rm(path, { force: true });
    throw new RefusedDownloadError(`checksum mismatch for ${url}: expected ${expected.kind} ${expected.hex}, got ${actual}; the download was deleted`);
  }
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(() => true, () => false);
}

async function fileSize(path: string): Promise<number | undefined> {
  return stat(path).then((s) => s.size, () => undefined);
}
