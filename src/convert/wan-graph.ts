// The Wan 2.1 VAE decoder (post_quant_conv + WanDecoder3d) as ONE streaming ONNX graph: a run
// decodes one latent frame, taking the causal convolutions' caches and returning the new ones, as
// diffusers' AutoencoderKLWan._decode does frame by frame with `feat_cache`
// (src/diffusers/models/autoencoders/autoencoder_kl_wan.py, CACHE_T = 2).
//
// Inputs:  latent_sample [N, 16, 1, h, w] (decoder space), first_chunk int64 [1] (1 on latent
//          frame 0, else 0), feat_cache.<slot> [N, C, 2, h·s, w·s] for every slot of
//          CACHE_SLOTS (zeros on latent frame 0).
// Outputs: sample [N, 3, F, 8h, 8w] float32, unclamped (F = 1 on frame 0, else 4), image
//          [N, F, 8h, 8w, 3] uint8 (diffusers' VideoProcessor: round(clamp(x/2 + 0.5, 0, 1)·255)),
//          feat_cache_out.<slot> (same shapes as the inputs).
//
// Every cache holds 2 frames from the start: where diffusers keeps 1 frame after latent frame 0
// and pads the missing one with zeros, this graph keeps that zero frame in the cache, which gives
// the same convolution. The first step's special case is the `first_chunk` flag: each temporal
// upsampler then passes its input through (diffusers stores the marker "Rep" and skips its
// time_conv) and writes a zero cache, so its first real use sees a zero history as diffusers'.
import { DataType, GraphBuilder, attr, type ElemType } from '../onnx/graph.js';
import type { DecoderGraph, WeightRef } from './vae-graph.js';
import type { WanConfig } from './wan-weights.js';

export const INPUT_NAME = 'latent_sample';
export const FIRST_CHUNK_NAME = 'first_chunk';
export const SAMPLE_NAME = 'sample';
export const IMAGE_NAME = 'image';
export const CACHE_IN = 'feat_cache.';
export const CACHE_OUT = 'feat_cache_out.';
/** Frames each cache keeps: diffusers' CACHE_T. */
export const CACHE_T = 2;
const RMS_EPS = 1e-12; // F.normalize's eps
const INT64_MAX = 2n ** 63n - 1n;

/** One cache tensor: the conv it feeds (diffusers' name), its channels and spatial scale vs the latent. */
export interface CacheSlot {
  slot: number;
  conv: string;
  channels: number;
  scale: number;
}

class Builder {
  readonly g = new GraphBuilder('wan_vae_decoder_step');
  readonly weights: WeightRef[] = [];
  readonly slots: CacheSlot[] = [];
  private scale = 1;
  private readonly notFirst: string;
  private readonly notFirstFloat: string;
  private readonly last2: string[];
  private readonly intConstants = new Map<string, string>();
  private readonly fp16: boolean;

  constructor(readonly first: string, readonly type: 'float32' | 'float16') {
    this.fp16 = type === 'float16';
    this.notFirst = this.g.node('Sub', [this.ints([1]), first]);
    this.notFirstFloat = this.g.node('Cast', [this.notFirst], { to: attr.i(this.fp16 ? DataType.FLOAT16 : DataType.FLOAT) });
    this.last2 = [this.ints([-CACHE_T]), this.g.constant('int64_max', 'int64', [1], BigInt64Array.of(INT64_MAX)), this.ints([2])];
  }

  /** float32 → the compute type (a no-op in float32). */
  toCompute(x: string): string {
    return this.fp16 ? this.g.node('Cast', [x], { to: attr.i(DataType.FLOAT16) }) : x;
  }

  toFloat32(x: string): string {
    return this.fp16 ? this.g.node('Cast', [x], { to: attr.i(DataType.FLOAT) }) : x;
  }

