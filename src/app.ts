// The Fastify application: body parsing, auth, error mapping, metrics, docs and routes, nothing else.
import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify';
import { randomUUID } from 'node:crypto';
import { bearerAuth } from './plugins/auth.js';
import type { Config } from './config.js';
import { ServiceError, isServiceError, type ErrorCode } from './errors.js';
import { Metrics } from './plugins/metrics.js';
import type { ModelRegistry } from './serving/registry.js';
import { registerDocs } from './plugins/swagger.js';
import { decodeRoutes, type DecodeObserver } from './routes/decode.js';
import { healthRoutes } from './routes/health.js';
import { metricsRoutes } from './routes/metrics.js';
import { modelRoutes } from './routes/models.js';
import { errorSchema } from './schemas.js';

declare module 'fastify' {
  interface FastifyInstance {
    /** This app's Prometheus registry and recorders; pass `metrics.onBatch` to ModelRegistry.load. */
    metrics: Metrics;
  }
}

/** What the routes share: set once the models are up, flipped when draining. */
export interface AppContext {
  config: Config;
  registry?: ModelRegistry;
  draining: boolean;
  /** /decode requests accepted and not yet answered. */
  inflight: number;
}

const FASTIFY_CODES: Record<string, ErrorCode> = {
  FST_ERR_CTP_BODY_TOO_LARGE: 'BODY_TOO_LARGE',
  FST_ERR_CTP_INVALID_MEDIA_TYPE: 'UNSUPPORTED_MEDIA_TYPE',
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: 'BAD_PARAMETER',
  FST_ERR_CTP_EMPTY_TYPE: 'UNSUPPORTED_MEDIA_TYPE',
  FST_ERR_VALIDATION: 'BAD_PARAMETER',
};

export function buildApp(ctx: AppContext, opts: { logger: FastifyServerOptions['loggerInstance']; observer?: DecodeObserver }): FastifyInstance {
  const app = Fastify({
    loggerInstance: opts.logger,
    bodyLimit: ctx.config.bodyLimitBytes,
    requestIdHeader: 'x-request-id',
    genReqId: () => randomUUID(),
  });

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
      if (code === 'BODY_TOO_LARGE') e = new ServiceError(code, `the body is over the limit of ${ctx.config.bodyLimitBytes} bytes (BODY_LIMIT_BYTES); send fewer latents per request`);
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

  const metrics = new Metrics(ctx);
  app.decorate('metrics', metrics);
  if (ctx.config.authTokens.length > 0) app.addHook('onRequest', bearerAuth(ctx.config.authTokens));
  app.addSchema(errorSchema);
  registerDocs(app);
  // In a plugin, so that the routes are added after the docs plugin is listening for them.
  void app.register(async (api) => {
    healthRoutes(api, ctx);
    modelRoutes(api, ctx);
    decodeRoutes(api, ctx, { onDecode: (e) => { metrics.onDecode(e); opts.observer?.onDecode?.(e); } });
    metricsRoutes(api, metrics);
  });
  return app;
}
