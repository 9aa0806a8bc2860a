// Admission: the one rule for what may queue. A request reserves, in one step, every sample it will
// queue (all of a tiled request's tiles, all of a multi-step job's steps) before it does anything
// expensive; reserved samples count against the queue's limit like waiting ones, so two requests
// can never both be admitted into the last room. It then submits against its ticket (once or many
// times) and releases the ticket when done; a release returns what was not submitted. Pure.
import { CancelledError } from './types.js';

/** Samples a request will queue under one batcher key. */
export interface Demand {
  /**
   * The batcher key the samples will queue under (what can share a run, e.g. a latent size).
   * Unset: not known yet (a body whose shape is inside it); held room any key may submit against.
   */
  key?: string;
  /** Samples, ≥ 1. */
  sampleCount: number;
  /** One sample's cost (latent area); the same for every sample under a key. Default 1. */
  cost?: number;
}

/** How a refusal names what was asked, e.g. `{ unit: 'tiles of 64 latents', advice: 'use larger tiles' }`. */
export interface ReserveWording {
  /** Default `samples`. */
  unit?: string;
  /** Default `split the request`. */
  advice?: string;
}

export class QueueFullError extends Error {
  override name = 'QueueFullError';
  constructor(readonly waitingSamples: number, readonly reservedSamples: number, readonly requestedSamples: number,
    readonly maxQueueSize: number, readonly retryAfterSeconds: number) {
    super(`the queue holds ${waitingSamples} samples waiting and ${reservedSamples} reserved of its ${maxQueueSize}; ` +
      `this request needs ${requestedSamples}; retry in about ${retryAfterSeconds} s`);
  }
}

export class BatchTooLargeError extends Error {
  override name = 'BatchTooLargeError';
}

export interface SubmitOptions {
  /** When the request's answer is no longer wanted (the injected clock's ms). */
  deadline?: number;
  /** Aborting it removes the samples from the queue (or drops their results). */
  signal?: AbortSignal;
}

/** The batcher's side of a ticket (batcher.ts implements it). */
export interface TicketHost<P, J> {
  /**
   * Holds `sampleCount` more samples of total cost `cost`, having given back `returning` samples
   * of cost `returningCost` in the same step; throws QueueFullError or BatchTooLargeError.
   */
  hold(sampleCount: number, cost: number, returning: number, returningCost: number, wording: ReserveWording): void;
  /** Gives back held room. */
  unhold(sampleCount: number, cost: number): void;
  /** Queues samples already held, at `cost` per sample. */
  enqueue(key: string, payload: P, sampleCount: number, cost: number, opts: SubmitOptions): Promise<J>;
}

/**
 * The queue's room, the one admission rule: at most `maxQueueSize` samples waiting or reserved.
 * The batcher moves samples from reserved to waiting (submit) and out of waiting (a run).
 */
export class QueueRoom {
  waiting = 0;
  waitingCost = 0;
  reserved = 0;
  reservedCost = 0;

  /** `secondsFor(cost)`: seconds to run `cost` of queued work (the Retry-After). */
  constructor(readonly maxQueueSize: number, private readonly secondsFor: (cost: number) => number) {}

  /** Seconds until a request sent now would start: what waits or is reserved ahead of it. */
  retryAfter(): number {
    return this.secondsFor(this.waitingCost + this.reservedCost);
  }

  /** TicketHost.hold. */
  hold(n: number, cost: number, returning: number, returningCost: number, wording: ReserveWording): void {
    const max = this.maxQueueSize;
    if (n > max) throw new BatchTooLargeError(`${n} ${wording.unit ?? 'samples'} is more than the queue holds (${max}); ${wording.advice ?? 'split the request'}`);
    const others = this.reserved - returning;
    if (this.waiting + others + n > max) {
      throw new QueueFullError(this.waiting, others, n, max, this.secondsFor(this.waitingCost + this.reservedCost - returningCost));
    }
    this.reserved += n - returning;
    this.reservedCost += cost - returningCost;
  }

  /** TicketHost.unhold. */
  unhold(n: number, cost: number): void {
    this.reserved -= n;
    this.reservedCost -= cost;
  }