  /** An int64 constant, one initializer per distinct value list. */
  ints(values: number[]): string {
    const key = values.join('_');
    let name = this.intConstants.get(key);
    if (!name) this.intConstants.set(key, (name = this.g.ints(`int64_${key}`, values)));
    return name;
  }

  weight(name: string, shape: number[], dims = shape): string {
    this.weights.push({ name, shape, dims });
    return name;
  }

  conv(x: string, name: string, cin: number, cout: number, kernel: [number, number, number], checkpointShape?: number[]): string {
    const dims = [cout, cin, ...kernel];
    const pads = kernel.map((k) => (k - 1) / 2);
    pads[0] = 0; // time is padded by the cache, never by the conv
    return this.g.node('Conv', [x, this.weight(`${name}.weight`, checkpointShape ?? dims, dims), this.weight(`${name}.bias`, [cout])], {
      kernel_shape: attr.ints(kernel),
      pads: attr.ints([...pads, ...pads]),
    });
  }

  /**
   * A new cache slot: its input concatenated in front of x along time, and `save` to output the
   * last CACHE_T frames of that as the slot's new cache (times `mask` when given).
   */
  private cached(x: string, conv: string, channels: number): { cat: string; save: (mask?: string) => void } {
    const slot = this.slots.length;
    this.slots.push({ slot, conv, channels, scale: this.scale });
    const s = this.scale === 1 ? '' : `_x${this.scale}`;
    const dims = ['batch', channels, CACHE_T, `height${s}`, `width${s}`];
    const cat = this.g.node('Concat', [this.g.input(`${CACHE_IN}${slot}`, this.type, dims), x], { axis: attr.i(2) });
    const save = (mask?: string): void => {
      const last = this.g.node('Slice', [cat, ...this.last2]);
      this.g.node(mask ? 'Mul' : 'Identity', mask ? [last, mask] : [last], {}, `${CACHE_OUT}${slot}`);
      this.g.output(`${CACHE_OUT}${slot}`, this.type, dims);
    };
    return { cat, save };
  }

  /** WanCausalConv3d 3×3×3 with its cache: the last 2 input frames of the previous step in front. */
  causalConv(x: string, name: string, cin: number, cout: number): string {
    const { cat, save } = this.cached(x, name, cin);
    save();
    return this.conv(cat, name, cin, cout, [3, 3, 3]);
  }

  /**
   * WanRMS_norm: F.normalize(x, dim=1) · √C · γ (no bias in Wan 2.1). In float16 the norm is
   * computed in float32: a sum of squares over 384 channels overflows float16.
   */
  rmsNorm(x: string, name: string, c: number, images = false): string {
    const x32 = this.toFloat32(x);
    const norm = this.g.node('ReduceL2', [x32], { axes: attr.ints([1]), keepdims: attr.i(1) });
    const normed = this.g.node('Div', [x32, this.g.node('Max', [norm, this.g.scalar(`${name}.eps`, RMS_EPS)])]);
    const scaled = this.toCompute(this.g.node('Mul', [normed, this.g.scalar(`${name}.scale`, Math.sqrt(c))]));
    const gamma = images ? [c, 1, 1] : [c, 1, 1, 1];
    return this.g.node('Mul', [scaled, this.weight(`${name}.gamma`, gamma)]);
  }

  silu(x: string): string {
    return this.g.node('Mul', [x, this.g.node('Sigmoid', [x])]);
  }

  resnet(x: string, name: string, cin: number, cout: number): string {
    const skip = cin === cout ? x : this.conv(x, `${name}.conv_shortcut`, cin, cout, [1, 1, 1]);
    let h = this.causalConv(this.silu(this.rmsNorm(x, `${name}.norm1`, cin)), `${name}.conv1`, cin, cout);
    h = this.causalConv(this.silu(this.rmsNorm(h, `${name}.norm2`, cout)), `${name}.conv2`, cout, cout);
    return this.g.node('Add', [h, skip]);
  }

