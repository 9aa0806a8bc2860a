// The process: config → logger → app listening (live at once, ready once the models are warm) →
// models. SIGTERM/SIGINT drain, bounded by DRAIN_TIMEOUT_MS: readiness turns 503, new requests get
// 503, connections still uploading are closed, every accepted request is answered; then exit 0.
// A request still unanswered at the limit gets 503. A second signal ends the process at once.
import closeWithGrace from 'close-with-grace';
import { buildApp } from './app.js';
import { applyPerformanceHint, ConfigError, cpuCount, loadConfig, type Config } from './config.js';
import { availableProviders } from './inference/providers.js';
import { ServiceError } from './errors.js';
import { createLogger } from './logger.js';
import { PREVIEW_MODEL_NAME } from './onnx/preview.js';

let cfg: Config;
let loaded: Config;
try {
  loaded = loadConfig();
  // the CPU provider's sessions are laid out on the CPUs; what runs is the first provider that can load
  cfg = applyPerformanceHint(loaded, process.env, availableProviders(loaded.executionProviders).usable[0], cpuCount());
} catch (e) {
  if (!(e instanceof ConfigError)) throw e;
  process.stderr.write(`latent-decoder: configuration error: ${e.message}\n`);
  process.exit(2);
}

const log = createLogger(cfg.logLevel);
if (cfg !== loaded) {
  log.info({ performanceHint: cfg.performanceHint, modelInstances: cfg.modelInstances, intraOpThreads: cfg.intraOpThreads, maxBatchLatentPixels: cfg.maxBatchLatentPixels },
    `CPU provider: ${cfg.modelInstances} session(s) per model × ${cfg.intraOpThreads} thread(s) (PERFORMANCE_HINT=${cfg.performanceHint})`);
}
const app = buildApp({ config: cfg, logger: log });

/**
 * Ends the process now, even while a native ONNX Runtime run is in progress: process.exit() would
 * wait for the run and then abort ("terminate called after throwing an instance of
 * 'Napi::Error'"). The signal's default action ends the process at once, with no message.
 */
function terminate(signal: NodeJS.Signals): never {
  process.removeAllListeners(signal);
  process.kill(process.pid, signal);
  throw new Error('unreachable'); // the signal is delivered before kill returns
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function drain(signal: NodeJS.Signals): Promise<void> {
  const host = app.models;
  host.draining = true;
  const closed = app.uploads.closeAll();
  app.server.closeIdleConnections();
  log.info({ signal, inflight: host.inflight, uploadsClosed: closed, limitMs: cfg.drainTimeoutMs }, 'draining: finishing accepted requests');
  const limit = Date.now() + cfg.drainTimeoutMs;
  while (!host.idle && Date.now() < limit) await sleep(20);
  if (!host.idle) {
    log.warn({ inflight: host.inflight }, 'drain limit reached: answering what is left with 503');
    host.registry?.failAll(new ServiceError('SHUTTING_DOWN', `the service is shutting down and could not finish this request within DRAIN_TIMEOUT_MS (${cfg.drainTimeoutMs} ms); retry on another replica`));
    for (let i = 0; i < 50 && host.inflight > 0; i++) await sleep(20); // let the answers go out
  }
  if ([...(host.registry?.models.values() ?? [])].some((m) => m.batcher.runningBatches > 0)) {
    log.warn('a model run outlasted the drain; ending the process without waiting for it');
    terminate(signal);
  }
  await app.close(); // the server, then the models (their workers exit once idle)
  log.info('drained; exiting');
}

closeWithGrace({
  delay: undefined, // drain() bounds itself: close-with-grace's timeout would process.exit() mid-run
  logger: false,
  onSecondSignal: (signal) => {
    log.warn({ signal }, 'second signal: exiting now');
    terminate(signal);
  },
}, async ({ signal, err }) => {
  if (err) log.error({ err }, 'exiting on an uncaught error');
  await drain((signal as NodeJS.Signals | undefined) ?? 'SIGTERM');
});

await app.listen({ host: cfg.host, port: cfg.port });
app.models.onFatal = (err) => {
  // Kubernetes restarts the pod; staying up would answer 500 to every request.
  log.fatal({ err }, 'a model can no longer run; exiting');
  terminate('SIGTERM'); // other models may be mid-run: exit without waiting for them
};
try {
  const reg = await app.models.load();
  if (reg.defaultName === PREVIEW_MODEL_NAME) {
    log.warn(`serving the built-in preview decoder "${PREVIEW_MODEL_NAME}" (a linear approximation, not the VAE): set MODEL_PATH to an ONNX VAE decoder or convert one into ${cfg.modelsDir}/ with \`latent-decoder pull stabilityai/sd-vae-ft-mse --subfolder ""\` (in the images; \`npx latent-decoder …\` in a clone; see README)`);
  }
  if (reg.unavailable.size > 0) log.error({ models: reg.allNames, unavailable: [...reg.unavailable.keys()] }, `loaded, not ready: ${reg.problem ?? ''}`);
  else log.info({ models: reg.allNames, defaultModel: reg.defaultName }, 'ready');
} catch (e) {
  log.fatal({ err: e }, 'models failed to load');
  await app.close();
  process.exit(1);
}
