// The batcher's public shapes: what a run is given (Batch), what it reports (BatchInfo), what a
// request gets back (JobResult), and the errors a queued request can end with.

export interface BatchInfo {
  key: string;
  /** The slot (model instance) that ran it. */
  slot: number;
  sampleCount: number;
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
  sampleCount: number;
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
  /** Wall time its runs cover (runs on several instances at once count once). */
  runMs: number;
}

export class DeadlineError extends Error {
  override name = 'DeadlineError';
}

export class CancelledError extends Error {
  override name = 'CancelledError';
}
