// A request the service will refuse is answered from its query string and headers, before its
// body is read: the client here sends 1 KB of a declared 60 MB body and gets its answer anyway.
import assert from 'node:assert/strict';
import net from 'node:net';
import { test } from 'node:test';
import { startService } from './helpers/service.js';

interface Answer {
  status: number;
  headers: Record<string, string>;
  body: { error: { code: string; message: string } };
}

const DECLARED = 60_000_000;

/** Sends the head and the first KB of a body declared `declared` bytes long (60 MB); resolves with the answer. */
function refusedEarly(port: number, url: string, headers: Record<string, string> = {}, declared = DECLARED): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const sock = net.connect(port, '127.0.0.1');
    let data = Buffer.alloc(0);
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`no answer to ${url} within 5 s: the service waited for the body`));
    }, 5000);
    const tryParse = (): boolean => {
      const end = data.indexOf('\r\n\r\n');
      if (end < 0) return false;
      const lines = data.subarray(0, end).toString('latin1').split('\r\n');
      const hs: Record<string, string> = {};
      for (const l of lines.slice(1)) hs[l.slice(0, l.indexOf(':')).toLowerCase()] = l.slice(l.indexOf(':') + 1).trim();
      const len = Number(hs['content-length']);
      if (data.length - end - 4 < len) return false;
      clearTimeout(timer);
      sock.destroy();
      resolve({ status: Number(lines[0]!.split(' ')[1]), headers: hs, body: JSON.parse(data.subarray(end + 4, end + 4 + len).toString()) });
      return true;
    };
    sock.on('data', (d: Buffer) => {
      data = Buffer.concat([data, d]);
      tryParse();
    });
    sock.on('error', () => {
      if (!tryParse()) {
        clearTimeout(timer);
        reject(new Error(`the connection failed before an answer to ${url}`));
      }
    });
    const type = headers['content-type'] ?? 'application/octet-stream';
    const head = [`POST ${url} HTTP/1.1`, 'Host: localhost', `Content-Type: ${type}`, `Content-Length: ${declared}`,
      ...Object.entries(headers).filter(([k]) => k !== 'content-type').map(([k, v]) => `${k}: ${v}`), '', ''].join('\r\n');
    sock.write(head);
    sock.write(Buffer.alloc(1024));
  });
}

test('early reject: refusals answer before the body is read, and the connection closes', async (t) => {
  const { app, registry, host } = await startService(t, { MAX_QUEUE_SIZE: '2', MAX_QUEUE_DELAY_MS: '60000', MAX_LATENT_SIDE: '64', BODY_LIMIT_BYTES: '67108864' });
  await app.listen({ port: 0, host: '127.0.0.1' });
  const port = (app.server.address() as net.AddressInfo).port;

  const cases: [string, Record<string, string>, number, string, RegExp][] = [
    ['/decode?model=sdxl&shape=1,4,16,16', {}, 404, 'MODEL_NOT_FOUND', /no model named "sdxl"/],
    ['/decode?shape=1,4,512,512', {}, 400, 'LATENT_TOO_LARGE', /512x512 is over the maximum side of 64/],
    ['/decode?shape=1,4,16,16', {}, 400, 'SIZE_MISMATCH', /needs 4096 bytes, got 60000000/],
    ['/decode?shape=1,16,16,16', {}, 400, 'CHANNEL_MISMATCH', /16 channels but model torch-export takes 4/],
    ['/decode?shape=1e3,4,16,16', {}, 400, 'BAD_SHAPE', /"1e3"/],
    ['/decode?shape=3,4,64,64', {}, 400, 'SIZE_MISMATCH', /needs 196608 bytes, got 60000000/],
    ['/decode?shape=1,4,16,16', { 'x-request-timeout-ms': '0x10' }, 400, 'BAD_PARAMETER', /X-Request-Timeout-Ms/],
  ];
  // Queue room is checked last, once the request is known to be valid.
  cases.push(['/decode?shape=3,4,64,64', { 'content-type': 'application/x-npy' }, 413, 'BATCH_TOO_LARGE', /3 samples is more than the queue holds \(2\)/]);
  for (const [url, headers, status, code, message] of cases) {
    const a = await refusedEarly(port, url, headers);
    assert.equal(a.status, status, `${url}: ${JSON.stringify(a.body)}`);
    assert.equal(a.body.error.code, code, url);
    assert.match(a.body.error.message, message, url);
    assert.equal(a.headers.connection, 'close', `${url}: the unread body is not drained`);
  }

  // A small refused body is drained instead: the connection stays open for the next request.
  const small = await app.inject({ method: 'POST', url: '/decode?model=sdxl', payload: Buffer.alloc(1024) });
  assert.equal(small.statusCode, 404);
  assert.notEqual(small.headers.connection, 'close');

  // A full queue: two samples wait for a batch (the queue delay is a minute), the limit is two.
  const model = registry.get(undefined)!;
  const waiting = new AbortController();
  const tensor = { data: new Float32Array(2 * 4 * 8 * 8), shape: [2, 4, 8, 8] as [number, number, number, number] };
  const queued = model.batcher.submit('8x8', { tensor, fetch: ['image'] }, 2, { signal: waiting.signal }).catch((e: Error) => e);
  assert.equal(model.batcher.waitingSamples, 2);
  const full = await refusedEarly(port, '/decode?shape=1,4,16,16', {}, 4096);
  assert.equal(full.status, 429, JSON.stringify(full.body));
  assert.equal(full.body.error.code, 'QUEUE_FULL');
  assert.match(full.headers['retry-after'] ?? '', /^\d+$/);
  // Without a shape in the query (a .npy says it inside), the request still brings at least one sample.
  assert.equal((await refusedEarly(port, '/decode', { 'content-type': 'application/x-npy' })).status, 429);
  assert.equal(model.batcher.reservedSamples, 0, 'refusals hold nothing');
  waiting.abort(new Error('test over'));
  assert.equal(((await queued) as Error).message, 'test over');

  host.draining = true;
  const draining = await refusedEarly(port, '/decode?shape=1,4,16,16');
  assert.equal(draining.status, 503);
  assert.equal(draining.body.error.code, 'SHUTTING_DOWN');
});
