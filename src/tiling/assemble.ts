// Assembles decoded tiles into the image as they come back, in any order. A tile is blended as
// soon as the tile above and the one to its left are (diffusers blends in place in raster
// order, so those are the already-blended neighbours it reads); only the strips a later tile
// will read are kept (the bottom rows for the tile below, the right columns for the one to the
// right). So a decode holds the output image, a few strips and the tiles waiting on a neighbour,
// never every decoded tile at once. Pure: plain arrays in, plain arrays out.
import { pixelLayout, type PixelLayout, type TileGrid } from './plan.js';

/** 'float': float32 NCHW [n, 3, H, W], the decoder's values; 'rgb': uint8 NHWC, postprocessed. */
export type AssembledKind = 'float' | 'rgb';

/**
 * diffusers' postprocess in float32: round(clamp(x / 2 + 0.5, 0, 1) · 255), rounding half to even
 * like numpy's round and ONNX Round (the in-graph postprocess), so a tiled image matches both.
 */
export function toLevel(x: number): number {
  let v = Math.fround(x * 0.5 + 0.5);
  v = v > 0 ? (v < 1 ? v : 1) : 0; // NaN → 0
  const s = Math.fround(v * 255);
  let r = Math.round(s);
  if (r - s === 0.5 && (r & 1) === 1) r -= 1;
  return r;
}

/** Weights `1 − k/extent` and `k/extent` as torch applies them: Python doubles cast to float32. */
export function ramps(extent: number): [Float32Array, Float32Array] {
  const keep = new Float32Array(extent);
  const take = new Float32Array(extent);
  for (let k = 0; k < extent; k++) {
    keep[k] = 1 - k / extent;
    take[k] = k / extent;
  }
  return [keep, take];
}

export class TileAssembler {
  readonly layout: PixelLayout;
  readonly float?: Float32Array;
  readonly rgb?: Uint8Array;
  private readonly decoded = new Map<number, Float32Array>();
  private readonly finished: Uint8Array;
  private readonly bottom = new Map<number, Float32Array>();
  private readonly right = new Map<number, Float32Array>();
  private remaining: number;
  /** The tile being blended, when a step stopped inside it. */
  private current: Work | undefined;

  constructor(private readonly grid: TileGrid, private readonly n: number, up: number, readonly kind: AssembledKind) {
    this.layout = pixelLayout(grid, up);
    const { height, width } = this.layout;
    if (kind === 'float') this.float = new Float32Array(n * 3 * height * width);
    else this.rgb = new Uint8Array(n * height * width * 3);
    this.remaining = grid.rows.length * grid.cols.length;
    this.finished = new Uint8Array(this.remaining);
  }

  get complete(): boolean {
    return this.remaining === 0;
  }

  /** Tile (i, j) decoded: float32 [n, 3, rows[i].size·up, cols[j].size·up]. Kept until blended. */
  add(i: number, j: number, data: Float32Array): void {
    const want = this.n * 3 * this.grid.rows[i]!.size * this.grid.cols[j]!.size * this.layout.up ** 2;
    if (data.length !== want) throw new Error(`tile ${i},${j} has ${data.length} values, expected ${want}`);
    this.decoded.set(i * this.grid.cols.length + j, data);
  }

  /**
   * Blends about `maxValues` values (whole rows of one channel) of a tile whose neighbours above
   * and to the left are done, continuing the tile it left unfinished; false when no tile can move.
   * Small steps keep each synchronous stretch short: a 1024² tile is 3 M values.
   */
  step(maxValues = Infinity): boolean {
    if (!this.current) {
      const next = this.ready();
      if (next === undefined) return false;
      this.current = this.begin(next);
    }
    const w = this.current;
    const to = Math.min(w.total, w.next + Math.max(1, Math.floor(maxValues / w.width)));
    w.run(w.next, to);
    w.next = to;
    if (to === w.total) {
      this.current = undefined;
      w.finish();
    }
    return true;
  }

  private ready(): number | undefined {
    const cols = this.grid.cols.length;
    for (const k of this.decoded.keys()) {
      if ((k < cols || this.finished[k - cols]) && (k % cols === 0 || this.finished[k - 1])) return k;
    }
    return undefined;
  }

