// Every error code the service answers with, in one place: the OpenAPI document's error answers
// and the README's error table are checked against it (test/openapi.test.ts). A client mistake is
// a 4xx whose message names the problem; the error handler shows messages only for status < 500, except for
// inference failures, whose cause the client needs to see.
import { BatchTooLargeError, CancelledError, DeadlineError, QueueFullError } from './batching/batcher.js';

export const ErrorCodes = {
  BAD_PARAMETER: 400,
  BAD_SHAPE: 400,
  SIZE_MISMATCH: 400,
  UNKNOWN_DTYPE: 400,
  UNKNOWN_FORMAT: 400,
  BAD_BASE64: 400,
  BAD_JSON: 400,
  BAD_NPY: 400,
  CHANNEL_MISMATCH: 400,
  LATENT_TOO_LARGE: 400,
  NON_FINITE: 400,
  LATENT_OUT_OF_RANGE: 400,
  EMPTY_BODY: 400,
  BAD_CONTENT_ENCODING: 400,
  BAD_REQUEST: 400,
  BAD_IMAGE: 400,
  BAD_IMAGE_SIZE: 400,
  IMAGE_OUT_OF_RANGE: 400,
  UNAUTHORIZED: 401,
  /** A request not received in full within BODY_TIMEOUT_MS (Node's requestTimeout): a stalled upload. */
  REQUEST_TIMEOUT: 408,
  MODEL_NOT_FOUND: 404,
  NOT_FOUND: 404,
  ENCODER_NOT_FOUND: 404,
  BODY_TOO_LARGE: 413,
  BATCH_TOO_LARGE: 413,
  IMAGE_TOO_LARGE: 413,
  VIDEO_TOO_LONG: 413,
  UNSUPPORTED_MEDIA_TYPE: 415,
  UNSUPPORTED_CONTENT_ENCODING: 415,
  /** An `Expect` header other than `100-continue`. */
  EXPECTATION_FAILED: 417,
  NON_FINITE_OUTPUT: 422,
  QUEUE_FULL: 429,
  REQUEST_HEADER_FIELDS_TOO_LARGE: 431,
  INFERENCE_FAILED: 500,
  INTERNAL: 500,
  FFMPEG_UNAVAILABLE: 501,
  NOT_READY: 503,
  MODEL_UNAVAILABLE: 503,
  SHUTTING_DOWN: 503,
  DEADLINE_EXCEEDED: 504,
  /** Logged and counted only: the client closed the connection before the answer. */
  CLIENT_CLOSED: 499,
} as const;

export type ErrorCode = keyof typeof ErrorCodes;

export class ServiceError extends Error {
  readonly status: number;
  readonly headers: Record<string, string>;

  constructor(readonly code: ErrorCode, message: string, opts: { cause?: unknown; headers?: Record<string, string> } = {}) {
    super(message, { cause: opts.cause });
    this.name = 'ServiceError';
    this.status = ErrorCodes[code];
    this.headers = opts.headers ?? {};
  }

  /** The JSON body every error response carries. */
  body(): { error: { code: string; message: string } } {
    return { error: { code: this.code, message: this.message } };
  }
}

export const isServiceError = (e: unknown): e is ServiceError => e instanceof ServiceError;

/** Any error thrown on the request path as the service's error: the batcher's map to their codes. */
export function toServiceError(e: unknown): ServiceError {
  if (e instanceof ServiceError) return e;
  if (e instanceof QueueFullError) {
    return new ServiceError('QUEUE_FULL', `the service is at capacity: ${e.message}`, { headers: { 'retry-after': String(e.retryAfterSeconds) } });
  }
  if (e instanceof BatchTooLargeError) return new ServiceError('BATCH_TOO_LARGE', e.message);
  if (e instanceof DeadlineError) return new ServiceError('DEADLINE_EXCEEDED', e.message);
  if (e instanceof CancelledError) return new ServiceError('CLIENT_CLOSED', e.message);
  return new ServiceError('INTERNAL', 'internal error', { cause: e });
}
