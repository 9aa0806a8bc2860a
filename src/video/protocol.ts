// Messages between the main thread and an inference worker serving a streaming video decoder (the
// Wan VAE's step graph, src/convert/wan-graph.ts). The causal caches stay in the worker: the main
// thread sends one latent frame per step and gets that step's output frames back.
import type { OutputName } from '../inference/protocol.js';

/** One stream's part of a step: its rows of the batch. */
export interface StreamStep {
  /** The main thread's id for one video request; its caches live in the worker until `last`. */
  stream: number;
  /** Its videos (rows of the batch axis), in order after the previous stream's. */
  rows: number;
  /** Its latent frame 0: the worker starts its caches at zero (every stream of a run agrees). */
  first: boolean;
  /** Its last latent frame: the worker drops its caches after it. */
  last: boolean;
}

/**
 * Decodes one latent frame of each of `streams`, stacked on the batch axis; answered with a
 * 'result' (or 'error') of the same id holding every row's frames.
 */
export interface StepRequest {
  type: 'step';
  id: number;
  streams: StreamStep[];
  /** float32 [rows, C, 1, h, w] decoder-space latents, transferred. */
  data: ArrayBuffer;
  dims: [number, number, number, number, number];
  fetch: OutputName[];
}

/** Drops a stream's caches (a video abandoned before its last step). */
export interface EndStreamRequest {
  type: 'end-stream';
  stream: number;
}

export type VideoMessage = StepRequest | EndStreamRequest;

/** What a queued video step carries besides its latents (see src/video/decoder.ts). */
export interface VideoStep {
  stream: number;
  /** The model instance holding the stream's caches: every step of a stream runs there. */
  instance: number;
  first: boolean;
  last: boolean;
}
