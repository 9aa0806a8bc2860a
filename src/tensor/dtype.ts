// Wire dtypes and their conversion to float32 (the service's working type) and back to float16
// (what float16 models take). Node 20 has no Float16Array, so half floats travel as Uint16 bits.

export type WireDtype = 'float32' | 'float16' | 'bfloat16';
export const WIRE_DTYPES: readonly WireDtype[] = ['float32', 'float16', 'bfloat16'];
export const BYTES_PER_ELEMENT: Record<WireDtype, number> = { float32: 4, float16: 2, bfloat16: 2 };

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

export function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

/** float32 → float16 bits, round to nearest even (what numpy and torch do). */
export function floatToHalf(v: number): number {
  f32[0] = v;
  const x = u32[0]!;
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let half = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    if (rem > mid || (rem === mid && half & 1)) half++;
    return sign | half;
  }
  let half = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && half & 1)) half++;
  return sign | half;
}

// A lookup table makes float16 decoding one indexed load per element.
let halfTable: Float32Array | undefined;
export function halfFloatTable(): Float32Array {
  if (!halfTable) {
    halfTable = new Float32Array(65536);
    for (let i = 0; i < 65536; i++) halfTable[i] = halfToFloat(i);
  }
  return halfTable;
}

export function halfBitsToFloat32(bits: Uint16Array): Float32Array {
  const t = halfFloatTable();
  const out = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) out[i] = t[bits[i]!]!;
  return out;
}

export function bfloat16BitsToFloat32(bits: Uint16Array): Float32Array {
  const out = new Float32Array(bits.length);
  const words = new Uint32Array(out.buffer);
  for (let i = 0; i < bits.length; i++) words[i] = bits[i]! << 16;
  return out;
}

/** Decodes little-endian `bytes` of `dtype` into a new Float32Array (handles any alignment). */
export function toFloat32(bytes: Uint8Array, dtype: WireDtype): Float32Array {
  const n = bytes.byteLength / BYTES_PER_ELEMENT[dtype];
  if (dtype === 'float32') {
    const out = new Float32Array(n);
    new Uint8Array(out.buffer).set(bytes);
    return out;
  }
  const bits = new Uint16Array(n);
  new Uint8Array(bits.buffer).set(bytes);
  return dtype === 'float16' ? halfBitsToFloat32(bits) : bfloat16BitsToFloat32(bits);
}

export function toFloat16Bits(src: Float32Array): Uint16Array {
  const out = new Uint16Array(src.length);
  for (let i = 0; i < src.length; i++) out[i] = floatToHalf(src[i]!);
  return out;
}
