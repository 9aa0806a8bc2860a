// The one pass over the latents: wire dtype → float32, NHWC or FLUX-packed order → NCHW, the
// checks (finite, within ±MAX_LATENT_MAGNITUDE), and z = latents / scaling_factor + shift_factor,
// written once into the decoder's input. One sample per step, yielding to the event loop after
// every quarter million values or so (a few ms), so a large request never holds the loop for
// long, nor do several.
import { ServiceError } from '../errors.js';
import { BYTES_PER_ELEMENT, halfFloatTable, type WireDtype } from '../tensor/dtype.js';
import { denormalizeToDecoderSpace } from './denormalize.js';
import type { LatentPlan, LatentTensor } from './parse.js';

const YIELD_EVERY = 1 << 18;

/**
 * The largest decoder-space magnitude accepted, |latents / scaling_factor + shift_factor|. Real
 * latents stay within a few tens (SD's, divided by 0.18215, rarely pass ±30). The decoder's
 * GroupNorm sums x² over a group in float32: 16 channels × 512² latents in the mid-block at
 * MAX_LATENT_SIDE, ~4.2e6 values. From |x| ≈ √(3.4e38 / 4.2e6) ≈ 9e15 that sum can be +Inf, the
 * variance normalises everything to 0 and the answer would be a flat grey image with 200. At 1e4
 * the sum is ≤ ~4e14, over twenty orders of magnitude of headroom for the gain of the
 * convolutions in front of it.
 */
export const MAX_LATENT_MAGNITUDE = 1e4;

/** A failed check inside a sample: where (within the sample, in wire order) and which value. */
interface Bad {
  at: number;
  value: number;
  scaled: number;
}

/**
 * Wire bytes → decoder-space NCHW float32 in one pass per sample: dtype widening, NHWC or packed
 * reordering, `z = latents / scale + shift`, and the checks on every value.
 *
 * @param plan what planLatents checked: dtype, wire order, shapes, factors
 * @param bytes the wire bytes, `plan.wireShape` elements of `plan.dtype`, little-endian, at any
 *   byte offset (a .npy header of any length, a Buffer from Node's pool): a misaligned sample is
 *   copied into a one-sample scratch, never the whole body
 * @returns the decoder input, `plan.shape` = [N, C, h, w]
 * @throws ServiceError NON_FINITE for a NaN/±Inf value or factors that make one overflow float32;
 *   LATENT_OUT_OF_RANGE for a decoder-space value beyond ±MAX_LATENT_MAGNITUDE. Both name the
 *   value and its position in the wire shape.
 */
export async function toDecoderSpace(plan: LatentPlan, bytes: Uint8Array): Promise<LatentTensor> {
  if (plan.stats) return denormalizeToDecoderSpace({ ...plan, stats: plan.stats }, bytes, MAX_LATENT_MAGNITUDE);
  const [n, c, h, w] = plan.shape;
  const valuesPerSample = c * h * w;
  const out = new Float32Array(n * valuesPerSample);
  const { scale, shift } = plan;
  const read = sampleReader(bytes, plan.dtype, valuesPerSample);
  let sinceYield = 0;
  for (let s = 0; s < n; s++) {
    const vals = read(s);
    const dst = out.subarray(s * valuesPerSample, (s + 1) * valuesPerSample);
    const bad = plan.order === 'nchw' ? scaleFlat(vals, dst, scale, shift)
      : plan.order === 'nhwc' ? scaleNhwc(vals, dst, c, h, w, scale, shift)
        : scalePacked(vals, dst, c, h, w, scale, shift);
    if (bad) throw refuse(plan, bad, s * valuesPerSample + bad.at);
    sinceYield += valuesPerSample;
    if (sinceYield >= YIELD_EVERY && s + 1 < n) {
      sinceYield = 0;
      await new Promise((r) => setImmediate(r));
    }
  }
  return { data: out, shape: plan.shape };
}

/**
 * Sample s of the wire bytes as float32 values. Typed-array views need their element size's
 * alignment; aligned float32 bytes are viewed in place, anything else is copied or widened into a
 * scratch of one sample (reused: each sample is consumed before the next is read).
 */
