// The dynamic batcher: requests queue by what can share a run; a batch is released when it is full
// (maxBatchSize samples, or maxBatchCost of cost: latent area), when its oldest request has waited
// maxQueueDelayMs, or — with the default delay 0 — as soon as a runner is free: a request reaching
// an idle model runs at once, and what arrives during a run is taken whole by the next batch. It
// counts samples, splits a request across runs when it does not fit, and settles every request
// exactly once. It owns admission (admission.ts: what may queue, Retry-After) and the run-time
// estimate (estimate.ts). Pure: it knows neither HTTP nor ONNX Runtime; the runner it is given
// does the work.
import { QueueRoom, Ticket, type Demand, type ReserveWording, type SubmitOptions, type TicketHost } from './admission.js';
import { describeCount, describeEstimate, RunEstimates } from './estimate.js';

import { CancelledError, DeadlineError, type Batch, type BatchInfo, type JobResult, type Part, type RunFn } from './types.js';

export { BatchTooLargeError, QueueFullError, Ticket, type Demand, type ReserveWording, type SubmitOptions } from './admission.js';
export * from './types.js';

export interface BatcherOptions {
  maxBatchSize: number;
  /** Cost a batch may hold (its samples × their cost); a sample over it still runs alone. */
  maxBatchCost?: number;
  maxQueueDelayMs: number;
  /** Samples allowed to wait or be reserved (not counting those running). */
  maxQueueSize: number;
  /** Batches allowed in the runner at once (one per model instance). */
  concurrency?: number;
  /** Half-life of a run-time measurement's weight (estimate.ts), ms. Default 60 000. */
  estimateHalfLifeMs?: number;
  now?: () => number;
  onBatch?: (info: BatchInfo) => void;
}

/** A reservation on a Batcher<P, R>. */
export type BatchTicket<P, R> = Ticket<P, JobResult<R>>;

interface Job<P, R> {
  payload: P;
  sampleCount: number;
  unitCost: number;
  next: number; // first sample not yet handed to a run
  done: number; // samples with results
  enqueuedAt: number;
  startedAt?: number;
  /** [start, end] of each run that gave it samples: runs on several instances overlap */
  runs: [number, number][];
  deadline: number;
  parts: Part<R>[];
  settled: boolean;
  resolve: (r: JobResult<R>) => void;
  reject: (e: unknown) => void;
  cleanup: () => void;
}

interface Queue<P, R> {
  key: string;
  jobs: Job<P, R>[];
  sampleCount: number;
  /** Cost of one sample under this key (all of a key's samples have the same shape). */
  unitCost: number;
}

export class Batcher<P, R> {
  private readonly queues = new Map<string, Queue<P, R>>();
  private readonly estimates: RunEstimates;
  private readonly now: () => number;
  private readonly concurrency: number;
  private running = 0;
  /** Free slots (model instances), lowest first. */
  private readonly freeSlots: number[];
  private readonly room: QueueRoom;
  private timer: NodeJS.Timeout | undefined;
  private timerAt = Infinity;
  private pumpScheduled = false;
  private forming = false;
  private idleWaiters: (() => void)[] = [];
  /** Requests not yet settled, queued or running. */
  private readonly unsettled = new Set<Job<P, R>>();
  private readonly host: TicketHost<P, JobResult<R>>;

  constructor(private readonly run: RunFn<P, R>, private readonly opts: BatcherOptions) {
    this.now = opts.now ?? (() => performance.now());
    this.concurrency = opts.concurrency ?? 1;
    this.freeSlots = Array.from({ length: this.concurrency }, (_, i) => i);
    const estimates = new RunEstimates({ now: this.now, halfLifeMs: opts.estimateHalfLifeMs, concurrency: this.concurrency });
    this.estimates = estimates;
    const room = new QueueRoom(opts.maxQueueSize, (cost) => estimates.secondsFor(cost));
    this.room = room;
    this.host = {
      hold: (...args) => room.hold(...args),
      unhold: (n, cost) => room.unhold(n, cost),
      enqueue: (key, payload, n, cost, o) => this.enqueue(key, payload, n, cost, o),
    };
  }

