// Start: config → logger → app listening (live at once, ready once the models are warm) → models.
// SIGTERM/SIGINT drain: readiness turns 503, new requests get 503, everything accepted is
// answered, then exit 0. A second signal exits at once.
import './threadpool.js';
import { buildApp, type AppContext } from './app.js';
import { ConfigError, loadConfig, type Config } from './config.js';
import { createLogger } from './logger.js';
import { ModelRegistry } from './serving/registry.js';
import { PREVIEW_MODEL_NAME } from './onnx/preview.js';

let cfg: Config;
try {
  cfg = loadConfig();
} catch (e) {
  if (!(e instanceof ConfigError)) throw e;
  process.stderr.write(`latent-decoder: configuration error: ${e.message}\n`);
  process.exit(2);
}

const log = createLogger(cfg.logLevel);
const ctx: AppContext = { config: cfg, draining: false, inflight: 0 };
const app = buildApp(ctx, { logger: log });

let stopping = false;
async function drain(signal: string): Promise<void> {
  if (stopping) {
    log.warn({ signal }, 'second signal: exiting now');
    process.exit(1);
  }
  stopping = true;
  ctx.draining = true;
  log.info({ signal, inflight: ctx.inflight }, 'draining: finishing accepted requests');
  const limit = Date.now() + cfg.requestTimeoutMs + 5000;
  while ((ctx.inflight > 0 || (ctx.registry && !isIdle(ctx.registry))) && Date.now() < limit) {
    await new Promise((r) => setTimeout(r, 20));
  }
  await app.close();
  await ctx.registry?.close();
  log.info('drained; exiting');
  process.exit(0);
}

function isIdle(reg: ModelRegistry): boolean {
  return [...reg.models.values()].every((m) => m.batcher.waitingSamples === 0 && m.batcher.runningBatches === 0);
}

process.on('SIGTERM', () => void drain('SIGTERM'));
process.on('SIGINT', () => void drain('SIGINT'));

await app.listen({ host: cfg.host, port: cfg.port });
try {
  const reg = await ModelRegistry.load(cfg, log, app.metrics.onBatch);
  ctx.registry = reg;
  if (reg.defaultName === PREVIEW_MODEL_NAME) {
    log.warn(`serving the built-in preview decoder "${PREVIEW_MODEL_NAME}" (a linear approximation, not the VAE): set MODEL_PATH to an ONNX VAE decoder or convert one into ${cfg.modelsDir}/ with \`npx latent-decoder pull stabilityai/sd-vae-ft-mse --subfolder ""\` (see README)`);
  }
  log.info({ models: reg.names, defaultModel: reg.defaultName }, 'ready');
} catch (e) {
  log.fatal({ err: e }, 'models failed to load');
  await app.close();
  process.exit(1);
}
