// Every client mistake is a 4xx with a stable code and a message naming the problem; the service
// keeps serving: each bad request is followed by a good one.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { encodeNpy } from '../src/tensor/npy.js';
import { bytesOf, loadFixture, sampleLatents, startService } from './helpers/service.js';

interface Case {
  name: string;
  url?: string;
  headers?: Record<string, string>;
  payload?: string | Buffer;
  status: number;
  code: string;
  message: RegExp;
}

function npyWithHeader(header: string, data: Buffer): Buffer {
  const h = Buffer.from(header.padEnd(118) + '\n', 'latin1');
  const pre = Buffer.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0, 0, 0]);
  pre.writeUInt16LE(h.length, 8);
  return Buffer.concat([pre, h, data]);
}

test('bad input: each mistake gets its status, code and a message naming it; a good request follows', async (t) => {
  const { app } = await startService(t, { BODY_LIMIT_BYTES: '200000', MAX_LATENT_SIDE: '32' });
  const f = await loadFixture();
  const good = bytesOf(sampleLatents(f, 0));
  const withNan = sampleLatents(f, 0);
  withNan[1 * 256 + 2 * 16 + 3] = NaN;
  const withInf = sampleLatents(f, 0);
  withInf[5] = -Infinity;
  const tooLarge = sampleLatents(f, 0);
  tooLarge[1 * 256 + 2 * 16 + 3] = 2000;
  const huge = sampleLatents(f, 0);
  huge[5] = -1e20;
  const oneAt = new Float32Array(4 * 16 * 16);
  oneAt[1 * 256 + 2 * 16 + 3] = 1.5;
  const raw = { 'content-type': 'application/octet-stream' };
  const json = { 'content-type': 'application/json' };
  const cases: Case[] = [
    { name: 'byte count vs shape', url: '/decode?shape=1,4,16,16', payload: good.subarray(1), headers: raw, status: 400, code: 'SIZE_MISMATCH', message: /1x4x16x16 float32 needs 4096 bytes, got 4095/ },
    { name: 'byte count vs dtype', url: '/decode?shape=1,4,16,16&dtype=float16', payload: good, headers: raw, status: 400, code: 'SIZE_MISMATCH', message: /float16 needs 2048 bytes, got 4096/ },
    { name: 'unknown dtype', url: '/decode?shape=1,4,16,16&dtype=int8', payload: good, headers: raw, status: 400, code: 'UNKNOWN_DTYPE', message: /"int8"/ },
    { name: 'unknown format', url: '/decode?format=gif', payload: good, headers: raw, status: 400, code: 'UNKNOWN_FORMAT', message: /"gif"/ },
    { name: 'bad quality', url: '/decode?format=jpeg&quality=0', payload: good, headers: raw, status: 400, code: 'BAD_PARAMETER', message: /quality/ },
    { name: 'bad boolean', url: '/decode?partial_postprocess=maybe', payload: good, headers: raw, status: 400, code: 'BAD_PARAMETER', message: /partial_postprocess="maybe"/ },
    { name: 'bad output_type', url: '/decode?output_type=mp4', payload: good, headers: raw, status: 400, code: 'BAD_PARAMETER', message: /output_type "mp4"/ },
    { name: 'shape with zero', url: '/decode?shape=1,4,0,16', payload: good, headers: raw, status: 400, code: 'BAD_SHAPE', message: /positive integers/ },
    { name: 'shape with 2 dims', url: '/decode?shape=64,64', payload: good, headers: raw, status: 400, code: 'BAD_SHAPE', message: /4 dimensions/ },
    { name: 'raw bytes, no shape, not square', payload: good.subarray(0, 4 * 96), headers: raw, status: 400, code: 'BAD_SHAPE', message: /pass shape/ },
    { name: 'channels vs model', url: '/decode?shape=1,16,8,8', payload: good, headers: raw, status: 400, code: 'CHANNEL_MISMATCH', message: /16 channels but model torch-export takes 4: shape \[1, 16, 8, 8\] read as NCHW has 16 channels, read as NHWC 8$/ },
    { name: 'latent side over the maximum', url: '/decode?shape=1,4,8,64', payload: Buffer.alloc(4 * 4 * 8 * 64), headers: raw, status: 400, code: 'LATENT_TOO_LARGE', message: /8x64 is over the maximum side of 32/ },
    { name: 'NaN, located', url: '/decode?shape=1,4,16,16', payload: bytesOf(withNan), headers: raw, status: 400, code: 'NON_FINITE', message: /NaN at \[0, 1, 2, 3\]/ },
    { name: 'Infinity, located', url: '/decode?shape=1,4,16,16', payload: bytesOf(withInf), headers: raw, status: 400, code: 'NON_FINITE', message: /-Infinity at \[0, 0, 0, 5\]/ },
    { name: 'latent beyond the bound once scaled', url: '/decode?shape=1,4,16,16', payload: bytesOf(tooLarge), headers: raw, status: 400, code: 'LATENT_OUT_OF_RANGE', message: /the latent 2000 at \[0, 1, 2, 3\] \(flat index 291\) becomes 10979.96 with scaling_factor=0.18215 \(the model's\) and shift_factor=0 \(the model's\), beyond ±10000/ },
    { name: 'latent of -1e20, unscaled', url: '/decode?shape=1,4,16,16&do_scaling=false', payload: bytesOf(huge), headers: raw, status: 400, code: 'LATENT_OUT_OF_RANGE', message: /the latent -1e\+20 at \[0, 0, 0, 5\] \(flat index 5\) is beyond ±10000, the decoder-space bound/ },
    { name: 'empty body', url: '/decode?shape=1,4,16,16', payload: Buffer.alloc(0), headers: raw, status: 400, code: 'EMPTY_BODY', message: /empty/ },
    { name: 'body over the limit', url: '/decode', payload: Buffer.alloc(300_000), headers: raw, status: 413, code: 'BODY_TOO_LARGE', message: /over the limit of 200000 bytes/ },
    { name: 'unsupported content type', url: '/decode', payload: 'a,b,c', headers: { 'content-type': 'text/csv' }, status: 415, code: 'UNSUPPORTED_MEDIA_TYPE', message: /text\/csv/ },
    { name: 'multipart', url: '/decode', payload: '--x--', headers: { 'content-type': 'multipart/form-data; boundary=x' }, status: 415, code: 'UNSUPPORTED_MEDIA_TYPE', message: /multipart/ },
    { name: 'malformed JSON', payload: '{"latents": ', headers: json, status: 400, code: 'BAD_JSON', message: /not valid JSON/ },
    { name: 'JSON without latents', payload: '{"shape": [1,4,16,16]}', headers: json, status: 400, code: 'BAD_JSON', message: /"latents"/ },
    { name: 'bad base64', payload: JSON.stringify({ latents: 'not base64!!', shape: [1, 4, 16, 16] }), headers: json, status: 400, code: 'BAD_BASE64', message: /base64/ },
    { name: 'JSON shape vs bytes', payload: JSON.stringify({ latents: good.toString('base64'), shape: [1, 4, 8, 8] }), headers: json, status: 400, code: 'SIZE_MISMATCH', message: /needs 1024 bytes, got 4096/ },
    { name: 'npy bad magic', payload: Buffer.from('NUMPY not really'), headers: { 'content-type': 'application/x-npy' }, status: 400, code: 'BAD_NPY', message: /magic/ },
    { name: 'npy big-endian', payload: npyWithHeader("{'descr': '>f4', 'fortran_order': False, 'shape': (1, 4, 16, 16), }", good), headers: { 'content-type': 'application/x-npy' }, status: 400, code: 'BAD_NPY', message: />f4/ },
    { name: 'npy Fortran order', payload: npyWithHeader("{'descr': '<f4', 'fortran_order': True, 'shape': (1, 4, 16, 16), }", good), headers: { 'content-type': 'application/x-npy' }, status: 400, code: 'BAD_NPY', message: /Fortran/ },
    { name: 'npy truncated data', payload: encodeNpy({ dtype: '<f4', shape: [1, 4, 16, 16], data: sampleLatents(f, 0) }).subarray(0, 1000), headers: { 'content-type': 'application/x-npy' }, status: 400, code: 'BAD_NPY', message: /needs 4096 data bytes|4096 bytes/ },
    { name: 'unknown model', url: '/decode?model=sdxl', payload: good, headers: raw, status: 404, code: 'MODEL_NOT_FOUND', message: /sdxl.*torch-export/ },
    { name: 'bad timeout header', url: '/decode', payload: good, headers: { ...raw, 'x-request-timeout-ms': '-5' }, status: 400, code: 'BAD_PARAMETER', message: /X-Request-Timeout-Ms/ },
    { name: 'packed latents, patches vs height and width', url: '/decode?shape=1,256,16&height=128&width=128', payload: Buffer.alloc(4 * 256 * 16), headers: raw, status: 400, code: 'BAD_SHAPE', message: /packed latents \[1, 256, 16\] with height 128 and width 128: \(128\/16\)·\(128\/16\) = 8·8 = 64 patches, but dimension 1 is 256/ },
    { name: 'packed latents, channels vs model', url: '/decode?shape=1,64,64&height=128&width=128', payload: Buffer.alloc(4 * 64 * 64), headers: raw, status: 400, code: 'CHANNEL_MISMATCH', message: /carry 16 channels \(last dimension 64 = 4 × 16\) but model torch-export takes 4/ },
    { name: 'packed latents, last dimension not 4 × channels', url: '/decode?shape=1,64,18&height=128&width=128', payload: Buffer.alloc(4 * 64 * 18), headers: raw, status: 400, code: 'BAD_SHAPE', message: /last dimension 18 is not 4 × channels/ },
    { name: 'packed latents, height without width', url: '/decode?shape=1,64,16&height=128', payload: Buffer.alloc(4 * 64 * 16), headers: raw, status: 400, code: 'BAD_PARAMETER', message: /need both height and width/ },
    // Strict numbers: decimal integers only, one value per option.
    { name: 'shape in exponent notation', url: '/decode?shape=1e0,4,16,16', payload: good, headers: raw, status: 400, code: 'BAD_SHAPE', message: /"1e0" is not one/ },
    { name: 'shape in hex', url: '/decode?shape=0x1,4,16,16', payload: good, headers: raw, status: 400, code: 'BAD_SHAPE', message: /"0x1" is not one/ },
    { name: 'height in hex', url: '/decode?shape=1,4,16,16&height=0x10&width=16', payload: good, headers: raw, status: 400, code: 'BAD_PARAMETER', message: /height="0x10" is not valid: expected a positive decimal integer/ },
    { name: 'quality in exponent notation', url: '/decode?shape=1,4,16,16&format=jpeg&quality=1e1', payload: good, headers: raw, status: 400, code: 'BAD_PARAMETER', message: /quality="1e1" is not valid/ },
    { name: 'scaling factor in hex', url: '/decode?shape=1,4,16,16&scaling_factor=0x1', payload: good, headers: raw, status: 400, code: 'BAD_PARAMETER', message: /scaling_factor="0x1" is not valid/ },
    { name: 'timeout header in hex', url: '/decode?shape=1,4,16,16', payload: good, headers: { ...raw, 'x-request-timeout-ms': '0x10' }, status: 400, code: 'BAD_PARAMETER', message: /X-Request-Timeout-Ms "0x10"/ },
    { name: 'format and image_format disagree', url: '/decode?shape=1,4,16,16&format=png&image_format=jpg', payload: good, headers: raw, status: 400, code: 'BAD_PARAMETER', message: /format="png" and image_format="jpg" disagree/ },
    { name: 'an option given twice', url: '/decode?shape=1,4,16,16&dtype=float32&dtype=float16', payload: good, headers: raw, status: 400, code: 'BAD_PARAMETER', message: /dtype was given 2 times \("float32", "float16"\)/ },
    { name: 'JSON option also in the query string', url: '/decode?shape=1,4,8,8', payload: JSON.stringify({ latents: good.toString('base64'), shape: [1, 4, 16, 16] }), headers: json, status: 400, code: 'BAD_PARAMETER', message: /shape is given both in the query string \("1,4,8,8"\) and in the JSON body \(\[1,4,16,16\]\)/ },
    { name: 'JSON body, option in the query string only', url: '/decode?scaling_factor=1', payload: JSON.stringify({ latents: good.toString('base64'), shape: [1, 4, 16, 16] }), headers: json, status: 400, code: 'BAD_PARAMETER', message: /scaling_factor is in the query string/ },
    { name: 'JSON field given twice', payload: `{"latents": "${good.toString('base64')}", "dtype": "float32", "dtype": "float16"}`, headers: json, status: 400, code: 'BAD_PARAMETER', message: /gives "dtype" twice/ },
    { name: 'JSON array where a string goes', payload: JSON.stringify({ latents: good.toString('base64'), shape: [1, 4, 16, 16], dtype: ['float32'] }), headers: json, status: 400, code: 'BAD_PARAMETER', message: /dtype must be a single value, not the array \["float32"\]/ },
    { name: 'JSON number where a string goes', payload: JSON.stringify({ latents: good.toString('base64'), shape: [1, 4, 16, 16], model: 7 }), headers: json, status: 400, code: 'BAD_PARAMETER', message: /model must be a string, not 7/ },
    { name: 'JSON array body', payload: '[1, 2, 3]', headers: json, status: 400, code: 'BAD_JSON', message: /must be an object .*not an array/ },
    { name: 'JSON fields beside latents over 64 KiB', payload: JSON.stringify({ latents: good.toString('base64'), shape: [1, 4, 16, 16], note: 'x'.repeat(70_000) }), headers: json, status: 400, code: 'BAD_JSON', message: /other than "latents" take more than 65536 bytes/ },
    { name: 'JSON nested deeply', payload: JSON.stringify({ latents: good.toString('base64'), shape: [1, 4, 16, 16], x: [[[[[[[[[1]]]]]]]]] }), headers: json, status: 400, code: 'BAD_JSON', message: /nests deeper than 8 levels/ },
    { name: 'JSON latents not a string', payload: JSON.stringify({ latents: [1, 2, 3], shape: [1, 4, 16, 16] }), headers: json, status: 400, code: 'BAD_JSON', message: /"latents": a base64 string/ },
    { name: 'npy trailing bytes', payload: Buffer.concat([encodeNpy({ dtype: '<f4', shape: [1, 4, 16, 16], data: sampleLatents(f, 0) }), Buffer.alloc(16)]), headers: { 'content-type': 'application/x-npy' }, status: 400, code: 'BAD_NPY', message: /has 16 bytes after its data: shape \(1, 4, 16, 16\) <f4 needs 4096 data bytes, got 4112/ },
    { name: 'npy shape vs query shape', url: '/decode?shape=1,4,8,8', payload: encodeNpy({ dtype: '<f4', shape: [1, 4, 16, 16], data: sampleLatents(f, 0) }), headers: { 'content-type': 'application/x-npy' }, status: 400, code: 'BAD_PARAMETER', message: /shape=1,4,8,8 in the query string disagrees with the .npy header's shape \(1, 4, 16, 16\)/ },
    // Latents finite on the wire that scaling pushes out of float32.
    { name: 'scaling factor overflows', url: '/decode?shape=1,4,16,16&scaling_factor=1e-45', payload: bytesOf(oneAt), headers: raw, status: 400, code: 'NON_FINITE', message: /scaling_factor=1e-45 and shift_factor=0 \(the model's\) turn the latent 1.5 at \[0, 1, 2, 3\] \(flat index 291\) into Infinity/ },
    { name: 'shift factor overflows', url: '/decode?shape=1,4,16,16&shift_factor=1e308', payload: good, headers: raw, status: 400, code: 'NON_FINITE', message: /scaling_factor=0.18215 \(the model's\) and shift_factor=1e\+308 turn the latent .* at \[0, 0, 0, 0\] \(flat index 0\) into Infinity/ },
    // Layouts: a channel count that fits neither reading names both.
    { name: 'bad layout', url: '/decode?shape=1,4,16,16&layout=hwc', payload: good, headers: raw, status: 400, code: 'BAD_PARAMETER', message: /layout "hwc" is not supported/ },
    { name: 'channels fit the other layout', url: '/decode?shape=1,8,8,4', payload: Buffer.alloc(4 * 8 * 8 * 4), headers: raw, status: 400, code: 'CHANNEL_MISMATCH', message: /read as NCHW has 8 channels, read as NHWC 4: pass layout=nhwc/ },
    { name: 'channels fit the other layout, but as sent they are 16-channel latents', url: '/decode?shape=1,16,12,4', payload: Buffer.alloc(4 * 16 * 12 * 4), headers: raw, status: 400, code: 'CHANNEL_MISMATCH', message: /read as NCHW has 16 channels, read as NHWC 4; not suggesting layout=nhwc: 16 channels is what other VAEs' latents have \(another model's latents\?\)$/ },
    { name: 'channels fit the other layout, whose sides are too large', url: '/decode?shape=1,8,40,4', payload: Buffer.alloc(4 * 8 * 40 * 4), headers: raw, status: 400, code: 'CHANNEL_MISMATCH', message: /read as NCHW has 8 channels, read as NHWC 4$/ },
    { name: 'channels-first latents sent as channels-last', url: '/decode?shape=1,4,24,24&layout=nhwc', payload: Buffer.alloc(4 * 4 * 24 * 24), headers: raw, status: 400, code: 'CHANNEL_MISMATCH', message: /read as NHWC has 24 channels, read as NCHW 4: pass layout=nchw$/ },
    // Hints name only what works; options that contradict the shape are not ignored.
    { name: 'npy dtype not supported', payload: npyWithHeader("{'descr': '<f8', 'fortran_order': False, 'shape': (1, 4, 16, 16), }", Buffer.alloc(8 * 1024)), headers: { 'content-type': 'application/x-npy' }, status: 400, code: 'BAD_NPY', message: /dtype <f8 is not supported: use little-endian float32 \(<f4\) or little-endian float16 \(<f2\)$/ },
    { name: 'npy of bytes', payload: encodeNpy({ dtype: '|u1', shape: [1, 4, 16, 16], data: new Uint8Array(1024) }), headers: { 'content-type': 'application/x-npy' }, status: 400, code: 'BAD_NPY', message: /dtype \|u1 is not supported: use little-endian float32 \(<f4\) or little-endian float16 \(<f2\)$/ },
    { name: 'height and width vs a 4-D shape', url: '/decode?shape=1,4,16,16&height=512&width=512', payload: good, headers: raw, status: 400, code: 'BAD_PARAMETER', message: /height=512 and width=512 contradict shape \[1, 4, 16, 16\]: its 16x16 latents decode to 128x128 pixels/ },
    { name: 'width vs a channels-last shape', url: '/decode?shape=1,16,16,4&layout=nhwc&width=256', payload: good, headers: raw, status: 400, code: 'BAD_PARAMETER', message: /width=256 contradicts shape \[1, 16, 16, 4\]: its 16x16 latents decode to 128x128 pixels/ },
    { name: 'height vs the inferred shape', url: '/decode?height=64', payload: good, headers: raw, status: 400, code: 'BAD_PARAMETER', message: /height=64 contradicts shape \[1, 4, 16, 16\]/ },
    { name: 'height and width vs a 4-D shape, JSON', payload: JSON.stringify({ latents: good.toString('base64'), shape: [1, 4, 16, 16], height: 128, width: 96 }), headers: json, status: 400, code: 'BAD_PARAMETER', message: /height=128 and width=96 contradict shape \[1, 4, 16, 16\]/ },
    { name: 'channels fit neither layout', url: '/decode?shape=1,8,8,8&layout=nhwc', payload: Buffer.alloc(4 * 8 * 8 * 8), headers: raw, status: 400, code: 'CHANNEL_MISMATCH', message: /8 channels but model torch-export takes 4: shape \[1, 8, 8, 8\] read as NHWC has 8 channels, read as NCHW 8$/ },
  ];
  for (const c of cases) {
    const res = await app.inject({ method: 'POST', url: c.url ?? '/decode', headers: c.headers, payload: c.payload });
    assert.equal(res.statusCode, c.status, `${c.name}: ${res.body}`);
    assert.match(String(res.headers['content-type']), /application\/json/, c.name);
    const body = res.json() as { error: { code: string; message: string } };
    assert.equal(body.error.code, c.code, `${c.name}: ${body.error.message}`);
    assert.match(body.error.message, c.message, c.name);
    const ok = await app.inject({ method: 'POST', url: '/decode?shape=1,4,16,16&scaling_factor=1', headers: raw, payload: good });
    assert.equal(ok.statusCode, 200, `a good request after "${c.name}": ${ok.body}`);
  }
});

test('bad input: unknown routes and methods answer the error body', async (t) => {
  const { app } = await startService(t);
  const res = await app.inject({ method: 'GET', url: '/decode' });
  assert.equal(res.statusCode, 404);
  assert.equal((res.json() as { error: { code: string } }).error.code, 'NOT_FOUND');
});
