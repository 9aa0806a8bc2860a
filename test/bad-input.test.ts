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
    { name: 'channels vs model', url: '/decode?shape=1,16,8,8', payload: good, headers: raw, status: 400, code: 'CHANNEL_MISMATCH', message: /16 channels but model torch-export takes 4/ },
    { name: 'latent side over the maximum', url: '/decode?shape=1,4,8,64', payload: Buffer.alloc(4 * 4 * 8 * 64), headers: raw, status: 400, code: 'LATENT_TOO_LARGE', message: /8x64 is over the maximum side of 32/ },
    { name: 'NaN, located', url: '/decode?shape=1,4,16,16', payload: bytesOf(withNan), headers: raw, status: 400, code: 'NON_FINITE', message: /NaN at \[0, 1, 2, 3\]/ },
    { name: 'Infinity, located', url: '/decode?shape=1,4,16,16', payload: bytesOf(withInf), headers: raw, status: 400, code: 'NON_FINITE', message: /-Infinity at \[0, 0, 0, 5\]/ },
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
    { name: 'packed latents', url: '/decode?shape=1,256,64&height=128&width=128', payload: Buffer.alloc(4 * 256 * 64), headers: raw, status: 400, code: 'BAD_SHAPE', message: /packed/ },
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
