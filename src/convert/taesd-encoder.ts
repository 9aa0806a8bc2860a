// The TAESD encoder (madebyollin/taesd `Encoder`; diffusers' EncoderTiny) — its two published key
// layouts and its ONNX graph. Unlike the decoder's, the original encoder's nn.Sequential has no
// leading weightless layer, so original index N is diffusers' `encoder.layers.N`: no shift.
// The graph takes the image in [-1, 1] like the KL encoder's and maps it to [0, 1] itself, as
// EncoderTiny.forward does (`x.add(1).div(2)`); its output is the latents as the diffusion model
// sees them (AutoencoderTiny.encode applies no scaling).
import { DataType, GraphBuilder, attr, type ElemType } from '../onnx/graph.js';
import { ENCODER_INPUT, MEAN_OUTPUT } from './encoder-graph.js';
import type { SafetensorsFile } from './safetensors.js';
import type { DecoderGraph, WeightRef } from './vae-graph.js';
import { LayoutWeights, owning } from './weights.js';

export type TaesdLayout = 'original' | 'diffusers';

export interface TaesdEncoderConfig {
  latentChannels: number;
  ch: number;
}

// conv_in; 3 stages of (stride-2 conv without bias, 3 Blocks); conv_out. Index 1 is the first Block.
const CONV_IN = 0;
const FIRST_BLOCK = 1;
const STAGES = [
  { conv: 2, blocks: [3, 4, 5] },
  { conv: 6, blocks: [7, 8, 9] },
  { conv: 10, blocks: [11, 12, 13] },
] as const;
const CONV_OUT = 14;
const DIFFUSERS_PREFIX = 'encoder.layers.';

export function taesdEncoderKey(canonical: string, layout: TaesdLayout): string {
  return layout === 'original' ? canonical : `${DIFFUSERS_PREFIX}${canonical}`;
}

/**
 * The layout of a TAESD encoder checkpoint, or undefined. The original layout must have an RGB
 * input conv at index 0 (a TAESD decoder has no `0.weight`) and the output conv at 14.
 */
export function detectTaesdEncoder(file: Pick<SafetensorsFile, 'info'>): TaesdLayout | undefined {
  for (const layout of ['original', 'diffusers'] as const) {
    const convIn = file.info(taesdEncoderKey(`${CONV_IN}.weight`, layout));
    if (convIn?.shape.length === 4 && convIn.shape[1] === 3 && file.info(taesdEncoderKey(`${CONV_OUT}.weight`, layout))
      && file.info(taesdEncoderKey(`${FIRST_BLOCK}.conv.0.weight`, layout))) return layout;
  }
  return undefined;
}

export class TaesdEncoderWeights extends LayoutWeights {
  private constructor(file: SafetensorsFile, readonly layout: TaesdLayout, readonly config: TaesdEncoderConfig) {
    super(file);
  }

  /** Takes ownership of `file` (closes it on failure); throws unless it holds a TAESD encoder. */
  static fromFile(file: SafetensorsFile): Promise<TaesdEncoderWeights> {
    return owning(file, () => {
      const layout = detectTaesdEncoder(file);
      if (!layout) throw new Error(`${file.path} holds no TAESD encoder: no tensors 0.weight (3 input channels) and 14.weight, or ${DIFFUSERS_PREFIX}0.weight and ${DIFFUSERS_PREFIX}14.weight`);
      const out = file.info(taesdEncoderKey(`${CONV_OUT}.weight`, layout))!.shape;
      return new TaesdEncoderWeights(file, layout, { latentChannels: out[0]!, ch: out[1]! });
    });
  }

  override key(canonical: string): string {
    return taesdEncoderKey(canonical, this.layout);
  }
}

/** The TAESD encoder graph: [N, 3, H, W] in [-1, 1] → latents [N, C, H/8, W/8] (output `latent_mean`). */
export function buildTaesdEncoderGraph(cfg: TaesdEncoderConfig, type: ElemType): DecoderGraph {
  const g = new GraphBuilder('taesd_encoder');
  const weights: WeightRef[] = [];
  const c = cfg.ch;
  const fp16 = type === 'float16';
  const weight = (name: string, shape: number[]): string => {
    weights.push({ name, shape, dims: shape });
    return name;
  };
  const conv = (x: string, i: number | string, cin: number, cout: number, stride = 1, bias = true): string =>
    g.node('Conv', [x, weight(`${i}.weight`, [cout, cin, 3, 3]), ...(bias ? [weight(`${i}.bias`, [cout])] : [])], {
      kernel_shape: attr.ints([3, 3]),
      pads: attr.ints([1, 1, 1, 1]),
      strides: attr.ints([stride, stride]),
    });
  const relu = (x: string): string => g.node('Relu', [x]);
  const block = (x: string, i: number): string => {
    const h = conv(relu(conv(relu(conv(x, `${i}.conv.0`, c, c)), `${i}.conv.2`, c, c)), `${i}.conv.4`, c, c);
    return relu(g.node('Add', [h, x]));
  };
  g.input(ENCODER_INPUT, 'float32', ['batch', 3, 'height', 'width']);
  let x = g.node('Mul', [g.node('Add', [ENCODER_INPUT, g.scalar('one', 1)]), g.scalar('half', 0.5)]);
  if (fp16) x = g.node('Cast', [x], { to: attr.i(DataType.FLOAT16) });
  x = block(conv(x, CONV_IN, 3, c), FIRST_BLOCK);
  for (const stage of STAGES) {
    x = conv(x, stage.conv, c, c, 2, false);
    for (const i of stage.blocks) x = block(x, i);
  }
  x = conv(x, CONV_OUT, c, cfg.latentChannels);
  if (fp16) x = g.node('Cast', [x], { to: attr.i(DataType.FLOAT) });
  g.node('Identity', [x], {}, MEAN_OUTPUT);
  g.output(MEAN_OUTPUT, 'float32', ['batch', cfg.latentChannels, 'latent_height', 'latent_width']);
  return { graph: g, weights };
}
