// Liveness and readiness. /readyz is 200 only once every model has loaded and run its warm-up,
// and 503 again while draining, so Kubernetes stops routing before the process goes away.
import type { FastifyInstance } from 'fastify';
import { ServiceError } from '../errors.js';
import type { AppContext } from '../app.js';
import { healthzSchema, readyzSchema } from '../schemas.js';

export function healthRoutes(app: FastifyInstance, ctx: AppContext): void {
  app.get('/healthz', { schema: healthzSchema }, async () => ({ status: 'ok' }));

  app.get('/readyz', { schema: readyzSchema }, async () => {
    if (ctx.draining) throw new ServiceError('SHUTTING_DOWN', 'the service is draining');
    if (!ctx.registry) throw new ServiceError('NOT_READY', 'the models are loading and warming up');
    return { status: 'ready', models: ctx.registry.names, defaultModel: ctx.registry.defaultName };
  });
}
