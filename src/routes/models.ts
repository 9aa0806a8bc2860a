// GET /v1/models: what is served, in which directions, on which execution provider, with which factors.
import type { FastifyInstance } from 'fastify';
import { modelsSchema } from '../schemas.js';

export default async function modelRoutes(app: FastifyInstance): Promise<void> {
  const host = app.models;
  app.get('/v1/models', { schema: modelsSchema }, async () => {
    const reg = host.registry;
    if (!reg) return { defaultModel: null, models: [] };
    return {
      defaultModel: reg.defaultName,
      models: reg.allNames.map((name) => {
        const m = reg.models.get(name);
        const e = reg.encoders.get(name);
        const file = m?.spec.file ?? e!.file;
        return {
          name,
          default: name === reg.defaultName,
          directions: [...(m ? ['decode'] : []), ...(e ? ['encode'] : [])],
          family: m?.family ?? file.family ?? e?.runners[0]!.io.metadata.family ?? null,
          channels: m?.channels ?? e!.latentChannels,
          instances: (m ?? e)!.runners.length,
          precision: m?.precision ?? file.precision ?? 'fp32',
          scalingFactor: m?.scalingFactor ?? e!.scalingFactor,
          shiftFactor: m?.shiftFactor ?? e!.shiftFactor,
          provider: m?.io.provider ?? e!.provider,
          ready: !host.draining,
          builtin: m?.spec.builtin ?? false,
          source: file.source ?? m?.spec.modelPath ?? null,
        };
      }),
    };
  });
}
