// What /decode and /encode share about a request, HTTP only: its deadline (from its arrival) and cancellation, its
// reservation in a model's queue (held from before the body until the response has gone), the
// registry it may use, and the Server-Timing header of its answer.
import { errorCodes, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { CancelledError, DeadlineError, type Demand, type ReserveWording } from '../batching/batcher.js';
import { ServiceError, toServiceError } from '../errors.js';
import type { ModelHost } from '../plugins/models.js';
import type { StageTimings } from '../plugins/metrics.js';

/** Bytes of a refused request's unread body worth reading and discarding to keep its connection open. */
export const DISCARD_AT_MOST = 64 * 1024;

/**
 * A refusal found before the body is read, ready to throw: Fastify's body-limit error stays itself
 * (the app's error handler words it), anything else becomes a ServiceError. A body over
 * DISCARD_AT_MOST is not read at all: the connection is closed (Node would otherwise read the
 * unread body to its end; a small one costs less to read and discard than the client's reconnection).
 */
export function refusedBeforeBody(e: unknown, req: FastifyRequest, reply: FastifyReply): Error {
  const err = e instanceof errorCodes.FST_ERR_CTP_BODY_TOO_LARGE ? e : toServiceError(e);
  if (Number(req.headers['content-length'] ?? Infinity) > DISCARD_AT_MOST) reply.header('connection', 'close');
  return err;
}

/** What a handler's work runs with: its deadline (performance.now() ms) and its cancellation. */
export interface RequestScope {
  deadline: number;
  /** Aborted with CancelledError when the client closes the connection, DeadlineError at the deadline. */
  signal: AbortSignal;
}

/**
 * Runs a handler's work in its request's scope: counted in flight (the drain waits for it), its
 * signal wired to the connection and the deadline, its errors turned into ServiceErrors; the
 * timer, the listener and the request's queue reservation (`release`) are let go however it ends.
 * @param start performance.now() when the handler began (after the body was read)
 * @throws DeadlineError (as a ServiceError) when the deadline passed while the body was received
 */
export async function inRequestScope<T>(host: ModelHost, reply: FastifyReply, start: number, deadline: number, release: () => void, work: (scope: RequestScope) => Promise<T>): Promise<T> {
  const controller = new AbortController();
  const onClose = (): void => {
    if (!reply.raw.writableFinished) controller.abort(new CancelledError('the client closed the connection'));
  };
  reply.raw.once('close', onClose);
  let timer: NodeJS.Timeout | undefined;
  host.inflight++;
  try {
    if (start >= deadline) throw new DeadlineError('the request\'s deadline passed while its body was being received');
    timer = setTimeout(() => controller.abort(new DeadlineError('the request did not finish before its deadline')), deadline - performance.now());
    return await work({ deadline, signal: controller.signal });
  } catch (e) {
    throw toServiceError(e);
  } finally {
    clearTimeout(timer);
    reply.raw.off('close', onClose);
    release();
    host.inflight--;
  }
}

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
