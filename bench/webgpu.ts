// WebGPU (Dawn over Vulkan) through onnxruntime-node, on whatever GPU the machine has: per model
// (the ch=32 fixture and a full-width ch=128 seeded decoder, 64×64 latents → 512² images) and
// precision (fp32, fp16 from convertCheckpoint --fp16), the warm-up time of each batch shape (its
// first run), then images/s and this process's CPU-ms per image at batch 1/4/8/16, with the
// in-graph postprocess the service appends (fetch `image`, uint8 NHWC). Fidelity: the fixture at
// 16×16 latents against reference-rgb.npy (levels off, max). Run by bench/gpu-webgpu.sh; with
// `--provider cpu` it runs the same path on the CPU (a local check of the script).
//
//   node --import tsx bench/webgpu.ts [--provider webgpu] [--seconds 2] [--batches 1,4,8,16] [--no-large] [--out FILE.json]
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import * as ort from 'onnxruntime-node';
import { convertCheckpoint } from '../src/convert/convert.js';
import { writeSafetensors } from '../src/convert/safetensors.js';
import { vulkanMissing } from '../src/inference/providers.js';
import { IMAGE_OUTPUT, withPostprocess } from '../src/onnx/postprocess.js';
import { readNpy } from '../src/tensor/npy.js';
import { toFloat16Bits } from '../src/tensor/dtype.js';
import { seededVae } from '../scripts/make-seeded-vae.js';
import { ROOT, TMP } from './proc.js';

const { values } = parseArgs({
  options: {
    provider: { type: 'string', default: 'webgpu' },
    seconds: { type: 'string', default: '2' },
    batches: { type: 'string', default: '1,4,8,16' },
    'no-large': { type: 'boolean', default: false },
    out: { type: 'string' },
  },
});
const provider = values.provider;
const batches = values.batches.split(',').map(Number);
const seconds = Number(values.seconds);
const FIX = join(ROOT, 'test/fixtures/sdvae-ch32');
const dir = join(TMP, 'models');
mkdirSync(dir, { recursive: true });
const say = (s: string): void => void process.stderr.write(`[webgpu ${new Date().toISOString().slice(11, 19)}] ${s}\n`);

interface Point { model: string; precision: string; batch: number; warmupMs: number; iters: number; msPerBatch: number; imagesPerSec: number; cpuMsPerImage: number }
const result: { provider: string; ort: string; vulkan: string | null; backends: unknown; fidelity: Record<string, number>; points: Point[]; errors: string[] } = {
  provider, ort: ort.env.versions.node ?? '', vulkan: vulkanMissing(), backends: ort.listSupportedBackends(), fidelity: {}, points: [], errors: [],
};
say(`provider ${provider}; vulkan: ${result.vulkan ?? 'loader and driver manifest found'}`);

async function models(): Promise<{ name: string; precision: string; path: string }[]> {
  const out: { name: string; precision: string; path: string }[] = [];
  for (const precision of ['fp32', 'fp16']) {
    const path = join(dir, `fixture-${precision}.onnx`);
    if (!existsSync(path)) await convertCheckpoint({ weights: join(FIX, 'ldm.safetensors'), out: path, fp16: precision === 'fp16' });
    out.push({ name: 'fixture ch32', precision, path });
  }
  if (!values['no-large']) {
    const weights = join(dir, 'sdvae-ch128.safetensors');
    if (!existsSync(weights)) {
      say('writing seeded ch=128 weights');
      await writeSafetensors(weights, seededVae({ ch: 128, chMult: [1, 2, 4, 4], numResBlocks: 2, latentChannels: 4, hasPostQuantConv: true }, { seed: 1 }));
    }
    for (const precision of ['fp32', 'fp16']) {
      const path = join(dir, `sdvae-ch128-${precision}.onnx`);
      if (!existsSync(path)) await convertCheckpoint({ weights, out: path, fp16: precision === 'fp16' });
      out.push({ name: 'full width ch128', precision, path });
    }
  }
  return out;
}

function input(session: ort.InferenceSession, name: string, data: Float32Array, dims: number[]): ort.InferenceSession.FeedsType {
  const half = session.inputMetadata.find((m) => m.name === name && m.isTensor && m.type === 'float16');
  return { [name]: half ? new ort.Tensor('float16', toFloat16Bits(data), dims) : new ort.Tensor('float32', data, dims) };
}

async function measure(m: { name: string; precision: string; path: string }): Promise<void> {
  const { bytes, io } = withPostprocess(readFileSync(m.path));
  const session = await ort.InferenceSession.create(bytes, { executionProviders: [provider], graphOptimizationLevel: 'all', logSeverityLevel: 3 });
  if (m.name.startsWith('fixture')) {
    const lat = await readNpy(join(FIX, 'latents.npy'));
    const ref = (await readNpy(join(FIX, 'reference-rgb.npy'))).data as Uint8Array;
    const got = (await session.run(input(session, io.input, lat.data as Float32Array, [...lat.shape]), [IMAGE_OUTPUT]))[IMAGE_OUTPUT]!.data as Uint8Array;
    let max = 0;
    for (let i = 0; i < ref.length; i++) max = Math.max(max, Math.abs(got[i]! - ref[i]!));
    result.fidelity[`${m.name} ${m.precision}`] = max;
    say(`${m.name} ${m.precision}: max levels off reference-rgb.npy = ${max}`);
  }
  for (const b of batches) {
    const dims = [b, 4, 64, 64];
    const data = new Float32Array(b * 4 * 64 * 64).map((_, i) => Math.sin(i * 0.37));
    const feeds = input(session, io.input, data, dims);
    const w0 = performance.now();
    await session.run(feeds, [IMAGE_OUTPUT]);
    const warmupMs = performance.now() - w0;
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    let iters = 0;
    while (iters < 3 || (performance.now() - t0 < seconds * 1000 && iters < 200)) {
      await session.run(feeds, [IMAGE_OUTPUT]);
      iters++;
    }
    const ms = (performance.now() - t0) / iters;
    const cpu = process.cpuUsage(c0);
    const p: Point = { model: m.name, precision: m.precision, batch: b, warmupMs, iters, msPerBatch: ms, imagesPerSec: (b * 1000) / ms, cpuMsPerImage: (cpu.user + cpu.system) / 1000 / (iters * b) };
    result.points.push(p);
    say(`${m.name} ${m.precision} b=${b}: warm-up ${warmupMs.toFixed(0)} ms, ${p.imagesPerSec.toFixed(1)} img/s, ${p.cpuMsPerImage.toFixed(2)} CPU-ms/img (${iters} runs)`);
  }
  await session.release();
}

for (const m of await models()) {
  try {
    await measure(m);
  } catch (e) {
    const msg = `${m.name} ${m.precision}: ${(e as Error).message.split('\n')[0]}`;
    result.errors.push(msg);
    say(`FAILED ${msg}`);
  }
  if (values.out) writeFileSync(values.out, JSON.stringify(result, null, 1));
}
process.stdout.write(JSON.stringify(result) + '\n');