  /** Samples queued and not yet running. */
  get waitingSamples(): number {
    return this.room.waiting;
  }

  /** Samples reserved by tickets and not yet submitted. */
  get reservedSamples(): number {
    return this.room.reserved;
  }

  get runningBatches(): number {
    return this.running;
  }

  /**
   * Reserves room for everything a request will queue: one demand per batcher key (a tiled
   * request's tile shapes, a multi-step job's steps). Reserved samples count against maxQueueSize
   * like waiting ones until submitted (then they wait) or released.
   * @throws BatchTooLargeError when the demands exceed maxQueueSize (they could never be queued)
   * @throws QueueFullError when they do not fit now, with the Retry-After seconds
   * @example const t = batcher.reserve([{ key: '64x64', sampleCount: 2, cost: 4096 }]);
   *   try { await t.submit('64x64', payload, 2, { deadline }); } finally { t.release(); }
   */
  reserve(demands: Demand | readonly Demand[], wording: ReserveWording = {}): BatchTicket<P, R> {
    return new Ticket(this.host, Array.isArray(demands) ? demands : [demands as Demand], wording);
  }

  /**
   * Reserves and queues `sampleCount` samples under `key` in one step (reserve, submit, release).
   * Rejects with QueueFullError (over the queue limit), BatchTooLargeError (could never fit),
   * DeadlineError (deadline passed or cannot be met), the signal's reason (aborted), or the
   * runner's error. `cost` is one sample's cost (its latent area), the same under a key.
   */
  submit(key: string, payload: P, sampleCount: number, opts: SubmitOptions & { cost?: number } = {}): Promise<JobResult<R>> {
    let ticket: BatchTicket<P, R>;
    try {
      ticket = this.reserve({ key, sampleCount, cost: opts.cost });
    } catch (e) {
      return Promise.reject(e);
    }
    try {
      return ticket.submit(key, payload, sampleCount, opts);
    } finally {
      ticket.release();
    }
  }

  private enqueue(key: string, payload: P, sampleCount: number, unitCost: number, opts: SubmitOptions): Promise<JobResult<R>> {
    const { signal } = opts;
    return new Promise<JobResult<R>>((resolve, reject) => {
      const job: Job<P, R> = {
        payload, sampleCount, unitCost, next: 0, done: 0, enqueuedAt: this.now(), runs: [],
        deadline: opts.deadline ?? Infinity, parts: [], settled: false, resolve, reject, cleanup: () => {},
      };
      if (signal) {
        const onAbort = (): void => this.fail(job, signal.reason ?? new CancelledError('cancelled'));
        signal.addEventListener('abort', onAbort, { once: true });
        job.cleanup = () => signal.removeEventListener('abort', onAbort);
      }
      this.unsettled.add(job);
      let q = this.queues.get(key);
      if (!q) {
        q = { key, jobs: [], sampleCount: 0, unitCost };
        this.queues.set(key, q);
      }
      q.jobs.push(job);
      q.sampleCount += sampleCount;
      this.room.wait(sampleCount, unitCost);
      this.schedulePump();
    });
  }

  /**
   * Dispatch waits for the end of this event-loop turn: requests whose bodies were read in the same
   * turn (a burst) share the first run instead of the first of them running alone. Costs one
   * setImmediate, microseconds, on an idle model.
   */
  private schedulePump(): void {
    if (this.pumpScheduled) return;
    this.pumpScheduled = true;
    setImmediate(() => {
      this.pumpScheduled = false;
      this.pump();
    });
  }

  /**
   * Fails every request not yet answered, queued or running, with `err` (a drain out of time). A
   * running batch goes on in its runner; its result is dropped.
   */
  failAll(err: unknown): void {
    for (const job of [...this.unsettled]) this.fail(job, err);
  }

