// What the service needs to know of an encoder graph (encoder.onnx as convert writes it): its
// input, its outputs (the posterior mean, and std for KL encoders) and its metadata. Encoders run
// as they are: no postprocess is appended.
import { onnx, type ModelProto } from './graph.js';

export const ENCODER_MEAN = 'latent_mean';
export const ENCODER_STD = 'latent_std';

export interface EncoderIo {
  input: string;
  metadata: Record<string, string>;
  latentChannels: number;
  hasStd: boolean;
}

/** Reads an encoder's interface (the decoded file); throws naming what is missing when the graph is not one of ours. */
export function encoderIo(model: ModelProto): EncoderIo {
  const graph = model.graph as InstanceType<typeof onnx.GraphProto> | null | undefined;
  if (!graph || graph.input.length === 0) throw new Error('the encoder ONNX file has no graph inputs');
  const initNames = new Set(graph.initializer.map((t) => t.name));
  const input = graph.input.find((i) => !initNames.has(i.name ?? ''))?.name ?? graph.input[0]!.name!;
  const mean = graph.output.find((o) => o.name === ENCODER_MEAN);
  if (!mean) throw new Error(`the encoder has no output ${ENCODER_MEAN} (outputs: ${graph.output.map((o) => o.name).join(', ')}); convert it with latent-decoder convert`);
  const c = mean.type?.tensorType?.shape?.dim?.[1]?.dimValue;
  if (c === undefined || c === null || Number(c) < 1) throw new Error(`the encoder's output ${ENCODER_MEAN} has no fixed channel count`);
  return {
    input,
    metadata: Object.fromEntries(model.metadataProps.map((p) => [p.key ?? '', p.value ?? ''])),
    latentChannels: Number(c),
    hasStd: graph.output.some((o) => o.name === ENCODER_STD),
  };
}
