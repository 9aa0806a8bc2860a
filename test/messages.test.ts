// What clients and logs get told: request ids kept only when sane, 5xx bodies without internals,
// log levels by who is at fault, aborted uploads named as such.
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { test } from 'node:test';
import pino from 'pino';
import { buildApp } from '../src/app.js';
import { loadConfig } from '../src/config.js';
import { ServiceError, toServiceError } from '../src/errors.js';
import { fragileModel } from './helpers/models.js';
import { startService, tempDir } from './helpers/service.js';

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

test('messages: an unexpected error answers 500 over HTTP with a generic message and the request id, never its text; the log keeps it', async (t) => {
  const lines: Record<string, unknown>[] = [];
  const sink = new Writable({ write(chunk, _enc, cb) { lines.push(JSON.parse(String(chunk))); cb(); } });
  const app = buildApp({ config: loadConfig({ MODEL_PATH: '' }), logger: pino({ level: 'info' }, sink) });
  t.after(() => app.close());
  // A route of this test's own: nothing in the service throws a plain Error on purpose, and the
  // error handler under test is the app's, whatever route the error comes from.
  app.get('/boom', async () => {
    throw new Error('secret path /var/lib/x exploded');
  });
  await app.ready();
  const res = await app.inject({ url: '/boom', headers: { 'x-request-id': 'req-500' } });
  assert.equal(res.statusCode, 500);
  assert.match(String(res.headers['content-type']), /^application\/json/);
  assert.equal(res.headers['x-request-id'], 'req-500');
  assert.deepEqual(res.json(), { error: { code: 'INTERNAL', message: 'internal error', requestId: 'req-500' } });
  assert.doesNotMatch(res.body, /secret|var\/lib/);
  const logged = lines.find((l) => l.code === 'INTERNAL' && l.level === 50);
  assert.ok(logged, 'logged at error');
  assert.match(JSON.stringify(logged), /secret path \/var\/lib\/x exploded/, 'with the cause, for whoever quotes the request id');
  assert.equal(toServiceError(new ServiceError('INFERENCE_FAILED', 'model m failed: Reshape')).message, 'model m failed: Reshape', 'inference failures keep their cause');
});

test('messages: an ONNX Runtime failure answers 500 INFERENCE_FAILED over HTTP naming its cause, with the request id', async (t) => {
  const { app } = await startService(t, { MODEL_PATH: fragileModel(tempDir(t)), WARMUP_LATENT_SIZES: '16x16' });
  const res = await app.inject({ method: 'POST', url: '/decode?shape=1,4,8,8', payload: Buffer.alloc(4 * 4 * 8 * 8), headers: { 'x-request-id': 'run-fails' } });
  assert.equal(res.statusCode, 500, res.body);
  assert.equal(res.headers['x-request-id'], 'run-fails');
  const { error } = res.json() as { error: { code: string; message: string; requestId: string } };
  assert.equal(error.code, 'INFERENCE_FAILED');
  assert.match(error.message, /fragile.*1x4x8x8/);
  assert.equal(error.requestId, 'run-fails');
  const generated = await app.inject({ method: 'POST', url: '/decode?shape=1,4,8,8', payload: Buffer.alloc(4 * 4 * 8 * 8) });
  assert.equal(generated.statusCode, 500);
  assert.match(String(generated.headers['x-request-id']), /^[0-9a-f-]{36}$/);
  assert.equal(generated.json().error.requestId, generated.headers['x-request-id'], 'a generated id is the one in the body');
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
