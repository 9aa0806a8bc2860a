// The served models: the built-in preview, the one ONNX file MODEL_PATH names, and every folder
// of the model repository (MODELS_DIR/<name>/model.onnx + config.json). Each gets its own
// inference worker and batcher. Names only ever index this map: a request's model name never
// becomes a path.
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import type { Config } from '../config.js';
import { checkRegularFile, exists, FileRefusedError, kindOf, readRegularFile, statOnce } from '../files.js';
import { availableProviders } from '../inference/providers.js';
import { ModelDefectError, type RunnerLogger, type RunnerOptions } from '../inference/runner.js';
import { CONFIG_FILE, ENCODER_FILE, FAMILY_NAMES, MODEL_FILE, isFamily, type ModelConfigFile } from './model-config.js';
import { buildPreviewDecoder, PREVIEW_MODEL_NAME, PREVIEW_SCALING_FACTOR } from '../onnx/preview.js';
import { ServedEncoder } from './served-encoder.js';
import { ServedModel, type BatchListener, type ModelSpec } from './served-model.js';
import { ServiceError } from '../errors.js';

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
/** A config.json is a few hundred bytes; anything past this is not one. */
const MAX_CONFIG_BYTES = 1024 * 1024;

/**
 * A config.json or MODEL_PATH sidecar: a JSON object whose known fields have their types
 * (name, source: strings; latentChannels: a positive integer; scalingFactor (not 0),
 * shiftFactor: finite numbers; precision: fp32|fp16; family: a known family). Unknown fields
 * (the KL VAE's ch, chMult, ... that `convert` records) are kept.
 * @throws Error naming the file and the field
 */
export async function readModelConfig(file: string): Promise<ModelConfigFile> {
  let doc: unknown;
  try {
    doc = JSON.parse((await readRegularFile(file, MAX_CONFIG_BYTES, 'the 1 MiB a config file may have')).toString('utf8'));
  } catch (e) {
    throw new Error(e instanceof FileRefusedError ? e.message : `${file}: ${(e as Error).message}`);
  }
  const kind = Array.isArray(doc) ? 'an array' : doc === null ? 'null' : typeof doc;
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw new Error(`${file}: expected a JSON object, got ${kind}`);
  const c = doc as Record<string, unknown>;
  for (const k of ['scalingFactor', 'shiftFactor', 'latentChannels'] as const) {
    if (c[k] !== undefined && (typeof c[k] !== 'number' || !Number.isFinite(c[k]))) throw new Error(`${file}: ${k} must be a number, got ${JSON.stringify(c[k])}`);
  }
  if (c.latentChannels !== undefined && !(Number.isInteger(c.latentChannels) && (c.latentChannels as number) > 0)) {
    throw new Error(`${file}: latentChannels must be a positive integer, got ${JSON.stringify(c.latentChannels)}`);
  }
  for (const k of ['name', 'source'] as const) {
    if (c[k] !== undefined && typeof c[k] !== 'string') throw new Error(`${file}: ${k} must be a string, got ${JSON.stringify(c[k])}`);
  }
  if (c.precision !== undefined && c.precision !== 'fp32' && c.precision !== 'fp16') throw new Error(`${file}: precision must be fp32 or fp16, got ${JSON.stringify(c.precision)}`);
  if (c.scalingFactor === 0) throw new Error(`${file}: scalingFactor must not be 0`);
  if (c.family !== undefined && !isFamily(c.family)) throw new Error(`${file}: family must be one of ${FAMILY_NAMES.join(', ')}, got ${JSON.stringify(c.family)}`);
  return c;
}

/** Where discovery reports a repository entry it does not serve. */
export interface DiscoveryLogger {
  warn(obj: object, msg: string): void;
}

/**
 * Why a repository entry is not a model folder, or undefined when it is one. A folder given as a
 * symbolic link is followed once (to a directory); its model.onnx must be a regular file (a link
 * followed once) within `maxBytes`.
 */
