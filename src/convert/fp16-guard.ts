// The --fp16 guard: before a float16 model is kept, check that float16 can hold its activations.
// Some VAEs cannot (the original SDXL VAE's decoder activations exceed 65504, float16's largest
// value; madebyollin/sdxl-vae-fp16-fix was fine-tuned so they do not). Two checks, since each
// misses what the other sees:
//  1. activation ranges: the float16 graph run in float32 (every Cast to float16 made a Cast to
//     float32), with max |x| of every tensor the float16 model holds in float16 as an extra
//     scalar output. ONNX Runtime on CPU may run parts of a float16 graph in float32, so running
//     the float16 model on CPU alone can miss an overflow that a GPU hits; this check does not.
//  2. the float16 model itself against that float32 run: no NaN/Inf, PSNR at least 40 dB.
// Both run on seeded latents at a small size (1×C×16×16), so the guard costs a few runs.
import { rm } from 'node:fs/promises';
import '../inference/telemetry.cjs'; // ONNX Runtime telemetry off before the guard loads it
import { DataType, GraphBuilder, attr, onnx, writeModelFile, type NodeProto } from '../onnx/graph.js';
import { halfBitsToFloat32 } from '../tensor/dtype.js';
import { INPUT_NAME, OUTPUT_NAME, type WeightRef } from './vae-graph.js';

const FLOAT16_MAX = 65504;
/** Activations above this refuse the conversion: half of float16's range, a margin for other latents. */
export const FP16_ACTIVATION_LIMIT = FLOAT16_MAX / 2;
export const FP16_MIN_PSNR = 40;
const PROBE_SIDE = 16;
const PROBE_SAMPLES = 1;
const SEED = 0x5eed;

export interface Fp16GuardInput {
  /** The float16 graph as built: float32 input and output, float16 weights. */
  graph: GraphBuilder;
  weights: WeightRef[];
  readFloat32(name: string): Promise<Float32Array>;
  /** The float16 model already written (under its temporary name). */
  fp16Model: string;
  /** Where to write the float32 probe model; removed before returning. */
  probePath: string;
  latentChannels: number;
  /** The model's factors: the probe latents are N(0, 1) diffusion latents mapped to decoder input. */
  scalingFactor: number;
  shiftFactor: number;
}

export interface Fp16Report {
  /** Largest |x| over the tensors the float16 model holds in float16, from the float32 run. */
  maxActivation: number;
  /** Where: the node output, its op, and the last weight before it. */
  at: string;
  /** The float16 model's output against the float32 run's, data range 2 ([-1, 1]). */
  psnr: number;
  seconds: number;
}

/** Thrown when the float16 model would not be faithful; the message says why and what to do. */
export class Fp16RefusedError extends Error {}

const ADVICE = 'Convert without --fp16 (float32 decodes correctly), or convert a VAE fixed for float16 ' +
  '(for SDXL: madebyollin/sdxl-vae-fp16-fix; the original SDXL VAE overflows in float16).';

/** Runs the checks; throws Fp16RefusedError when the float16 model must not be kept. */
export async function checkFp16(input: Fp16GuardInput): Promise<Fp16Report> {
  const started = performance.now();
  const ort = await import('onnxruntime-node');
  const { model, lazy, probes } = probeModel(input);
  const latents = seededLatents(input);
  const feeds = { [INPUT_NAME]: new ort.Tensor('float32', latents, [PROBE_SAMPLES, input.latentChannels, PROBE_SIDE, PROBE_SIDE]) };
  let reference: Float32Array;
  let maxActivation = 0;
  let at = '';
  let first: { value: number; where: string } | undefined; // the first tensor over the limit points at the cause
  try {
    await writeModelFile(input.probePath, model, lazy);
    const session = await ort.InferenceSession.create(input.probePath, { graphOptimizationLevel: 'basic' });
    try {
      const out = await session.run(feeds);
      reference = out[OUTPUT_NAME]!.data as Float32Array;
      for (const p of probes) { // in node order
        const raw = (out[p.output]!.data as Float32Array)[0]!;
        const v = Number.isNaN(raw) ? Infinity : raw; // NaN counts as the largest
        if (v > maxActivation) {
          maxActivation = v;
          at = p.where;
        }
        if (v > FP16_ACTIVATION_LIMIT) first ??= { value: v, where: p.where };
      }
    } finally {
      await session.release();
    }
  } finally {
    await rm(input.probePath, { force: true });
  }
  if (first) {
    throw new Fp16RefusedError(
      `--fp16 refused: on seeded latents the decoder's activations reach ${first.value.toExponential(3)} at ${first.where}` +
      `${maxActivation > first.value ? ` (and up to ${maxActivation.toExponential(3)} further on)` : ''}, beyond what float16 holds safely (max ${FLOAT16_MAX}; ` +
      `the guard allows ${FP16_ACTIVATION_LIMIT}): a float16 model would overflow to Inf/NaN on a GPU. ${ADVICE}`,
    );
  }
  const session = await ort.InferenceSession.create(input.fp16Model);
  let half: Float32Array;
  try {
    half = (await session.run(feeds))[OUTPUT_NAME]!.data as Float32Array;
  } finally {
    await session.release();
  }
  let bad = 0;
  let se = 0;
  for (let i = 0; i < half.length; i++) {
    if (!Number.isFinite(half[i]!)) bad++;
    else se += (half[i]! - reference[i]!) ** 2;
  }
  if (bad > 0) {
    throw new Fp16RefusedError(`--fp16 refused: the float16 model's output has ${bad} NaN/Inf values of ${half.length} on seeded latents (float16 overflows). ${ADVICE}`);
  }
  const psnr = se === 0 ? Infinity : 10 * Math.log10(4 / (se / half.length));
  if (!(psnr >= FP16_MIN_PSNR)) {
    throw new Fp16RefusedError(
      `--fp16 refused: the float16 model's output is ${psnr.toFixed(1)} dB PSNR from float32's on seeded latents, ` +
      `below the ${FP16_MIN_PSNR} dB the guard requires (float16 loses too much precision in this decoder). ${ADVICE}`,
    );
  }
  return { maxActivation, at, psnr, seconds: (performance.now() - started) / 1000 };
}

