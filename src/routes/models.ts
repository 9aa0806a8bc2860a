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
      models: reg ? [...reg.models.values()].map((m): Record<string, unknown> => ({
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
      })).concat([...reg.unavailable].map(([name, u]) => ({
        name,
        default: name === reg.defaultName,
        family: u.spec.file.family ?? null,
        channels: u.spec.file.latentChannels ?? null,
        instances: 0,
        precision: u.spec.file.precision ?? 'unknown',
        scalingFactor: u.spec.file.scalingFactor ?? null,
        shiftFactor: u.spec.file.shiftFactor ?? null,
        provider: null,
        ready: false,
        error: u.reason,
        builtin: false,
        source: u.spec.file.source ?? u.spec.modelPath ?? null,
      }))) : [],
    };
  });
}