  /** Resolves once nothing waits and nothing runs. */
  idle(): Promise<void> {
    if (this.room.waiting === 0 && this.running === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /**
   * Seconds until a request sent now would start: the time to run what waits or is reserved ahead
   * of it, at the measured rate in cost (latent area) per ms, so large latents count for what they
   * cost. Before any run has been measured: 1 s.
   */
  retryAfter(): number {
    return this.room.retryAfter();
  }

  private pump(): void {
    while (this.freeSlots.length > 0) {
      const q = this.nextReady();
      if (!q) break;
      this.forming = true;
      const { batch, owners } = this.form(q, this.freeSlots[0]!);
      this.forming = false;
      if (batch.sampleCount > 0) this.start(batch, owners);
    }
    this.checkIdle();
  }

  /** Samples one batch of this queue may hold: the sample cap, and the cost cap (at least one). */
  private capacity(q: Queue<P, R>): number {
    const byCost = this.opts.maxBatchCost === undefined ? Infinity : Math.floor(this.opts.maxBatchCost / q.unitCost);
    return Math.max(1, Math.min(this.opts.maxBatchSize, byCost));
  }

  /** The queue to run next: among those ready, the one whose oldest request waited longest. */
  private nextReady(): Queue<P, R> | undefined {
    const t = this.now();
    let best: Queue<P, R> | undefined;
    let wakeAt = Infinity;
    for (const q of this.queues.values()) {
      const head = q.jobs[0];
      if (!head) continue;
      // a request already split (a full batch's share ran, the rest waits) does not wait again
      const readyAt = q.sampleCount >= this.capacity(q) || head.next > 0 ? -Infinity : head.enqueuedAt + this.opts.maxQueueDelayMs;
      if (readyAt <= t) {
        if (!best || head.enqueuedAt < best.jobs[0]!.enqueuedAt) best = q;
      } else {
        wakeAt = Math.min(wakeAt, readyAt);
      }
    }
    if (!best && wakeAt < Infinity) this.wakeAt(wakeAt);
    return best;
  }

  private wakeAt(at: number): void {
    if (this.timer && this.timerAt <= at) return;
    clearTimeout(this.timer);
    this.timerAt = at;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.timerAt = Infinity;
      this.pump();
    }, Math.max(0, at - this.now()));
  }

  /**
   * Takes up to capacity(q) samples from the queue's head, and with k instances at most ⌈waiting / k⌉;
   * owners[i] is slices[i]'s request. The
   * batch starts now on a free instance, so the run-time estimate judges only that run: a request
   * whose own run (its samples alone, at most a batch) cannot end before its deadline is dropped;
   * one that would make the batch too slow for a request already in it waits for the next run.
   */
  private form(q: Queue<P, R>, slot: number): { batch: Batch<P>; owners: Job<P, R>[] } {
    const batch: Batch<P> = { key: q.key, slices: [], sampleCount: 0, slot };
    const owners: Job<P, R>[] = [];
    const t = this.now();
    // With several instances a batch takes at most its share of what waits under this key, so that
    // one instance does not run everything while another sits idle (a CPU session gains nothing
    // from a larger batch; two 4s finish before one 8 on two sessions).
    const capacity = Math.min(this.capacity(q), Math.max(1, Math.ceil(q.sampleCount / this.concurrency)));
    let batchDeadline = Infinity;
    while (batch.sampleCount < capacity && q.jobs.length > 0) {
      const job = q.jobs[0]!;
      const left = job.sampleCount - job.next;
      const alone = this.estimates.runMs(q.key, Math.min(left, capacity));
      if (t >= job.deadline || (alone && t + alone.ms > job.deadline)) {
        // Dropped before its run: the run would end after the deadline anyway.
        this.fail(job, new DeadlineError(t >= job.deadline
          ? 'the deadline passed while the request waited in the queue'
          : `the request cannot finish before its deadline: ${Math.round(job.deadline - t)} ms were left and a run of ` +
            `${describeCount(Math.min(left, capacity))} of ${q.key} takes ${describeEstimate(alone!)}`));
        continue;
      }
      const take = Math.min(left, capacity - batch.sampleCount);
      if (batch.sampleCount > 0) {
        const together = this.estimates.runMs(q.key, batch.sampleCount + take);
        if (together && t + together.ms > Math.min(batchDeadline, job.deadline)) break;
      }
      batch.slices.push({ payload: job.payload, start: job.next, count: take });
      owners.push(job);
      batch.sampleCount += take;
      batchDeadline = Math.min(batchDeadline, job.deadline);
      job.next += take;
      job.startedAt ??= t;
      q.sampleCount -= take;
      this.room.wait(-take, q.unitCost);
      if (job.next === job.sampleCount) q.jobs.shift();
    }
    if (q.jobs.length === 0) this.queues.delete(q.key);
    return { batch, owners };
  }

