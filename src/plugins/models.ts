// The models: loaded after the server listens (live at once, ready once every model has loaded and
// warmed up), drained on shutdown. Decorates the instance with `models`, which routes read for the
// registry, readiness and the in-flight count, instead of a shared mutable context.
import type { FastifyInstance } from 'fastify';
import fp from 'fastify-plugin';
import type { BatchInfo } from '../batching/batcher.js';
import type { Config } from '../config.js';
import type { Direction } from '../inference/protocol.js';
import type { RunnerLogger } from '../inference/runner.js';
import { ModelRegistry } from '../serving/registry.js';
import type { ServedModel } from '../serving/served-model.js';

declare module 'fastify' {
  interface FastifyInstance {
    config: Config;
    models: ModelHost;
  }
}

export type BatchListener = (model: string, info: BatchInfo, direction?: Direction) => void;

export class ModelHost {
  /** Set once every model has loaded and warmed up. */
  registry?: ModelRegistry;
  /** Set on SIGTERM: readiness turns 503, new requests are refused, accepted ones are answered. */
  draining = false;
  /** /decode requests accepted and not yet answered. */
  inflight = 0;
  private readonly listeners: BatchListener[] = [];
  /** Called once if a model's inference worker cannot be restarted (server.ts exits non-zero). */
  onFatal: (err: Error) => void = () => {};

  constructor(private readonly cfg: Config, private readonly log: RunnerLogger) {}

  /** Calls `fn` after every batch run of every model (metrics, tests). */
  onBatch(fn: BatchListener): void {
    this.listeners.push(fn);
  }

  /** Loaded, warm, every worker running, not draining: what /readyz answers. */
  get ready(): boolean {
    return this.registry !== undefined && !this.draining && this.registry.healthy;
  }

  /** The same rule for one model (/v1/models `ready`): loaded and warmed, every worker running, not draining. */
  modelReady(model: ServedModel): boolean {
    return this.registry?.get(model.name) === model && !this.draining && model.healthy;
  }

  async load(): Promise<ModelRegistry> {
    this.registry = await ModelRegistry.load(this.cfg, this.log, (model, info, direction) => {
      for (const fn of this.listeners) fn(model, info, direction);
    }, { onFatal: (err) => this.onFatal(err) });
    return this.registry;
  }

  /** True when nothing is accepted, queued or running. */
  get idle(): boolean {
    if (this.inflight > 0) return false;
    const reg = this.registry;
    return [...(reg?.models.values() ?? []), ...(reg?.encoders.values() ?? [])].every((m) => m.batcher.waitingSamples === 0 && m.batcher.runningBatches === 0);
  }

  async close(): Promise<void> {
    await this.registry?.close();
  }
}

export interface ModelsPluginOptions {
  config: Config;
  /** Serve an existing host's models (a second app on the same models, as the tests build). */
  host?: ModelHost;
}

export default fp(async (app: FastifyInstance, opts: ModelsPluginOptions) => {
  const host = opts.host ?? new ModelHost(opts.config, app.log);
  app.decorate('config', opts.config);
  app.decorate('models', host);
  if (!opts.host) app.addHook('onClose', () => host.close());
}, { name: 'models', fastify: '5.x' });
