// The served models: the built-in preview, the one ONNX file MODEL_PATH names, and every folder
// of the model repository (MODELS_DIR/<name>/model.onnx + config.json). Each gets its own
// inference worker and batcher. Names only ever index this map: a request's model name never
// becomes a path.
import { existsSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import type { Config } from '../config.js';
import { availableProviders } from '../inference/providers.js';
import type { RunnerLogger, RunnerOptions } from '../inference/runner.js';
import { CONFIG_FILE, FAMILY_NAMES, MODEL_FILE, isFamily, type ModelConfigFile } from './model-config.js';
import { buildPreviewDecoder, PREVIEW_MODEL_NAME, PREVIEW_SCALING_FACTOR } from '../onnx/preview.js';
import { ServedModel, type BatchListener, type ModelSpec } from './served-model.js';

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

async function readJson(file: string): Promise<ModelConfigFile> {
  let doc: unknown;
  try {
    doc = JSON.parse(await readFile(file, 'utf8'));
  } catch (e) {
    throw new Error(`${file}: ${(e as Error).message}`);
  }
  if (typeof doc !== 'object' || doc === null) throw new Error(`${file}: expected a JSON object`);
  const c = doc as Record<string, unknown>;
  for (const k of ['scalingFactor', 'shiftFactor', 'latentChannels'] as const) {
    if (c[k] !== undefined && (typeof c[k] !== 'number' || !Number.isFinite(c[k]))) throw new Error(`${file}: ${k} must be a number`);
  }
  if (c.scalingFactor === 0) throw new Error(`${file}: scalingFactor must not be 0`);
  if (c.family !== undefined && !isFamily(c.family)) throw new Error(`${file}: family must be one of ${FAMILY_NAMES.join(', ')}, got ${JSON.stringify(c.family)}`);
  return c as ModelConfigFile;
}

/** The models a config asks for, before loading: name, file and sidecar settings. */
export async function discoverModels(cfg: Config): Promise<ModelSpec[]> {
  const specs: ModelSpec[] = [{
    name: PREVIEW_MODEL_NAME, modelBytes: buildPreviewDecoder(), builtin: true,
    file: { latentChannels: 4, scalingFactor: PREVIEW_SCALING_FACTOR, shiftFactor: 0, precision: 'fp32', source: 'built-in linear preview (approximate)' },
  }];
  if (cfg.modelPath) {
    const file = path.resolve(cfg.modelPath);
    if (!existsSync(file)) throw new Error(`MODEL_PATH=${cfg.modelPath}: no such file`);
    const base = file.replace(/\.onnx$/i, '');
    // `convert` writes <name>/model.onnx + config.json: such a file is named after its folder and
    // configured by the config.json beside it, as it would be in the model repository.
    const inRepoFolder = path.basename(file) === MODEL_FILE;
    const sidecar = [`${base}.json`, `${file}.json`, ...(inRepoFolder ? [path.join(path.dirname(file), CONFIG_FILE)] : [])].find((f) => existsSync(f));
    const conf = sidecar ? await readJson(sidecar) : {};
    const name = conf.name ?? (inRepoFolder ? path.basename(path.dirname(file)) : path.basename(base));
    specs.push({ name, modelPath: file, file: conf, builtin: false });
  }
  const dir = path.resolve(cfg.modelsDir);
  if (existsSync(dir)) {
    for (const entry of (await readdir(dir, { withFileTypes: true })).sort((a, b) => a.name.localeCompare(b.name))) {
      if (!entry.isDirectory() || entry.name.startsWith('.')) continue;
      const onnx = path.join(dir, entry.name, MODEL_FILE);
      if (!existsSync(onnx)) continue;
      const confFile = path.join(dir, entry.name, CONFIG_FILE);
      const conf = existsSync(confFile) ? await readJson(confFile) : {};
      specs.push({ name: conf.name ?? entry.name, modelPath: onnx, file: conf, builtin: false });
    }
  }
  const seen = new Set<string>();
  for (const s of specs) {
    if (!NAME.test(s.name)) throw new Error(`model name ${JSON.stringify(s.name)} is not valid: use letters, digits, ".", "_" and "-"`);
    if (seen.has(s.name)) throw new Error(`two models are named ${JSON.stringify(s.name)}`);
    seen.add(s.name);
  }
  return specs;
}

export class ModelRegistry {
  readonly models = new Map<string, ServedModel>();
  defaultName: string;

  private constructor(specs: ModelSpec[], private readonly cfg: Config) {
    const real = specs.filter((s) => !s.builtin);
    this.defaultName = cfg.defaultModel ?? real[0]?.name ?? PREVIEW_MODEL_NAME;
    if (!specs.some((s) => s.name === this.defaultName)) {
      throw new Error(`DEFAULT_MODEL=${this.defaultName} is not among the models: ${specs.map((s) => s.name).join(', ')}`);
    }
  }

  static async load(cfg: Config, log: RunnerLogger, onBatch?: BatchListener, runnerOpts: RunnerOptions = {}): Promise<ModelRegistry> {
    const specs = await discoverModels(cfg);
    const reg = new ModelRegistry(specs, cfg);
    const { usable, missing, reasons } = availableProviders(cfg.executionProviders);
    if (missing.length > 0) {
      log.info({ skipped: missing, reasons }, `execution provider ${missing.join(', ')} not installed (${Object.values(reasons).join('; ')}); not tried`);
    }
    if (usable.length === 0) throw new Error(`no execution provider can load: ${missing.join(', ')} not installed; add cpu to EXECUTION_PROVIDERS`);
    const run = { ...cfg, executionProviders: usable };
    const loaded = await Promise.allSettled(specs.map((s) => ServedModel.start(s, run, log, onBatch, runnerOpts)));
    const failed = loaded.flatMap((r, i) => (r.status === 'rejected' ? [`${specs[i]!.name}: ${(r.reason as Error).message}`] : []));
    for (const r of loaded) if (r.status === 'fulfilled') reg.models.set(r.value.name, r.value);
    if (failed.length > 0) {
      await reg.close();
      throw new Error(`models failed to load: ${failed.join('; ')}`);
    }
    return reg;
  }

  get(name: string | undefined): ServedModel | undefined {
    return this.models.get(name ?? this.defaultName);
  }

  /** Every model's every instance is running (none restarting or given up). */
  get healthy(): boolean {
    return [...this.models.values()].every((m) => m.healthy);
  }

  get names(): string[] {
    return [...this.models.keys()];
  }

  get config(): Config {
    return this.cfg;
  }

  /** Resolves when no model has anything queued or running. */
  async idle(): Promise<void> {
    await Promise.all([...this.models.values()].map((m) => m.batcher.idle()));
  }

  /** Answers every request still queued or running with `err`; the runs themselves go on. */
  failAll(err: unknown): void {
    for (const m of this.models.values()) m.batcher.failAll(err);
  }

  async close(): Promise<void> {
    await Promise.all([...this.models.values()].map((m) => m.close()));
  }
}
