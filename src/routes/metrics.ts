// GET /metrics: the Prometheus exposition of this app's registry (plugins/metrics.ts).
import type { FastifyInstance } from 'fastify';
import { metricsSchema } from '../schemas.js';

export default async function metricsRoutes(app: FastifyInstance): Promise<void> {
  const metrics = app.metrics;
  app.get('/metrics', { schema: metricsSchema }, async (_req, reply) => reply.type(metrics.contentType).send(await metrics.text()));
}
