// Image bytes → the encoder's input, as diffusers' VaeImageProcessor.preprocess makes it: RGB
// (alpha dropped, grayscale expanded, 16-bit reduced, CMYK converted), sides rounded down to a
// multiple of the model's factor (resized when they are not), x / 127.5 − 1 as float32 NCHW.
// Decoding is sharp's (libvips on the libuv pool); the header is read first, so a decompression
// bomb is refused before any pixel is decoded.
import sharp from 'sharp';
import { ServiceError } from '../errors.js';

export type ImageFormat = 'png' | 'jpeg' | 'webp';

/** The accepted formats, told by their first bytes (diffusers' remote_encode sends PNG with no Content-Type). */
export function sniffImage(b: Uint8Array): ImageFormat | undefined {
  if (b.length >= 8 && b[0] === 0x89 && b[1] === 0x50 && b[2] === 0x4e && b[3] === 0x47 && b[4] === 0x0d && b[5] === 0x0a && b[6] === 0x1a && b[7] === 0x0a) return 'png';
  if (b.length >= 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) return 'jpeg';
  if (b.length >= 12 && ascii(b, 0, 4) === 'RIFF' && ascii(b, 8, 12) === 'WEBP') return 'webp';
  return undefined;
}

const ascii = (b: Uint8Array, from: number, to: number): string => String.fromCharCode(...b.subarray(from, to));

/** What bytes that are not an accepted image look like, in words, for an error message. */
export function describeBytes(b: Uint8Array): string {
  if (b.length === 0) return 'nothing (an empty body)';
  const head = ascii(b, 0, Math.min(b.length, 16));
  if (head.startsWith('GIF8')) return 'a GIF image (not accepted: send PNG, JPEG or WebP)';
  if (head.startsWith('II*\0') || head.startsWith('MM\0*')) return 'a TIFF image (not accepted: send PNG, JPEG or WebP)';
  if (head.startsWith('BM')) return 'a BMP image (not accepted: send PNG, JPEG or WebP)';
  if (b.length >= 12 && ascii(b, 4, 8) === 'ftyp') return `an ISO media file (${ascii(b, 8, 12)}: AVIF/HEIF are not accepted: send PNG, JPEG or WebP)`;
  if (head.startsWith('\x93NUMPY')) return 'a .npy file (send it with Content-Type: application/x-npy)';
  if (head.trimStart().startsWith('{')) return 'JSON text (send it with Content-Type: application/json)';
  const printable = [...b.subarray(0, 32)].every((c) => c === 9 || c === 10 || c === 13 || (c >= 32 && c < 127));
  if (printable) return `text starting ${JSON.stringify(ascii(b, 0, Math.min(b.length, 32)))}`;
  const hex = Buffer.from(b.subarray(0, 8)).toString('hex').replace(/(..)/g, '$1 ').trim();
  return `${b.length} bytes of binary data starting ${hex} (no PNG, JPEG or WebP signature; a raw tensor needs shape and dtype)`;
}

export interface ImageLimits {
  /** Pixels (width × height) an image may have: more is 413 from the header, before decoding. */
  maxPixels: number;
  /** Sides must be multiples of this (8; 16 for FLUX packing). */
  factor: number;
  /** Resize to the nearest smaller multiple (true), or refuse (false). */
  resize: boolean;
}

export interface ImageHeader {
  format: ImageFormat;
  /** The image as sent, px. */
  width: number;
  height: number;
  /** What the encoder gets: the sides rounded down to multiples of the factor, px. */
  target: { width: number; height: number };
  /** CMYK (converted with its ICC profile, or libvips' default one); other images' profiles are ignored. */
  cmyk: boolean;
}

/**
 * Reads the image's header only (sharp metadata: no pixel is decoded) and checks it: format,
 * pixel count (IMAGE_TOO_LARGE, 413), sides at least the factor and, with resize off, multiples
 * of it (BAD_IMAGE_SIZE). Corrupt or unreadable headers are BAD_IMAGE.
 */
