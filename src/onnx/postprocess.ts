// Diffusers' image postprocess as graph nodes appended to a decoder:
// image = round(clamp(sample / 2 + 0.5, 0, 1) * 255) as uint8, NCHW → NHWC.
// ONNX Runtime then returns finished pixels (a quarter of float32's bytes, no JavaScript
// pixel loop); the float `sample` output stays available for output_type=pt. ONNX Runtime runs
// every node whatever the fetches, so these nodes are paid on every run: they are written as
// three passes over the float sample instead of eight. QuantizeLinear computes
// saturate(round((sample + 1) / (2/255))) into uint8 — the clamp, scale and round-half-to-even of
// diffusers' formula in one vectorized pass (the two differ by one level at most, where float
// rounding moves a value across a .5 tie). A second output, `nonfinite`, is per sample s − s for
// s = the sum of the sample: 0 when every value is finite, NaN when any is NaN or ±Inf (or the sum
// overflows, |values| ~ 1e34) — which the uint8 conversion would otherwise turn into a silent black
// image.
import { DataType, GraphBuilder, attr, decodeModel, encodeModel, onnx, type ModelProto } from './graph.js';

export const IMAGE_OUTPUT = 'image';
export const NONFINITE_OUTPUT = 'nonfinite';
const MIN_OPSET = 10; // QuantizeLinear

export interface DecoderIo {
  input: string;
  output: string;
  /** The file's metadata_props (name, scaling_factor, ...). */
  metadata: Record<string, string>;
  /** Whether the model has the `nonfinite` output (not when it came with its own `image`). */
  finiteCheck: boolean;
}

/**
 * Returns the model with an extra uint8 NHWC output `image`; a model that has one is returned as
 * is. `model` is `modelBytes` decoded, when the caller has it already.
 */
export function withPostprocess(modelBytes: Uint8Array, model: ModelProto = decodeModel(modelBytes)): { bytes: Uint8Array; io: DecoderIo } {
  // Decoded messages always carry their repeated fields as arrays.
  const graph = model.graph as InstanceType<typeof onnx.GraphProto> | null | undefined;
  if (!graph || graph.input.length === 0 || graph.output.length === 0) {
    throw new Error('the ONNX file has no graph inputs or outputs');
  }
  const initNames = new Set(graph.initializer.map((t) => t.name));
  const input = graph.input.find((i) => !initNames.has(i.name ?? ''))?.name ?? graph.input[0]!.name!;
  const metadata = Object.fromEntries(model.metadataProps.map((p) => [p.key ?? '', p.value ?? '']));
  if (graph.output.some((o) => o.name === IMAGE_OUTPUT)) {
    const output = graph.output.find((o) => o.name !== IMAGE_OUTPUT)?.name ?? IMAGE_OUTPUT;
    return { bytes: modelBytes, io: { input, output, metadata, finiteCheck: graph.output.some((o) => o.name === NONFINITE_OUTPUT) } };
  }
  const sample = graph.output[0]!;
  const opset = model.opsetImport.find((o) => !o.domain || o.domain === 'ai.onnx')?.version;
  if (opset === undefined || Number(opset) < MIN_OPSET) {
    throw new Error(`the decoder uses opset ${String(opset)}; in-graph postprocessing needs opset ${MIN_OPSET} or later (re-export it with a newer opset)`);
  }
  const g = new GraphBuilder('postprocess', 'pp_');
  let x = sample.name!;
  if (sample.type?.tensorType?.elemType !== DataType.FLOAT) x = g.node('Cast', [x], { to: attr.i(DataType.FLOAT) });
  // ReduceSum takes its axes as an attribute before opset 13 and as an input since.
  const sum = Number(opset) >= 13
    ? g.node('ReduceSum', [x, g.ints('axes', [1, 2, 3])], { keepdims: attr.i(0) })
    : g.node('ReduceSum', [x], { axes: attr.ints([1, 2, 3]), keepdims: attr.i(0) });
  g.node('Sub', [sum, sum], {}, NONFINITE_OUTPUT);
  x = g.node('Add', [x, g.scalar('one', 1)]);
  x = g.node('QuantizeLinear', [x, g.scalar('step', 2 / 255), g.constant('zero_point', 'uint8', [], new Uint8Array([0]))]);
  g.node('Transpose', [x], { perm: attr.ints([0, 2, 3, 1]) }, IMAGE_OUTPUT);

  const dims = sample.type?.tensorType?.shape?.dim ?? [];
  const nhwc = dims.length === 4 ? [dims[0]!, dims[2]!, dims[3]!, dims[1]!] : [];
  graph.node.push(...g.nodes);
  graph.initializer.push(...g.initializers);
  graph.output.push(onnx.ValueInfoProto.create({
    name: IMAGE_OUTPUT,
    type: { tensorType: { elemType: DataType.UINT8, shape: nhwc.length ? { dim: nhwc } : null } },
  }), onnx.ValueInfoProto.create({
    name: NONFINITE_OUTPUT,
    type: { tensorType: { elemType: DataType.FLOAT, shape: dims.length ? { dim: [dims[0]!] } : null } },
  }));
  return { bytes: encodeModel(model), io: { input, output: sample.name!, metadata, finiteCheck: true } };
}
