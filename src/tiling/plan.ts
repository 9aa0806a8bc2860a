// Tiled decoding, the pure part: where the tiles lie and how their decoded pixels are cross-faded
// into one image. It reproduces diffusers' AutoencoderKL.tiled_decode exactly (same tile starts,
// same in-place blend order, same crop, same float32 arithmetic), so a tiled answer has the
// pixels diffusers gives with enable_tiling(). Knows neither the model nor HTTP.
//
// diffusers, with t = tile_latent_min_size, T = tile_sample_min_size (t × the decoder's upscale),
// f = tile_overlap_factor:
//   stride = int(t·(1−f)); blend = int(T·f); rowLimit = T − blend
//   tiles z[i:i+t, j:j+t] for i, j in range(0, h|w, stride), each decoded alone;
//   in raster order, in place: blend_v(tile above, tile), then blend_h(tile to the left, tile);
//   each tile cropped to [:rowLimit, :rowLimit], the crops concatenated.
// The output is 8h × 8w only when t·f is a whole number; otherwise the crops are wider than the
// stride and diffusers' image comes out larger. We keep that: same settings, same pixels.

export interface Span {
  /** First latent row (or column). */
  start: number;
  /** Latents in the tile along this axis (edge tiles are smaller). */
  size: number;
}

export interface TileGrid {
  tile: number;
  overlap: number;
  stride: number;
  rows: Span[];
  cols: Span[];
}

/** diffusers' `int(tile·(1−overlap))`: 0 (no progress) means the settings cannot tile. */
export function tileStride(tile: number, overlap: number): number {
  return Math.trunc(tile * (1 - overlap));
}

/** Whether diffusers would tile an h × w latent: either side larger than the tile. */
export function needsTiling(h: number, w: number, tile: number): boolean {
  return tile > 0 && (h > tile || w > tile);
}

function spans(length: number, tile: number, stride: number): Span[] {
  const out: Span[] = [];
  for (let s = 0; s < length; s += stride) out.push({ start: s, size: Math.min(tile, length - s) });
  return out;
}

export function planTiles(h: number, w: number, tile: number, overlap: number): TileGrid {
  const stride = tileStride(tile, overlap);
  if (!(tile >= 1) || !(overlap >= 0 && overlap < 1) || stride < 1) {
    throw new RangeError(`tile ${tile} with overlap ${overlap} gives a stride of ${stride} latents; it must be at least 1`);
  }
  return { tile, overlap, stride, rows: spans(h, tile, stride), cols: spans(w, tile, stride) };
}

/** The distinct tile shapes, each with its tiles in raster order (one batch key each). */
export function tileGroups(grid: TileGrid): { h: number; w: number; tiles: [number, number][] }[] {
  const groups = new Map<string, { h: number; w: number; tiles: [number, number][] }>();
  grid.rows.forEach((r, i) => grid.cols.forEach((c, j) => {
    const key = `${r.size}x${c.size}`;
    let g = groups.get(key);
    if (!g) groups.set(key, (g = { h: r.size, w: c.size, tiles: [] }));
    g.tiles.push([i, j]);
  }));
  return [...groups.values()];
}

/** Copies tile (i, j) of every sample out of an NCHW latent: [n, c, rows[i].size, cols[j].size]. */
export function copyTile(src: Float32Array, shape: readonly number[], grid: TileGrid, i: number, j: number, dst: Float32Array, dstOffset: number): void {
  const [n, c, h, w] = shape as [number, number, number, number];
  const r = grid.rows[i]!;
  const col = grid.cols[j]!;
  let o = dstOffset;
  for (let p = 0; p < n * c; p++) {
    for (let y = 0; y < r.size; y++) {
      const from = (p * h + r.start + y) * w + col.start;
      dst.set(src.subarray(from, from + col.size), o);
      o += col.size;
    }
  }
}

/** Pixel geometry once the decoder's upscale factor is known. */
export interface PixelLayout {
  up: number;
  blend: number;
  rowLimit: number;
  /** Output row where tile row i's crop starts; the last entry is the output height. */
  rowOffsets: number[];
  colOffsets: number[];
  height: number;
  width: number;
}

export function pixelLayout(grid: TileGrid, up: number): PixelLayout {
  const sampleTile = grid.tile * up;
  const blend = Math.trunc(sampleTile * grid.overlap);
  const rowLimit = sampleTile - blend;
  const offsets = (spans: Span[]): number[] => {
    const o = [0];
    for (const s of spans) o.push(o[o.length - 1]! + Math.min(rowLimit, s.size * up));
    return o;
  };
  const rowOffsets = offsets(grid.rows);
  const colOffsets = offsets(grid.cols);
  return { up, blend, rowLimit, rowOffsets, colOffsets, height: rowOffsets[rowOffsets.length - 1]!, width: colOffsets[colOffsets.length - 1]! };
}
