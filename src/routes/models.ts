// GET /v1/models: what is served, on which execution provider, with which factors, and whether
// each model is ready by /readyz's rule (loaded, warmed, every worker running, not draining).
import type { FastifyInstance } from 'fastify';
import { modelsSchema } from '../schemas.js';

export default async function modelRoutes(app: FastifyInstance): Promise<void> {
  const host = app.models;
  app.get('/v1/models', { schema: modelsSchema }, async () => {
    const reg = host.registry;
    return {
      defaultModel: reg?.defaultName ?? null,
      models: reg ? [...reg.models.values()].map((m) => ({
        name: m.name,
        default: m.name === reg.defaultName,
        family: m.family ?? null,
        channels: m.channels,
        instances: m.runners.length,
        precision: m.precision,
        scalingFactor: m.scalingFactor,
        shiftFactor: m.shiftFactor,
        provider: m.io.provider,
        ready: host.modelReady(m),
        builtin: m.spec.builtin,
        source: m.spec.file.source ?? m.spec.modelPath ?? null,
      })) : [],
    };
  });
}
