// One queued video step to its worker: the batcher's run function for step payloads.
import type { OutputName } from '../inference/protocol.js';
import type { InferenceRunner, RunResult } from '../inference/runner.js';
import type { StepRequest, VideoStep } from './protocol.js';

/**
 * Sends latent frame `data` (float32 [N, C, h, w], transferred) of `step.stream` to the runner
 * holding its caches; resolves with the step's frames (RunOutputs: image uint8 [N, F, 8h, 8w, 3],
 * sample float32 [N, 3, F, 8h, 8w] clamped to [-1, 1]; F = 1 on the first step, else 4 for Wan).
 */
export function runStep(runner: InferenceRunner, data: Float32Array, dims: [number, number, number, number], step: VideoStep, fetch: OutputName[]): Promise<RunResult> {
  const [n, c, h, w] = dims;
  const req: Omit<StepRequest, 'id'> = {
    type: 'step', stream: step.stream, data: data.buffer as ArrayBuffer, dims: [n, c, 1, h, w], first: step.first, last: step.last, fetch,
  };
  return runner.request(req, [data.buffer as ArrayBuffer]);
}
