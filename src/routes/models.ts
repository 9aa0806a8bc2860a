// GET /v1/models: what is served, on which execution provider, with which factors.
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
        kind: m.isVideo ? 'video' : 'image',
        channels: m.channels,
        ...(m.normalization ? { latentsMean: m.normalization.latentsMean, latentsStd: m.normalization.latentsStd } : {}),
        instances: m.runners.length,
        precision: m.precision,
        scalingFactor: m.scalingFactor,
        shiftFactor: m.shiftFactor,
        provider: m.io.provider,
        ready: !host.draining,
        builtin: m.spec.builtin,
        source: m.spec.file.source ?? m.spec.modelPath ?? null,
      })) : [],
    };
  });
}
