// A safetensors reader that reads each tensor by its byte range, so converting the VAE out of a
// multi-gigabyte full checkpoint touches only the decoder's few hundred megabytes, and a writer
// for tests and tools. Format: 8-byte little-endian header length, a JSON header, the data.
import { open, type FileHandle } from 'node:fs/promises';
import { openRegularFile } from '../files.js';
import { firstNonFinite, type FloatType } from '../onnx/finite.js';
import { bfloat16BitsToFloat32, halfBitsToFloat32, toFloat16Bits } from '../tensor/dtype.js';

export type StDtype = 'F32' | 'F16' | 'BF16';
const ITEM_SIZE: Record<string, number> = {
  F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1,
};
// A header is JSON text; anything this large is a corrupt length field, not a real header.
const MAX_HEADER_BYTES = 100 * 1024 * 1024;

const FLOAT_TYPE: Record<StDtype, FloatType> = { F32: 'float32', F16: 'float16', BF16: 'bfloat16' };

export interface OpenOptions {
  /** Read tensors holding NaN or ±Inf (each reported once through `warn`) instead of refusing them. */
  allowNonFinite?: boolean;
  warn?: (message: string) => void;
}

/** A tensor holds NaN or ±Inf: a model converted from it would decode every input to NaN. */
export class NonFiniteTensorError extends Error {
  override name = 'NonFiniteTensorError';
}

export interface TensorInfo {
  name: string;
  dtype: string;
  shape: number[];
  /** Absolute byte offsets in the file. */
  begin: number;
  end: number;
}

export class SafetensorsFile {
  private constructor(
    readonly path: string,
    private readonly handle: FileHandle,
    private readonly tensors: Map<string, TensorInfo>,
    readonly metadata: Record<string, string>,
    private readonly opts: OpenOptions,
  ) {}

  /**
   * Opens a checkpoint and checks its header: a regular file (a link followed once; a FIFO,
   * device or folder is refused before it is opened), each tensor's byte range within the file,
   * the ranges back to back from the start of the data to its end with neither overlap nor gap
   * (the rule of the reference implementation, huggingface/safetensors `validate`).
   * @throws Error naming the file and the tensor(s)
   */
  static async open(path: string, opts: OpenOptions = {}): Promise<SafetensorsFile> {
    const handle = await openRegularFile(path, Number.MAX_SAFE_INTEGER);
    try {
      const { size } = await handle.stat();
      if (size < 8) throw new Error(`${path} is not a safetensors file: ${size} bytes, shorter than the 8-byte header length`);
      const lenBuf = Buffer.alloc(8);
      await handle.read(lenBuf, 0, 8, 0);
      const headerLen = Number(lenBuf.readBigUInt64LE(0));
      if (headerLen > MAX_HEADER_BYTES) throw new Error(`${path} is not a safetensors file: header length ${headerLen} is implausible`);
      if (8 + headerLen > size) {
        throw new Error(`${path} is truncated: the header needs ${8 + headerLen} bytes but the file has ${size}`);
      }
      const headerBuf = Buffer.alloc(headerLen);
      await handle.read(headerBuf, 0, headerLen, 8);
      const { tensors, metadata } = parseHeader(path, headerBuf, 8 + headerLen, size);
      return new SafetensorsFile(path, handle, tensors, metadata, opts);
    } catch (err) {
      await handle.close();
      throw err;
    }
  }

  keys(): string[] {
    return [...this.tensors.keys()];
  }

  info(name: string): TensorInfo | undefined {
    return this.tensors.get(name);
  }

  /** The tensor's bytes as stored (little-endian), read from its own byte range only. */
  async readRaw(name: string): Promise<Buffer> {
    const t = this.tensors.get(name);
    if (!t) throw new Error(`${this.path}: no tensor named ${name}`);
    const buf = Buffer.alloc(t.end - t.begin);
    const { bytesRead } = await this.handle.read(buf, 0, buf.length, t.begin);
    if (bytesRead !== buf.length) throw new Error(`${this.path} is truncated: tensor ${name} ends past the end of the file`);
    return buf;
  }

  private readonly warned = new Set<string>();

  /** The tensor's bytes, refused (or reported once) when any value is NaN or ±Inf. */
  private async readFinite(name: string, dtype: StDtype): Promise<Buffer> {
    const raw = await this.readRaw(name);
    const bad = firstNonFinite(raw, FLOAT_TYPE[dtype]);
    if (!bad) return raw;
    const t = this.tensors.get(name)!;
    const what = `tensor ${name} (${dtype} [${t.shape.join(', ')}]) holds ${bad.count} NaN or infinite value${bad.count === 1 ? '' : 's'}, the first ${bad.value} at index ${bad.index}`;
    if (!this.opts.allowNonFinite) {
      throw new NonFiniteTensorError(`${this.path}: ${what}; the converted model would decode every input to NaN (pass --allow-nan to convert it anyway)`);
    }
    if (!this.warned.has(name)) this.opts.warn?.(`${this.path}: ${what}; converting it anyway (--allow-nan)`);
    this.warned.add(name);
    return raw;
  }

