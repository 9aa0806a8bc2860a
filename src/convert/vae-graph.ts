// The SD VAE decoder (LDM `Decoder` with post_quant_conv) as an ONNX opset-17 graph with
// optimum's input and output names. Weights are not embedded here: the builder returns the list
// of initializers the graph references, and convert.ts streams them from the checkpoint.
import { DataType, GraphBuilder, attr, type ElemType } from '../onnx/graph.js';
import type { VaeConfig } from './vae-weights.js';

export const INPUT_NAME = 'latent_sample';
export const OUTPUT_NAME = 'sample';
export const GROUPS = 32;
const NORM_EPS = 1e-6;

export interface WeightRef {
  /** Canonical (unprefixed LDM) name; also the initializer's name in the graph. */
  name: string;
  /** The shape the checkpoint must hold. */
  shape: number[];
  /** The shape in the graph: GroupNorm's affine parameters are [C, 1, 1] to broadcast over NCHW. */
  dims: number[];
}

export interface DecoderGraph {
  graph: GraphBuilder;
  weights: WeightRef[];
}

/** The KL VAE's building blocks (GroupNorm, resnets, attention) over canonical LDM weight names; the encoder graph reuses them. */
export class Builder {
  readonly g: GraphBuilder;
  readonly weights: WeightRef[] = [];
  private readonly fp16: boolean;
  private readonly normShape: string;
  private readonly normScale: string;
  private readonly normBias: string;

  constructor(readonly type: ElemType, graphName = 'vae_decoder') {
    this.g = new GraphBuilder(graphName);
    this.fp16 = type === 'float16';
    this.normShape = this.g.ints('group_shape', [0, GROUPS, -1]);
    this.normScale = this.g.constant('group_ones', 'float32', [GROUPS], new Float32Array(GROUPS).fill(1));
    this.normBias = this.g.constant('group_zeros', 'float32', [GROUPS], new Float32Array(GROUPS));
  }

  weight(name: string, shape: number[], dims = shape): string {
    this.weights.push({ name, shape, dims });
    return name;
  }

  cast(x: string, to: 'float32' | 'float16'): string {
    return this.g.node('Cast', [x], { to: attr.i(to === 'float32' ? DataType.FLOAT : DataType.FLOAT16) });
  }

  /** Back to the compute type after a float32 island (a no-op graph-wise in float32 mode). */
  toCompute(x: string): string {
    return this.fp16 ? this.cast(x, 'float16') : x;
  }

  toFloat32(x: string): string {
    return this.fp16 ? this.cast(x, 'float32') : x;
  }

  conv(x: string, name: string, cin: number, cout: number, k: number): string {
    const p = (k - 1) / 2;
    return this.g.node('Conv', [x, this.weight(`${name}.weight`, [cout, cin, k, k]), this.weight(`${name}.bias`, [cout])], {
      kernel_shape: attr.ints([k, k]),
      pads: attr.ints([p, p, p, p]),
    });
  }

  /**
   * GroupNorm(32) in opset 17, which has no GroupNormalization: InstanceNormalization over
   * [N, 32, C/32·H·W] computes exactly the per-group statistics. In float16 the statistics are
   * computed in float32, since sums of squares over a whole feature map overflow float16.
   */
  groupNorm(x: string, name: string, c: number): string {
    const grouped = this.g.node('Reshape', [this.toFloat32(x), this.normShape]);
    const normed = this.g.node('InstanceNormalization', [grouped, this.normScale, this.normBias], { epsilon: attr.f(NORM_EPS) });
    const back = this.toCompute(this.g.node('Reshape', [normed, this.g.node('Shape', [x])]));
    const scaled = this.g.node('Mul', [back, this.weight(`${name}.weight`, [c], [c, 1, 1])]);
    return this.g.node('Add', [scaled, this.weight(`${name}.bias`, [c], [c, 1, 1])]);
  }

  silu(x: string): string {
    return this.g.node('Mul', [x, this.g.node('Sigmoid', [x])]);
  }

  resnet(x: string, name: string, cin: number, cout: number): string {
    let h = this.conv(this.silu(this.groupNorm(x, `${name}.norm1`, cin)), `${name}.conv1`, cin, cout, 3);
    h = this.conv(this.silu(this.groupNorm(h, `${name}.norm2`, cout)), `${name}.conv2`, cout, cout, 3);
    const skip = cin === cout ? x : this.conv(x, `${name}.nin_shortcut`, cin, cout, 1);
    return this.g.node('Add', [skip, h]);
  }