export async function readImageHeader(bytes: Uint8Array, limits: ImageLimits): Promise<ImageHeader> {
  const format = sniffImage(bytes);
  if (!format) throw new ServiceError('BAD_IMAGE', `the body is neither a PNG, JPEG or WebP image nor a tensor: it looks like ${describeBytes(bytes)}`);
  let width: number | undefined;
  let height: number | undefined;
  let cmyk = false;
  try {
    const meta = await sharp(bytes, { limitInputPixels: false }).metadata();
    width = meta.width;
    height = meta.pageHeight ?? meta.height; // an animated image: its first frame
    cmyk = meta.space === 'cmyk';
  } catch (e) {
    throw new ServiceError('BAD_IMAGE', `the ${format.toUpperCase()} image cannot be read: ${(e as Error).message}`);
  }
  if (!width || !height) throw new ServiceError('BAD_IMAGE', `the ${format.toUpperCase()} image has no size in its header`);
  if (width * height > limits.maxPixels) {
    throw new ServiceError('IMAGE_TOO_LARGE', `the image is ${width}x${height} = ${width * height} pixels, over the limit of ${limits.maxPixels} (MAX_IMAGE_PIXELS)`);
  }
  const f = limits.factor;
  if (width < f || height < f) throw new ServiceError('BAD_IMAGE_SIZE', `the image is ${width}x${height}: each side must be at least ${f} pixels`);
  const target = { width: width - (width % f), height: height - (height % f) };
  if (!limits.resize && (target.width !== width || target.height !== height)) {
    throw new ServiceError('BAD_IMAGE_SIZE', `the image is ${width}x${height}, not a multiple of ${f} on each side: send ${target.width}x${target.height}, or leave resize on`);
  }
  return { format, width, height, target, cmyk };
}

/** PIL's uint8 → float32, then `2x − 1` in float32, as VaeImageProcessor does: one table for the 256 levels. */
const LEVELS = Float32Array.from({ length: 256 }, (_, v) => Math.fround(Math.fround(2 * Math.fround(v / 255)) - 1));

/**
 * Decodes the image's first frame to RGB and writes it as float32 [3, H, W] in [-1, 1] into `out`
 * at `offset` (a batch's buffer). Sides that are not multiples of the factor are resized down with
 * sharp's Lanczos-3 (diffusers resizes with PIL's Lanczos: values may differ by a level or so).
 * An embedded ICC profile is ignored, as PIL's `convert("RGB")` ignores it (a Display P3 photo's
 * stored values are what diffusers' own encode sees), except a CMYK image's, which converts with it.
 * Throws BAD_IMAGE when the data is truncated or corrupt.
 */
export async function decodeImage(bytes: Uint8Array, header: ImageHeader, out: Float32Array, offset = 0): Promise<void> {
  const { width, height } = header.target;
  let img = sharp(bytes, { limitInputPixels: header.width * header.height, failOn: 'error', pages: 1, ignoreIcc: !header.cmyk }).removeAlpha();
  if (width !== header.width || height !== header.height) img = img.resize(width, height, { fit: 'fill', kernel: 'lanczos3' });
  let data: Buffer;
  try {
    ({ data } = await img.toColourspace('srgb').raw({ depth: 'uchar' }).toBuffer({ resolveWithObject: true }));
  } catch (e) {
    throw new ServiceError('BAD_IMAGE', `the ${header.format.toUpperCase()} image (${header.width}x${header.height}) cannot be decoded: ${(e as Error).message}`);
  }
  const plane = width * height;
  if (data.length !== plane * 3) throw new ServiceError('BAD_IMAGE', `the ${header.format.toUpperCase()} image decoded to ${data.length} bytes, expected ${plane * 3}`);
  for (let p = 0, i = 0; p < plane; p++, i += 3) {
    out[offset + p] = LEVELS[data[i]!]!;
    out[offset + plane + p] = LEVELS[data[i + 1]!]!;
    out[offset + 2 * plane + p] = LEVELS[data[i + 2]!]!;
  }
}
