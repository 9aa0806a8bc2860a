// Measures tiled decoding: peak RSS and time per output size through the real service (in
// process: the ORT worker is a thread, so the process's peak RSS covers it), and how long the
// blending blocks the event loop. Not a test: a 4096² decode takes minutes on a small CPU.
//   node --import tsx scripts/tiled-memory.ts decode 512 [--batch 2] [--model PATH] [--float]
//   node --import tsx scripts/tiled-memory.ts blend 512 [--float]
// Run one size per process: peak RSS is per process (reset once the model is loaded).
import { readFileSync, writeFileSync } from 'node:fs';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import pino from 'pino';
import { buildApp } from '../src/app.js';
import { loadConfig } from '../src/config.js';
import { STEP_VALUES } from '../src/serving/tiled.js';
import { TileAssembler } from '../src/tiling/assemble.js';
import { pixelLayout, planTiles } from '../src/tiling/plan.js';

const { positionals, values } = parseArgs({
  allowPositionals: true,
  options: {
    batch: { type: 'string', default: '2' },
    model: { type: 'string', default: 'test/fixtures/sdvae-ch32/torch-export.onnx' },
    tile: { type: 'string', default: '128' },
    float: { type: 'boolean', default: false },
  },
});
const [mode, sideArg] = positionals;
const side = Number(sideArg ?? 128);
const mib = (kb: number): number => Math.round(kb / 1024);

function status(): { rss: number; hwm: number } {
  const s = readFileSync('/proc/self/status', 'utf8');
  const kb = (k: string): number => Number(new RegExp(`${k}:\\s+(\\d+)`).exec(s)![1]);
  return { rss: kb('VmRSS'), hwm: kb('VmHWM') };
}

/** Resets the kernel's peak-RSS mark, so VmHWM reports the peak from here on. */
function resetPeak(): void {
  writeFileSync('/proc/self/clear_refs', '5');
}

async function decode(): Promise<void> {
  const cfg = loadConfig({
    MODEL_PATH: values.model, MODELS_DIR: '/nonexistent', EXECUTION_PROVIDERS: 'cpu', LOG_LEVEL: 'silent',
    MAX_BATCH_SIZE: values.batch, TILE_LATENT_SIDE: values.tile, REQUEST_TIMEOUT_MS: '3600000', BODY_LIMIT_BYTES: String(256 * 1024 * 1024),
  });
  const app = buildApp({ config: cfg, logger: pino({ level: 'silent' }) });
  await app.ready();
  const runs: string[] = [];
  app.models.onBatch((_m, b) => runs.push(`${b.key}:${b.sampleCount} ${Math.round(b.runMs)}ms`));
  await app.models.load();
  const latents = new Float32Array(4 * side * side);
  for (let i = 0; i < latents.length; i++) latents[i] = Math.sin(i * 0.37) * Math.cos(i * 0.011);
  global.gc?.();
  const before = status();
  resetPeak();
  const loop = monitorEventLoopDelay({ resolution: 10 });
  loop.enable();
  const t0 = performance.now();
  const q = values.float ? 'output_type=pt' : 'output_type=pt&partial_postprocess=1';
  const res = await app.inject({
    method: 'POST', url: `/decode?shape=1,4,${side},${side}&scaling_factor=1&${q}`,
    headers: { 'content-type': 'application/octet-stream' }, payload: Buffer.from(latents.buffer),
  });
  const ms = performance.now() - t0;
  loop.disable();
  const after = status();
  if (res.statusCode !== 200) throw new Error(`${res.statusCode}: ${res.body}`);
  console.log(JSON.stringify({
    mode: 'decode', latent: side, px: side * 8, output: values.float ? 'float32' : 'uint8', model: values.model, maxBatchSize: Number(values.batch),
    shape: res.headers.shape, bytes: res.rawPayload.byteLength, seconds: +(ms / 1000).toFixed(1),
    rssBeforeMiB: mib(before.rss), peakRssMiB: mib(after.hwm), peakOverBaselineMiB: mib(after.hwm - before.rss),
    eventLoopMaxDelayMs: Math.round(loop.max / 1e6), serverTiming: res.headers['server-timing'], runs,
  }));
  await app.close();
}

/**
 * The blending alone on synthetic tiles, a whole tile per step and in the service's steps of
 * STEP_VALUES: the longest step is the longest the event loop is blocked.
 */
function blend(): void {
  const grid = planTiles(side, side, Number(values.tile), 0.25);
  const kind = values.float ? 'float' : 'rgb';
  const out: Record<string, number> = {};
  for (const [name, budget] of [['wholeTile', Infinity], ['chunked', STEP_VALUES]] as const) {
    const asm = new TileAssembler(grid, 1, 8, kind);
    let max = 0;
    let total = 0;
    for (let i = 0; i < grid.rows.length; i++) {
      for (let j = 0; j < grid.cols.length; j++) {
        const d = new Float32Array(3 * grid.rows[i]!.size * 8 * grid.cols[j]!.size * 8);
        for (let k = 0; k < d.length; k++) d[k] = Math.sin(k * 0.001);
        asm.add(i, j, d);
        for (;;) {
          const t = performance.now();
          const moved = asm.step(budget);
          const ms = performance.now() - t;
          if (!moved) break;
          max = Math.max(max, ms);
          total += ms;
        }
      }
    }
    out[`${name}MaxStepMs`] = +max.toFixed(1);
    out[`${name}TotalMs`] = Math.round(total);
  }
  console.log(JSON.stringify({ mode: 'blend', latent: side, px: pixelLayout(grid, 8).width, output: kind, tiles: grid.rows.length * grid.cols.length, ...out }));
}

if (mode === 'decode') await decode();
else if (mode === 'blend') blend();
else throw new Error('usage: tiled-memory.ts decode|blend LATENT_SIDE [--batch N] [--model PATH] [--tile T] [--float]');
