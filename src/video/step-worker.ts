// The worker side of a streaming video decoder: one ONNX Runtime session on the Wan step graph
// (src/convert/wan-graph.ts) and, per stream, the causal caches between its steps. The caches
// never leave the worker: one run's cache outputs are the next run's inputs. Only a step's output
// frames are posted back, transferred.
import type { MessagePort } from 'node:worker_threads';
import type * as ort from 'onnxruntime-node';
import { CACHE_IN, CACHE_OUT, FIRST_CHUNK_NAME, IMAGE_NAME, INPUT_NAME, SAMPLE_NAME, type CacheSlot } from '../convert/wan-graph.js';
import { owned } from '../inference/buffers.js';
import type { MainMessage, ModelIo, RunOutputs, WorkerMessage } from '../inference/protocol.js';
import type { WarmupShape } from '../inference/warmup.js';
import type { StepRequest, StreamStep, VideoMessage } from './protocol.js';

/** Whether a decoder's metadata marks it as a streaming step graph. */
export function isStepGraph(metadata: Record<string, string>): boolean {
  return metadata.feat_cache !== undefined;
}

export interface StepWorkerContext {
  ort: typeof ort;
  session: ort.InferenceSession;
  port: MessagePort;
  post: (m: WorkerMessage, transfer?: ArrayBuffer[]) => void;
  io: Omit<ModelIo, 'warmupMs' | 'inputName' | 'inputType' | 'inputShape' | 'channels' | 'outputName'>;
  warmup: WarmupShape[];
}

/** diffusers' `_decode` clamps the decoder output to [-1, 1]. */
function clamp(v: Float32Array): Float32Array {
  for (let i = 0; i < v.length; i++) v[i] = Math.min(1, Math.max(-1, v[i]!));
  return v;
}

/**
 * Serves steps until closed: posts 'ready' after a warm-up (two steps per warm-up shape, the first
 * and a later one), then answers each StepRequest with a 'result' holding that step's frames.
 * @throws when the session has no latent_sample input of shape [N, C, 1, h, w]
 */
