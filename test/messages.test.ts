// What clients and logs get told: request ids kept only when sane, 5xx bodies without internals,
// log levels by who is at fault, aborted uploads named as such.
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { test } from 'node:test';
import pino from 'pino';
import { buildApp } from '../src/app.js';
import { loadConfig } from '../src/config.js';
import { ServiceError, toServiceError } from '../src/errors.js';
import { startService } from './helpers/service.js';

test('messages: X-Request-Id is echoed when it is 1-128 printable ASCII characters, replaced otherwise', async (t) => {
  const { app } = await startService(t, { MODEL_PATH: '' });
  const echo = async (id: string) => (await app.inject({ url: '/healthz', headers: { 'x-request-id': id } })).headers['x-request-id'];
  assert.equal(await echo('abc-123_XYZ'), 'abc-123_XYZ');
  assert.equal(await echo('x'.repeat(128)), 'x'.repeat(128));
  for (const bad of ['x'.repeat(129), 'has space', 'x'.repeat(16 * 1024)]) {
    const got = String(await echo(bad));
    assert.notEqual(got, bad);
    assert.match(got, /^[0-9a-f-]{36}$/, 'a fresh UUID instead');
  }
});

test('messages: an unexpected error answers 500 with a generic message and the request id, never its text', async () => {
  const e = toServiceError(new Error('secret path /var/lib/x exploded'));
  assert.equal(e.code, 'INTERNAL');
  assert.equal(e.message, 'internal error');
  assert.ok(e.cause instanceof Error);
  assert.equal(toServiceError(new ServiceError('INFERENCE_FAILED', 'model m failed: Reshape')).message, 'model m failed: Reshape', 'inference failures keep their cause');
});

test('messages: 4xx logged at info, 503 at warn, both without a stack; the log line names the code', async (t) => {
  const lines: Record<string, unknown>[] = [];
  const sink = new Writable({ write(chunk, _enc, cb) { lines.push(JSON.parse(String(chunk))); cb(); } });
  const app = buildApp({ config: loadConfig({ MODEL_PATH: '', AUTH_TOKEN: 'secret' }), logger: pino({ level: 'info' }, sink) });
  t.after(() => app.close());
  await app.ready();
  assert.equal((await app.inject({ method: 'POST', url: '/decode', payload: Buffer.alloc(16) })).statusCode, 401);
  assert.equal((await app.inject({ url: '/readyz' })).statusCode, 503, 'models not loaded');
  const byCode = (code: string) => lines.find((l) => l.code === code)!;
  assert.equal(byCode('NOT_READY').level, 40, 'warn');
  assert.equal(byCode('UNAUTHORIZED').level, 30, 'info');
  for (const l of [byCode('NOT_READY'), byCode('UNAUTHORIZED')]) assert.equal(l.err, undefined, 'no stack');
});
