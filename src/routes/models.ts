// GET /v1/models: what is served, in which directions (decode, encode), on which execution provider,
// with which factors, and whether each model is ready by /readyz's rule (loaded, warmed, every
// worker running, not draining).
import type { FastifyInstance } from 'fastify';
import { modelsSchema } from '../schemas.js';

export default async function modelRoutes(app: FastifyInstance): Promise<void> {
  const host = app.models;
  app.get('/v1/models', { schema: modelsSchema }, async () => {
    const reg = host.registry;
    if (!reg) return { defaultModel: null, models: [] };
    const served = reg.allNames.map((name): Record<string, unknown> => {
      const m = reg.models.get(name);
      const e = reg.encoders.get(name);
      const file = m?.spec.file ?? e!.file;
      return {
        name,
        default: name === reg.defaultName,
        directions: [...(m ? ['decode'] : []), ...(e ? ['encode'] : [])],
        family: m?.family ?? file.family ?? e?.runners[0]!.io.metadata.family ?? null,
        kind: m?.isVideo ? 'video' : 'image',
        channels: m?.channels ?? e!.latentChannels,
        ...(m?.normalization ? { latentsMean: m.normalization.latentsMean, latentsStd: m.normalization.latentsStd } : {}),
        instances: (m ?? e)!.runners.length,
        precision: m?.precision ?? file.precision ?? 'fp32',
        scalingFactor: m?.scalingFactor ?? e!.scalingFactor,
        shiftFactor: m?.shiftFactor ?? e!.shiftFactor,
        provider: m?.io.provider ?? e!.provider,
        ready: (m ? host.modelReady(m) : !host.draining) && (e ? e.healthy : true),
        builtin: m?.spec.builtin ?? false,
        source: file.source ?? m?.spec.modelPath ?? null,
      };
    });
    const broken = [...reg.unavailable].filter(([name]) => !reg.allNames.includes(name)).map(([name, u]) => ({
      name,
      default: name === reg.defaultName,
      directions: [...(u.spec.modelPath || u.spec.modelBytes ? ['decode'] : []), ...(u.spec.encoderPath ? ['encode'] : [])],
      family: u.spec.file.family ?? null,
      kind: null,
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
    }));
    return { defaultModel: reg.defaultName, models: [...served, ...broken] };
  });
}
