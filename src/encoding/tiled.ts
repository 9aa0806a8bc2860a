// Tiled encoding, the serving part: an image larger than the tile is cut into overlapping pixel
// tiles as diffusers' AutoencoderKL._tiled_encode does; the tiles go through the encoder's
// batcher as ordinary samples (same-sized tiles share a batch key with each other and with whole
// images of that size), in jobs of at most one batch; their moments are blended in latent space
// (tiling/blend-latents.ts). The request's deadline and signal cover every tile.
import { setMaxListeners } from 'node:events';
import { ServiceError } from '../errors.js';
import type { TileSettings } from '../serving/tiled.js';
import type { Encoded, ServedEncoder } from '../serving/served-encoder.js';
import { VAE_SCALE_FACTOR } from '../serving/served-encoder.js';
import { blendLatentTiles } from '../tiling/blend-latents.js';
import { copyTile, planTiles, tileGroups } from '../tiling/plan.js';

export interface TiledEncodeOptions {
  deadline?: number;
  signal?: AbortSignal;
  /** Also the posterior's std (blended as log-variance, as diffusers blends the moments). */
  std?: boolean;
  maxBatchSize: number;
  maxBatchLatentPixels: number;
  maxQueueSize: number;
}

/**
 * Encodes images float32 [n, 3, H, W] as tiles of `settings.tile` latents (8× in pixels); resolves
 * like ServedEncoder.encode. Throws BAD_PARAMETER when the tile stride is not a whole number of
 * latents (the tiles must start on latent boundaries), BATCH_TOO_LARGE when the tiles would not
 * fit the queue, and whatever a tile's encode throws (the other tiles are then dropped).
 */
export async function encodeTiled(model: Pick<ServedEncoder, 'encode' | 'latentChannels' | 'hasStd'>, pixels: Float32Array,
  shape: readonly [number, number, number, number], settings: TileSettings, opts: TiledEncodeOptions): Promise<Encoded> {
  const t0 = performance.now();
  const [n, , H, W] = shape;
  const f = VAE_SCALE_FACTOR;
  const grid = planTiles(H, W, settings.tile * f, settings.overlap);
  if (grid.stride % f !== 0) {
    throw new ServiceError('BAD_PARAMETER', `tile_overlap=${settings.overlap} gives tiles of ${settings.tile * f} px a stride of ${grid.stride} px, not a whole number of latents (a multiple of ${f}): choose another overlap`);
  }
  const count = grid.rows.length * grid.cols.length;
  if (count * n > opts.maxQueueSize) {
    throw new ServiceError('BATCH_TOO_LARGE', `${n} images of ${W}x${H} make ${count * n} tiles of ${settings.tile * f} px, more than the queue holds (${opts.maxQueueSize}); use larger tiles or fewer images per request`);
  }
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
        jobs.push(model.encode(data, [tiles.length * n, 3, g.h, g.w], { deadline: opts.deadline, signal: inner.signal, std: withStd })
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