  /** Dims [from, to) of x's shape, as an int64 tensor. */
  dims(x: string, from: number, to: number): string {
    return this.g.node('Slice', [this.g.node('Shape', [x]), this.ints([from]), this.ints([to])]);
  }

  /** WanAttentionBlock: per frame, single-head attention over the h·w positions. */
  attention(x: string, name: string, c: number): string {
    const frames = this.g.node('Transpose', [x], { perm: attr.ints([0, 2, 1, 3, 4]) }); // [N, T, C, h, w]
    const flat = this.g.node('Reshape', [frames, this.g.node('Concat', [this.ints([-1, c]), this.dims(x, 3, 5)], { axis: attr.i(0) })]);
    const h = this.rmsNorm(flat, `${name}.norm`, c, true);
    const qkv = this.g.node('Conv', [h, this.weight(`${name}.to_qkv.weight`, [3 * c, c, 1, 1]), this.weight(`${name}.to_qkv.bias`, [3 * c])]);
    const seq = this.g.node('Transpose', [this.g.node('Reshape', [qkv, this.ints([0, 3 * c, -1])])], { perm: attr.ints([0, 2, 1]) }); // [NT, hw, 3C]
    const part = (i: number): string => this.g.node('Slice', [seq, this.ints([i * c]), this.ints([(i + 1) * c]), this.ints([2])]);
    const [q, k, v] = [this.toFloat32(part(0)), this.toFloat32(part(1)), part(2)]; // scores and softmax in float32
    const scores = this.g.node('Mul', [this.g.node('MatMul', [q, this.g.node('Transpose', [k], { perm: attr.ints([0, 2, 1]) })]), this.g.scalar(`${name}.sdpa_scale`, 1 / Math.sqrt(c))]);
    const out = this.g.node('MatMul', [this.toCompute(this.g.node('Softmax', [scores], { axis: attr.i(-1) })), v]); // [NT, hw, C]
    const spatial = this.g.node('Reshape', [this.g.node('Transpose', [out], { perm: attr.ints([0, 2, 1]) }), this.g.node('Shape', [flat])]);
    const proj = this.g.node('Conv', [spatial, this.weight(`${name}.proj.weight`, [c, c, 1, 1]), this.weight(`${name}.proj.bias`, [c])]);
    const back = this.g.node('Transpose', [this.g.node('Reshape', [proj, this.g.node('Shape', [frames])])], { perm: attr.ints([0, 2, 1, 3, 4]) });
    return this.g.node('Add', [back, x]);
  }

  /**
   * WanResample 'upsample3d' (time then space) or 'upsample2d' (space): time_conv maps C → 2C and
   * its halves become frames 2t and 2t+1; on the first chunk the input passes through instead.
   * Space: nearest ×2 (diffusers' nearest-exact equals nearest for ×2), then a 3×3 conv to C/2.
   */
  upsample(x: string, name: string, c: number, temporal: boolean): string {
    if (temporal) {
      const conv = `${name}.time_conv`;
      const { cat, save } = this.cached(x, conv, c);
      save(this.notFirstFloat);
      const tc = this.conv(cat, conv, c, 2 * c, [3, 1, 1]); // [N, 2C, T, H, W]
      const [batch, time, space] = [this.dims(x, 0, 1), this.dims(x, 2, 3), this.dims(x, 3, 5)];
      const split = this.g.node('Concat', [batch, this.ints([2, c]), time, space], { axis: attr.i(0) });
      const pairs = this.g.node('Transpose', [this.g.node('Reshape', [tc, split])], { perm: attr.ints([0, 2, 3, 1, 4, 5]) }); // [N, C, T, 2, H, W]
      const doubled = this.g.node('Reshape', [pairs, this.g.node('Concat', [batch, this.ints([c, -1]), space], { axis: attr.i(0) })]);
      // [x, doubled] along time, then frames [0, T) on the first chunk, [T, 3T) after it
      const both = this.g.node('Concat', [x, doubled], { axis: attr.i(2) });
      const start = this.g.node('Mul', [time, this.notFirst]);
      const end = this.g.node('Add', [start, this.g.node('Mul', [time, this.g.node('Add', [this.ints([1]), this.notFirst])])]);
      x = this.g.node('Slice', [both, start, end, this.last2[2]!]);
    }
    const up = this.g.node('Resize', [x, '', this.g.constant(`${name}.scales`, 'float32', [5], new Float32Array([1, 1, 1, 2, 2]))], {
      mode: attr.s('nearest'),
      coordinate_transformation_mode: attr.s('asymmetric'),
      nearest_mode: attr.s('floor'),
    });
    this.scale *= 2;
    return this.conv(up, `${name}.resample.1`, c, c / 2, [1, 3, 3], [c / 2, c, 3, 3]);
  }
}