  private begin(k: number): Work {
    const { rows, cols } = this.grid;
    const { up, blend, rowLimit, rowOffsets, colOffsets, height: H, width: W } = this.layout;
    const i = Math.floor(k / cols.length);
    const j = k % cols.length;
    const tile = this.decoded.get(k)!;
    this.decoded.delete(k);
    const th = rows[i]!.size * up;
    const tw = cols[j]!.size * up;

    // The blended tile above: its last sA rows, the extent min(its height, ours, blend).
    const above = i > 0 ? this.bottom.get(k - cols.length) : undefined;
    const sA = i > 0 ? Math.min(blend, rows[i - 1]!.size * up) : 0;
    const eV = i > 0 ? Math.min(rows[i - 1]!.size * up, th, blend) : 0;
    const left = j > 0 ? this.right.get(k - 1) : undefined;
    const sL = j > 0 ? Math.min(blend, cols[j - 1]!.size * up) : 0;
    const eH = j > 0 ? Math.min(cols[j - 1]!.size * up, tw, blend) : 0;
    const [vKeep, vTake] = ramps(eV);
    const [hKeep, hTake] = ramps(eH);

    // What the tiles below and to the right will read of this one once blended.
    const sB = Math.min(blend, th);
    const sR = Math.min(blend, tw);
    const down = i + 1 < rows.length ? new Float32Array(this.n * 3 * sB * tw) : undefined;
    const side = j + 1 < cols.length ? new Float32Array(this.n * 3 * th * sR) : undefined;

    const cropH = Math.min(rowLimit, th);
    const cropW = Math.min(rowLimit, tw);
    const oy = rowOffsets[i]!;
    const ox = colOffsets[j]!;
    const row = new Float32Array(tw);
    const { float, rgb } = this;
    /** Rows `from` to `to` of the tile's n·3·th rows (plane p = sample·3 + channel, row y). */
    const run = (from: number, to: number): void => {
      for (let r = from; r < to; r++) {
        const p = Math.floor(r / th);
        const y = r - p * th;
        const s = Math.floor(p / 3);
        const ch = p - s * 3;
        row.set(tile.subarray(r * tw, (r + 1) * tw));
        if (above && y < eV) {
          // blend_v: b[y] = a[-eV + y]·(1 − y/eV) + b[y]·(y/eV), each product rounded to float32.
          const a = (p * sA + sA - eV + y) * tw;
          const wa = vKeep[y]!;
          const wb = vTake[y]!;
          for (let x = 0; x < tw; x++) row[x] = Math.fround(above[a + x]! * wa) + Math.fround(row[x]! * wb);
        }
        if (left) {
          const l = r * sL + sL - eH;
          for (let x = 0; x < eH; x++) row[x] = Math.fround(left[l + x]! * hKeep[x]!) + Math.fround(row[x]! * hTake[x]!);
        }
        if (y < cropH) {
          if (float) float.set(row.subarray(0, cropW), ((s * 3 + ch) * H + oy + y) * W + ox);
          else {
            let o = ((s * H + oy + y) * W + ox) * 3 + ch;
            for (let x = 0; x < cropW; x++, o += 3) rgb![o] = toLevel(row[x]!);
          }
        }
        if (down && y >= th - sB) down.set(row, (p * sB + y - (th - sB)) * tw);
        if (side) side.set(row.subarray(tw - sR), r * sR);
      }
    };
    const finish = (): void => {
      if (down) this.bottom.set(k, down);
      if (side) this.right.set(k, side);
      // Each strip has one reader: drop it once read.
      this.bottom.delete(k - cols.length);
      this.right.delete(k - 1);
      this.finished[k] = 1;
      this.remaining--;
    };
    return { total: this.n * 3 * th, width: tw, next: 0, run, finish };
  }
}

interface Work {
  /** Rows: n · 3 · tile height. */
  total: number;
  width: number;
  next: number;
  run: (from: number, to: number) => void;
  finish: () => void;
}