async function whyNotServed(entry: string, maxBytes: number): Promise<string | undefined> {
  try {
    const { target, stats } = await statOnce(entry);
    if (!stats.isDirectory()) return `not a folder but ${kindOf(stats)}${target === entry ? '' : ` (a link to ${target})`}`;
    const onnx = path.join(entry, MODEL_FILE);
    const encoder = path.join(entry, ENCODER_FILE);
    const [decodes, encodes] = [await exists(onnx), await exists(encoder)];
    // a folder with encoder.onnx alone (a TAESD encoder file) serves /encode only
    if (!decodes && !encodes) return `no ${MODEL_FILE} (nor ${ENCODER_FILE}) in it`;
    if (decodes) await checkRegularFile(onnx, maxBytes, 'MAX_MODEL_BYTES');
    if (encodes) await checkRegularFile(encoder, maxBytes, 'MAX_MODEL_BYTES');
    return undefined;
  } catch (e) {
    return (e as Error).message; // FileRefusedError's names the path; Node's (EACCES, ELOOP) too
  }
}

/**
 * The models a config asks for, before loading: name, file and sidecar settings. A repository
 * entry that is not a model folder is skipped with one warning naming why; hidden entries (a
 * leading ".", e.g. the Hugging Face cache in `.cache`) silently; so is a folder whose config.json
 * is bad (not a JSON object, a field of the wrong type). MODEL_PATH, named explicitly, and its
 * sidecar stop the start instead.
 * @throws Error naming the file: MODEL_PATH missing or not a regular file, a bad MODEL_PATH
 *   sidecar, a name that is invalid or taken twice
 */
