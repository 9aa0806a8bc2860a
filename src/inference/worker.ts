// The ONNX Runtime session, in a worker thread: InferenceSession.run is a synchronous native call
// that would block the event loop for the whole inference.
import { parentPort, workerData } from 'node:worker_threads';
import * as ort from 'onnxruntime-node';
import { MAX_MODEL_BYTES } from '../config.js';
import { readRegularFile } from '../files.js';
import { decodeModel } from '../onnx/graph.js';
import { describeNonFinite, nonFiniteWeights } from '../onnx/finite.js';
import { halfBitsToFloat32, toFloat16Bits } from '../tensor/dtype.js';
import { ENCODER_MEAN, ENCODER_STD, encoderIo } from '../onnx/encoder-io.js';
import { IMAGE_OUTPUT, NONFINITE_OUTPUT, withPostprocess } from '../onnx/postprocess.js';
import type { MainMessage, ModelIo, OutputName, RunOutputs, WorkerInit, WorkerMessage } from './protocol.js';
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
        // ORT's intra-op threads spin-wait after each parallel section by default: on a CPU shared
        // with the event loop and sharp that burns the cores the rest needs, and 2× the CPU per
        // image on a cheap model (scripts/arena.ts, bench/cpu-side.ts). Forwarded by the binding
        // as the session config entry session.intra_op.allow_spinning.
        extra: { session: { intra_op: { allow_spinning: init.allowSpinning ? '1' : '0' } } },
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

/** A model that cannot serve whatever the request: the registry marks it unavailable. */
class DefectError extends Error {}

function toFloat32(t: ort.Tensor): Float32Array {
  return t.type === 'float32' ? (t.data as Float32Array) : halfBitsToFloat32(t.data as Uint16Array);
}

async function main(): Promise<void> {
  const t0 = performance.now();
  const original = init.modelBytes ?? (await readRegularFile(init.modelPath!, init.maxModelBytes ?? MAX_MODEL_BYTES, 'MAX_MODEL_BYTES'));
  const model = decodeModel(original);
  const broken = nonFiniteWeights(model);
  if (broken.length > 0) throw new DefectError(describeNonFinite(broken));
  // An encoder runs as it is; a decoder gets the in-graph postprocess (uint8 image, finite check).
  const enc = init.direction === 'encode' ? encoderIo(model) : undefined;
  const { bytes, io } = enc
    ? { bytes: original, io: { input: enc.input, output: ENCODER_MEAN, metadata: enc.metadata, finiteCheck: false } }
    : withPostprocess(original, model);
  const names: Record<OutputName, string> = { image: IMAGE_OUTPUT, sample: io.output, mean: ENCODER_MEAN, std: ENCODER_STD };
  // warm-up sizes are latent sizes: an encoder takes images 8× their side
  const up = enc ? 8 : 1;
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
    const dims = meta.shape.map((d, i) => (typeof d === 'number' ? d : [n, channels, h * up, w * up][i]!));
    const fetch = enc ? [ENCODER_MEAN] : [IMAGE_OUTPUT, io.output, ...(io.finiteCheck ? [NONFINITE_OUTPUT] : [])];
    const res = await run(new Float32Array(dims.reduce((a, b) => a * b, 1)), dims, fetch);
    // zero latents decode to finite pixels in any working decoder: NaN here is the model's fault
    if (io.finiteCheck && (res[NONFINITE_OUTPUT]!.data as Float32Array).some((v) => v !== 0)) {
      throw new DefectError(`warm-up on zero latents [${dims.join(', ')}] produced NaN or infinite values: the model's weights or its float16 range are broken`);
    }
  }
  const warmupMs = performance.now() - w0;
  post({ type: 'log', level: 'info', msg: 'warm-up', data: { provider, shapes: plan.map((s) => s.join('x')), ms: Math.round(warmupMs) } });

  post({ type: 'ready', io: { inputName: io.input, inputType, inputShape: meta.shape, channels, outputName: io.output, provider, loadMs, warmupMs, metadata: io.metadata,
    ...(enc ? { latentChannels: enc.latentChannels, hasStd: enc.hasStd } : {}) } });

  // Runs started and not yet answered: close waits for them, since the native run begins in a
  // setImmediate after `session.run` returns its promise, and releasing the session under it aborts.
  const inflight = new Set<Promise<unknown>>();
  port.on('message', (req: MainMessage) => {
    if (req.type === 'close') {
      void Promise.allSettled([...inflight]).then(() => session.release()).finally(() => process.exit(0));
      return;
    }
    const t = performance.now();
    const fetch = req.fetch.map((f) => names[f]);
    if (io.finiteCheck) fetch.push(NONFINITE_OUTPUT);
    const done = run(new Float32Array(req.data), req.dims, fetch).then(
      (res) => {
        const flags = io.finiteCheck ? (res[NONFINITE_OUTPUT]!.data as Float32Array) : [];
        const outputs: RunOutputs = { nonFinite: [...flags.keys()].filter((i) => flags[i] !== 0) };
        const transfer: ArrayBuffer[] = [];
        for (const f of req.fetch) {
          const t = res[names[f]]!;
          transfer.push((outputs[f] = owned(f === 'image' ? (t.data as Uint8Array) : toFloat32(t))));
        }
        post({ type: 'result', id: req.id, outputs, ms: performance.now() - t }, transfer);
      },
      (e: unknown) => post({ type: 'error', id: req.id, message: (e as Error).message }),
    );
    inflight.add(done);
    void done.finally(() => inflight.delete(done));
  });
}

main().catch((e: unknown) => post({ type: 'failed', message: (e as Error).message, ...(e instanceof DefectError ? { defect: true } : {}) }));
