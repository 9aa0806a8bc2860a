// Builds the real service for tests: the real ONNX Runtime session on the fixture decoder (or any
// model), real sharp, requests through app.inject() or a real socket.
import path from 'node:path';
import type { TestContext } from 'node:test';
import pino from 'pino';
import sharp from 'sharp';
import { buildApp } from '../../src/app.js';
import type { BatchInfo } from '../../src/batching/batcher.js';
import { loadConfig } from '../../src/config.js';
import type { ModelHost } from '../../src/plugins/models.js';
import type { ModelRegistry } from '../../src/serving/registry.js';
import { readNpy } from '../../src/tensor/npy.js';

import { FIXTURES, FIXTURE_MODEL, tempDir } from './paths.js';

export { FIXTURES, FIXTURE_MODEL, REPO, tempDir } from './paths.js';

export interface TestService {
  app: ReturnType<typeof buildApp>;
  /** The models plugin's host: registry, draining, in-flight count. */
  host: ModelHost;
  registry: ModelRegistry;
  batches: (BatchInfo & { model: string })[];
}

/** The service on the fixture decoder (unless MODEL_PATH says otherwise), CPU, silent logs. */
export async function startService(t: TestContext, env: Record<string, string> = {}): Promise<TestService> {
  const cfg = loadConfig({
    MODEL_PATH: FIXTURE_MODEL,
    MODELS_DIR: tempDir(t),
    EXECUTION_PROVIDERS: 'cpu',
    LOG_LEVEL: 'silent',
    // one 8×8 check instead of the CPU's 64×64 warm-up: tests start hundreds of models
    WARMUP_LATENT_SIZES: '8x8',
    ...env,
  });
  const log = pino({ level: 'silent' });
  const batches: TestService['batches'] = [];
  const app = buildApp({ config: cfg, logger: log });
  t.after(() => app.close());
  await app.ready();
  const host = app.models;
  host.onBatch((model, info) => batches.push({ model, ...info }));
  const registry = await host.load();
  return { app, host, registry, batches };
}

export interface Fixture {
  /** [2, 4, 16, 16] decoder-space latents. */
  latents: Float32Array;
  /** [2, 3, 128, 128] float decoder output. */
  reference: Float32Array;
  /** [2, 128, 128, 3] uint8 postprocessed. */
  rgb: Uint8Array;
}

let fixture: Promise<Fixture> | undefined;
export function loadFixture(): Promise<Fixture> {
  fixture ??= (async () => ({
    latents: (await readNpy(path.join(FIXTURES, 'latents.npy'))).data as Float32Array,
    reference: (await readNpy(path.join(FIXTURES, 'reference.npy'))).data as Float32Array,
    rgb: (await readNpy(path.join(FIXTURES, 'reference-rgb.npy'))).data as Uint8Array,
  }))();
  return fixture;
}

export const LATENT = 4 * 16 * 16;
export const RGB = 128 * 128 * 3;

/** Sample i of the fixture latents, optionally scaled (distinct latents for batching tests). */
export function sampleLatents(f: Fixture, i: number, scale = 1): Float32Array {
  return f.latents.slice(i * LATENT, (i + 1) * LATENT).map((v) => v * scale);
}

export const bytesOf = (a: Float32Array | Uint8Array): Buffer => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

/** Decodes an encoded image back to RGB bytes. */
export async function pixels(img: Buffer): Promise<{ data: Buffer; width: number; height: number; channels: number }> {
  const { data, info } = await sharp(img).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  return { data, width: info.width, height: info.height, channels: info.channels };
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} != ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}