export async function discoverModels(cfg: Config, log?: DiscoveryLogger): Promise<ModelSpec[]> {
  const specs: ModelSpec[] = [{
    name: PREVIEW_MODEL_NAME, modelBytes: buildPreviewDecoder(), builtin: true,
    file: { latentChannels: 4, scalingFactor: PREVIEW_SCALING_FACTOR, shiftFactor: 0, precision: 'fp32', source: 'built-in linear preview (approximate)' },
  }];
  if (cfg.modelPath) {
    const file = path.resolve(cfg.modelPath);
    if (!(await exists(file))) throw new Error(`MODEL_PATH=${cfg.modelPath}: no such file`);
    await checkRegularFile(file, cfg.maxModelBytes, 'MAX_MODEL_BYTES').catch((e: Error) => { throw new Error(`MODEL_PATH=${e.message}`); });
    const base = file.replace(/\.onnx$/i, '');
    // `convert` writes <name>/model.onnx + config.json: such a file is named after its folder and
    // configured by the config.json beside it, as it would be in the model repository.
    const inRepoFolder = path.basename(file) === MODEL_FILE;
    let sidecar: string | undefined;
    for (const f of [`${base}.json`, `${file}.json`, ...(inRepoFolder ? [path.join(path.dirname(file), CONFIG_FILE)] : [])]) {
      if (await exists(f)) { sidecar = f; break; }
    }
    const conf = sidecar ? await readModelConfig(sidecar) : {};
    const name = conf.name ?? (inRepoFolder ? path.basename(path.dirname(file)) : path.basename(base));
    const encoder = inRepoFolder ? path.join(path.dirname(file), ENCODER_FILE) : `${base}.encoder.onnx`;
    const encodes = await exists(encoder);
    if (encodes) await checkRegularFile(encoder, cfg.maxModelBytes, 'MAX_MODEL_BYTES');
    specs.push({ name, modelPath: file, file: conf, builtin: false, ...(encodes ? { encoderPath: encoder } : {}) });
  }
  const dir = path.resolve(cfg.modelsDir);
  if (await exists(dir)) {
    for (const entry of (await readdir(dir)).sort((a, b) => a.localeCompare(b))) {
      if (entry.startsWith('.')) continue;
      const folder = path.join(dir, entry);
      const why = await whyNotServed(folder, cfg.maxModelBytes);
      if (why !== undefined) {
        log?.warn({ entry: folder, reason: why }, `model repository: skipping ${entry}: ${why}`);
        continue;
      }
      const confFile = path.join(folder, CONFIG_FILE);
      let conf: ModelConfigFile = {};
      try {
        if (await exists(confFile)) conf = await readModelConfig(confFile);
      } catch (e) {
        const reason = (e as Error).message;
        log?.warn({ entry: folder, reason }, `model repository: skipping ${entry}: ${reason}`);
        continue;
      }
      const [onnx, encoder] = [path.join(folder, MODEL_FILE), path.join(folder, ENCODER_FILE)];
      specs.push({
        name: conf.name ?? entry, file: conf, builtin: false,
        ...((await exists(onnx)) ? { modelPath: onnx } : {}), ...((await exists(encoder)) ? { encoderPath: encoder } : {}),
      });
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
  /** The decoders (every model but an encode-only one). */
  readonly models = new Map<string, ServedModel>();
  /** The encoders, by model name (a folder's encoder.onnx). */
  readonly encoders = new Map<string, ServedEncoder>();
  /**
   * Models that cannot serve (a weight holds NaN or ±Inf): name → why, naming the tensor. They
   * keep the service unready and their requests get 503 MODEL_UNAVAILABLE, never a decode.
   */
  readonly unavailable = new Map<string, { spec: ModelSpec; reason: string }>();
  defaultName: string;

  private constructor(specs: ModelSpec[], private readonly cfg: Config) {
    const real = specs.filter((s) => !s.builtin && (s.modelPath || s.modelBytes));
    this.defaultName = cfg.defaultModel ?? real[0]?.name ?? PREVIEW_MODEL_NAME;
    if (!specs.some((s) => s.name === this.defaultName)) {
      throw new Error(`DEFAULT_MODEL=${this.defaultName} is not among the models: ${specs.map((s) => s.name).join(', ')}`);
    }
  }

  static async load(cfg: Config, log: RunnerLogger, onBatch?: BatchListener, runnerOpts: RunnerOptions = {}): Promise<ModelRegistry> {
    const specs = await discoverModels(cfg, log);
    const reg = new ModelRegistry(specs, cfg);
    const { usable, missing, reasons } = availableProviders(cfg.executionProviders);
    if (missing.length > 0) {
      log.info({ skipped: missing, reasons }, `execution provider ${missing.join(', ')} not installed (${Object.values(reasons).join('; ')}); not tried`);
    }
    if (usable.length === 0) throw new Error(`no execution provider can load: ${missing.join(', ')} not installed; add cpu to EXECUTION_PROVIDERS`);
    const run = { ...cfg, executionProviders: usable };
    const decoders = specs.filter((s) => s.modelPath || s.modelBytes);
    const encoders = specs.filter((s) => s.encoderPath);
    const encodeBatch = onBatch && ((model: string, info: Parameters<BatchListener>[1]) => onBatch(model, info, 'encode'));
    const [loaded, loadedEnc] = await Promise.all([
      Promise.allSettled(decoders.map((s) => ServedModel.start(s, run, log, onBatch, runnerOpts))),
      Promise.allSettled(encoders.map((s) => ServedEncoder.start(s.name, s.encoderPath!, s.file, run, log, encodeBatch, runnerOpts))),
    ]);
    const failed: string[] = [];
    const settle = <T>(r: PromiseSettledResult<T>, spec: ModelSpec, keep: (v: T) => void): void => {
      const name = spec.name;
      if (r.status === 'fulfilled') keep(r.value);
      else if (r.reason instanceof ModelDefectError) {
        reg.unavailable.set(name, { spec, reason: r.reason.message });
        log.error({ model: name, reason: r.reason.message }, `model ${name} cannot serve: ${r.reason.message}`);
      } else failed.push(`${name}: ${(r.reason as Error).message}`);
    };
    loaded.forEach((r, i) => settle(r, decoders[i]!, (m) => reg.models.set(m.name, m)));
    loadedEnc.forEach((r, i) => settle(r, encoders[i]!, (e) => reg.encoders.set(e.name, e)));
    if (failed.length > 0) {
      await reg.close();
      throw new Error(`models failed to load: ${failed.join('; ')}`);
    }
    return reg;
  }

  get(name: string | undefined): ServedModel | undefined {
    return this.models.get(name ?? this.defaultName);
  }

  /**
   * The model a request names (the default model when it names none).
   * @throws ServiceError MODEL_NOT_FOUND (404) for an unknown name or a model that only encodes (named
   *   so, with the models that decode), MODEL_UNAVAILABLE (503) for a
   *   model whose weights are broken (the message says which tensor)
   */
  resolve(name: string | undefined): ServedModel {
    const key = name ?? this.defaultName;
    const model = this.models.get(key);
    if (model) return model;
    const broken = this.unavailable.get(key);
    if (broken) throw new ServiceError('MODEL_UNAVAILABLE', `model ${key} cannot serve: ${broken.reason}`);
    const decoders = `models that decode: ${this.names.join(', ')}`;
    if (this.encoders.has(key)) {
      const which = name === undefined ? `the default model ${JSON.stringify(key)} has no decoder (it encodes only): name one with model=` : `model ${JSON.stringify(key)} has no decoder (it encodes only)`;
      throw new ServiceError('MODEL_NOT_FOUND', `${which}; ${decoders}`);
    }
    throw new ServiceError('MODEL_NOT_FOUND', `no model named ${JSON.stringify(name)}; available: ${this.names.join(', ')}`);
  }

  /**
   * The encoder a request names; without a name, the default model's, else the first that encodes.
   * @throws ServiceError ENCODER_NOT_FOUND (404) naming the models that encode, MODEL_UNAVAILABLE (503)
   */
  encoder(name: string | undefined): ServedEncoder {
    const enc = name !== undefined ? this.encoders.get(name) : this.encoders.get(this.defaultName) ?? this.encoders.values().next().value;
    if (enc) return enc;
    const broken = name !== undefined ? this.unavailable.get(name) : undefined;
    if (broken) throw new ServiceError('MODEL_UNAVAILABLE', `model ${name} cannot serve: ${broken.reason}`);
    const can = [...this.encoders.keys()];
    const which = can.length > 0 ? `models that encode: ${can.join(', ')}` : 'no served model has an encoder (convert weights that hold one: encoder.onnx beside model.onnx)';
    if (name === undefined) throw new ServiceError('ENCODER_NOT_FOUND', `the default model ${this.defaultName} has no encoder; ${which}`);
    const known = this.allNames.includes(name);
    throw new ServiceError('ENCODER_NOT_FOUND', `${known ? `model ${JSON.stringify(name)} has no encoder` : `no model named ${JSON.stringify(name)}`}; ${which}`);
  }

  /** Every model's every instance is running (none restarting or given up), none unavailable. */
  get healthy(): boolean {
    return this.unavailable.size === 0 && [...this.models.values(), ...this.encoders.values()].every((m) => m.healthy);
  }

  /** Every model name, decode or encode, in load order. */
  get allNames(): string[] {
    return [...new Set([...this.models.keys(), ...this.encoders.keys()])];
  }

  /** Why the registry is not healthy, in words (undefined when it is). */
  get problem(): string | undefined {
    const broken = [...this.unavailable].map(([name, u]) => `model ${name} cannot serve: ${u.reason}`);
    if (broken.length > 0) return broken.join('; ');
    const restarting = [...this.models.values(), ...this.encoders.values()].filter((m) => !m.healthy).map((m) => m.name);
    return restarting.length > 0 ? `the inference worker of ${restarting.join(', ')} is restarting` : undefined;
  }

  /** The models that decode, in load order (allNames: every model). */
  get names(): string[] {
    return [...this.models.keys()];
  }

  get config(): Config {
    return this.cfg;
  }

  /** Resolves when no model has anything queued or running. */
  async idle(): Promise<void> {
    await Promise.all([...this.models.values(), ...this.encoders.values()].map((m) => m.batcher.idle()));
  }

  /** Answers every request still queued or running with `err`; the runs themselves go on. */
  failAll(err: unknown): void {
    for (const m of [...this.models.values(), ...this.encoders.values()]) m.batcher.failAll(err);
  }

  async close(): Promise<void> {
    await Promise.all([...this.models.values(), ...this.encoders.values()].map((m) => m.close()));
  }
}