function sampleReader(bytes: Uint8Array, dtype: WireDtype, valuesPerSample: number): (s: number) => Float32Array {
  const bpe = BYTES_PER_ELEMENT[dtype];
  const aligned = bytes.byteOffset % bpe === 0;
  const sampleBytes = (s: number): Uint8Array => bytes.subarray(s * valuesPerSample * bpe, (s + 1) * valuesPerSample * bpe);
  if (dtype === 'float32') {
    if (aligned) {
      const all = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
      return (s) => all.subarray(s * valuesPerSample, (s + 1) * valuesPerSample);
    }
    const scratch = new Float32Array(valuesPerSample);
    const scratchBytes = new Uint8Array(scratch.buffer);
    return (s) => {
      scratchBytes.set(sampleBytes(s));
      return scratch;
    };
  }
  const scratch = new Float32Array(valuesPerSample);
  const bitsScratch = aligned ? undefined : new Uint16Array(valuesPerSample);
  const half = dtype === 'float16';
  return (s) => {
    const b = sampleBytes(s);
    let bits: Uint16Array;
    if (bitsScratch) {
      new Uint8Array(bitsScratch.buffer).set(b);
      bits = bitsScratch;
    } else bits = new Uint16Array(b.buffer, b.byteOffset, valuesPerSample);
    return widen(bits, half, scratch);
  };
}

/** float16 or bfloat16 bits of one sample into float32 (one sample's scratch, not the tensor). */
function widen(bits: Uint16Array, half: boolean, into: Float32Array): Float32Array {
  const n = into.length;
  if (half) {
    const t = halfFloatTable();
    for (let i = 0; i < n; i++) into[i] = t[bits[i]!]!;
  } else {
    const words = new Uint32Array(into.buffer, into.byteOffset, n);
    for (let i = 0; i < n; i++) words[i] = bits[i]! << 16;
  }
  return into;
}

// Dividing (not multiplying by the inverse) keeps the values bit-identical to diffusers'
// `latents / scaling_factor + shift_factor`; fround is the float32 the decoder will see, which
// can overflow (scaling_factor=1e-45) where the double does not. One comparison pair per value
// refuses NaN (every comparison with it is false), ±Inf and out-of-range values alike; refuse()
// tells them apart.
function scaleFlat(v: Float32Array, dst: Float32Array, scale: number, shift: number): Bad | undefined {
  for (let i = 0; i < v.length; i++) {
    const x = v[i]!;
    const z = Math.fround(x / scale + shift);
    if (!(z <= MAX_LATENT_MAGNITUDE && z >= -MAX_LATENT_MAGNITUDE)) return { at: i, value: x, scaled: z };
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
      if (!(z <= MAX_LATENT_MAGNITUDE && z >= -MAX_LATENT_MAGNITUDE)) return { at: i, value: x, scaled: z };
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
          if (!(z <= MAX_LATENT_MAGNITUDE && z >= -MAX_LATENT_MAGNITUDE)) return { at: i, value: x, scaled: z };
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

function refuse(plan: LatentPlan, bad: Bad, flat: number): ServiceError {
  const at = `[${position(flat, plan.wireShape).join(', ')}] (flat index ${flat})`;
  if (!Number.isFinite(bad.value)) return new ServiceError('NON_FINITE', `the latents hold ${bad.value} at ${at}; every value must be finite`);
  const o = plan.options;
  const factors = `scaling_factor=${plan.scale}${o.scalingFactor === undefined ? ' (the model\'s)' : ''} and shift_factor=${plan.shift}${o.shiftFactor === undefined ? ' (the model\'s)' : ''}`;
  if (!Number.isFinite(bad.scaled)) {
    return new ServiceError('NON_FINITE',
      `${factors} turn the latent ${bad.value} at ${at} into ${bad.scaled} in float32: pick factors that keep latents / scaling_factor + shift_factor finite`);
  }
  // Seven significant digits, a float32's, without the double's noise: -1e+20, not -100000002004087730000.
  const show = (v: number): string => (Math.abs(v) >= 1e6 ? v.toExponential(6).replace(/\.?0+e/, 'e') : String(Number(v.toPrecision(7))));
  const what = plan.scale === 1 && plan.shift === 0 ? 'is' : `becomes ${show(bad.scaled)} with ${factors},`;
  return new ServiceError('LATENT_OUT_OF_RANGE',
    `the latent ${show(bad.value)} at ${at} ${what} beyond ±${MAX_LATENT_MAGNITUDE}, the decoder-space bound: real latents stay within a few tens, and values near 1e19 overflow the decoder's float32 normalisation into a flat image; check the latents and the factors`);
}
