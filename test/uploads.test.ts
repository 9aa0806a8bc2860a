// The body reader's memory: a request holds at most about twice what it has sent, so connections
// that announce large bodies and send nothing hold nothing (the upload budget counts received bytes).
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { test } from 'node:test';
import type { FastifyRequest } from 'fastify';
import { Uploads } from '../src/plugins/uploads.js';

test('a body reader whose client sent nothing yet holds no buffer; one that sent a body gets it back whole', async () => {
  const uploads = new Uploads(1e9);
  const fake = (): FastifyRequest => ({ headers: { 'content-length': '22435158' }, raw: {} }) as unknown as FastifyRequest;
  const streams: PassThrough[] = [];
  global.gc?.();
  const before = process.memoryUsage().arrayBuffers;
  for (let i = 0; i < 500; i++) {
    const payload = new PassThrough();
    streams.push(payload);
    uploads.read(fake(), payload, { limit: 22435158 }, () => {});
  }
  const held = process.memoryUsage().arrayBuffers - before;
  // 500 × 64 KiB would be 32 MiB before the first byte.
  assert.ok(held < 4 * 1024 * 1024, `500 idle readers hold ${held} bytes`);
  for (const s of streams) s.destroy();

  const req = { headers: { 'content-length': '100000' }, raw: {} } as unknown as FastifyRequest;
  const payload = new PassThrough();
  const got = new Promise<Buffer>((resolve, reject) => uploads.read(req, payload, { limit: 1e6 }, (err, body) => (err ? reject(err) : resolve(body!))));
  const data = Buffer.from(Array.from({ length: 100_000 }, (_, i) => i % 251));
  payload.write(data.subarray(0, 1));
  payload.write(data.subarray(1, 70_000));
  payload.end(data.subarray(70_000));
  assert.deepEqual(await got, data);
});
