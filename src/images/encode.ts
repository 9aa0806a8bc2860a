// uint8 NHWC pixels → PNG / JPEG / WebP with sharp, which runs on the libuv thread pool: encoding
// batch k overlaps the model's run of batch k+1.
import sharp from 'sharp';
import type { ImageFormat } from '../latents/options.js';

// Parallelism comes from encoding several images at once on the libuv pool, not from several
// libvips threads per image, which would oversubscribe the cores.
sharp.concurrency(1);

export const CONTENT_TYPES: Record<ImageFormat, string> = { png: 'image/png', jpeg: 'image/jpeg', webp: 'image/webp' };

export interface EncodeOptions {
  format: ImageFormat;
  quality?: number;
  pngCompressionLevel: number;
}

/** Encodes one RGB image held in `pixels` (height × width × 3 bytes, no copy is made). */
export function encodeImage(pixels: Uint8Array, width: number, height: number, opts: EncodeOptions): Promise<Buffer> {
  const buf = Buffer.from(pixels.buffer, pixels.byteOffset, pixels.byteLength);
  const img = sharp(buf, { raw: { width, height, channels: 3 } });
  switch (opts.format) {
    case 'png': return img.png({ compressionLevel: opts.pngCompressionLevel }).toBuffer();
    case 'jpeg': return img.jpeg({ quality: opts.quality ?? 90 }).toBuffer();
    case 'webp': return img.webp({ quality: opts.quality ?? 90 }).toBuffer();
  }
}
