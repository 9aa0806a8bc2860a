// Encode beside decode on one model, through the real service in this process (app.inject: no
// socket, so the numbers are the service's own): images/s at concurrency 1, per-stage times from
// Server-Timing (medians), and the process's peak RSS while each size runs, above its RSS just
// before (both sessions live in this process; ORT's arena is off, so a run's memory is given back).
//   node --import tsx scripts/bench-encode.ts [--weights W.safetensors] [--sizes 256,512,1024]
//     [--seconds 20] [--max-iters 20] [--threads 0]
// Weights: the encode fixture by default (ch 32); a full-width one from
//   node --import tsx scripts/make-seeded-vae.ts /tmp/ch128.safetensors --ch 128 --encoder
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import pino from 'pino';
import sharp from 'sharp';
import { buildApp } from '../src/app.js';
import { loadConfig } from '../src/config.js';
import { convertCheckpoint } from '../src/convert/convert.js';

const { values } = parseArgs({
  options: {
    weights: { type: 'string', default: 'test/fixtures/encode/sd-ldm.safetensors' },
    sizes: { type: 'string', default: '256,512,1024' },
    seconds: { type: 'string', default: '20' },
    'max-iters': { type: 'string', default: '20' },
    threads: { type: 'string', default: '0' },
  },
});

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.floor(s.length / 2)]! : NaN;
};

function stages(header: string | undefined): Record<string, number> {
  const out: Record<string, number> = {};
  for (const part of (header ?? '').split(',')) {
    const m = /^\s*(\w+);dur=([\d.]+)/.exec(part);
    if (m) out[m[1]!] = Number(m[2]);
  }
  return out;
}

/** A smooth noise image (compresses like a photo, not like a flat colour). */
async function image(side: number): Promise<Buffer> {
  const px = Buffer.alloc(side * side * 3);
  for (let y = 0; y < side; y++) for (let x = 0; x < side; x++) for (let c = 0; c < 3; c++) {
    px[(y * side + x) * 3 + c] = Math.round(128 + 90 * Math.sin(x / (11 + c) + y / 17) * Math.cos(y / (13 + 2 * c) - x / 29));
  }
  return sharp(px, { raw: { width: side, height: side, channels: 3 } }).png().toBuffer();
}

async function main(): Promise<void> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'bench-encode-'));
  try {
    const t0 = performance.now();
    const conv = await convertCheckpoint({ weights: values.weights, out: path.join(dir, 'vae', 'model.onnx') });
    console.log(`converted ${values.weights}: ${conv.architecture}; ${conv.encoder?.architecture} in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    const sizes = values.sizes.split(',').map(Number);
    const maxSide = Math.max(...sizes) / 8;
    const cfg = loadConfig({
      MODELS_DIR: dir, EXECUTION_PROVIDERS: 'cpu', LOG_LEVEL: 'silent', REQUEST_TIMEOUT_MS: '600000',
      TILE_LATENT_SIDE: '0', MAX_UNTILED_LATENT_SIDE: String(maxSide), MAX_LATENT_SIDE: String(maxSide),
      ORT_INTRA_OP_THREADS: values.threads, BODY_LIMIT_BYTES: String(256 * 2 ** 20),
    });
    const app = buildApp({ config: cfg, logger: pino({ level: 'silent' }) });
    await app.ready();
    await app.models.load();
    const idle = process.memoryUsage.rss();
    console.log(`idle RSS ${(idle / 2 ** 20).toFixed(0)} MiB (both sessions loaded)\n`);
    console.log('| direction | image | runs | img/s (c=1) | parse ms | queue ms | infer ms | encode ms | total ms | peak RSS − RSS before, MiB |');
    console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |');
    for (const side of sizes) {
      const png = await image(side);
      let latents: Buffer | undefined;
      for (const direction of ['encode', 'decode'] as const) {
        const run = async () => {
          const res = direction === 'encode'
            ? await app.inject({ method: 'POST', url: '/encode', payload: png })
            : await app.inject({ method: 'POST', url: `/decode?shape=1,4,${side / 8},${side / 8}&format=png`, payload: latents! });
          if (res.statusCode !== 200) throw new Error(`${direction} ${side}: ${res.statusCode} ${res.body.slice(0, 300)}`);
          if (direction === 'encode') latents = res.rawPayload;
          return stages(res.headers['server-timing'] as string);
        };
        // the phase's own peak: RSS sampled every 10 ms from before its first (warm-up) run
        const before = process.memoryUsage.rss();
        let peak = before;
        const sampler = setInterval(() => { peak = Math.max(peak, process.memoryUsage.rss()); }, 10);
        await run(); // warm: the first run of a shape plans its memory
        const runs: Record<string, number>[] = [];
        const start = performance.now();
        const stop = start + Number(values.seconds) * 1000;
        while (runs.length < Number(values['max-iters']) && (runs.length < 2 || performance.now() < stop)) runs.push(await run());
        const wall = (performance.now() - start) / 1000;
        clearInterval(sampler);
        const m = (k: string): string => median(runs.map((r) => r[k] ?? NaN)).toFixed(1);
        console.log(`| ${direction} | ${side}² | ${runs.length} | ${(runs.length / wall).toFixed(2)} | ${m('parse')} | ${m('queue')} | ${m('infer')} | ${m('encode')} | ${m('total')} | ${((peak - before) / 2 ** 20).toFixed(0)} |`);
      }
    }
    await app.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
