// Downloads a diffusers VAE (config.json + safetensors) from the Hugging Face Hub into the
// Hugging Face cache shared with Python (see hf-cache.ts), keyed by the commit the revision
// resolves to, then converts it into a model repository folder `<modelsDir>/<name>/`.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { MODEL_FILE } from '../serving/model-config.js';
import { convertCheckpoint, type ConvertOptions, type ConvertResult } from './convert.js';
import { HubCache, hubCacheDir } from './hf-cache.js';

const NAME_RE = /^[a-z0-9][a-z0-9._-]{0,63}$/i;
const REPO_RE = /^[\w.-]+(\/[\w.-]+)?$/;
const PATH_PART_RE = /^[\w.-]+(\/[\w.-]+)*$/;
const WEIGHT_FILES = ['diffusion_pytorch_model.safetensors', 'diffusion_pytorch_model.fp16.safetensors'];

export interface PullOptions {
  revision?: string;
  subfolder?: string;
  name?: string;
  /** Passed to convertCheckpoint: sets the factors and is recorded in the model. */
  family?: ConvertOptions['family'];
  fp16?: boolean;
  modelsDir: string;
  /** Default HF_ENDPOINT, else https://huggingface.co. */
  endpoint?: string;
  /** Default HF_TOKEN. */
  token?: string;
  /** The Hugging Face cache; default HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub. */
  cacheDir?: string;
  /** false: accept files the Hub gives no checksum for, with a warning (`--no-verify`). */
  verify?: boolean;
  /** Where warnings go; default stderr. */
  warn?: (message: string) => void;
  onProgress?: (phase: 'download' | 'convert', done: number, total: number) => void;
}

export interface PullResult extends ConvertResult {
  dir: string;
  /** The commit the revision resolved to. */
  commit: string;
  /** The snapshot folder of the VAE in the cache: snapshots/<commit>/<subfolder>. */
  snapshot: string;
  /** How many files came over the network (0 when the commit was already cached). */
  downloaded: number;
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
  if (revision === '') throw new Error('invalid revision ""');
  const name = validateModelName(opts.name ?? repoId.split('/').at(-1)!.toLowerCase());
  const endpoint = (opts.endpoint ?? process.env.HF_ENDPOINT ?? 'https://huggingface.co').replace(/\/+$/, '');
  const hub = new HubCache({
    cacheDir: opts.cacheDir ?? hubCacheDir(),
    repoId,
    endpoint,
    token: opts.token ?? process.env.HF_TOKEN,
    verify: opts.verify ?? true,
    warn: opts.warn ?? ((m) => process.stderr.write(`warning: ${m}\n`)),
    onProgress: (d, t) => opts.onProgress?.('download', d, t),
  });
  const inFolder = (file: string) => (subfolder ? `${subfolder}/${file}` : file);

  // The config resolves the revision to a commit; every later file is fetched at that commit, so a
  // branch that moves during the pull cannot mix two commits' files.
  const config = await hub.fetch(revision, inFolder('config.json'));
  if (!config) throw new Error(`${endpoint}/${repoId}: no ${inFolder('config.json')} at ${revision}: is it a diffusers repository with a '${subfolder}' folder?`);
  const hubConfig = JSON.parse(await readFile(config.path, 'utf8')) as { scaling_factor?: unknown; shift_factor?: unknown; batch_norm_eps?: unknown; latents_mean?: unknown; latents_std?: unknown };

  let weights;
  for (const file of WEIGHT_FILES) {
    weights = await hub.fetch(config.commit, inFolder(file));
    if (weights) break;
  }
  if (!weights) throw new Error(`none of ${WEIGHT_FILES.join(', ')} exists in ${repoId}@${config.commit}${subfolder ? `/${subfolder}` : ''}`);

  const dir = join(opts.modelsDir, name);
  const result = await convertCheckpoint({
    weights: weights.path,
    out: join(dir, MODEL_FILE),
    fp16: opts.fp16,
    family: opts.family,
    name,
    scalingFactor: typeof hubConfig.scaling_factor === 'number' ? hubConfig.scaling_factor : undefined,
    shiftFactor: typeof hubConfig.shift_factor === 'number' ? hubConfig.shift_factor : undefined,
    batchNormEps: typeof hubConfig.batch_norm_eps === 'number' ? hubConfig.batch_norm_eps : undefined,
    latentsMean: numbers(hubConfig.latents_mean),
    latentsStd: numbers(hubConfig.latents_std),
    // the commit, not the branch name: the model says exactly which weights it holds
    source: `hf:${repoId}@${config.commit}${subfolder ? `/${subfolder}` : ''}`,
    onProgress: (d, t) => opts.onProgress?.('convert', d, t),
  });
  return {
    ...result,
    dir,
    commit: config.commit,
    snapshot: join(hub.repoDir, 'snapshots', config.commit, subfolder),
    downloaded: Number(config.downloaded) + Number(weights.downloaded),
  };
}

/** A JSON list of finite numbers, else undefined. */
function numbers(v: unknown): number[] | undefined {
  return Array.isArray(v) && v.every((x) => typeof x === 'number' && Number.isFinite(x)) ? (v as number[]) : undefined;
}
