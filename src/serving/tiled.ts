// Tiled decoding, the serving part: which requests are tiled, what they queue, and decoding one as
// tiles through the model's batcher. The tiles are ordinary samples there: same-shaped tiles share
// a batch key (`${th}x${tw}`), with each other and with other requests of that latent size; each
// chunk of at most one batch of tiles is its own job, so a chunk's pixels are blended
// (tiling/assemble) as soon as its run is back and released, instead of the whole request's tiles
// piling up. Every tile is reserved before the body is read (queueDemand); the request's deadline
// and signal cover every tile: the first failure aborts the rest.
import { setMaxListeners } from 'node:events';
import type { Demand, ReserveWording } from '../batching/batcher.js';
import type { Config } from '../config.js';
import { ServiceError } from '../errors.js';
import type { OutputName } from '../inference/protocol.js';
import type { DecodeOptions } from '../latents/options.js';
import type { LatentTensor } from '../latents/parse.js';
import { TileAssembler } from '../tiling/assemble.js';
import { copyTile, needsTiling, planTiles, tileGroups, tileStride } from '../tiling/plan.js';
import { batchKey, untiledDemand, type DecodeTicket, type Decoded, type ServedModel } from './served-model.js';

export interface TileSettings {
  tile: number;
  overlap: number;
}

type TilingConfig = Pick<Config, 'tileLatentSide' | 'tileOverlap' | 'maxUntiledLatentSide' | 'maxLatentSide'>;

/**
 * The tile settings for an [N, C, h, w] request (latent sizes, /encode's too), or undefined to run
 * it in one piece; `direction` words the errors. Throws LATENT_TOO_LARGE for latents too large to
 * run in one piece with tiling off, BAD_PARAMETER for a tile size or overlap that cannot tile.
 */
export function tilingFor(shape: readonly number[], opts: Pick<DecodeOptions, 'tileSize' | 'tileOverlap'>, cfg: TilingConfig,
  direction: 'decode' | 'encode' = 'decode'): TileSettings | undefined {
  const [done, doing] = direction === 'decode' ? ['decoded', 'decoding'] : ['encoded', 'encoding'];
  const [, , h, w] = shape as [number, number, number, number];
  const tile = opts.tileSize ?? cfg.tileLatentSide;
  const overlap = opts.tileOverlap ?? cfg.tileOverlap;
  const max = cfg.maxUntiledLatentSide;
  if (tile > max) {
    throw new ServiceError('BAD_PARAMETER', `tile_size=${tile} is over the largest latent side ${done} in one piece (${max}); use 1 to ${max}, or 0 not to tile`);
  }
  if (!needsTiling(h, w, tile)) {
    if (h > max || w > max) {
      const how = tile === 0 ? 'with tiling off (tile_size=0)' : 'in one piece';
      throw new ServiceError('LATENT_TOO_LARGE',
        `latent size ${h}x${w} is over the maximum side of ${max} (${max * 8} px) ${how}; tiled ${doing} (tile_size from 1 to ${max}) allows up to ${cfg.maxLatentSide}`);
    }
    return undefined;
  }
  if (tileStride(tile, overlap) < 1) {
    throw new ServiceError('BAD_PARAMETER', `tile_overlap=${overlap} leaves tiles of ${tile} latents no stride (int(tile_size·(1−tile_overlap)) is 0): lower it`);
  }
  return { tile, overlap };
}

/** What a request reserves in its model's queue: its demands, and how a refusal words them. */
export interface QueueDemand {
  demands: Demand[];
  wording: ReserveWording;
}

/**
 * Everything decoding [N, C, h, w] latents queues: N samples of h×w, or with `tiling` every tile
 * of every sample, one demand per tile shape (tiling/plan's grid). Pure arithmetic on the shape:
 * known from the query string before the body is read.
 */
export function queueDemand(shape: readonly number[], tiling: TileSettings | undefined): QueueDemand {
  if (!tiling) return { demands: [untiledDemand(shape)], wording: {} };
  const [n, , h, w] = shape as [number, number, number, number];
  const grid = planTiles(h, w, tiling.tile, tiling.overlap);
  const demands = tileGroups(grid).map((g) => ({ key: batchKey(g.h, g.w), sampleCount: g.tiles.length * n, cost: g.h * g.w }));
  const what = n === 1 ? `1 latent of ${h}x${w}` : `${n} latents of ${h}x${w}`;
  return { demands, wording: { unit: `tiles of ${tiling.tile} latents (${what})`, advice: 'use larger tiles or fewer latents per request' } };
}

export interface TiledDecodeOptions {
  /** The request's reservation, holding queueDemand(shape, settings). */
  ticket: DecodeTicket;
  deadline?: number;
  signal?: AbortSignal;
  /** Samples per job: a job is at most one batch (MAX_BATCH_SIZE), so each run frees its tiles. */
  maxBatchSize: number;
  /** A batch's latent area (MAX_BATCH_LATENT_PIXELS): large tiles make smaller jobs. */
  maxBatchLatentPixels: number;
}

