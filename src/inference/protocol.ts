// Messages between the main thread and the inference worker. Tensors cross as transferred
// ArrayBuffers, never copied.
import type { ExecutionProvider } from '../config.js';

export type OutputName = 'image' | 'sample';

export interface WorkerInit {
  /** An ONNX file, or the model's bytes for built-in models. */
  modelPath?: string;
  modelBytes?: Uint8Array;
  providers: ExecutionProvider[];
  intraOpThreads: number;
  cpuMemArena: boolean;
  /** session.intra_op.allow_spinning; default false. */
  allowSpinning?: boolean;
  warmupLatentSizes?: [number, number][];
  /** A GPU warms up every batch size up to this. */
  maxBatchSize: number;
}

export interface ModelIo {
  inputName: string;
  /** Element type of the model's input: float32 or float16. */
  inputType: 'float32' | 'float16';
  /** The input's declared shape; strings are dynamic dimensions. */
  inputShape: readonly (number | string)[];
  channels: number;
  outputName: string;
  provider: ExecutionProvider;
  loadMs: number;
  warmupMs: number;
  /** ONNX metadata_props (name, scaling_factor, ...), when the file has them. */
  metadata: Record<string, string>;
}

export interface RunRequest {
  type: 'run';
  id: number;
  /** float32 NCHW decoder-space latents. */
  data: ArrayBuffer;
  dims: [number, number, number, number];
  fetch: OutputName[];
}

/** Ends the worker once the run in progress (if any) is done. */
export interface CloseRequest {
  type: 'close';
}

export type MainMessage = RunRequest | CloseRequest;

export interface RunOutputs {
  /** Rows of the batch whose decoder output holds NaN or ±Inf (models with the finite check). */
  nonFinite: number[];
  /** uint8 NHWC pixels [N, 8h, 8w, 3]. */
  image?: ArrayBuffer;
  /** float32 NCHW decoder output [N, 3, 8h, 8w]. */
  sample?: ArrayBuffer;
}

export type WorkerMessage =
  | { type: 'ready'; io: ModelIo }
  | { type: 'failed'; message: string }
  | { type: 'result'; id: number; outputs: RunOutputs; ms: number }
  | { type: 'error'; id: number; message: string }
  | { type: 'log'; level: 'info' | 'warn'; msg: string; data?: Record<string, unknown> };