export async function serveSteps(ctx: StepWorkerContext): Promise<void> {
  const { ort, session, port, post } = ctx;
  const meta = session.inputMetadata.find((m) => m.name === INPUT_NAME);
  const channels = meta?.isTensor ? meta.shape[1] : undefined;
  if (!meta?.isTensor || meta.shape.length !== 5 || typeof channels !== 'number') {
    throw new Error(`a streaming video decoder needs a ${INPUT_NAME} input of shape [N, C, 1, h, w]`);
  }
  const slots = JSON.parse(ctx.io.metadata.feat_cache!) as CacheSlot[];
  const streams = new Map<number, Record<string, ort.Tensor>>();

  // float16 models (convert --fp16) keep float16 caches
  const half = session.inputMetadata.some((m) => m.name.startsWith(CACHE_IN) && m.isTensor && m.type === 'float16');
  const zeros = (n: number, h: number, w: number): Record<string, ort.Tensor> => Object.fromEntries(slots.map((s) => {
    const dims = [n, s.channels, 2, h * s.scale, w * s.scale];
    const size = dims.reduce((a, b) => a * b, 1);
    return [`${CACHE_IN}${s.slot}`, half ? new ort.Tensor('float16', new Uint16Array(size), dims) : new ort.Tensor('float32', new Float32Array(size), dims)];
  }));

  const cacheNames = slots.map((s) => `${CACHE_IN}${s.slot}`);
  /** The streams' caches stacked on the batch axis, in order (one stream: its own tensors). */
  const stacked = (parts: Record<string, ort.Tensor>[]): Record<string, ort.Tensor> => {
    if (parts.length === 1) return parts[0]!;
    return Object.fromEntries(cacheNames.map((name) => {
      const ts = parts.map((p) => p[name]!);
      const size = ts.reduce((a, t) => a + t.size, 0);
      const data = half ? new Uint16Array(size) : new Float32Array(size);
      let at = 0;
      for (const t of ts) {
        data.set(t.data as Float32Array & Uint16Array, at);
        at += t.size;
      }
      return [name, new ort.Tensor(half ? 'float16' : 'float32', data, [ts.reduce((a, t) => a + t.dims[0]!, 0), ...ts[0]!.dims.slice(1)])];
    }));
  };
  /** Stream k's rows [from, from + rows) of the new caches. */
  const rowsOf = (res: ort.InferenceSession.ReturnType, from: number, rows: number, total: number): Record<string, ort.Tensor> =>
    Object.fromEntries(slots.map((s) => {
      const t = res[`${CACHE_OUT}${s.slot}`]!;
      if (rows === total) return [`${CACHE_IN}${s.slot}`, t];
      const per = t.size / total;
      const data = (t.data as Float32Array | Uint16Array).slice(from * per, (from + rows) * per);
      return [`${CACHE_IN}${s.slot}`, new ort.Tensor(t.type, data, [rows, ...t.dims.slice(1)])];
    }));

  const step = async (streamSteps: StreamStep[], data: Float32Array, dims: number[], fetch: string[]): Promise<ort.InferenceSession.ReturnType> => {
    const [rows, , , h, w] = dims as [number, number, number, number, number];
    const first = streamSteps[0]!.first;
    if (streamSteps.some((s) => s.first !== first)) throw new Error('a run mixes first and later steps');
    const caches = streamSteps.map((s) => {
      if (first) return zeros(s.rows, h, w);
      const c = streams.get(s.stream);
      if (!c) throw new Error(`stream ${s.stream} has no caches: its first step was not run here`);
      return c;
    });
    for (const s of streamSteps) streams.delete(s.stream);
    const res = await session.run({
      [INPUT_NAME]: new ort.Tensor('float32', data, dims),
      [FIRST_CHUNK_NAME]: new ort.Tensor('int64', BigInt64Array.of(first ? 1n : 0n), [1]),
      ...stacked(caches),
    }, [...fetch, ...slots.map((s) => `${CACHE_OUT}${s.slot}`)]);
    let from = 0;
    for (const s of streamSteps) {
      if (!s.last) streams.set(s.stream, rowsOf(res, from, s.rows, rows));
      from += s.rows;
    }
    return res;
  };

  const w0 = performance.now();
  for (const [n, h, w] of ctx.warmup) {
    const frame = (): Float32Array => new Float32Array(n * channels * h * w);
    await step([{ stream: -1, rows: n, first: true, last: false }], frame(), [n, channels, 1, h, w], [IMAGE_NAME]);
    await step([{ stream: -1, rows: n, first: false, last: true }], frame(), [n, channels, 1, h, w], [IMAGE_NAME]);
  }
  const warmupMs = performance.now() - w0;
  post({ type: 'log', level: 'info', msg: 'warm-up', data: { provider: ctx.io.provider, shapes: ctx.warmup.map((s) => s.join('x')), ms: Math.round(warmupMs) } });
  post({ type: 'ready', io: { ...ctx.io, inputName: INPUT_NAME, inputType: 'float32', inputShape: meta.shape, channels, outputName: SAMPLE_NAME, warmupMs } });

  // one step at a time, in order: a stream's step needs the caches of its previous one
  let chain: Promise<unknown> = Promise.resolve();
  const run = (req: StepRequest): Promise<void> => {
    const t = performance.now();
    const fetch = req.fetch.map((f) => (f === 'image' ? IMAGE_NAME : SAMPLE_NAME));
    return step(req.streams, new Float32Array(req.data), req.dims, fetch).then(
      (res) => {
        const outputs: RunOutputs = { nonFinite: [] };
        const transfer: ArrayBuffer[] = [];
        if (req.fetch.includes('image')) transfer.push((outputs.image = owned(res[IMAGE_NAME]!.data as Uint8Array)));
        if (req.fetch.includes('sample')) transfer.push((outputs.sample = owned(clamp(res[SAMPLE_NAME]!.data as Float32Array))));
        post({ type: 'result', id: req.id, outputs, ms: performance.now() - t }, transfer);
      },
      (e: unknown) => post({ type: 'error', id: req.id, message: (e as Error).message }),
    );
  };
  port.on('message', (req: MainMessage | VideoMessage) => {
    if (req.type === 'close') {
      void chain.then(() => session.release()).finally(() => process.exit(0));
    } else if (req.type === 'end-stream') {
      void chain.then(() => streams.delete(req.stream));
    } else if (req.type === 'step') {
      chain = chain.then(() => run(req));
    } else {
      post({ type: 'error', id: req.id, message: 'this model is a streaming video decoder: it takes steps of [N, C, 1, h, w] latents' });
    }
  });
}