interface Probe {
  output: string;
  where: string;
}

/**
 * The float16 graph rewritten to compute in float32, with ReduceMax(|t|) as a scalar output for
 * every tensor t the float16 model holds in float16. Which tensors those are follows from a
 * forward pass over the nodes (built in topological order): Cast sets the type, Shape gives
 * int64, and every other op here keeps the type of its first input.
 */
function probeModel(input: Fp16GuardInput) {
  const src = input.graph;
  const g = new GraphBuilder(`${src.name}_fp16_probe`, 'probe/');
  const types = new Map<string, number>([[INPUT_NAME, DataType.FLOAT]]);
  for (const t of src.initializers) types.set(t.name!, t.dataType!);
  const weightNames = new Set(input.weights.map((w) => w.name));
  for (const w of weightNames) types.set(w, DataType.FLOAT16);
  const probes: Probe[] = [];
  let lastWeight: string | undefined;
  for (const node of src.nodes) {
    const op = node.opType!;
    const to = node.attribute?.find((a) => a.name === 'to');
    const type = op === 'Cast' ? Number(to!.i) : op === 'Shape' ? DataType.INT64 : types.get(node.input![0]!) ?? DataType.FLOAT;
    const out = node.output![0]!;
    types.set(out, type);
    lastWeight = node.input!.find((i) => weightNames.has(i)) ?? lastWeight;
    g.nodes.push(op === 'Cast' && type === DataType.FLOAT16 ? castToFloat32(node) : node);
    if (type !== DataType.FLOAT16) continue;
    const probe = g.node('ReduceMax', [g.node('Abs', [out])], { keepdims: attr.i(0) }, `absmax:${out}`);
    g.output(probe, 'float32', []);
    probes.push({ output: probe, where: `${op} output ${out} (${lastWeight ? `after weight ${lastWeight}` : 'before any weight'})` });
  }
  for (const t of src.initializers) {
    g.initializers.push(t.dataType === DataType.FLOAT16
      ? { ...t, dataType: DataType.FLOAT, rawData: new Uint8Array(halfBitsToFloat32(toUint16(t.rawData!)).buffer) }
      : t);
  }
  g.inputs.push(...src.inputs);
  g.outputs.unshift(...src.outputs);
  const lazy = input.weights.map((w) => ({ name: w.name, type: 'float32' as const, dims: w.dims, load: () => input.readFloat32(w.name) }));
  return { model: g.model({ doc: 'latent-decoder float16 guard probe (temporary)' }), lazy, probes };
}

function castToFloat32(node: NodeProto): NodeProto {
  return { ...node, attribute: [{ name: 'to', type: onnx.AttributeProto.AttributeType.INT, i: DataType.FLOAT }] };
}

function toUint16(bytes: Uint8Array): Uint16Array {
  const copy = bytes.slice(); // aligned
  return new Uint16Array(copy.buffer, 0, copy.byteLength / 2);
}

/** N(0, 1) diffusion latents (mulberry32 + Box–Muller, fixed seed) mapped to the decoder's input. */
function seededLatents(input: Fp16GuardInput): Float32Array {
  let s = SEED;
  const uniform = (): number => {
    s = (s + 0x6d2b79f5) | 0;
    let t = Math.imul(s ^ (s >>> 15), 1 | s);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return (((t ^ (t >>> 14)) >>> 0) + 1) / 4294967297; // (0, 1): log never sees 0
  };
  const out = new Float32Array(PROBE_SAMPLES * input.latentChannels * PROBE_SIDE * PROBE_SIDE);
  for (let i = 0; i < out.length; i++) {
    const n = Math.sqrt(-2 * Math.log(uniform())) * Math.cos(2 * Math.PI * uniform());
    out[i] = n / input.scalingFactor + input.shiftFactor;
  }
  return out;
}
