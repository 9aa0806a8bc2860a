// The application plugin: body parsing, error mapping, then the plugins (models, metrics, auth,
// docs) and the routes, each a plugin of its own. server.ts and the tests build it with buildApp.
import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify';
import fp from 'fastify-plugin';
import { randomUUID } from 'node:crypto';
import type { Config } from './config.js';
import { ServiceError, isServiceError, type ErrorCode } from './errors.js';
import auth from './plugins/auth.js';
import metrics from './plugins/metrics.js';
import models, { type ModelHost } from './plugins/models.js';
import swagger from './plugins/swagger.js';
import decodeRoutes from './routes/decode.js';
import healthRoutes from './routes/health.js';
import metricsRoutes from './routes/metrics.js';
import modelRoutes from './routes/models.js';
import { errorSchema } from './schemas.js';

const FASTIFY_CODES: Record<string, ErrorCode> = {
  FST_ERR_CTP_BODY_TOO_LARGE: 'BODY_TOO_LARGE',
  FST_ERR_CTP_INVALID_MEDIA_TYPE: 'UNSUPPORTED_MEDIA_TYPE',
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: 'BAD_PARAMETER',
  FST_ERR_CTP_EMPTY_TYPE: 'UNSUPPORTED_MEDIA_TYPE',
  FST_ERR_VALIDATION: 'BAD_PARAMETER',
};

export interface AppOptions {
  config: Config;
  /** Serve another app's models instead of loading its own (see plugins/models.ts). */
  models?: ModelHost;
}

/** Fastify's own server settings that come from the configuration. */
export function serverOptions(cfg: Config): FastifyServerOptions {
  return {
    bodyLimit: cfg.bodyLimitBytes,
    requestIdHeader: 'x-request-id',
    genReqId: () => randomUUID(),
  };
}

async function app(app: FastifyInstance, opts: AppOptions): Promise<void> {
  const cfg = opts.config;
  // One parser for every body: /decode reads raw bytes, .npy and JSON itself, so that each
  // encoding's mistakes get the service's own error codes.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', { parseAs: 'buffer' }, (_req, body, done) => done(null, body));

  app.addHook('onSend', async (req, reply) => {
    reply.header('x-request-id', req.id);
  });

  app.setErrorHandler((err, req, reply) => {
    let e: ServiceError;
    if (isServiceError(err)) e = err;
    else {
      const fe = err as { code?: string; statusCode?: number; message: string };
      const code = fe.code ? FASTIFY_CODES[fe.code] : undefined;
      if (code === 'BODY_TOO_LARGE') e = new ServiceError(code, `the body is over the limit of ${cfg.bodyLimitBytes} bytes (BODY_LIMIT_BYTES); send fewer latents per request`);
      else if (code) e = new ServiceError(code, fe.message);
      else if (fe.statusCode && fe.statusCode < 500) e = new ServiceError('BAD_PARAMETER', fe.message);
      else e = new ServiceError('INTERNAL', 'internal error', { cause: err });
    }
    if (e.status >= 500) req.log.error({ err: e.cause ?? e, code: e.code }, e.message);
    else req.log.info({ code: e.code, status: e.status }, e.message);
    void reply.code(e.status).headers(e.headers).type('application/json').send(e.body());
  });

  app.setNotFoundHandler((req, reply) => {
    void reply.code(404).send(new ServiceError('NOT_FOUND', `no route ${req.method} ${req.url.split('?')[0]}`).body());
  });

  app.addSchema(errorSchema);
  await app.register(models, { config: cfg, host: opts.models });
  await app.register(metrics);
  await app.register(auth, { tokens: cfg.authTokens });
  // Before the routes: the document collects them as they are added.
  await app.register(swagger);
  await app.register(healthRoutes);
  await app.register(modelRoutes);
  await app.register(decodeRoutes);
  await app.register(metricsRoutes);
}

export const appPlugin = fp(app, { name: 'latent-decoder', fastify: '5.x' });

/** The Fastify instance with the app registered; call `app.models.load()` to load the models. */
export function buildApp(opts: AppOptions & { logger: FastifyServerOptions['loggerInstance'] }): FastifyInstance {
  const instance = Fastify({ loggerInstance: opts.logger, ...serverOptions(opts.config) });
  void instance.register(appPlugin, { config: opts.config, models: opts.models });
  return instance as unknown as FastifyInstance;
}
