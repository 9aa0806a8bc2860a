// Tiled encoding, the serving part: an image larger than the tile is cut into overlapping pixel
// tiles as diffusers' AutoencoderKL._tiled_encode does; the tiles go through the encoder's
// batcher as ordinary samples (same-sized tiles share a batch key with each other and with whole
// images of that size), in jobs of at most one batch; their moments are blended in latent space
// (tiling/blend-latents.ts). The request's deadline and signal cover every tile.
import { setMaxListeners } from 'node:events';
import { ServiceError } from '../errors.js';
import type { TileSettings } from '../serving/tiled.js';
import type { Demand, ReserveWording } from '../batching/batcher.js';
import { encodeKey, VAE_SCALE_FACTOR, type Encoded, type EncodeTicket, type ServedEncoder } from '../serving/served-encoder.js';
import { blendLatentTiles } from '../tiling/blend-latents.js';
import { copyTile, planTiles, tileGroups, type TileGrid } from '../tiling/plan.js';

export interface TiledEncodeOptions {
  /** The request's reservation, holding tiledEncodeDemand(shape, settings). */
  ticket: EncodeTicket;
  deadline?: number;
  signal?: AbortSignal;
  /** Also the posterior's std (blended as log-variance, as diffusers blends the moments). */
  std?: boolean;
  maxBatchSize: number;
  maxBatchLatentPixels: number;
}

/** The pixel tile grid of [N, 3, H, W] images; BAD_PARAMETER when the stride is not a whole number of latents. */
function encodeGrid(shape: readonly number[], settings: TileSettings): TileGrid {
  const [, , H, W] = shape as [number, number, number, number];
  const f = VAE_SCALE_FACTOR;
  const grid = planTiles(H, W, settings.tile * f, settings.overlap);
  if (grid.stride % f !== 0) {
    throw new ServiceError('BAD_PARAMETER', `tile_overlap=${settings.overlap} gives tiles of ${settings.tile * f} px a stride of ${grid.stride} px, not a whole number of latents (a multiple of ${f}): choose another overlap`);
  }
  return grid;
}

/** What a tiled encode queues: every tile, by tile size (the batcher key), reserved before the pixels are decoded. */
export function tiledEncodeDemand(shape: readonly number[], settings: TileSettings): { demands: Demand[]; wording: ReserveWording } {
  const n = shape[0]!;
  const f = VAE_SCALE_FACTOR;
  const demands = tileGroups(encodeGrid(shape, settings)).map((g) => ({ key: encodeKey(g.h, g.w), sampleCount: g.tiles.length * n, cost: (g.h / f) * (g.w / f) }));
  return { demands, wording: { unit: `tiles of ${settings.tile * f} px`, advice: 'use larger tiles or fewer images per request' } };
}

/**
 * Encodes images float32 [n, 3, H, W] as tiles of `settings.tile` latents (8× in pixels), drawn
 * from the ticket (which holds tiledEncodeDemand); resolves like ServedEncoder.encode. Throws
 * BAD_PARAMETER when the tile stride is not a whole number of latents (the tiles must start on
 * latent boundaries) and whatever a tile's encode throws (the other tiles are then dropped).
 */
export async function encodeTiled(model: Pick<ServedEncoder, 'encode' | 'latentChannels' | 'hasStd'>, pixels: Float32Array,
  shape: readonly [number, number, number, number], settings: TileSettings, opts: TiledEncodeOptions): Promise<Encoded> {
  const t0 = performance.now();
  const n = shape[0];
  const f = VAE_SCALE_FACTOR;
  const grid = encodeGrid(shape, settings);
  const count = grid.rows.length * grid.cols.length;
  const c = model.latentChannels;
  const withStd = opts.std === true && model.hasStd;
  const outer = opts.signal;
  outer?.throwIfAborted();
  const inner = new AbortController();
  setMaxListeners(count + 10, inner.signal);
  const onAbort = (): void => inner.abort(outer!.reason);
  outer?.addEventListener('abort', onAbort, { once: true });
  // per tile: [n, c, th/8, tw/8] mean and (when asked) log-variance, in raster order
  const means: Float32Array[][] = grid.rows.map(() => []);
  const logvars: Float32Array[][] = grid.rows.map(() => []);
  let queueMs = Infinity;
  const jobs: Promise<void>[] = [];
  try {
    for (const g of tileGroups(grid)) {
      const cost = (g.h / f) * (g.w / f);
      const perJob = Math.max(1, Math.floor(Math.min(opts.maxBatchSize, Math.floor(opts.maxBatchLatentPixels / cost)) / n));
      const per = n * 3 * g.h * g.w;
      for (let k = 0; k < g.tiles.length; k += perJob) {
        const tiles = g.tiles.slice(k, k + perJob);
        const data = new Float32Array(tiles.length * per);
        tiles.forEach(([i, j], q) => copyTile(pixels, shape, grid, i, j, data, q * per));
        jobs.push(model.encode(data, [tiles.length * n, 3, g.h, g.w], { ticket: opts.ticket, deadline: opts.deadline, signal: inner.signal, std: withStd })
          .then((e) => {
            queueMs = Math.min(queueMs, e.queueMs);
            const plane = n * c * cost;
            tiles.forEach(([i, j], q) => {
              means[i]![j] = e.mean.slice(q * plane, (q + 1) * plane);
              if (e.std) logvars[i]![j] = e.std.slice(q * plane, (q + 1) * plane).map((s) => Math.fround(2 * Math.log(s)));
            });
          })
          .catch((err: unknown) => {
            inner.abort(err);
            throw err;
          }));
      }
    }
    await Promise.all(jobs);
    outer?.throwIfAborted();
  } catch (e) {
    inner.abort(e);
    await Promise.allSettled(jobs);
    throw inner.signal.reason;
  } finally {
    outer?.removeEventListener('abort', onAbort);
  }
  const mean = blendLatentTiles(grid, means, n, c, f).data;
  // the posterior's clamp and exp come after the blend, as DiagonalGaussianDistribution applies them
  const std = withStd ? blendLatentTiles(grid, logvars, n, c, f).data.map((lv) => Math.exp(0.5 * Math.min(20, Math.max(-30, lv)))) : undefined;
  return { mean, ...(std ? { std } : {}), queueMs, runMs: performance.now() - t0 - queueMs };
}
