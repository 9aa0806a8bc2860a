// Liveness and readiness. /readyz is 200 only once every model has loaded and run its warm-up,
// 503 while an inference worker restarts, and 503 again while draining, so Kubernetes stops
// routing before the process goes away.
import type { FastifyInstance } from 'fastify';
import { ServiceError } from '../errors.js';
import { healthzSchema, readyzSchema } from '../schemas.js';

export default async function healthRoutes(app: FastifyInstance): Promise<void> {
  const host = app.models;
  app.get('/healthz', { schema: healthzSchema }, async () => ({ status: 'ok' }));

  app.get('/readyz', { schema: readyzSchema }, async () => {
    if (host.draining) throw new ServiceError('SHUTTING_DOWN', 'the service is draining');
    if (!host.registry) throw new ServiceError('NOT_READY', 'the models are loading and warming up');
    if (!host.ready) throw new ServiceError('NOT_READY', host.registry.problem ?? 'an inference worker is restarting');
    return { status: 'ready', models: host.registry.allNames, defaultModel: host.registry.defaultName };
  });
}
