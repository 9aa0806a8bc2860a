// A small .npy reader and writer (format 1.0, 2.0 and 3.0; <f4, <f2, |u1; C order) for the
// fixtures, tests and tools. float16 stays as raw bits in a Uint16Array: Node 20 has no Float16Array.
import { readFile, writeFile } from 'node:fs/promises';

export type NpyDtype = '<f4' | '<f2' | '|u1';
export type NpyData = Float32Array | Uint16Array | Uint8Array;

export interface NpyArray {
  dtype: NpyDtype;
  shape: number[];
  data: NpyData;
}

const MAGIC = Buffer.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]); // \x93NUMPY
const ITEM: Record<NpyDtype, number> = { '<f4': 4, '<f2': 2, '|u1': 1 };

export interface NpyHeader {
  dtype: NpyDtype;
  shape: number[];
  /** Where the data starts in the file. */
  dataStart: number;
  /** The data's byte count, from shape and dtype; the file must end right after it. */
  dataBytes: number;
}

const DTYPE_NAMES: Record<NpyDtype, string> = { '<f4': 'little-endian float32 (<f4)', '<f2': 'little-endian float16 (<f2)', '|u1': 'uint8 (|u1)' };
export const NPY_DTYPES: readonly NpyDtype[] = ['<f4', '<f2', '|u1'];

/**
 * Reads and checks the header only: the service checks shape and dtype before touching the data.
 * `accept` is the dtypes the caller can use; the error for any other names only those.
 * @throws Error naming `what` for a bad magic, version, header, dtype, Fortran order or data length
 */
export function parseNpyHeader(buf: Uint8Array, what = 'the .npy data', accept: readonly NpyDtype[] = NPY_DTYPES): NpyHeader {
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  if (b.length < 10 || !b.subarray(0, 6).equals(MAGIC)) throw new Error(`${what} is not a .npy file (bad magic)`);
  const major = b[6]!;
  if (major < 1 || major > 3) throw new Error(`${what}: unsupported .npy format version ${major}`);
  const lenBytes = major === 1 ? 2 : 4;
  if (b.length < 8 + lenBytes) throw new Error(`${what} is truncated inside its header`);
  const headerLen = major === 1 ? b.readUInt16LE(8) : b.readUInt32LE(8);
  const dataStart = 8 + lenBytes + headerLen;
  if (dataStart > b.length) throw new Error(`${what} is truncated inside its header`);
  const header = b.subarray(8 + lenBytes, dataStart).toString(major === 3 ? 'utf8' : 'latin1');

  const descr = /'descr'\s*:\s*'([^']*)'/.exec(header)?.[1];
  const fortran = /'fortran_order'\s*:\s*(True|False)/.exec(header)?.[1];
  const shapeText = /'shape'\s*:\s*\(([^)]*)\)/.exec(header)?.[1];
  if (descr === undefined || fortran === undefined || shapeText === undefined) {
    throw new Error(`${what}: malformed .npy header ${JSON.stringify(header.trim())}`);
  }
  // numpy writes '<u1' or '|u1' for bytes and '=f4' on little-endian hosts is rare but legal
  const dtype = ({ '<f4': '<f4', '<f2': '<f2', '|u1': '|u1', '<u1': '|u1' } as Record<string, NpyDtype>)[descr];
  if (!dtype || !accept.includes(dtype)) {
    const names = accept.map((d) => DTYPE_NAMES[d]);
    throw new Error(`${what}: dtype ${descr} is not supported: use ${names.slice(0, -1).join(', ')}${names.length > 1 ? ' or ' : ''}${names.at(-1)}`);
  }
  if (fortran === 'True') throw new Error(`${what}: Fortran-ordered arrays are not supported`);
  const dims = shapeText.split(',').map((s) => s.trim()).filter((s) => s.length > 0);
  // Decimal digits only: Number() would also read '0x10' and '1e3'.
  if (dims.some((d) => !/^\d{1,15}$/.test(d))) throw new Error(`${what}: bad shape (${shapeText})`);
  const shape = dims.map(Number);

  const dataBytes = shape.reduce((a, d) => a * d, 1) * ITEM[dtype];
  const got = b.length - dataStart;
  if (got < dataBytes) {
    throw new Error(`${what} is truncated: shape (${shape.join(', ')}) ${dtype} needs ${dataBytes} data bytes, got ${got}`);
  }
  // Trailing bytes mean the writer and this header disagree: refuse rather than guess which is right.
  if (got > dataBytes) {
    throw new Error(`${what} has ${got - dataBytes} bytes after its data: shape (${shape.join(', ')}) ${dtype} needs ${dataBytes} data bytes, got ${got}`);
  }
  return { dtype, shape, dataStart, dataBytes };
}

export function parseNpy(buf: Uint8Array, what = 'the .npy data'): NpyArray {
  const { dtype, shape, dataStart, dataBytes } = parseNpyHeader(buf, what);
  const copy = new Uint8Array(dataBytes); // an aligned copy: the data offset is 16- or 64-aligned only by convention
  copy.set(buf.subarray(dataStart, dataStart + dataBytes));
  const data = dtype === '<f4' ? new Float32Array(copy.buffer) : dtype === '<f2' ? new Uint16Array(copy.buffer) : copy;
  return { dtype, shape, data };
}

export async function readNpy(path: string): Promise<NpyArray> {
  return parseNpy(await readFile(path), path);
}

/** Encodes as format 1.0 with the header padded so the data starts 64-byte aligned, as numpy does. */
export function encodeNpy(arr: NpyArray): Buffer {
  const shape = arr.shape.length === 1 ? `(${arr.shape[0]},)` : `(${arr.shape.join(', ')})`;
  let header = `{'descr': '${arr.dtype}', 'fortran_order': False, 'shape': ${shape}, }`;
  const unpadded = 10 + header.length + 1;
  header += ' '.repeat((64 - (unpadded % 64)) % 64) + '\n';
  const head = Buffer.alloc(10 + header.length);
  MAGIC.copy(head, 0);
  head[6] = 1;
  head[7] = 0;
  head.writeUInt16LE(header.length, 8);
  head.write(header, 10, 'latin1');
  return Buffer.concat([head, new Uint8Array(arr.data.buffer, arr.data.byteOffset, arr.data.byteLength)]);
}

export async function writeNpy(path: string, arr: NpyArray): Promise<void> {
  await writeFile(path, encodeNpy(arr));
}
