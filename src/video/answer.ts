// Decoded frames → the answer's bytes: animated WebP and GIF with sharp (raw frames stacked, one
// page per frame), per-frame PNG/JPEG, and the tensors of output_type=pt. Containers that need
// ffmpeg (MP4, WebM) are in ffmpeg.ts.
import sharp from 'sharp';
import { CONTENT_TYPES, encodeImage } from '../images/encode.js';
import type { VideoFormat } from './options.js';

export const VIDEO_CONTENT_TYPES: Record<VideoFormat, string> = {
  ...CONTENT_TYPES, mp4: 'video/mp4', webm: 'video/webm', gif: 'image/gif',
};

export interface FrameSize {
  width: number;
  height: number;
}

/**
 * One video's frames (each height × width × 3 RGB bytes) as an animated WebP or GIF, looping,
 * each frame shown 1000/fps ms (GIF rounds delays to 10 ms).
 */
export function animate(frames: Uint8Array[], size: FrameSize, format: 'webp' | 'gif', fps: number, quality?: number): Promise<Buffer> {
  const { width, height } = size;
  const stacked = Buffer.concat(frames.map((f) => Buffer.from(f.buffer, f.byteOffset, f.byteLength)));
  const img = sharp(stacked, { raw: { width, height: height * frames.length, channels: 3, pageHeight: height } });
  const delay = frames.map(() => Math.round(1000 / fps));
  return format === 'webp' ? img.webp({ quality: quality ?? 90, loop: 0, delay }).toBuffer() : img.gif({ loop: 0, delay }).toBuffer();
}

/** Each frame as PNG or JPEG, in order. */
export function stills(frames: Uint8Array[], size: FrameSize, format: 'png' | 'jpeg' | 'webp', quality: number | undefined, pngCompressionLevel: number): Promise<Buffer[]> {
  return Promise.all(frames.map((f) => encodeImage(f, size.width, size.height, { format, quality, pngCompressionLevel })));
}

/** Per video, its frames: views on the steps' [N, f, H, W, 3] outputs, appended step by step. */
export class FrameCollector {
  readonly videos: Uint8Array[][];

  constructor(readonly n: number, readonly size: FrameSize) {
    this.videos = Array.from({ length: n }, () => []);
  }

  /** Frames of one step: uint8 [N, frames, H, W, 3]. Returns, per video, this step's frames as one view. */
  add(images: Uint8Array, frames: number): Uint8Array[] {
    const plane = this.size.width * this.size.height * 3;
    return this.videos.map((list, i) => {
      const own = images.subarray(i * frames * plane, (i + 1) * frames * plane);
      for (let f = 0; f < frames; f++) list.push(own.subarray(f * plane, (f + 1) * plane));
      return own;
    });
  }
}

/** float32 [N, 3, F, H, W] filled step by step from the steps' [N, 3, f, H, W]. */
export class SampleCollector {
  readonly data: Float32Array;
  private frame = 0;

  constructor(readonly n: number, readonly frames: number, readonly size: FrameSize) {
    this.data = new Float32Array(n * 3 * frames * size.width * size.height);
  }

  add(samples: Float32Array, frames: number): void {
    const plane = this.size.width * this.size.height;
    for (let nc = 0; nc < this.n * 3; nc++) {
      this.data.set(samples.subarray(nc * frames * plane, (nc + 1) * frames * plane), (nc * this.frames + this.frame) * plane);
    }
    this.frame += frames;
  }
}

/** The multipart/mixed framing of a streamed frame sequence: one part per frame. */
export function framePart(boundary: string, contentType: string, index: number, bytes: Buffer): Buffer {
  const head = `--${boundary}\r\nContent-Type: ${contentType}\r\nContent-Length: ${bytes.length}\r\nX-Frame-Index: ${index}\r\n\r\n`;
  return Buffer.concat([Buffer.from(head), bytes, Buffer.from('\r\n')]);
}
