// Finds weights (graph initializers) that hold NaN or ±Inf. Such a model decodes every input to
// NaN: caught at load, it is a broken model naming its tensor instead of a 422 that blames each
// request's latents. Reads float32/float16/bfloat16/float64 from raw_data or the typed fields
// (onnx.proto3: float16 and bfloat16 bits sit in int32_data), testing the exponent bits.
import { DataType, onnx, type ModelProto } from './graph.js';

type TensorProto = InstanceType<typeof onnx.TensorProto>;

export interface NonFiniteWeight {
  /** The initializer's name. */
  name: string;
  type: 'float32' | 'float16' | 'bfloat16' | 'float64';
  dims: number[];
  /** Element index of the first NaN or ±Inf. */
  index: number;
  /** The first such value: 'NaN', 'Infinity' or '-Infinity'. */
  value: string;
  /** How many elements of the tensor are NaN or ±Inf. */
  count: number;
}

/** A view when `bytes` sits at an aligned offset, else a copy (raw_data may sit at any offset). */
function alignedBytes(bytes: Uint8Array, align: number): Uint8Array {
  return bytes.byteOffset % align === 0 ? bytes : new Uint8Array(bytes); // Buffer#slice would be a view
}

/** 16-bit words: exponent mask of float16 (0x7c00) or bfloat16 (0x7f80), all ones = NaN/Inf. */
function scan16(bits: ArrayLike<number>, mask: number, sign: number): { index: number; count: number; value: string } {
  let index = -1;
  let count = 0;
  for (let i = 0; i < bits.length; i++) {
    if ((bits[i]! & mask) === mask) {
      if (index < 0) index = i;
      count++;
    }
  }
  if (index < 0) return { index, count, value: '' };
  const b = bits[index]!;
  const nan = (b & ~(mask | sign) & 0xffff) !== 0;
  return { index, count, value: nan ? 'NaN' : (b & sign) !== 0 ? '-Infinity' : 'Infinity' };
}

function scanFloats(values: ArrayLike<number>): { index: number; count: number; value: string } {
  let index = -1;
  let count = 0;
  for (let i = 0; i < values.length; i++) {
    const v = values[i]!;
    if (v - v !== 0) { // NaN for NaN and ±Inf, 0 for every finite value
      if (index < 0) index = i;
      count++;
    }
  }
  return { index, count, value: index < 0 ? '' : String(values[index]) };
}

export type FloatType = 'float32' | 'float16' | 'bfloat16';

/**
 * The first NaN or ±Inf in little-endian float data (at any byte offset) and how many there are;
 * undefined when every value is finite.
 */
export function firstNonFinite(raw: Uint8Array, type: FloatType): { index: number; count: number; value: string } | undefined {
  if (type !== 'float32') {
    const b = alignedBytes(raw, 2);
    const found = scan16(new Uint16Array(b.buffer, b.byteOffset, b.length >>> 1), type === 'float16' ? 0x7c00 : 0x7f80, 0x8000);
    return found.index < 0 ? undefined : found;
  }
  const b = alignedBytes(raw, 4);
  const found = scanFloats(new Float32Array(b.buffer, b.byteOffset, b.length >>> 2));
  return found.index < 0 ? undefined : found;
}

function scanTensor(t: TensorProto): NonFiniteWeight | undefined {
  const raw = t.rawData && t.rawData.length > 0 ? t.rawData : undefined;
  const dims = t.dims.map(Number);
  let type: NonFiniteWeight['type'];
  let found: { index: number; count: number; value: string } | undefined;
  switch (t.dataType) {
    case DataType.FLOAT:
      type = 'float32';
      found = raw ? firstNonFinite(raw, type) : scanFloats(t.floatData);
      break;
    case DataType.FLOAT16:
    case DataType.BFLOAT16: {
      type = t.dataType === DataType.FLOAT16 ? 'float16' : 'bfloat16';
      found = raw ? firstNonFinite(raw, type) : scan16(t.int32Data, type === 'float16' ? 0x7c00 : 0x7f80, 0x8000);
      break;
    }
    case DataType.DOUBLE:
      type = 'float64';
      found = scanFloats(raw ? new Float64Array(new Uint8Array(raw).buffer) : t.doubleData);
      break;
    default:
      return undefined;
  }
  return found === undefined || found.index < 0 ? undefined : { name: t.name ?? '', type, dims, ...found };
}

/**
 * The model's initializers that hold NaN or ±Inf, in graph order (initializers stored as
 * external data are not in the bytes and are not checked).
 */
export function nonFiniteWeights(model: ModelProto): NonFiniteWeight[] {
  const graph = model.graph as InstanceType<typeof onnx.GraphProto> | null | undefined;
  return (graph?.initializer ?? []).flatMap((t) => scanTensor(t as TensorProto) ?? []);
}

/** One line naming the first broken weight and how many there are. */
export function describeNonFinite(bad: NonFiniteWeight[]): string {
  const f = bad[0]!;
  const more = bad.length > 1 ? ` (and ${bad.length - 1} more tensor${bad.length > 2 ? 's' : ''})` : '';
  return `weight ${f.name} (${f.type} [${f.dims.join(', ')}]) holds ${f.count} NaN or infinite value${f.count === 1 ? '' : 's'}, ` +
    `the first ${f.value} at index ${f.index}${more}: the model file is broken; re-convert or re-download it`;
}
