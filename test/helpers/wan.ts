// The Wan fixture (test/fixtures/wan, from the team's shared fixtures): both weight layouts
// converted into one model repository, and the comparisons the tests make.
import assert from 'node:assert/strict';
import path from 'node:path';
import type { TestContext } from 'node:test';
import { convertCheckpoint } from '../../src/convert/convert.js';
import { readNpy, type NpyArray } from '../../src/tensor/npy.js';
import { REPO, tempDir } from './paths.js';

export const WAN = path.join(REPO, 'test', 'fixtures', 'wan');
export const wan = (f: string): string => path.join(WAN, f);
export const FLOAT_TOLERANCE = 1e-4;

/** MODELS_DIR with `wan-diffusers` and `wan-original` (the two layouts, converted). */
export async function wanModels(t: TestContext): Promise<string> {
  const dir = tempDir(t);
  await convertCheckpoint({ weights: wan('diffusers.safetensors'), out: path.join(dir, 'wan-diffusers', 'model.onnx'), family: 'wan2.1' });
  await convertCheckpoint({ weights: wan('original.safetensors'), out: path.join(dir, 'wan-original', 'model.onnx'), family: 'qwen-image' });
  return dir;
}

export const npy = (f: string): Promise<NpyArray> => readNpy(wan(f));

/** Max |a − b| (NaN fails); asserts equal lengths. */
export function maxAbs(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length, 'lengths');
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i]! - b[i]!);
    if (!(d <= m)) m = d;
  }
  return m;
}
