// Shared by the conversion and pull tests: the golden fixtures (test/fixtures), temp folders,
// running a decoder on ONNX Runtime, and rewriting a checkpoint's tensors.
import { readFile } from 'node:fs/promises';
import '../../src/inference/telemetry.cjs'; // as in the service: ONNX Runtime telemetry off
import * as ort from 'onnxruntime-node';
import { readNpy } from '../../src/tensor/npy.js';
import { decodeModel } from '../../src/onnx/graph.js';
import { SafetensorsFile, writeSafetensors, type TensorToWrite } from '../../src/convert/safetensors.js';

import { fixture } from './paths.js';

export { REPO as REPO_ROOT, FIXTURES, fixture, tempDir } from './paths.js';

export async function runDecoder(modelPath: string, latents: Float32Array, dims: number[]): Promise<{ data: Float32Array; dims: readonly number[] }> {
  const session = await ort.InferenceSession.create(modelPath);
  try {
    const out = await session.run({ latent_sample: new ort.Tensor('float32', latents, dims) });
    const sample = out.sample!;
    return { data: sample.data as Float32Array, dims: sample.dims };
  } finally {
    await session.release();
  }
}

export async function modelMetadata(modelPath: string): Promise<Record<string, string>> {
  const model = decodeModel(await readFile(modelPath));
  return Object.fromEntries(model.metadataProps.map((p) => [p.key ?? '', p.value ?? '']));
}

/** Runs the model on the fixture latents; returns max absolute error and PSNR (data range 2, [-1, 1]). */
export async function compareWithReference(modelPath: string): Promise<{ maxAbs: number; psnr: number; dims: readonly number[] }> {
  const latents = await readNpy(fixture('latents.npy'));
  const reference = (await readNpy(fixture('reference.npy'))).data as Float32Array;
  const { data, dims } = await runDecoder(modelPath, latents.data as Float32Array, latents.shape);
  if (data.length !== reference.length) throw new Error(`output has ${data.length} values, reference ${reference.length}`);
  let maxAbs = 0;
  let se = 0;
  for (let i = 0; i < data.length; i++) {
    const d = Math.abs(data[i]! - reference[i]!);
    if (!(d <= maxAbs)) maxAbs = d; // NaN propagates as a failure
    se += d * d;
  }
  return { maxAbs, psnr: 10 * Math.log10(4 / (se / data.length)), dims };
}

/** Copies every tensor of a checkpoint (F32 or F16 kept as is) through `edit` into a new file. */
export async function rewriteCheckpoint(src: string, dest: string, edit: (tensors: TensorToWrite[]) => TensorToWrite[]): Promise<string> {
  const file = await SafetensorsFile.open(src);
  try {
    const tensors: TensorToWrite[] = [];
    for (const name of file.keys()) {
      const { dtype, shape } = file.info(name)!;
      tensors.push(dtype === 'F16'
        ? { name, dtype: 'F16', shape, data: await file.readFloat16(name) }
        : { name, dtype: 'F32', shape, data: await file.readFloat32(name) });
    }
    await writeSafetensors(dest, edit(tensors));
    return dest;
  } finally {
    await file.close();
  }
}
