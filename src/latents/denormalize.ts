// The decode path's pass for models with per-channel statistics (FLUX.2): wire latents in the
// denoiser's space — patchified [N, C·p², h/p, w/p], FLUX-packed [N, (h/p)(w/p), C·p²], or (p = 1)
// NCHW/NHWC — de-normalised per channel (z = x / scale · std[k] + mean[k]) and unpatchified
// (channel k = c·p² + dy·p + dx goes to channel c, pixel (p·y + dy, p·x + dx)), as Flux2Pipeline
// does before vae.decode, written once into the decoder's NCHW input. fuse.ts hands plans with
// statistics here; the checks (finite input, finite result) and the yielding are the same.
import { ServiceError } from '../errors.js';
import { halfFloatTable } from '../tensor/dtype.js';
import type { ChannelStats } from './normalize.js';
import type { LatentPlan, LatentTensor } from './parse.js';

const YIELD_EVERY = 1 << 18;

/**
 * Into the decoder's space: float32 NCHW [N, C, h, w]. Throws NON_FINITE, or LATENT_OUT_OF_RANGE
 * for a result beyond ±maxMagnitude (fuse.ts's bound), naming the wire position.
 */
export async function denormalizeToDecoderSpace(plan: LatentPlan & { stats: ChannelStats }, bytes: Uint8Array, maxMagnitude: number): Promise<LatentTensor> {
  const [n, c, h, w] = plan.shape;
  const { stats, scale } = plan;
  const p = stats.patch;
  const [k4, ph, pw] = [c * p * p, h / p, w / p];
  const per = c * h * w;
  const out = new Float32Array(n * per);
  const bpe = plan.dtype === 'float32' ? 4 : 2;
  const src = bytes.byteOffset % bpe === 0 ? bytes : bytes.slice();
  const f32 = plan.dtype === 'float32' ? new Float32Array(src.buffer, src.byteOffset, src.byteLength / 4) : undefined;
  const u16 = f32 ? undefined : new Uint16Array(src.buffer, src.byteOffset, src.byteLength / 2);
  const half = plan.dtype === 'float16' ? halfFloatTable() : undefined;
  const word = new Uint32Array(1);
  const asFloat = new Float32Array(word.buffer);
  const read = (i: number): number => {
    if (f32) return f32[i]!;
    if (half) return half[u16![i]!]!;
    word[0] = u16![i]! << 16;
    return asFloat[0]!;
  };
  let sinceYield = 0;
  for (let s = 0; s < n; s++) {
    for (let i = 0; i < per; i++) {
      // wire position (k, y, x) in patch space, by the wire's order
      let k: number;
      let y: number;
      let x: number;
      if (plan.order === 'packed' || plan.order === 'nhwc') {
        k = i % k4;
        const t = (i - k) / k4;
        x = t % pw;
        y = (t - x) / pw;
      } else {
        x = i % pw;
        const t = (i - x) / pw;
        y = t % ph;
        k = (t - y) / ph;
      }
      const flat = s * per + i;
      const v = read(flat);
      const z = Math.fround(Math.fround(Math.fround(v / scale) * stats.std[k]!) + stats.mean[k]!);
      if (!Number.isFinite(z)) throw nonFinite(plan, v, flat);
      if (!(z <= maxMagnitude && z >= -maxMagnitude)) {
        throw new ServiceError('LATENT_OUT_OF_RANGE', `the latent ${v} at ${at(plan, flat)} de-normalises to ${z}, beyond ±${maxMagnitude}, the decoder-space bound: check the latents`);
      }
      const ch = Math.floor(k / (p * p));
      const dy = Math.floor((k % (p * p)) / p);
      const dx = k % p;
      out[s * per + (ch * h + y * p + dy) * w + x * p + dx] = z;
    }
    sinceYield += per;
    if (sinceYield >= YIELD_EVERY && s + 1 < n) {
      sinceYield = 0;
      await new Promise((r) => setImmediate(r));
    }
  }
  return { data: out, shape: plan.shape };
}

function at(plan: LatentPlan, flat: number): string {
  const idx = new Array<number>(plan.wireShape.length);
  let i = flat;
  for (let d = plan.wireShape.length - 1; d >= 0; d--) {
    idx[d] = i % plan.wireShape[d]!;
    i = Math.floor(i / plan.wireShape[d]!);
  }
  return `[${idx.join(', ')}] (flat index ${flat})`;
}

function nonFinite(plan: LatentPlan, v: number, flat: number): ServiceError {
  if (!Number.isFinite(v)) return new ServiceError('NON_FINITE', `the latents hold ${v} at ${at(plan, flat)}; every value must be finite`);
  return new ServiceError('NON_FINITE', `the model's per-channel statistics turn the latent ${v} at ${at(plan, flat)} into a non-finite value in float32`);
}
