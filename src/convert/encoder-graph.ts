// The KL VAE encoder (LDM `Encoder` + `quant_conv`, as diffusers' AutoencoderKL / AutoencoderKLFlux2
// encode) as an ONNX opset-17 graph: image [N, 3, H, W] in [-1, 1] → the posterior's mean and std
// [N, C, H/8, W/8], as diffusers' DiagonalGaussianDistribution computes them (the log-variance
// clamped to [-30, 20], std = exp(logvar / 2)). Weights are streamed in by convert.ts.
import { attr, type ElemType } from '../onnx/graph.js';
import type { EncoderConfig } from './encoder-weights.js';
import { Builder, GROUPS, type DecoderGraph } from './vae-graph.js';

/** Names every encoder graph this project writes uses (the TAESD one has no std). */
export const ENCODER_INPUT = 'sample';
export const MEAN_OUTPUT = 'latent_mean';
export const STD_OUTPUT = 'latent_std';
const LOGVAR_MIN = -30;
const LOGVAR_MAX = 20;

/**
 * diffusers' Downsample2D(padding=0) in the Encoder: F.pad(x, (0, 1, 0, 1)) then a 3×3 conv with
 * stride 2, i.e. one row and column of zeros on the bottom and right only.
 */
function downsample(b: Builder, x: string, name: string, c: number): string {
  return b.g.node('Conv', [x, b.weight(`${name}.weight`, [c, c, 3, 3]), b.weight(`${name}.bias`, [c])], {
    kernel_shape: attr.ints([3, 3]),
    strides: attr.ints([2, 2]),
    pads: attr.ints([0, 0, 1, 1]),
  });
}

/**
 * Builds the encoder graph for `cfg`; `type` is the compute type (the input and outputs are
 * float32 either way). Throws for level channels GroupNorm(32) cannot split.
 */
export function buildEncoderGraph(cfg: EncoderConfig, type: ElemType): DecoderGraph {
  const channels = cfg.chMult.map((m) => cfg.ch * m);
  if ([cfg.ch, ...channels].some((c) => !Number.isInteger(c) || c % GROUPS !== 0)) {
    throw new Error(`unsupported VAE encoder: level channels [${channels.join(', ')}] must be multiples of ${GROUPS} for GroupNorm(${GROUPS})`);
  }
  const b = new Builder(type, 'vae_encoder');
  const z = cfg.latentChannels;
  b.g.input(ENCODER_INPUT, 'float32', ['batch', 3, 'height', 'width']);
  let c = cfg.ch;
  let x = b.conv(b.toCompute(ENCODER_INPUT), 'encoder.conv_in', 3, c, 3);
  const levels = cfg.chMult.length;
  for (let i = 0; i < levels; i++) {
    const cout = channels[i]!;
    for (let j = 0; j < cfg.numResBlocks; j++) {
      x = b.resnet(x, `encoder.down.${i}.block.${j}`, c, cout);
      c = cout;
    }
    if (i !== levels - 1) x = downsample(b, x, `encoder.down.${i}.downsample.conv`, c);
  }
  x = b.resnet(x, 'encoder.mid.block_1', c, c);
  if (cfg.hasMidAttention) x = b.attention(x, 'encoder.mid.attn_1', c);
  x = b.resnet(x, 'encoder.mid.block_2', c, c);
  x = b.conv(b.silu(b.groupNorm(x, 'encoder.norm_out', c)), 'encoder.conv_out', c, 2 * z, 3);
  if (cfg.hasQuantConv) x = b.conv(x, 'quant_conv', 2 * z, 2 * z, 1);
  const moments = b.toFloat32(x);
  const axes = b.g.ints('channel_axis', [1]);
  const slice = (from: number, to: number): string => b.g.node('Slice', [moments, b.g.ints(`slice_${from}_start`, [from]), b.g.ints(`slice_${from}_end`, [to]), axes]);
  b.g.node('Identity', [slice(0, z)], {}, MEAN_OUTPUT);
  const logvar = b.g.node('Clip', [slice(z, 2 * z), b.g.scalar('logvar_min', LOGVAR_MIN), b.g.scalar('logvar_max', LOGVAR_MAX)]);
  b.g.node('Exp', [b.g.node('Mul', [logvar, b.g.scalar('half', 0.5)])], {}, STD_OUTPUT);
  b.g.output(MEAN_OUTPUT, 'float32', ['batch', z, 'latent_height', 'latent_width']);
  b.g.output(STD_OUTPUT, 'float32', ['batch', z, 'latent_height', 'latent_width']);
  return { graph: b.g, weights: b.weights };
}
