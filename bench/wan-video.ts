// The streaming Wan 2.1 VAE decoder on CPU, through the service's own worker path (ServedModel,
// batcher, worker, caches kept in the worker): seconds per output frame and peak memory by clip
// length, with seeded weights of the real width (base_dim 96: 384/192/96 channels). Each clip
// length runs in its own process so that its peak RSS (ORT's worker thread included) is its own.
//   node --import tsx bench/wan-video.ts [--dir bench/results/tmp/wan96] [--side 8 | --side 60x104] [--frames 3,21]
//     [--threads 2] [--provider cpu|cuda]
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import pino from 'pino';
import { loadConfig } from '../src/config.js';
import { convertCheckpoint } from '../src/convert/convert.js';
import { writeSafetensors, type TensorToWrite } from '../src/convert/safetensors.js';
import { buildWanStepGraph } from '../src/convert/wan-graph.js';
import type { WanConfig } from '../src/convert/wan-weights.js';
import { ModelRegistry } from '../src/serving/registry.js';
import { toFloat16Bits } from '../src/tensor/dtype.js';
import { decodeVideo } from '../src/video/decoder.js';
import { gaussian, mulberry32 } from '../test/helpers/shared.js';

/** Wan 2.1's decoder at base_dim `d` (96 in the released VAE). */
export function wanConfig(d: number): WanConfig {
  return {
    latentChannels: 16,
    midChannels: 4 * d,
    upBlocks: [
      { inChannels: 4 * d, outChannels: 4 * d, resnets: 3, upsample: 'upsample3d' },
      { inChannels: 2 * d, outChannels: 4 * d, resnets: 3, upsample: 'upsample3d' },
      { inChannels: 2 * d, outChannels: 2 * d, resnets: 3, upsample: 'upsample2d' },
      { inChannels: d, outChannels: d, resnets: 3, upsample: null },
    ],
    outChannels: d,
  };
}

/** Seeded decoder weights (diffusers names, float16): conv std 1/sqrt(fan_in), RMS gains near 1. */
function seededWan(cfg: WanConfig): TensorToWrite[] {
  const normal = gaussian(mulberry32(2101));
  return buildWanStepGraph(cfg).weights.map(({ name, shape }) => {
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    const fanIn = shape.slice(1).reduce((a, b) => a * b, 1);
    for (let i = 0; i < data.length; i++) data[i] = name.endsWith('.gamma') ? 1 + 0.1 * normal() : shape.length > 1 ? normal() / Math.sqrt(fanIn) : 0.02 * normal();
    return { name, dtype: 'F16', shape, data: toFloat16Bits(data) };
  });
}

async function child(model: string, side: string, frames: number, threads: number, provider: string): Promise<void> {
  const [h, w] = side.includes('x') ? side.split('x').map(Number) as [number, number] : [Number(side), Number(side)];
  const cfg = loadConfig({ MODEL_PATH: model, MODELS_DIR: mkdtempSync(path.join(os.tmpdir(), 'wan-bench-')), EXECUTION_PROVIDERS: provider, ORT_INTRA_OP_THREADS: String(threads), REQUEST_TIMEOUT_MS: '3600000', LOG_LEVEL: 'silent' });
  const registry = await ModelRegistry.load(cfg, pino({ level: 'silent' }));
  const m = registry.get('model')!;
  const rssLoaded = process.memoryUsage().rss;
  const normal = gaussian(mulberry32(7));
  const data = Float32Array.from({ length: 16 * frames * h * w }, () => normal());
  const stepMs: number[] = [];
  let out = 0;
  let t = performance.now();
  for await (const s of decodeVideo(m, { data, shape: [1, 16, frames, h, w] }, ['image'])) {
    stepMs.push(performance.now() - t);
    out += s.frames;
    t = performance.now();
  }
  await registry.close();
  const later = stepMs.slice(1);
  console.log(JSON.stringify({
    side, provider: m.io.provider, frames, outputFrames: out,
    firstStepS: +(stepMs[0]! / 1000).toFixed(2),
    laterStepS: +(later.reduce((a, b) => a + b, 0) / later.length / 1000).toFixed(2),
    secondsPerOutputFrame: +(stepMs.reduce((a, b) => a + b, 0) / out / 1000).toFixed(3),
    rssAfterLoadMiB: Math.round(rssLoaded / 2 ** 20),
    peakRssMiB: Math.round(process.resourceUsage().maxRSS / 1024),
  }));
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: {
    dir: { type: 'string', default: 'bench/results/tmp/wan96' }, side: { type: 'string', default: '8' }, frames: { type: 'string', default: '3,21' },
    threads: { type: 'string', default: '2' }, provider: { type: 'string', default: 'cpu' }, 'base-dim': { type: 'string', default: '96' }, child: { type: 'string' },
  } });
  if (values.child) return child(values.child, values.side, Number(values.frames), Number(values.threads), values.provider);
  const model = path.join(values.dir, 'model', 'model.onnx');
  if (!existsSync(model)) {
    mkdirSync(values.dir, { recursive: true });
    const weights = path.join(values.dir, 'wan-seeded.safetensors');
    await writeSafetensors(weights, seededWan(wanConfig(Number(values['base-dim']))));
    const r = await convertCheckpoint({ weights, out: model, family: 'wan2.1' });
    console.error(`converted ${r.architecture} in ${r.seconds.toFixed(1)} s (${Math.round(r.bytes / 2 ** 20)} MiB)`);
  }
  const self = fileURLToPath(import.meta.url);
  for (const frames of values.frames.split(',').map(Number)) {
    const r = spawnSync(process.execPath, ['--import', 'tsx', self, '--child', model, '--side', values.side, '--frames', String(frames), '--threads', values.threads, '--provider', values.provider], { stdio: ['ignore', 'inherit', 'inherit'] });
    if (r.status !== 0) throw new Error(`the run with ${frames} latent frames failed (${r.status})`);
  }
}

await main();
