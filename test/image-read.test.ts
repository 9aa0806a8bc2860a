// images/read.ts with real sharp: what VaeImageProcessor's convert("RGB") does to each kind of
// image (alpha dropped, grayscale expanded, 16-bit reduced, CMYK converted, an animation's first
// frame), the resize to multiples of the factor, and the checks made from the header alone.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { crc32 } from 'node:zlib';
import sharp from 'sharp';
import { decodeImage, describeBytes, readImageHeader, sniffImage } from '../src/images/read.js';

const limits = { maxPixels: 1 << 20, factor: 8, resize: true };
const level = (v: number): number => Math.fround(Math.fround(2 * Math.fround(v / 255)) - 1);

async function read(bytes: Buffer, lim = limits): Promise<{ data: Float32Array; w: number; h: number }> {
  const header = await readImageHeader(bytes, lim);
  const data = new Float32Array(3 * header.target.width * header.target.height);
  await decodeImage(bytes, header, data);
  return { data, w: header.target.width, h: header.target.height };
}

const solid = (channels: 3 | 4, bg: string | { r: number; g: number; b: number; alpha?: number }, w = 16, h = 8) => sharp({ create: { width: w, height: h, channels, background: bg } });

test('RGBA: alpha dropped (not composited); grayscale expanded to three equal channels; 16-bit reduced to 8', async () => {
  const rgba = await read(await solid(4, { r: 10, g: 20, b: 30, alpha: 0.25 }).png().toBuffer());
  assert.deepEqual([rgba.data[0], rgba.data[128], rgba.data[256]], [level(10), level(20), level(30)]);
  const gray = await read(await solid(3, { r: 100, g: 100, b: 100 }).toColourspace('b-w').png().toBuffer());
  assert.deepEqual([gray.data[5], gray.data[128 + 5], gray.data[256 + 5]], [level(100), level(100), level(100)]);
  const deep = await solid(3, { r: 10, g: 20, b: 30 }).toColourspace('rgb16').png().toBuffer();
  assert.equal((await sharp(deep).metadata()).depth, 'ushort');
  const d = await read(deep);
  assert.deepEqual([d.data[0], d.data[128], d.data[256]], [level(10), level(20), level(30)]);
});

test('CMYK JPEG is converted to RGB; WebP reads; an animated WebP gives its first frame', async () => {
  const cmyk = await solid(3, { r: 10, g: 200, b: 30 }).toColourspace('cmyk').jpeg().toBuffer();
  assert.equal((await sharp(cmyk).metadata()).space, 'cmyk');
  const c = await read(cmyk);
  assert.ok(c.data[128]! > c.data[0]! + 0.3 && c.data[128]! > c.data[256]! + 0.3, `green stays green: ${c.data[0]}, ${c.data[128]}, ${c.data[256]}`);
  const frames = await sharp([await solid(3, '#ff0000').png().toBuffer(), await solid(3, '#0000ff').png().toBuffer()], { join: { animated: true } }).webp({ lossless: true }).toBuffer();
  assert.equal(sniffImage(frames), 'webp');
  const first = await read(frames);
  assert.deepEqual([first.w, first.h, first.data[0], first.data[256]], [16, 8, level(255), level(0)]);
});

test('sides not multiples of the factor: resized down with resize, refused without; the header decides before decoding', async () => {
  const odd = await solid(3, '#808080', 37, 20).png().toBuffer();
  const r = await read(odd);
  assert.deepEqual([r.w, r.h], [32, 16]);
  await assert.rejects(readImageHeader(odd, { ...limits, resize: false }), /37x20, not a multiple of 8 on each side: send 32x16/);
  await assert.rejects(readImageHeader(odd, { ...limits, factor: 32 }), (e: Error & { code?: string }) => e.code === 'BAD_IMAGE_SIZE' && /at least 32 pixels/.test(e.message));
  // a 30000 x 30000 PNG header on a tiny body: refused by its header alone
  const bomb = await solid(3, '#000000', 64, 64).png().toBuffer();
  const forged = Buffer.from(bomb);
  forged.writeUInt32BE(30000, 16);
  forged.writeUInt32BE(30000, 20);
  forged.writeUInt32BE(crc32(forged.subarray(12, 29)), 29); // IHDR's CRC, so that only the size is wrong
  await assert.rejects(readImageHeader(forged, limits), (e: Error & { code?: string }) => e.code === 'IMAGE_TOO_LARGE' && /30000x30000/.test(e.message));
  assert.match(describeBytes(Buffer.from('{"a": 1}')), /JSON text/);
  assert.match(describeBytes(Buffer.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59])), /\.npy file/);
});
