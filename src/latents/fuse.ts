// The one pass over the latents: wire dtype → float32, NHWC or FLUX-packed order → NCHW, the
// finiteness checks, and z = latents / scaling_factor + shift_factor, written once into the
// decoder's input. One sample per step, yielding to the event loop after every quarter million
// values or so (a few ms), so a large request never holds the loop for long, nor do several.
import { ServiceError } from '../errors.js';
import { halfFloatTable } from '../tensor/dtype.js';
import { denormalizeToDecoderSpace } from './denormalize.js';
import type { LatentPlan, LatentTensor } from './parse.js';

const YIELD_EVERY = 1 << 18;

/** A failed check inside a sample: where (within the sample, in wire order) and which value. */
interface Bad {
  at: number;
  value: number;
  scaled: boolean;
}

export async function toDecoderSpace(plan: LatentPlan, bytes: Uint8Array): Promise<LatentTensor> {
  if (plan.stats) return denormalizeToDecoderSpace({ ...plan, stats: plan.stats }, bytes);
  const [n, c, h, w] = plan.shape;
  const per = c * h * w;
  const out = new Float32Array(n * per);
  const { scale, shift } = plan;
  // Float views need aligned bytes: bodies and decoded base64 almost always are; copy when not.
  const bpe = plan.dtype === 'float32' ? 4 : 2;
  const src = bytes.byteOffset % bpe === 0 ? bytes : bytes.slice();
  const f32 = plan.dtype === 'float32' ? new Float32Array(src.buffer, src.byteOffset, src.byteLength / 4) : undefined;
  const u16 = f32 ? undefined : new Uint16Array(src.buffer, src.byteOffset, src.byteLength / 2);
  const scratch = f32 ? undefined : new Float32Array(per);
  let sinceYield = 0;
  for (let s = 0; s < n; s++) {
    const vals = f32 ? f32.subarray(s * per, (s + 1) * per) : widen(u16!, s * per, plan.dtype === 'float16', scratch!);
    const dst = out.subarray(s * per, (s + 1) * per);
    const bad = plan.order === 'nchw' ? scaleFlat(vals, dst, scale, shift)
      : plan.order === 'nhwc' ? scaleNhwc(vals, dst, c, h, w, scale, shift)
        : scalePacked(vals, dst, c, h, w, scale, shift);
    if (bad) throw nonFinite(plan, bad, s * per + bad.at);
    sinceYield += per;
    if (sinceYield >= YIELD_EVERY && s + 1 < n) {
      sinceYield = 0;
      await new Promise((r) => setImmediate(r));
    }
  }
  return { data: out, shape: plan.shape };
}

/** float16 or bfloat16 bits of one sample into float32 (one sample's scratch, not the tensor). */
function widen(bits: Uint16Array, from: number, half: boolean, into: Float32Array): Float32Array {
  const n = into.length;
  if (half) {
    const t = halfFloatTable();
    for (let i = 0; i < n; i++) into[i] = t[bits[from + i]!]!;
  } else {
    const words = new Uint32Array(into.buffer, into.byteOffset, n);
    for (let i = 0; i < n; i++) words[i] = bits[from + i]! << 16;
  }
  return into;
}

// Dividing (not multiplying by the inverse) keeps the values bit-identical to diffusers'
// `latents / scaling_factor + shift_factor`; fround is the float32 the decoder will see, which
// can overflow (scaling_factor=1e-45) where the double does not.
function scaleFlat(v: Float32Array, dst: Float32Array, scale: number, shift: number): Bad | undefined {
  for (let i = 0; i < v.length; i++) {
    const x = v[i]!;
    const z = Math.fround(x / scale + shift);
    if (!Number.isFinite(z)) return { at: i, value: x, scaled: Number.isFinite(x) };
    dst[i] = z;
  }
  return undefined;
}

/** Wire [h, w, C] → [C, h, w]. */
function scaleNhwc(v: Float32Array, dst: Float32Array, c: number, h: number, w: number, scale: number, shift: number): Bad | undefined {
  const plane = h * w;
  let i = 0;
  for (let p = 0; p < plane; p++) {
    for (let ch = 0; ch < c; ch++, i++) {
      const x = v[i]!;
      const z = Math.fround(x / scale + shift);
      if (!Number.isFinite(z)) return { at: i, value: x, scaled: Number.isFinite(x) };
      dst[ch * plane + p] = z;
    }
  }
  return undefined;
}

/**
 * Wire [h/2, w/2, C, 2, 2] (FLUX's packed [(H/16)(W/16), 4C], diffusers' _unpack_latents:
 * view(B, H/16, W/16, C, 2, 2).permute(0, 3, 1, 4, 2, 5)) → [C, h, w].
 */
function scalePacked(v: Float32Array, dst: Float32Array, c: number, h: number, w: number, scale: number, shift: number): Bad | undefined {
  const ph = h / 2;
  const pw = w / 2;
  let i = 0;
  for (let py = 0; py < ph; py++) {
    for (let px = 0; px < pw; px++) {
      for (let ch = 0; ch < c; ch++) {
        const base = ch * h * w + 2 * py * w + 2 * px;
        for (let k = 0; k < 4; k++, i++) {
          const x = v[i]!;
          const z = Math.fround(x / scale + shift);
          if (!Number.isFinite(z)) return { at: i, value: x, scaled: Number.isFinite(x) };
          dst[base + (k >> 1) * w + (k & 1)] = z;
        }
      }
    }
  }
  return undefined;
}

function position(i: number, shape: number[]): number[] {
  const idx = new Array<number>(shape.length);
  for (let d = shape.length - 1; d >= 0; d--) {
    idx[d] = i % shape[d]!;
    i = Math.floor(i / shape[d]!);
  }
  return idx;
}

function nonFinite(plan: LatentPlan, bad: Bad, flat: number): ServiceError {
  const at = `[${position(flat, plan.wireShape).join(', ')}] (flat index ${flat})`;
  if (!bad.scaled) return new ServiceError('NON_FINITE', `the latents hold ${bad.value} at ${at}; every value must be finite`);
  const o = plan.options;
  const factors = `scaling_factor=${plan.scale}${o.scalingFactor === undefined ? ' (the model\'s)' : ''} and shift_factor=${plan.shift}${o.shiftFactor === undefined ? ' (the model\'s)' : ''}`;
  return new ServiceError('NON_FINITE',
    `${factors} turn the latent ${bad.value} at ${at} into ${Math.fround(bad.value / plan.scale + plan.shift)} in float32: pick factors that keep latents / scaling_factor + shift_factor finite`);
}
