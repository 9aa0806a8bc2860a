// The encoder's output → the answer, in one pass: the posterior mean (or a sample, mean + std·ε),
// into the diffusion model's space ((z − shift) × scaling, or FLUX.2's per-channel statistics over
// 2×2 patches), checked finite, written in the asked order (NCHW, NHWC, FLUX-packed) and dtype.
// The inverse of latents/fuse.ts.
import { ServiceError } from '../errors.js';
import type { ChannelStats } from '../latents/normalize.js';
import { toFloat16Bits, type WireDtype } from '../tensor/dtype.js';
import { gaussian, mulberry32 } from '../tensor/random.js';

export interface LatentsOut {
  /** The answer's bytes, little-endian, C order. */
  bytes: Uint8Array;
  shape: number[];
  dtype: WireDtype;
}

export interface OutPlan {
  /** Affine: z' = (z − shift) × scale (1 and 0 for decoder space). */
  scale: number;
  shift: number;
  /** Per-channel statistics over patches, applied before `scale`; replaces `shift`. */
  stats?: ChannelStats;
  order: 'nchw' | 'nhwc' | 'packed';
  dtype: WireDtype;
  /** sample_mode=sample: the noise's seed. */
  seed?: number;
}

/**
 * mean (and std) float32 [n, C, h, w] → the answer. With stats (patch p), the output has C·p²
 * channels at h/p × w/p; packed is [n, (h/p')(w/p'), C·p'²] with p' = 2 (FLUX) whatever the stats.
 * Throws NON_FINITE_OUTPUT naming the sample when a value is NaN or infinite.
 */
export function writeLatents(mean: Float32Array, std: Float32Array | undefined, shape: readonly [number, number, number, number], plan: OutPlan, model: string): LatentsOut {
  const [n, c, h, w] = shape;
  const p = plan.stats?.patch ?? (plan.order === 'packed' ? 2 : 1);
  const [oc, oh, ow] = [c * p * p, h / p, w / p];
  const outShape = plan.order === 'packed' ? [n, oh * ow, oc] : plan.order === 'nhwc' ? [n, oh, ow, oc] : [n, oc, oh, ow];
  const out = new Float32Array(n * c * h * w);
  // our own generator: the noise cannot match torch's anyway
  const noise = std ? gaussian(mulberry32(plan.seed ?? (Math.random() * 2 ** 32) >>> 0)) : undefined;
  const { scale, shift, stats } = plan;
  for (let s = 0; s < n; s++) {
    for (let ch = 0; ch < c; ch++) {
      for (let y = 0; y < h; y++) {
        for (let x = 0; x < w; x++) {
          const src = ((s * c + ch) * h + y) * w + x;
          let z = mean[src]!;
          if (noise) z = Math.fround(z + Math.fround(std![src]! * Math.fround(noise())));
          const k = (ch * p + (y % p)) * p + (x % p); // the patchified channel: c·p² + dy·p + dx
          const [py, px] = [Math.floor(y / p), Math.floor(x / p)];
          if (stats) z = Math.fround(Math.fround(z - stats.mean[k]!) / stats.std[k]!);
          else z = Math.fround(z - shift);
          z = Math.fround(z * scale);
          if (!Number.isFinite(z)) {
            throw new ServiceError('NON_FINITE_OUTPUT', `model ${model}'s encoder produced a non-finite latent (${z}) for sample ${s} of ${n}: check scaling_factor and shift_factor`);
          }
          const dst = plan.order === 'nchw' ? ((s * oc + k) * oh + py) * ow + px : ((s * oh + py) * ow + px) * oc + k;
          out[dst] = z;
        }
      }
    }
  }
  return { bytes: toBytes(out, plan.dtype), shape: outShape, dtype: plan.dtype };
}

function toBytes(v: Float32Array, dtype: WireDtype): Uint8Array {
  if (dtype === 'float32') return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
  const bits = dtype === 'float16' ? toFloat16Bits(v) : toBfloat16Bits(v);
  return new Uint8Array(bits.buffer, bits.byteOffset, bits.byteLength);
}

/** float32 → bfloat16 bits, rounding to nearest even (as torch's .to(torch.bfloat16)); NaN stays NaN. */
function toBfloat16Bits(v: Float32Array): Uint16Array {
  const words = new Uint32Array(v.buffer, v.byteOffset, v.length);
  const out = new Uint16Array(v.length);
  for (let i = 0; i < v.length; i++) {
    const w = words[i]!;
    out[i] = (w & 0x7fffffff) > 0x7f800000 ? (w >>> 16) | 0x40 : (w + 0x7fff + ((w >>> 16) & 1)) >>> 16;
  }
  return out;
}
