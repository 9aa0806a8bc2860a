// The dynamic batcher: requests queue by what can share a run; a batch is released when it holds
// maxBatchSize samples, when its oldest request has waited maxQueueDelayMs, or at once when the
// runner is idle and the delay is 0. It counts samples, splits a request across runs when it does
// not fit, and settles every request exactly once. Pure: it knows neither HTTP nor ONNX Runtime;
// the runner it is given does the work.

export interface BatcherOptions {
  maxBatchSize: number;
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
}

const EWMA = 0.3;

export class Batcher<P, R> {
  private readonly queues = new Map<string, Queue<P, R>>();
  private readonly runMs = new Map<string, number>();
  private readonly now: () => number;
  private readonly concurrency: number;
  private running = 0;
  private waiting = 0;
  private samplesPerMs = 0;
  private timer: NodeJS.Timeout | undefined;
  private timerAt = Infinity;
  private idleWaiters: (() => void)[] = [];

  constructor(private readonly run: RunFn<P, R>, private readonly opts: BatcherOptions) {
    this.now = opts.now ?? (() => performance.now());
    this.concurrency = opts.concurrency ?? 1;
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
   * the signal's reason (aborted), or the runner's error.
   */
  submit(key: string, payload: P, samples: number, opts: { deadline?: number; signal?: AbortSignal } = {}): Promise<JobResult<R>> {
    if (samples > this.opts.maxQueueSize) {
      return Promise.reject(new BatchTooLargeError(`${samples} samples is more than the queue holds (${this.opts.maxQueueSize}); split the request`));
    }
    if (this.waiting + samples > this.opts.maxQueueSize) {
      return Promise.reject(new QueueFullError(this.waiting, this.retryAfter(samples)));
    }
    const { signal } = opts;
    if (signal?.aborted) return Promise.reject(signal.reason ?? new CancelledError('cancelled'));
    return new Promise<JobResult<R>>((resolve, reject) => {
      const job: Job<P, R> = {
        payload, samples, next: 0, done: 0, enqueuedAt: this.now(), runMs: 0,
        deadline: opts.deadline ?? Infinity, parts: [], settled: false, resolve, reject, cleanup: () => {},
      };
      if (signal) {
        const onAbort = (): void => this.fail(job, signal.reason ?? new CancelledError('cancelled'));
        signal.addEventListener('abort', onAbort, { once: true });
        job.cleanup = () => signal.removeEventListener('abort', onAbort);
      }
      let q = this.queues.get(key);
      if (!q) {
        q = { key, jobs: [], samples: 0 };
        this.queues.set(key, q);
      }
      q.jobs.push(job);
      q.samples += samples;
      this.waiting += samples;
      this.pump();
    });
  }

  /** Resolves once nothing waits and nothing runs. */
  idle(): Promise<void> {
    if (this.waiting === 0 && this.running === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Seconds until `samples` more would fit, from the measured drain rate. */
  retryAfter(samples: number): number {
    if (this.samplesPerMs <= 0) return 1;
    const excess = this.waiting + samples - this.opts.maxQueueSize;
    return Math.max(1, Math.ceil(excess / this.samplesPerMs / 1000));
  }

  private pump(): void {
    while (this.running < this.concurrency) {
      const q = this.nextReady();
      if (!q) break;
      const { batch, owners } = this.form(q);
      if (batch.samples > 0) this.start(batch, owners);
    }
    this.checkIdle();
  }

  /** The queue to run next: among those ready, the one whose oldest request waited longest. */
  private nextReady(): Queue<P, R> | undefined {
    const t = this.now();
    let best: Queue<P, R> | undefined;
    let wakeAt = Infinity;
    for (const q of this.queues.values()) {
      const head = q.jobs[0];
      if (!head) continue;
      const readyAt = q.samples >= this.opts.maxBatchSize ? -Infinity : head.enqueuedAt + this.opts.maxQueueDelayMs;
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

  /** Takes up to maxBatchSize samples from the queue's head; owners[i] is slices[i]'s request. */
  private form(q: Queue<P, R>): { batch: Batch<P>; owners: Job<P, R>[] } {
    const batch: Batch<P> = { key: q.key, slices: [], samples: 0 };
    const owners: Job<P, R>[] = [];
    const t = this.now();
    const expected = this.runMs.get(q.key) ?? 0;
    while (batch.samples < this.opts.maxBatchSize && q.jobs.length > 0) {
      const job = q.jobs[0]!;
      if (job.deadline < t + expected) {
        // Dropped before its run: the run would end after the deadline anyway.
        this.fail(job, new DeadlineError(t >= job.deadline
          ? 'the deadline passed while the request waited in the queue'
          : `the request cannot finish before its deadline (a run takes about ${Math.round(expected)} ms)`));
        continue;
      }
      const take = Math.min(job.samples - job.next, this.opts.maxBatchSize - batch.samples);
      batch.slices.push({ payload: job.payload, start: job.next, count: take });
      owners.push(job);
      batch.samples += take;
      job.next += take;
      job.startedAt ??= t;
      q.samples -= take;
      this.waiting -= take;
      if (job.next === job.samples) q.jobs.shift();
    }
    if (q.jobs.length === 0) this.queues.delete(q.key);
    return { batch, owners };
  }

  private start(batch: Batch<P>, jobs: Job<P, R>[]): void {
    this.running++;
    const t0 = this.now();
    const done = (ok: boolean): number => {
      const ms = this.now() - t0;
      this.running--;
      this.opts.onBatch?.({ key: batch.key, samples: batch.samples, requests: new Set(jobs).size, runMs: ms, ok });
      return ms;
    };
    this.run(batch).then(
      (result) => {
        const ms = done(true);
        this.learn(batch, ms);
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

  private learn(batch: Batch<P>, ms: number): void {
    const prev = this.runMs.get(batch.key);
    this.runMs.set(batch.key, prev === undefined ? ms : prev + EWMA * (ms - prev));
    const rate = batch.samples / Math.max(ms, 0.001);
    this.samplesPerMs = this.samplesPerMs === 0 ? rate : this.samplesPerMs + EWMA * (rate - this.samplesPerMs);
  }

  private succeed(job: Job<P, R>): void {
    job.settled = true;
    job.cleanup();
    job.parts.sort((a, b) => a.start - b.start);
    job.resolve({ parts: job.parts, queueMs: (job.startedAt ?? job.enqueuedAt) - job.enqueuedAt, runMs: job.runMs });
  }

  private fail(job: Job<P, R>, err: unknown): void {
    if (job.settled) return;
    job.settled = true;
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
      job.next = job.samples;
      if (q.jobs.length === 0) this.queues.delete(q.key);
      return;
    }
  }

  private checkIdle(): void {
    if (this.waiting !== 0 || this.running !== 0) return;
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of waiters) w();
  }
}