  private start(batch: Batch<P>, jobs: Job<P, R>[]): void {
    this.running++;
    this.freeSlots.splice(this.freeSlots.indexOf(batch.slot), 1);
    const t0 = this.now();
    const done = (ok: boolean): number => {
      const ms = this.now() - t0;
      this.running--;
      this.freeSlots.push(batch.slot);
      this.freeSlots.sort((a, b) => a - b);
      this.opts.onBatch?.({ key: batch.key, slot: batch.slot, sampleCount: batch.sampleCount, requests: new Set(jobs).size, runMs: ms, ok });
      return ms;
    };
    this.run(batch).then(
      (result) => {
        const ms = done(true);
        this.estimates.record(batch.key, batch.sampleCount, jobs[0]?.unitCost ?? 1, ms);
        let offset = 0;
        batch.slices.forEach((s, i) => {
          const job = jobs[i]!;
          if (!job.settled) { // a request cancelled during the run gets nothing
            job.parts.push({ result, batchOffset: offset, start: s.start, count: s.count });
            job.done += s.count;
            job.runs.push([t0, t0 + ms]);
            if (job.done === job.sampleCount) this.succeed(job);
          }
          offset += s.count;
        });
        this.pump();
      },
      (err: unknown) => {
        done(false);
        for (const job of jobs) this.fail(job, err);
        this.pump();
      },
    );
  }

  private succeed(job: Job<P, R>): void {
    job.settled = true;
    this.unsettled.delete(job);
    job.cleanup();
    job.parts.sort((a, b) => a.start - b.start);
    job.resolve({ parts: job.parts, queueMs: (job.startedAt ?? job.enqueuedAt) - job.enqueuedAt, runMs: coveredMs(job.runs) });
  }

  private fail(job: Job<P, R>, err: unknown): void {
    if (job.settled) return;
    job.settled = true;
    this.unsettled.delete(job);
    job.cleanup();
    this.unqueue(job);
    job.reject(err);
    this.checkIdle();
  }

  private unqueue(job: Job<P, R>): void {
    for (const q of this.queues.values()) {
      const i = q.jobs.indexOf(job);
      if (i < 0) continue;
      const left = job.sampleCount - job.next;
      q.jobs.splice(i, 1);
      q.sampleCount -= left;
      this.room.wait(-left, q.unitCost);
      job.next = job.sampleCount;
      if (q.jobs.length === 0) this.queues.delete(q.key);
      return;
    }
  }

  private checkIdle(): void {
    // While a batch forms, a dropped request can leave nothing waiting before the batch runs.
    if (this.forming || this.pumpScheduled || this.room.waiting !== 0 || this.running !== 0) return;
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of waiters) w();
  }
}

/**
 * Wall time covered by a request's runs: two of its parts running at once on two instances count
 * once, so that Server-Timing's `total − infer − encode` stays the service's own overhead.
 */
function coveredMs(runs: [number, number][]): number {
  let ms = 0;
  let end = -Infinity;
  for (const [a, b] of [...runs].sort((x, y) => x[0] - y[0])) {
    if (b <= end) continue;
    ms += b - Math.max(a, end);
    end = b;
  }
  return ms;
}