  async readFloat32(name: string): Promise<Float32Array> {
    const dtype = this.floatDtype(name);
    const raw = await this.readFinite(name, dtype);
    if (dtype === 'F32') return new Float32Array(alignedCopy(raw).buffer);
    const bits = new Uint16Array(alignedCopy(raw).buffer);
    return dtype === 'F16' ? halfBitsToFloat32(bits) : bfloat16BitsToFloat32(bits);
  }

  /** The tensor as IEEE float16 bits; float16 data is copied bit for bit, other types rounded. */
  async readFloat16(name: string): Promise<Uint16Array> {
    if (this.floatDtype(name) === 'F16') return new Uint16Array(alignedCopy(await this.readFinite(name, 'F16')).buffer);
    return toFloat16Bits(await this.readFloat32(name));
  }

  close(): Promise<void> {
    return this.handle.close();
  }

  private floatDtype(name: string): StDtype {
    const dtype = this.tensors.get(name)?.dtype;
    if (dtype !== 'F32' && dtype !== 'F16' && dtype !== 'BF16') {
      throw new Error(`${this.path}: tensor ${name} has dtype ${String(dtype)}; only F32, F16 and BF16 are supported`);
    }
    return dtype;
  }
}

function parseHeader(path: string, buf: Buffer, dataStart: number, fileSize: number) {
  let json: unknown;
  try {
    json = JSON.parse(buf.toString('utf8'));
  } catch (err) {
    throw new Error(`${path} has a bad safetensors header: ${(err as Error).message}`);
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    throw new Error(`${path} has a bad safetensors header: not a JSON object`);
  }
  const tensors = new Map<string, TensorInfo>();
  let metadata: Record<string, string> = {};
  for (const [name, value] of Object.entries(json as Record<string, unknown>)) {
    if (name === '__metadata__') {
      metadata = value as Record<string, string>;
      continue;
    }
    const v = value as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    const shape = v.shape;
    const offsets = v.data_offsets;
    const item = typeof v.dtype === 'string' ? ITEM_SIZE[v.dtype] : undefined;
    if (item === undefined || !isUintArray(shape) || !isUintArray(offsets) || offsets.length !== 2) {
      throw new Error(`${path} has a bad safetensors header: entry ${name} needs a known dtype, a shape and two data_offsets`);
    }
    const [b, e] = offsets as [number, number];
    const numel = shape.reduce((a, d) => a * d, 1);
    if (e < b || e - b !== numel * item) {
      throw new Error(`${path} has a bad safetensors header: tensor ${name} [${shape.join(', ')}] ${String(v.dtype)} spans ${e - b} bytes, expected ${numel * item}`);
    }
    if (dataStart + e > fileSize) {
      throw new Error(`${path} is truncated: tensor ${name} needs bytes up to ${dataStart + e} but the file has ${fileSize}`);
    }
    tensors.set(name, { name, dtype: v.dtype as string, shape, begin: dataStart + b, end: dataStart + e });
  }
  // back to back from the data's start to the file's end: an overlap would alias two tensors
  let at = dataStart;
  let prev: TensorInfo | undefined;
  for (const t of [...tensors.values()].sort((x, y) => x.begin - y.begin || x.end - y.end)) {
    if (t.begin !== at) {
      const rel = (n: number) => n - dataStart;
      throw new Error(`${path} has a bad safetensors header: tensor ${t.name} starts at data offset ${rel(t.begin)}, ` +
        (t.begin < at ? `inside ${prev!.name} (${rel(prev!.begin)}–${rel(prev!.end)}): tensors overlap` : `leaving a gap after ${prev ? `${prev.name}, which ends at ${rel(at)}` : 'the header'}`));
    }
    at = t.end;
    prev = t;
  }
  if (at !== fileSize) throw new Error(`${path} has a bad safetensors header: the tensors end at byte ${at} but the file has ${fileSize}`);
  return { tensors, metadata };
}

function isUintArray(v: unknown): v is number[] {
  return Array.isArray(v) && v.every((d) => Number.isSafeInteger(d) && d >= 0);
}

// Typed-array views need an aligned offset; Buffer.alloc may hand out a slice of a shared pool.
function alignedCopy(buf: Buffer): Uint8Array {
  const out = new Uint8Array(buf.length);
  out.set(buf);
  return out;
}

export interface TensorToWrite {
  name: string;
  dtype: StDtype;
  shape: number[];
  /** Float32Array for F32; the raw 16-bit patterns for F16 and BF16. */
  data: Float32Array | Uint16Array;
}

/** Writes tensors one by one after the header, never concatenating them in memory. */
export async function writeSafetensors(path: string, tensors: TensorToWrite[], metadata?: Record<string, string>): Promise<void> {
  const header: Record<string, unknown> = metadata ? { __metadata__: metadata } : {};
  let offset = 0;
  for (const t of tensors) {
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.data.byteLength] };
    offset += t.data.byteLength;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8); // the format pads the header to 8 bytes with spaces
  const head = Buffer.alloc(8 + Buffer.byteLength(json));
  head.writeBigUInt64LE(BigInt(Buffer.byteLength(json)), 0);
  head.write(json, 8, 'utf8');
  const fh = await open(path, 'w');
  try {
    await fh.write(head);
    for (const t of tensors) await fh.write(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
  } finally {
    await fh.close();
  }
}

