// What /decode and /encode share about a request, HTTP only: its deadline (from its arrival), its
// reservation in a model's queue (held from before the body until the response has gone), the
// registry it may use, and the Server-Timing header of its answer.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Demand, ReserveWording } from '../batching/batcher.js';
import { ServiceError } from '../errors.js';
import type { ModelHost } from '../plugins/models.js';
import type { StageTimings } from '../plugins/metrics.js';

/** Bytes of a refused request's unread body worth reading and discarding to keep its connection open. */
export const DISCARD_AT_MOST = 64 * 1024;

/** The request's time budget, ms: X-Request-Timeout-Ms shortens REQUEST_TIMEOUT_MS, never lengthens it. */
export function timeoutMs(req: FastifyRequest, max: number): number {
  const raw = req.headers['x-request-timeout-ms'];
  if (raw === undefined) return max;
  // Decimal only: Number() would also read 0x10, 1e3 and an empty string.
  const v = typeof raw === 'string' && /^\d+(\.\d+)?$/.test(raw) ? Number(raw) : NaN;
  if (!Number.isFinite(v) || v <= 0) {
    throw new ServiceError('BAD_PARAMETER', `X-Request-Timeout-Ms ${JSON.stringify(raw)} is not a positive number of milliseconds`);
  }
  return Math.min(v, max); // shortens, never lengthens
}

/** The loaded registry; SHUTTING_DOWN while draining, NOT_READY while loading. */
export function registryOf(host: ModelHost): NonNullable<ModelHost['registry']> {
  if (host.draining) throw new ServiceError('SHUTTING_DOWN', 'the service is shutting down; retry on another replica');
  if (!host.registry) throw new ServiceError('NOT_READY', 'the models are still loading; retry shortly');
  return host.registry;
}

/**
 * One route's request deadlines (performance.now() ms): REQUEST_TIMEOUT_MS or
 * X-Request-Timeout-Ms from the request's arrival, fixed the first time it is asked for. Also
 * installs the route's body reader, which refuses a body still arriving at the deadline.
 */
export function requestDeadlines(app: FastifyInstance): (req: FastifyRequest, reply: FastifyReply) => number {
  const cfg = app.config;
  const deadlines = new WeakMap<FastifyRequest, number>();
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', (req, payload, done) => app.uploads.read(req, payload, { limit: req.routeOptions.bodyLimit ?? cfg.bodyLimitBytes, deadline: deadlines.get(req) }, done));
  return (req, reply) => {
    let deadline = deadlines.get(req);
    if (deadline === undefined) deadlines.set(req, (deadline = performance.now() - reply.elapsedTime + timeoutMs(req, cfg.requestTimeoutMs)));
    return deadline;
  };
}

interface Reserving<T> {
  batcher: { reserve(demands: readonly Demand[], wording?: ReserveWording): T };
}

interface HeldRoom {
  replace(demands: readonly Demand[], wording?: ReserveWording): void;
  release(): void;
}

/**
 * Each admitted request's reservation in one route. `admit` reserves in `model`'s queue
 * everything the request will queue, reusing the room it already holds; 413 or 429
 * (Retry-After) when it cannot. The room is released when the response has gone or the
 * connection closed, whichever comes first, and by `release` when the handler is done.
 */
export function reservations<M extends Reserving<T>, T extends HeldRoom>(): {
  admit: (req: FastifyRequest, reply: FastifyReply, model: M, demand: { demands: readonly Demand[]; wording: ReserveWording }) => T;
  release: (req: FastifyRequest) => void;
} {
  const admitted = new WeakMap<FastifyRequest, { model: M; ticket: T }>();
  return {
    admit: (req, reply, model, { demands, wording }) => {
      const held = admitted.get(req);
      if (held?.model === model) {
        held.ticket.replace(demands, wording);
        return held.ticket;
      }
      held?.ticket.release();
      const ticket = model.batcher.reserve(demands, wording);
      admitted.set(req, { model, ticket });
      reply.raw.once('close', () => ticket.release());
      return ticket;
    },
    release: (req) => {
      admitted.get(req)?.ticket.release();
    },
  };
}

/**
 * The stages' times for clients and load generators: `parse;dur=0.12, queue;dur=3.40, ...,
 * total;dur=…` (ms); total is Fastify's time since the request arrived, body reading included, so
 * total − infer − encode is the service's own overhead.
 */
export function serverTiming(timings: StageTimings, reply: FastifyReply): string {
  const stages = Object.entries(timings).map(([k, v]) => `${k};dur=${(v as number).toFixed(2)}`);
  return [...stages, `total;dur=${reply.elapsedTime.toFixed(2)}`].join(', ');
}
