// The process: config → logger → app listening (live at once, ready once the models are warm) →
// models. SIGTERM/SIGINT drain: readiness turns 503, new requests get 503, everything accepted is
// answered, then exit 0. A second signal exits at once.
import './threadpool.js';
import closeWithGrace from 'close-with-grace';
import { buildApp } from './app.js';
import { ConfigError, loadConfig, type Config } from './config.js';
import { createLogger } from './logger.js';
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
const app = buildApp({ config: cfg, logger: log });
closeWithGrace({
  delay: cfg.requestTimeoutMs + 5000,
  logger: false,
  onSecondSignal: (signal) => log.warn({ signal }, 'second signal: exiting now'),
}, async ({ signal, err }) => {
  if (err) log.error({ err }, 'exiting on an uncaught error');
  const host = app.models;
  host.draining = true;
  log.info({ signal, inflight: host.inflight }, 'draining: finishing accepted requests');
  while (!host.idle) await new Promise((r) => setTimeout(r, 20));
  await app.close();
  log.info('drained; exiting');
});

await app.listen({ host: cfg.host, port: cfg.port });
app.models.onFatal = (err) => {
  // Kubernetes restarts the pod; staying up would answer 500 to every request.
  log.fatal({ err }, 'a model can no longer run; exiting');
  process.exit(1);
};
try {
  const reg = await app.models.load();
  if (reg.defaultName === PREVIEW_MODEL_NAME) {
    log.warn(`serving the built-in preview decoder "${PREVIEW_MODEL_NAME}" (a linear approximation, not the VAE): set MODEL_PATH to an ONNX VAE decoder or convert one into ${cfg.modelsDir}/ with \`npx latent-decoder pull stabilityai/sd-vae-ft-mse --subfolder ""\` (see README)`);
  }
  log.info({ models: reg.names, defaultModel: reg.defaultName }, 'ready');
} catch (e) {
  log.fatal({ err: e }, 'models failed to load');
  await app.close();
  process.exit(1);
}
