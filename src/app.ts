// The application plugin: body parsing, error mapping, then the plugins (models, metrics, auth,
// docs) and the routes, each a plugin of its own. server.ts and the tests build it with buildApp.
import Fastify, { type FastifyInstance, type FastifyRequest, type FastifyServerOptions } from 'fastify';
import fp from 'fastify-plugin';
import { randomUUID } from 'node:crypto';
import type { Config } from './config.js';
import { ServiceError, isServiceError, type ErrorCode } from './errors.js';
import { answerClientError, awaitsContinue, createHttpServer, refusalOn, unmetExpectation } from './http-server.js';
import auth from './plugins/auth.js';
import metrics from './plugins/metrics.js';
import models, { type ModelHost } from './plugins/models.js';
import swagger from './plugins/swagger.js';
import uploads, { bodyTooLargeAdvice } from './plugins/uploads.js';
import decodeRoutes from './routes/decode.js';
import encodeRoutes from './routes/encode.js';
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

/** A client's X-Request-Id is kept when it is 1–128 printable ASCII characters, else replaced. */
const REQUEST_ID = /^[\x21-\x7e]{1,128}$/;

/**
 * Fastify's own settings that come from the configuration, and the server it runs on (built in
 * http-server.ts: Fastify applies no keep-alive or timeout option to a server its serverFactory
 * builds). Node's own error answers (400, 408, 431) use the service's JSON format and, when no
 * request had reached the app, count as `/decode` requests of model "none".
 */
export function serverOptions(cfg: Config): FastifyServerOptions {
  return {
    bodyLimit: cfg.bodyLimitBytes,
    serverFactory: (handler) => createHttpServer(handler, { keepAliveTimeoutMs: cfg.keepAliveTimeoutMs, requestTimeoutMs: cfg.bodyTimeoutMs }),
    clientErrorHandler(this: FastifyInstance, err, socket) {
      answerClientError(err, socket, cfg.bodyTimeoutMs, (status) => this.metrics.onUnrouted(status));
    },
    requestIdHeader: false,
    genReqId: (req) => {
      const given = req.headers['x-request-id'];
      return typeof given === 'string' && REQUEST_ID.test(given) ? given : randomUUID();
    },
  };
}

/** Any error Fastify or a handler throws, as the service's error. */
function asServiceError(err: unknown, cfg: Config, req: FastifyRequest): ServiceError {
  if (isServiceError(err)) return err;
  const fe = err as { code?: string; statusCode?: number; message: string };
  const refusal = refusalOn(req.raw.socket);
  if (refusal) return new ServiceError(refusal.code, refusal.message);
  if (fe.code === 'ECONNRESET' || fe.message === 'aborted') return new ServiceError('CLIENT_CLOSED', 'the client aborted the upload');
  const code = fe.code ? FASTIFY_CODES[fe.code] : undefined;
  if (code === 'BODY_TOO_LARGE') return new ServiceError(code, `the body is over the limit of ${cfg.bodyLimitBytes} bytes (BODY_LIMIT_BYTES); ${bodyTooLargeAdvice(req.routeOptions.url)}`);
  if (code) return new ServiceError(code, fe.message);
  if (fe.statusCode && fe.statusCode < 500) return new ServiceError('BAD_PARAMETER', fe.message);
  return new ServiceError('INTERNAL', 'internal error', { cause: err });
}

async function app(app: FastifyInstance, opts: AppOptions): Promise<void> {
  const cfg = opts.config;
  // One parser for every body: /decode reads raw bytes, .npy and JSON itself, so that each
  // encoding's mistakes get the service's own error codes.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', (req, payload, done) => app.uploads.read(req, payload, { limit: cfg.bodyLimitBytes }, done));

  app.addHook('onSend', async (req, reply) => {
    reply.header('x-request-id', req.id);
    // Expect: 100-continue, answered before the body was asked for: the client never sends it.
    if (awaitsContinue(req.raw)) reply.header('connection', 'close');
  });

  // A client's mistake is logged at info, an overload or deadline at warn, both without a stack;
  // only the service's own failures are errors. 5xx bodies name the request id to quote, and
  // the service's internals stay in the log (inference failures excepted: their cause is the
  // client's to see).
  app.setErrorHandler((err, req, reply) => {
    const e = asServiceError(err, cfg, req);
    const line = { code: e.code, status: e.status };
    if (e.status === 500) req.log.error({ ...line, err: e.cause ?? e }, e.message);
    else if (e.status >= 429 && e.status !== 499) req.log.warn(line, e.message);
    else req.log.info(line, e.message);
    const body = e.body();
    if (e.status >= 500) Object.assign(body.error, { requestId: req.id });
    void reply.code(e.status).headers(e.headers).type('application/json').send(body);
  });

  const notFound = (req: FastifyRequest): ServiceError => new ServiceError('NOT_FOUND', `no route ${req.method} ${req.url.split('?')[0]}`);
  app.setNotFoundHandler((req, reply) => {
    void reply.code(404).send(notFound(req).body());
  });

  // Before everything else: the client may be waiting for an answer before it sends its body.
  app.addHook('onRequest', async (req) => {
    const expect = unmetExpectation(req.raw);
    if (expect !== undefined) {
      throw new ServiceError('EXPECTATION_FAILED', `Expect ${JSON.stringify(expect)} is not supported: only "100-continue" is (or send no Expect header)`, { headers: { connection: 'close' } });
    }
  });
  app.addSchema(errorSchema);
  await app.register(models, { config: cfg, host: opts.models });
  await app.register(metrics);
  await app.register(auth, { tokens: cfg.authTokens });
  // After auth: an unauthenticated client is refused before it counts against the upload cap.
  await app.register(uploads, { maxInflightBodyBytes: cfg.maxInflightBodyBytes });
  // After auth (an unknown route needs a token too): answered before its body is read.
  app.addHook('onRequest', async (req) => {
    if (req.is404) throw notFound(req);
  });
  // Before the routes: the document collects them as they are added.
  await app.register(swagger);
  await app.register(healthRoutes);
  await app.register(modelRoutes);
  await app.register(decodeRoutes);
  await app.register(encodeRoutes);
  await app.register(metricsRoutes);
}

export const appPlugin = fp(app, { name: 'latent-decoder', fastify: '5.x' });

/** The Fastify instance with the app registered; call `app.models.load()` to load the models. */
export function buildApp(opts: AppOptions & { logger: FastifyServerOptions['loggerInstance'] }): FastifyInstance {
  const instance = Fastify({ loggerInstance: opts.logger, ...serverOptions(opts.config) });
  void instance.register(appPlugin, { config: opts.config, models: opts.models });
  return instance;
}
