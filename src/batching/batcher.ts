// The dynamic batcher: requests queue by what can share a run; a batch is released when it is full
// (maxBatchSize samples, or maxBatchCost of cost: latent area), when its oldest request has waited
// maxQueueDelayMs, or — with the default delay 0 — as soon as a runner is free: a request reaching
// an idle model runs at once, and what arrives during a run is taken whole by the next batch. It
// counts samples, splits a request across runs when it does not fit, and settles every request
// exactly once. Pure: it knows neither HTTP nor ONNX Runtime; the runner it is given does the work.

export interface BatcherOptions {
  maxBatchSize: number;
  /** Cost a batch may hold (its samples × their cost); a sample over it still runs alone. */
  maxBatchCost?: number;
  maxQueueDelayMs: number;
  /** Samples allowed to wait (not counting those running). */
  maxQueueSize: number;
  /** Batches allowed in the runner at once (one per model instance). */
  concurrency?: number;
  now?: () => number;
  onBatch?: (info: BatchInfo) => void;
}

export interface BatchInfo {
  key: string;
  /** The slot (model instance) that ran it. */
  slot: number;
  samples: number;
  requests: number;
  runMs: number;
  ok: boolean;
}

export interface Slice<P> {
  payload: P;
  /** First sample of the request in this slice. */
  start: number;
  count: number;
}

export interface Batch<P> {
  key: string;
  slices: Slice<P>[];
  samples: number;
  /** Which of the `concurrency` slots runs it (a model instance), 0-based. */
  slot: number;
}

export type RunFn<P, R> = (batch: Batch<P>) => Promise<R>;

export interface Part<R> {
  result: R;
  /** Where this request's samples start in the batch result. */
  batchOffset: number;
  /** Which of the request's samples they are. */
  start: number;
  count: number;
}

export interface JobResult<R> {
  /** In request order, covering all its samples. */
  parts: Part<R>[];
  queueMs: number;
  runMs: number;
}

export class QueueFullError extends Error {
  override name = 'QueueFullError';
  constructor(readonly waitingSamples: number, readonly retryAfterSeconds: number) {
    super(`the queue holds ${waitingSamples} samples waiting, its limit; retry in about ${retryAfterSeconds} s`);
  }
}

export class BatchTooLargeError extends Error {
  override name = 'BatchTooLargeError';
}

export class DeadlineError extends Error {
  override name = 'DeadlineError';
}

export class CancelledError extends Error {
  override name = 'CancelledError';
}

interface Job<P, R> {
  payload: P;
  samples: number;
  unitCost: number;
  next: number; // first sample not yet handed to a run
  done: number; // samples with results
  enqueuedAt: number;
  startedAt?: number;
  runMs: number;
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
  samples: number;
  /** Cost of one sample under this key (all of a key's samples have the same shape). */
  unitCost: number;
}

const EWMA = 0.3;

export class Batcher<P, R> {
  private readonly queues = new Map<string, Queue<P, R>>();
  private readonly runMs = new Map<string, number>();
  private readonly now: () => number;
  private readonly concurrency: number;
  private running = 0;
  /** Free slots (model instances), lowest first. */
  private readonly freeSlots: number[];
  private waiting = 0;
  private waitingCost = 0;
  /** Measured drain rate, cost per ms, over all keys. */
  private costPerMs = 0;
  private timer: NodeJS.Timeout | undefined;
  private timerAt = Infinity;
  private pumpScheduled = false;
  private forming = false;
  private idleWaiters: (() => void)[] = [];
  /** Requests not yet settled, queued or running. */
  private readonly unsettled = new Set<Job<P, R>>();

  constructor(private readonly run: RunFn<P, R>, private readonly opts: BatcherOptions) {
    this.now = opts.now ?? (() => performance.now());
    this.concurrency = opts.concurrency ?? 1;
    this.freeSlots = Array.from({ length: this.concurrency }, (_, i) => i);
  }

  get waitingSamples(): number {
    return this.waiting;
  }

  get runningBatches(): number {
    return this.running;
  }

