// Tiled encoding, the pure part: diffusers' AutoencoderKL._tiled_encode blends the encoder's
// output tiles (its moments: mean and log-variance, before the posterior's clamp) in latent space:
//   tiles x[i:i+T, j:j+T] for i, j in range(0, H|W, int(T·(1−f))), each encoded alone;
//   t = T / 8, blend = int(t·f), rowLimit = t − blend;
//   in raster order, in place: blend_v(tile above, tile), blend_h(tile to the left, tile),
//   each cropped to [:rowLimit, :rowLimit], the crops concatenated.
// The tile grid is plan.ts's, in pixels; pixelLayout with a factor 1/8 gives the latent geometry.
// The latents are small (C channels at 1/8 of the side), so every tile is kept until the end.
import { ramps } from './assemble.js';
import { pixelLayout, type TileGrid } from './plan.js';

/**
 * Blends encoded tiles: `tiles[i][j]` is float32 [n, c, rows[i].size/down, cols[j].size/down]
 * (modified in place, as diffusers does); returns [n, c, H, W] with H, W the summed crops (the
 * image side / down when the stride is a multiple of down).
 */
export function blendLatentTiles(grid: TileGrid, tiles: Float32Array[][], n: number, c: number, down: number): { data: Float32Array; height: number; width: number } {
  const { blend, rowLimit, rowOffsets, colOffsets, height: H, width: W } = pixelLayout(grid, 1 / down);
  const out = new Float32Array(n * c * H * W);
  const planes = n * c;
  for (let i = 0; i < grid.rows.length; i++) {
    for (let j = 0; j < grid.cols.length; j++) {
      const tile = tiles[i]![j]!;
      const th = grid.rows[i]!.size / down;
      const tw = grid.cols[j]!.size / down;
      if (i > 0) {
        const above = tiles[i - 1]![j]!;
        const ah = grid.rows[i - 1]!.size / down;
        const e = Math.min(ah, th, blend);
        const [keep, take] = ramps(e);
        for (let p = 0; p < planes; p++) {
          for (let y = 0; y < e; y++) {
            const a = (p * ah + ah - e + y) * tw;
            const b = (p * th + y) * tw;
            for (let x = 0; x < tw; x++) tile[b + x] = Math.fround(above[a + x]! * keep[y]!) + Math.fround(tile[b + x]! * take[y]!);
          }
        }
      }
      if (j > 0) {
        const left = tiles[i]![j - 1]!;
        const lw = grid.cols[j - 1]!.size / down;
        const e = Math.min(lw, tw, blend);
        const [keep, take] = ramps(e);
        for (let p = 0; p < planes; p++) {
          for (let y = 0; y < th; y++) {
            const a = (p * th + y) * lw + lw - e;
            const b = (p * th + y) * tw;
            for (let x = 0; x < e; x++) tile[b + x] = Math.fround(left[a + x]! * keep[x]!) + Math.fround(tile[b + x]! * take[x]!);
          }
        }
      }
      const ch = Math.min(rowLimit, th);
      const cw = Math.min(rowLimit, tw);
      for (let p = 0; p < planes; p++) {
        for (let y = 0; y < ch; y++) {
          const from = (p * th + y) * tw;
          out.set(tile.subarray(from, from + cw), (p * H + rowOffsets[i]! + y) * W + colOffsets[j]!);
        }
      }
    }
  }
  return { data: out, height: H, width: W };
}
