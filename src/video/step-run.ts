// Queued video steps to their worker: the batcher's run function for step payloads. Steps of
// several streams of the same shape and phase run as one batch (the batch axis).
import type { OutputName } from '../inference/protocol.js';
import type { InferenceRunner, RunResult } from '../inference/runner.js';
import type { StepRequest, VideoStep } from './protocol.js';

export interface QueuedStep {
  /** float32 [n, C, h, w]: the stream's latent frame. */
  data: Float32Array;
  dims: [number, number, number, number];
  step: VideoStep;
  fetch: OutputName[];
}

/**
 * Sends one step of each queued stream (same h, w and phase; all on `runner`, which holds their
 * caches) as one run; resolves with the batch's frames (RunOutputs: image uint8 [rows, F, 8h, 8w, 3],
 * sample float32 [rows, 3, F, 8h, 8w] clamped to [-1, 1]; F = 1 on the first step, else 4 for Wan),
 * rows in the order of `steps`.
 */
export function runSteps(runner: InferenceRunner, steps: QueuedStep[]): Promise<RunResult> {
  const [, c, h, w] = steps[0]!.dims;
  const rows = steps.reduce((a, s) => a + s.dims[0], 0);
  let data = steps[0]!.data;
  if (steps.length > 1) {
    data = new Float32Array(rows * c * h * w);
    let at = 0;
    for (const s of steps) {
      data.set(s.data, at);
      at += s.data.length;
    }
  }
  const req: Omit<StepRequest, 'id'> = {
    type: 'step',
    streams: steps.map((s) => ({ stream: s.step.stream, rows: s.dims[0], first: s.step.first, last: s.step.last })),
    data: data.buffer as ArrayBuffer,
    dims: [rows, c, 1, h, w],
    fetch: [...new Set(steps.flatMap((s) => s.fetch))],
  };
  return runner.request(req, [data.buffer as ArrayBuffer]);
}