/**
 * Values blended between yields to the event loop: about 5 ms of work on a 2-core CI machine
 * (a whole 1024² tile is 3 M values, ~100 ms with the uint8 postprocess; scripts/tiled-memory.ts).
 */
export const STEP_VALUES = 1 << 17;

const yieldToLoop = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/**
 * Decodes a tensor as tiles; resolves like ServedModel.decode: uint8 images (fetch 'image') or the
 * float32 NCHW tensor (fetch 'sample'), blended in float32 either way. queueMs is the wait before
 * the first tile ran; runMs the rest, until the image was assembled. The tiles are submitted
 * against `opts.ticket`, which must hold queueDemand(tensor.shape, settings). Throws like
 * ServedModel.decode; NON_FINITE_OUTPUT names the tile.
 */
export async function decodeTiled(model: Pick<ServedModel, 'decode'>, tensor: LatentTensor, settings: TileSettings,
  fetch: OutputName[], opts: TiledDecodeOptions): Promise<Decoded> {
  const t0 = performance.now();
  const [n, c, h, w] = tensor.shape;
  const grid = planTiles(h, w, settings.tile, settings.overlap);
  const count = grid.rows.length * grid.cols.length;
  const kind = fetch.includes('sample') ? 'float' : 'rgb';
  const outer = opts.signal;
  outer?.throwIfAborted();
  const inner = new AbortController();
  setMaxListeners(count + 10, inner.signal); // the batcher listens once per job: not a leak
  const onAbort = (): void => inner.abort(outer!.reason);
  outer?.addEventListener('abort', onAbort, { once: true });

  let asm: TileAssembler | undefined;
  let queueMs = Infinity;
  let blending = false;
  // One blending loop at a time; it yields between tiles so other requests are served meanwhile.
  const blendReady = async (): Promise<void> => {
    if (blending) return;
    blending = true;
    try {
      while (!inner.signal.aborted && asm!.step(STEP_VALUES)) await yieldToLoop();
    } finally {
      blending = false;
    }
  };

  const jobs: Promise<void>[] = [];
  try {
    for (const g of tileGroups(grid)) {
      const perBatch = Math.min(opts.maxBatchSize, Math.floor(opts.maxBatchLatentPixels / (g.h * g.w)));
      const perJob = Math.max(1, Math.floor(perBatch / n));
      const per = n * c * g.h * g.w;
      for (let k = 0; k < g.tiles.length; k += perJob) {
        const tiles = g.tiles.slice(k, k + perJob);
        const data = new Float32Array(tiles.length * per);
        tiles.forEach(([i, j], q) => copyTile(tensor.data, tensor.shape, grid, i, j, data, q * per));
        const rowName = (r: number): string => {
          const [i, j] = tiles[Math.floor(r / n)]!;
          const at = `latent rows ${grid.rows[i]!.start}–${grid.rows[i]!.start + g.h}, columns ${grid.cols[j]!.start}–${grid.cols[j]!.start + g.w}`;
          return `tile ${i},${j} (${at}) of sample ${r % n} of ${n}`;
        };
        const job = model.decode({ data, shape: [tiles.length * n, c, g.h, g.w] }, ['sample'], { ticket: opts.ticket, deadline: opts.deadline, signal: inner.signal, rowName })
          .then(async (d) => {
            queueMs = Math.min(queueMs, d.queueMs);
            asm ??= new TileAssembler(grid, n, d.height / g.h, kind);
            const plane = n * 3 * d.height * d.width;
            tiles.forEach(([i, j], q) => asm!.add(i, j, d.sample!.subarray(q * plane, (q + 1) * plane)));
            await blendReady();
          })
          .catch((e: unknown) => {
            inner.abort(e); // the other tiles are dropped from the queue (or their results ignored)
            throw e;
          });
        jobs.push(job);
      }
    }
    await Promise.all(jobs);
    outer?.throwIfAborted();
    if (!asm?.complete) throw new Error(`tiled decode ended with tiles missing (${count} tiles planned)`);
  } catch (e) {
    inner.abort(e);
    await Promise.allSettled(jobs); // nothing left running in our name, no unhandled rejection
    throw inner.signal.reason;
  } finally {
    outer?.removeEventListener('abort', onAbort);
  }
  const { height, width } = asm.layout;
  const plane = height * width * 3;
  const out: Decoded = { n, height, width, queueMs, runMs: performance.now() - t0 - queueMs };
  if (asm.float) out.sample = asm.float;
  if (asm.rgb) out.images = Array.from({ length: n }, (_, s) => asm!.rgb!.subarray(s * plane, (s + 1) * plane));
  return out;
}
