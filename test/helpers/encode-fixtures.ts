// The encode fixtures (test/fixtures/encode, from the team's shared set; see its README): paths,
// reading a fixture PNG as the encoder's input, running an encoder on ONNX Runtime.
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import { decodeImage, readImageHeader } from '../../src/images/read.js';
import { readNpy } from '../../src/tensor/npy.js';
import { REPO } from './paths.js';

export const ENCODE_FIXTURES = path.join(REPO, 'test', 'fixtures', 'encode');
export const encodeFixture = (file: string): string => path.join(ENCODE_FIXTURES, file);

/** A fixture PNG as float32 [1, 3, H, W] in [-1, 1], through the service's own image reader. */
export async function imageTensor(file: string): Promise<{ data: Float32Array; dims: number[] }> {
  const bytes = await readFile(encodeFixture(file));
  const header = await readImageHeader(bytes, { maxPixels: 1 << 24, factor: 8, resize: false });
  const data = new Float32Array(3 * header.width * header.height);
  await decodeImage(bytes, header, data);
  return { data, dims: [1, 3, header.height, header.width] };
}

export async function runEncoder(model: string, input: { data: Float32Array; dims: number[] }): Promise<Record<string, Float32Array>> {
  const session = await ort.InferenceSession.create(model);
  try {
    const out = await session.run({ sample: new ort.Tensor('float32', input.data, input.dims) });
    return Object.fromEntries(Object.entries(out).map(([k, v]) => [k, v.data as Float32Array]));
  } finally {
    await session.release();
  }
}

export async function npy(file: string): Promise<Float32Array> {
  return (await readNpy(encodeFixture(file))).data as Float32Array;
}

export function maxAbs(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} != ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i]! - b[i]!);
    if (!(d <= m)) m = d; // NaN fails
  }
  return m;
}
