// Messages between the main thread and the inference worker. Tensors cross as transferred
// ArrayBuffers, never copied.
import type { ExecutionProvider } from '../config.js';

/** Decoders: 'image' (uint8 NHWC) and 'sample' (float NCHW); encoders: the posterior's 'mean' and 'std'. */
export type OutputName = 'image' | 'sample' | 'mean' | 'std';

/** What a model file does: latents → image (decode) or image → latents (encode). */
export type Direction = 'decode' | 'encode';

export interface WorkerInit {
  /** An ONNX file, or the model's bytes for built-in models. */
  modelPath?: string;
  modelBytes?: Uint8Array;
  /** MAX_MODEL_BYTES (default 2 GiB): a larger modelPath is refused before it is read. */
  maxModelBytes?: number;
  providers: ExecutionProvider[];
  intraOpThreads: number;
  cpuMemArena: boolean;
  /** session.intra_op.allow_spinning; default false. */
  allowSpinning?: boolean;
  warmupLatentSizes?: [number, number][];
  /** A GPU warms up every batch size up to this. */
  maxBatchSize: number;
  /** 'encode': an encoder graph (encoder.onnx), run as it is, without the decoder's postprocess. */
  direction?: Direction;
}

export interface ModelIo {
  inputName: string;
  /** Element type of the model's input: float32 or float16. */
  inputType: 'float32' | 'float16';
  /** The input's declared shape; strings are dynamic dimensions. */
  inputShape: readonly (number | string)[];
  /** The input's channels: latent channels for a decoder, 3 for an encoder. */
  channels: number;
  outputName: string;
  /** Encoders: the latent channels they output, and whether they have a std output. */
  latentChannels?: number;
  hasStd?: boolean;
  provider: ExecutionProvider;
  loadMs: number;
  warmupMs: number;
  /** ONNX metadata_props (name, scaling_factor, ...), when the file has them. */
  metadata: Record<string, string>;
}

export interface RunRequest {
  type: 'run';
  id: number;
  /** float32 NCHW: decoder-space latents, or an encoder's images in [-1, 1]. */
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
  /** Encoders: float32 NCHW posterior mean [N, C, H/8, W/8] (TAESD: its latents). */
  mean?: ArrayBuffer;
  /** Encoders: float32 NCHW posterior std (KL encoders only). */
  std?: ArrayBuffer;
}

export type WorkerMessage =
  | { type: 'ready'; io: ModelIo }
  /** `defect`: the model itself is broken (a non-finite weight), not the machine or the file's format. */
  | { type: 'failed'; message: string; defect?: boolean }
  | { type: 'result'; id: number; outputs: RunOutputs; ms: number }
  | { type: 'error'; id: number; message: string }
  | { type: 'log'; level: 'info' | 'warn'; msg: string; data?: Record<string, unknown> };
