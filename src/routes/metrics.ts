// GET /metrics: the Prometheus exposition of this app's registry (src/metrics.ts).
import type { FastifyInstance } from 'fastify';
import type { Metrics } from '../plugins/metrics.js';
import { metricsSchema } from '../schemas.js';

export function metricsRoutes(app: FastifyInstance, metrics: Metrics): void {
  app.get('/metrics', { schema: metricsSchema }, async (_req, reply) => reply.type(metrics.contentType).send(await metrics.text()));
}