export interface WanDecoderGraph extends DecoderGraph {
  /** The caches in slot order: what feat_cache.<slot> holds. */
  slots: CacheSlot[];
}

/**
 * Builds the step graph for a decoder of shape `cfg` (see the file comment for its I/O). With
 * `type` float16 the weights and caches are float16 (half the memory), the norms and attention
 * scores float32; latent_sample and sample stay float32.
 */
export function buildWanStepGraph(cfg: WanConfig, type: ElemType = 'float32'): WanDecoderGraph {
  if (type !== 'float32' && type !== 'float16') throw new Error(`the Wan step graph is float32 or float16, not ${type}`);
  const z = cfg.latentChannels;
  const first = FIRST_CHUNK_NAME;
  const b = new Builder(first, type);
  b.g.input(INPUT_NAME, 'float32', ['batch', z, 1, 'height', 'width']);
  b.g.input(first, 'int64', [1]);
  let x = b.conv(b.toCompute(INPUT_NAME), 'post_quant_conv', z, z, [1, 1, 1]);
  let c = cfg.midChannels;
  x = b.causalConv(x, 'decoder.conv_in', z, c);
  x = b.resnet(x, 'decoder.mid_block.resnets.0', c, c);
  x = b.attention(x, 'decoder.mid_block.attentions.0', c);
  x = b.resnet(x, 'decoder.mid_block.resnets.1', c, c);
  cfg.upBlocks.forEach((block, i) => {
    c = block.inChannels;
    for (let j = 0; j < block.resnets; j++) {
      x = b.resnet(x, `decoder.up_blocks.${i}.resnets.${j}`, c, block.outChannels);
      c = block.outChannels;
    }
    if (block.upsample) {
      x = b.upsample(x, `decoder.up_blocks.${i}.upsamplers.0`, c, block.upsample === 'upsample3d');
      c /= 2;
    }
  });
  x = b.toFloat32(b.causalConv(b.silu(b.rmsNorm(x, 'decoder.norm_out', c)), 'decoder.conv_out', c, 3));
  b.g.node('Identity', [x], {}, SAMPLE_NAME);
  b.g.output(SAMPLE_NAME, 'float32', ['batch', 3, 'frames', 'height_out', 'width_out']);
  let px = b.g.node('Mul', [x, b.g.scalar('pp_half', 0.5)]);
  px = b.g.node('Clip', [b.g.node('Add', [px, b.g.scalar('pp_offset', 0.5)]), b.g.scalar('pp_zero', 0), b.g.scalar('pp_one', 1)]);
  px = b.g.node('Cast', [b.g.node('Round', [b.g.node('Mul', [px, b.g.scalar('pp_levels', 255)])])], { to: attr.i(DataType.UINT8) });
  b.g.node('Transpose', [px], { perm: attr.ints([0, 2, 3, 4, 1]) }, IMAGE_NAME);
  b.g.output(IMAGE_NAME, 'uint8', ['batch', 'frames', 'height_out', 'width_out', 3]);
  return { graph: b.g, weights: b.weights, slots: b.slots };
}
