// The ONNX Runtime session, in a worker thread: InferenceSession.run is a synchronous native call
// that would block the event loop for the whole inference.
import { readFile } from 'node:fs/promises';
import { parentPort, workerData } from 'node:worker_threads';
import * as ort from 'onnxruntime-node';
import { halfBitsToFloat32, toFloat16Bits } from '../tensor/dtype.js';
import { IMAGE_OUTPUT, NONFINITE_OUTPUT, withPostprocess } from '../onnx/postprocess.js';
import type { MainMessage, ModelIo, RunOutputs, WorkerInit, WorkerMessage } from './protocol.js';
import { warmupPlan } from './warmup.js';
import { owned } from './buffers.js';
import { isStepGraph, serveSteps } from '../video/step-worker.js';

const init = workerData as WorkerInit;
const port = parentPort!;
const post = (m: WorkerMessage, transfer: ArrayBuffer[] = []): void => port.postMessage(m, transfer);

async function createSession(bytes: Uint8Array): Promise<{ session: ort.InferenceSession; provider: ModelIo['provider'] }> {
  const errors: string[] = [];
  for (const provider of init.providers) {
    try {
      const session = await ort.InferenceSession.create(bytes, {
        executionProviders: [provider],
        graphOptimizationLevel: 'all',
        // Without the arena, ORT frees what a large batch took instead of keeping its peak. Memory
        // patterns stay on: one planned block per run, freed after it, cut the fixture's CPU per
        // image from 2.0× to 1.2× the arena's (bench/results/2026-11-26-memory.md).
        enableCpuMemArena: init.cpuMemArena,
        enableMemPattern: true,
        ...(init.intraOpThreads > 0 ? { intraOpNumThreads: init.intraOpThreads } : {}),
      });
      return { session, provider };
    } catch (e) {
      const msg = (e as Error).message.split('\n')[0]!;
      errors.push(`${provider}: ${msg}`);
      post({ type: 'log', level: 'warn', msg: `execution provider ${provider} did not load; trying the next`, data: { provider, error: msg } });
    }
  }
  throw new Error(`no execution provider loaded (${errors.join('; ')})`);
}

function toFloat32(t: ort.Tensor): Float32Array {
  return t.type === 'float32' ? (t.data as Float32Array) : halfBitsToFloat32(t.data as Uint16Array);
}

async function main(): Promise<void> {
  const t0 = performance.now();
  const original = init.modelBytes ?? (await readFile(init.modelPath!));
  const { bytes, io } = withPostprocess(original);
  const { session, provider } = await createSession(bytes);
  if (isStepGraph(io.metadata)) {
    const base = { provider, loadMs: performance.now() - t0, metadata: io.metadata };
    return serveSteps({ ort, session, port, post, io: base, warmup: warmupPlan(provider, init.warmupLatentSizes, init.maxBatchSize) });
  }
  const meta = session.inputMetadata.find((m) => m.name === io.input);
  if (!meta || !meta.isTensor) throw new Error(`the model has no tensor input ${io.input}`);
  if (meta.type !== 'float32' && meta.type !== 'float16') {
    throw new Error(`the model's input ${io.input} is ${meta.type}; a decoder takes float32 or float16`);
  }
  const channels = meta.shape[1];
  if (meta.shape.length !== 4 || typeof channels !== 'number') {
    throw new Error(`the model's input ${io.input} has shape [${meta.shape.join(', ')}]; expected [N, C, h, w] with a fixed C`);
  }
  const inputType = meta.type;
  const loadMs = performance.now() - t0;

  const run = async (data: Float32Array, dims: number[], fetch: string[]): Promise<ort.InferenceSession.ReturnType> => {
    const tensor = inputType === 'float16'
      ? new ort.Tensor('float16', toFloat16Bits(data), dims)
      : new ort.Tensor('float32', data, dims);
    return session.run({ [io.input]: tensor }, fetch);
  };

  const plan = warmupPlan(provider, init.warmupLatentSizes, init.maxBatchSize);
  const w0 = performance.now();
  for (const [n, h, w] of plan) {
    const dims = meta.shape.map((d, i) => (typeof d === 'number' ? d : [n, channels, h, w][i]!));
    await run(new Float32Array(dims.reduce((a, b) => a * b, 1)), dims, [IMAGE_OUTPUT, io.output]);
  }
  const warmupMs = performance.now() - w0;
  post({ type: 'log', level: 'info', msg: 'warm-up', data: { provider, shapes: plan.map((s) => s.join('x')), ms: Math.round(warmupMs) } });

  post({ type: 'ready', io: { inputName: io.input, inputType, inputShape: meta.shape, channels, outputName: io.output, provider, loadMs, warmupMs, metadata: io.metadata } });

  // Runs started and not yet answered: close waits for them, since the native run begins in a
  // setImmediate after `session.run` returns its promise, and releasing the session under it aborts.
  const inflight = new Set<Promise<unknown>>();
  port.on('message', (req: MainMessage) => {
    if (req.type === 'close') {
      void Promise.allSettled([...inflight]).then(() => session.release()).finally(() => process.exit(0));
      return;
    }
    const t = performance.now();
    const fetch = req.fetch.map((f) => (f === 'image' ? IMAGE_OUTPUT : io.output));
    if (io.finiteCheck) fetch.push(NONFINITE_OUTPUT);
    const done = run(new Float32Array(req.data), req.dims, fetch).then(
      (res) => {
        const flags = io.finiteCheck ? (res[NONFINITE_OUTPUT]!.data as Float32Array) : [];
        const outputs: RunOutputs = { nonFinite: [...flags.keys()].filter((i) => flags[i] !== 0) };
        const transfer: ArrayBuffer[] = [];
        if (req.fetch.includes('image')) transfer.push((outputs.image = owned(res[IMAGE_OUTPUT]!.data as Uint8Array)));
        if (req.fetch.includes('sample')) transfer.push((outputs.sample = owned(toFloat32(res[io.output]!))));
        post({ type: 'result', id: req.id, outputs, ms: performance.now() - t }, transfer);
      },
      (e: unknown) => post({ type: 'error', id: req.id, message: (e as Error).message }),
    );
    inflight.add(done);
    void done.finally(() => inflight.delete(done));
  });
}

main().catch((e: unknown) => post({ type: 'failed', message: (e as Error).message }));
