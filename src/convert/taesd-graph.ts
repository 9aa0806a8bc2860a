// The TAESD decoder as an ONNX opset-17 graph, with the same input and output names and the same
// output convention as the KL decoder (diffusers' AutoencoderTiny: 2·x − 1 of the raw output,
// about [-1, 1]), so the service's in-graph postprocess and everything else treat it alike.
// Like vae-graph.ts it returns the initializers it references; convert.ts streams them in.
import { DataType, GraphBuilder, attr, type ElemType } from '../onnx/graph.js';
import { INPUT_NAME, OUTPUT_NAME, type DecoderGraph, type WeightRef } from './vae-graph.js';
import { TAESD_CONV_IN, TAESD_CONV_OUT, TAESD_LAST_BLOCK, TAESD_STAGES, type TaesdConfig } from './taesd-weights.js';

export function buildTaesdGraph(cfg: TaesdConfig, type: ElemType): DecoderGraph {
  const g = new GraphBuilder('taesd_decoder');
  const weights: WeightRef[] = [];
  const fp16 = type === 'float16';
  const c = cfg.ch;
  const weight = (name: string, shape: number[]): string => {
    weights.push({ name, shape, dims: shape });
    return name;
  };
  const conv = (x: string, i: number | string, cin: number, cout: number, bias = true): string =>
    g.node('Conv', [x, weight(`${i}.weight`, [cout, cin, 3, 3]), ...(bias ? [weight(`${i}.bias`, [cout])] : [])], {
      kernel_shape: attr.ints([3, 3]),
      pads: attr.ints([1, 1, 1, 1]),
    });
  const relu = (x: string): string => g.node('Relu', [x]);
  // Block: ReLU(conv(ReLU(conv(ReLU(conv(x))))) + x); every Block in the decoder is c → c, so the skip is the identity.
  const block = (x: string, i: number): string => {
    const h = conv(relu(conv(relu(conv(x, `${i}.conv.0`, c, c)), `${i}.conv.2`, c, c)), `${i}.conv.4`, c, c);
    return relu(g.node('Add', [h, x]));
  };

  g.input(INPUT_NAME, 'float32', ['batch', cfg.latentChannels, 'height', 'width']);
  // tanh(x / 3) * 3 in float32 before any cast: it bounds the latents to ±3, so float16 sees no
  // more than that whatever the input.
  let x = g.node('Mul', [g.node('Tanh', [g.node('Div', [INPUT_NAME, g.scalar('three', 3)])]), 'three']);
  if (fp16) x = g.node('Cast', [x], { to: attr.i(DataType.FLOAT16) });
  x = relu(conv(x, TAESD_CONV_IN, cfg.latentChannels, c));
  const scales = g.constant('upsample_scales', 'float32', [4], new Float32Array([1, 1, 2, 2]));
  for (const stage of TAESD_STAGES) {
    for (const i of stage.blocks) x = block(x, i);
    // nn.Upsample(scale_factor=2) is nearest; asymmetric + floor is torch's nearest
    x = g.node('Resize', [x, '', scales], {
      mode: attr.s('nearest'),
      coordinate_transformation_mode: attr.s('asymmetric'),
      nearest_mode: attr.s('floor'),
    });
    x = conv(x, stage.conv, c, c, false);
  }
  x = conv(block(x, TAESD_LAST_BLOCK), TAESD_CONV_OUT, c, 3);
  if (fp16) x = g.node('Cast', [x], { to: attr.i(DataType.FLOAT) });
  // AutoencoderTiny's convention: the raw output (about [0, 1]) as 2·x − 1
  g.node('Sub', [g.node('Mul', [x, g.scalar('two', 2)]), g.scalar('one', 1)], {}, OUTPUT_NAME);
  g.output(OUTPUT_NAME, 'float32', ['batch', 3, 'height_out', 'width_out']);
  return { graph: g, weights };
}