  /** `n` samples of `unitCost` each start (or stop, negative) waiting. */
  wait(n: number, unitCost: number): void {
    this.waiting += n;
    this.waitingCost += n * unitCost;
  }
}

interface Held {
  sampleCount: number;
  /** Per sample. */
  cost: number;
}

const total = (held: Iterable<Held>): [number, number] => {
  let n = 0;
  let c = 0;
  for (const h of held) {
    n += h.sampleCount;
    c += h.sampleCount * h.cost;
  }
  return [n, c];
};

function tally(demands: readonly Demand[]): Map<string | undefined, Held> {
  const out = new Map<string | undefined, Held>();
  for (const d of demands) {
    if (!Number.isSafeInteger(d.sampleCount) || d.sampleCount < 0) throw new RangeError(`a demand of ${d.sampleCount} samples`);
    const cost = d.cost ?? 1;
    const h = out.get(d.key);
    if (h && h.cost !== cost) throw new RangeError(`two costs (${h.cost}, ${cost}) for samples under key ${d.key}`);
    out.set(d.key, { sampleCount: (h?.sampleCount ?? 0) + d.sampleCount, cost });
  }
  return out;
}

/**
 * Room in the queue held for one request. Obtained from `Batcher.reserve`; `P` is the batcher's
 * payload, `J` what a submit resolves with (its JobResult).
 */
export class Ticket<P, J> {
  private held: Map<string | undefined, Held>;
  private released = false;

  /** @internal Batcher.reserve builds tickets. */
  constructor(private readonly host: TicketHost<P, J>, demands: readonly Demand[], wording: ReserveWording) {
    const held = tally(demands);
    const [n, c] = total(held.values());
    host.hold(n, c, 0, 0, wording);
    this.held = held;
  }

  /** Samples held and not yet submitted. */
  get reservedSamples(): number {
    return this.released ? 0 : total(this.held.values())[0];
  }

  /**
   * Resizes what is held to `demands` (what remains to submit), in one step: the room this
   * ticket holds counts as free for it, so demands no larger than those held are never refused.
   * Throws QueueFullError or BatchTooLargeError, the ticket then holding what it held before.
   */
  replace(demands: readonly Demand[], wording: ReserveWording = {}): void {
    if (this.released) throw new Error('replace on a released ticket');
    const next = tally(demands);
    const [n, c] = total(next.values());
    const [had, hadCost] = total(this.held.values());
    this.host.hold(n, c, had, hadCost, wording);
    this.held = next;
  }

  /**
   * Queues `sampleCount` held samples of `payload` under `key`, drawn from what was reserved
   * under that key, then from room held without a key (costed as reserved under the key, else
   * as the keyless room). Resolves with the job's result; rejects with the signal's reason
   * (aborted), DeadlineError, the runner's error, or an Error if the ticket does not hold the
   * samples or was released (a bug: a request must reserve all it queues).
   */
  submit(key: string, payload: P, sampleCount: number, opts: SubmitOptions = {}): Promise<J> {
    if (opts.signal?.aborted) return Promise.reject(opts.signal.reason ?? new CancelledError('cancelled'));
    if (this.released) return Promise.reject(new Error(`submit of ${sampleCount} samples under ${key} on a released ticket`));
    const own = this.held.get(key);
    const any = this.held.get(undefined);
    const available = (own?.sampleCount ?? 0) + (any?.sampleCount ?? 0);
    if (sampleCount > available) {
      return Promise.reject(new Error(`submit of ${sampleCount} samples under ${key}: the ticket holds ${available} for it`));
    }
    const fromOwn = Math.min(sampleCount, own?.sampleCount ?? 0);
    const fromAny = sampleCount - fromOwn;
    const cost = own?.cost ?? any?.cost ?? 1;
    if (own) own.sampleCount -= fromOwn;
    if (any) any.sampleCount -= fromAny;
    this.host.unhold(sampleCount, fromOwn * cost + fromAny * (any?.cost ?? 1));
    return this.host.enqueue(key, payload, sampleCount, cost, opts);
  }

  /** Gives back what was not submitted; submitted samples are unaffected. Idempotent. */
  release(): void {
    if (this.released) return;
    this.released = true;
    const [n, c] = total(this.held.values());
    this.held.clear();
    if (n > 0) this.host.unhold(n, c);
  }
}