  /** Single-head self-attention over the H·W positions; scores and softmax in float32. */
  attention(x: string, name: string, c: number): string {
    const h = this.groupNorm(x, `${name}.norm`, c);
    const flat = this.g.ints(`${name}.flat_shape`, [0, c, -1]);
    const seq = (which: string) => this.g.node('Reshape', [this.conv(h, `${name}.${which}`, c, c, 1), flat]); // [N, C, HW]
    const transpose = (t: string) => this.g.node('Transpose', [t], { perm: attr.ints([0, 2, 1]) });
    const q = this.toFloat32(transpose(seq('q'))); // [N, HW, C]
    const k = this.toFloat32(seq('k'));
    const v = transpose(seq('v')); // [N, HW, C]
    const scores = this.g.node('Mul', [this.g.node('MatMul', [q, k]), this.g.scalar(`${name}.scale`, 1 / Math.sqrt(c))]);
    const probs = this.toCompute(this.g.node('Softmax', [scores], { axis: attr.i(-1) }));
    // probs · vᵀ gives [N, HW, C]; transposing that is cheaper than transposing the HW×HW matrix
    const out = transpose(this.g.node('MatMul', [probs, v]));
    const spatial = this.g.node('Reshape', [out, this.g.node('Shape', [x])]);
    return this.g.node('Add', [x, this.conv(spatial, `${name}.proj_out`, c, c, 1)]);
  }

  upsample(x: string, name: string, c: number): string {
    const scales = this.g.constant(`${name}.scales`, 'float32', [4], new Float32Array([1, 1, 2, 2]));
    // asymmetric + floor is torch's F.interpolate(mode='nearest')
    const up = this.g.node('Resize', [x, '', scales], {
      mode: attr.s('nearest'),
      coordinate_transformation_mode: attr.s('asymmetric'),
      nearest_mode: attr.s('floor'),
    });
    return this.conv(up, `${name}.conv`, c, c, 3);
  }
}

export function buildDecoderGraph(cfg: VaeConfig, type: ElemType): DecoderGraph {
  const channels = cfg.chMult.map((m) => cfg.ch * m);
  if (channels.some((c) => !Number.isInteger(c) || c % GROUPS !== 0)) {
    throw new Error(`unsupported VAE decoder: level channels [${channels.join(', ')}] must be multiples of ${GROUPS} for GroupNorm(${GROUPS})`);
  }
  const b = new Builder(type);
  const z = cfg.latentChannels;
  b.g.input(INPUT_NAME, 'float32', ['batch', z, 'height', 'width']);
  let x = b.toCompute(INPUT_NAME);
  if (cfg.hasPostQuantConv) x = b.conv(x, 'post_quant_conv', z, z, 1);
  const levels = cfg.chMult.length;
  let c = cfg.ch * cfg.chMult[levels - 1]!;
  x = b.conv(x, 'decoder.conv_in', z, c, 3);
  x = b.resnet(x, 'decoder.mid.block_1', c, c);
  x = b.attention(x, 'decoder.mid.attn_1', c);
  x = b.resnet(x, 'decoder.mid.block_2', c, c);
  for (let i = levels - 1; i >= 0; i--) {
    const cout = cfg.ch * cfg.chMult[i]!;
    for (let j = 0; j <= cfg.numResBlocks; j++) {
      x = b.resnet(x, `decoder.up.${i}.block.${j}`, c, cout);
      c = cout;
    }
    if (i !== 0) x = b.upsample(x, `decoder.up.${i}.upsample`, c);
  }
  x = b.conv(b.silu(b.groupNorm(x, 'decoder.norm_out', c)), 'decoder.conv_out', c, 3, 3);
  if (type === 'float16') b.g.node('Cast', [x], { to: attr.i(DataType.FLOAT) }, OUTPUT_NAME);
  else b.g.node('Identity', [x], {}, OUTPUT_NAME);
  b.g.output(OUTPUT_NAME, 'float32', ['batch', 3, 'height_out', 'width_out']);
  return { graph: b.g, weights: b.weights };
}