  /**
   * Queues `samples` samples under `key`. Rejects with QueueFullError (over the queue limit),
   * BatchTooLargeError (could never fit), DeadlineError (deadline passed or cannot be met),
   * the signal's reason (aborted), or the runner's error. `cost` is one sample's cost (its latent
   * area), the same for every request under a key.
   */
  submit(key: string, payload: P, samples: number, opts: { deadline?: number; signal?: AbortSignal; cost?: number } = {}): Promise<JobResult<R>> {
    if (samples > this.opts.maxQueueSize) {
      return Promise.reject(new BatchTooLargeError(`${samples} samples is more than the queue holds (${this.opts.maxQueueSize}); split the request`));
    }
    if (this.waiting + samples > this.opts.maxQueueSize) {
      return Promise.reject(new QueueFullError(this.waiting, this.retryAfter()));
    }
    const unitCost = opts.cost ?? 1;
    const { signal } = opts;
    if (signal?.aborted) return Promise.reject(signal.reason ?? new CancelledError('cancelled'));
    return new Promise<JobResult<R>>((resolve, reject) => {
      const job: Job<P, R> = {
        payload, samples, unitCost, next: 0, done: 0, enqueuedAt: this.now(), runMs: 0,
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
        q = { key, jobs: [], samples: 0, unitCost };
        this.queues.set(key, q);
      }
      q.jobs.push(job);
      q.samples += samples;
      this.waiting += samples;
      this.waitingCost += samples * unitCost;
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
    if (this.waiting === 0 && this.running === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /**
   * Seconds until a request sent now would start: the time to run what waits ahead of it, from the
   * measured drain rate in cost (latent area) per ms, so large latents count for what they cost.
   * Before any run has been measured, the request timeout's worth is not known: 1 s.
   */
  retryAfter(): number {
    if (this.costPerMs <= 0) return 1;
    return Math.max(1, Math.ceil(this.waitingCost / this.costPerMs / 1000));
  }

  private pump(): void {
    while (this.freeSlots.length > 0) {
      const q = this.nextReady();
      if (!q) break;
      this.forming = true;
      const { batch, owners } = this.form(q, this.freeSlots[0]!);
      this.forming = false;
      if (batch.samples > 0) this.start(batch, owners);
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
      const readyAt = q.samples >= this.capacity(q) ? -Infinity : head.enqueuedAt + this.opts.maxQueueDelayMs;
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

  /** Takes up to capacity(q) samples from the queue's head; owners[i] is slices[i]'s request. */
  private form(q: Queue<P, R>, slot: number): { batch: Batch<P>; owners: Job<P, R>[] } {
    const batch: Batch<P> = { key: q.key, slices: [], samples: 0, slot };
    const owners: Job<P, R>[] = [];
    const t = this.now();
    const expected = this.runMs.get(q.key) ?? 0;
    const capacity = this.capacity(q);
    while (batch.samples < capacity && q.jobs.length > 0) {
      const job = q.jobs[0]!;
      if (job.deadline < t + expected) {
        // Dropped before its run: the run would end after the deadline anyway.
        this.fail(job, new DeadlineError(t >= job.deadline
          ? 'the deadline passed while the request waited in the queue'
          : `the request cannot finish before its deadline (a run takes about ${Math.round(expected)} ms)`));
        continue;
      }
      const take = Math.min(job.samples - job.next, capacity - batch.samples);
      batch.slices.push({ payload: job.payload, start: job.next, count: take });
      owners.push(job);
      batch.samples += take;
      job.next += take;
      job.startedAt ??= t;
      q.samples -= take;
      this.waiting -= take;
      this.waitingCost -= take * q.unitCost;
      if (job.next === job.samples) q.jobs.shift();
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
      this.opts.onBatch?.({ key: batch.key, slot: batch.slot, samples: batch.samples, requests: new Set(jobs).size, runMs: ms, ok });
      return ms;
    };
    this.run(batch).then(
      (result) => {
        const ms = done(true);
        this.learn(batch, ms, this.queueCost(batch, jobs));
        let offset = 0;
        batch.slices.forEach((s, i) => {
          const job = jobs[i]!;
          if (!job.settled) { // a request cancelled during the run gets nothing
            job.parts.push({ result, batchOffset: offset, start: s.start, count: s.count });
            job.done += s.count;
            job.runMs += ms;
            if (job.done === job.samples) this.succeed(job);
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

  private queueCost(batch: Batch<P>, jobs: Job<P, R>[]): number {
    return batch.samples * (jobs[0]?.unitCost ?? 1);
  }

  private learn(batch: Batch<P>, ms: number, cost: number): void {
    const prev = this.runMs.get(batch.key);
    this.runMs.set(batch.key, prev === undefined ? ms : prev + EWMA * (ms - prev));
    // Several slots drain in parallel: the rate of one run times the slots is the model's rate.
    const rate = (cost / Math.max(ms, 0.001)) * this.concurrency;
    this.costPerMs = this.costPerMs === 0 ? rate : this.costPerMs + EWMA * (rate - this.costPerMs);
  }

  private succeed(job: Job<P, R>): void {
    job.settled = true;
    this.unsettled.delete(job);
    job.cleanup();
    job.parts.sort((a, b) => a.start - b.start);
    job.resolve({ parts: job.parts, queueMs: (job.startedAt ?? job.enqueuedAt) - job.enqueuedAt, runMs: job.runMs });
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
      const left = job.samples - job.next;
      q.jobs.splice(i, 1);
      q.samples -= left;
      this.waiting -= left;
      this.waitingCost -= left * q.unitCost;
      job.next = job.samples;
      if (q.jobs.length === 0) this.queues.delete(q.key);
      return;
    }
  }

  private checkIdle(): void {
    // While a batch forms, a dropped request can leave nothing waiting before the batch runs.
    if (this.forming || this.pumpScheduled || this.waiting !== 0 || this.running !== 0) return;
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of waiters) w();
  }
}
