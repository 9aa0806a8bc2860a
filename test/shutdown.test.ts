// Slow clients and bounded shutdown, as a real process on a real socket: what only a process shows.
import assert from 'node:assert/strict';
import net from 'node:net';
import path from 'node:path';
import { test } from 'node:test';
import { FIXTURE_MODEL, REPO, bytesOf, tempDir } from './helpers/service.js';
import { startProcess, type ServiceProcess } from './helpers/process.js';

const TSX = import.meta.resolve('tsx');
const SERVER = ['--import', TSX, path.join(REPO, 'src', 'server.ts')];

function start(t: Parameters<typeof startProcess>[0], env: Record<string, string>): Promise<ServiceProcess> {
  return startProcess(t, SERVER, { MODEL_PATH: FIXTURE_MODEL, MODELS_DIR: tempDir(t), EXECUTION_PROVIDERS: 'cpu', ...env }, { cwd: REPO });
}

/** A client that declares a large body, sends `sent` bytes of it and then stalls. */
function stalledUpload(svc: ServiceProcess, declared: number, sent = 1024): Promise<{ socket: net.Socket; closed: Promise<{ ms: number; reply: string }> }> {
  const { port } = new URL(svc.url);
  return new Promise((resolve) => {
    const socket = net.connect(Number(port), '127.0.0.1', () => {
      socket.write(`POST /decode?shape=1,4,64,64 HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: ${declared}\r\n\r\n`);
      socket.write(Buffer.alloc(sent));
      const t0 = Date.now();
      let reply = '';
      socket.on('data', (d) => (reply += d.toString()));
      const closed = new Promise<{ ms: number; reply: string }>((r) => socket.on('close', () => r({ ms: Date.now() - t0, reply })));
      socket.on('error', () => {});
      resolve({ socket, closed });
    });
  });
}

const latent = (side: number) => new Uint8Array(bytesOf(new Float32Array(4 * side * side).map((_, i) => Math.sin(i / 31))));
const post = (svc: ServiceProcess, side: number) =>
  fetch(`${svc.url}/decode?shape=1,4,${side},${side}&scaling_factor=1&format=jpeg`, { method: 'POST', body: latent(side) })
    .then(async (r) => ({ status: r.status, code: r.status === 200 ? 'ok' : ((await r.json()) as { error: { code: string } }).error.code }));

test('shutdown: SIGTERM answers every accepted request, in flight when the signal came, refuses new ones with 503, then exits 0', async (t) => {
  const svc = await start(t, { MAX_BATCH_SIZE: '1' });
  const inflight = Array.from({ length: 4 }, () => post(svc, 48));
  await new Promise((r) => setTimeout(r, 300)); // all four accepted: one runs, three wait
  svc.child.kill('SIGTERM');
  await new Promise((r) => setTimeout(r, 100));
  assert.equal((await fetch(`${svc.url}/readyz`)).status, 503, 'readiness turns 503 while draining');
  assert.deepEqual(await post(svc, 8), { status: 503, code: 'SHUTTING_DOWN' });
  assert.deepEqual((await Promise.all(inflight)).map((a) => a.status), [200, 200, 200, 200]);
  assert.equal(await svc.exited, 0, svc.output());
  const line = svc.output().split('\n').find((l) => l.includes('draining: finishing accepted requests'))!;
  assert.equal(JSON.parse(line).inflight, 4, 'the four requests were in flight when the signal came');
});

test('shutdown: a stalled upload is closed at BODY_TIMEOUT_MS with 408, and SIGTERM does not wait for one', async (t) => {
  const svc = await start(t, { BODY_TIMEOUT_MS: '1000' });
  const a = await stalledUpload(svc, 65_536);
  const { ms, reply } = await a.closed;
  assert.ok(ms < 3000, `closed after ${ms} ms`);
  assert.match(reply, /^HTTP\/1\.1 408/);
  const b = await stalledUpload(svc, 65_536);
  await new Promise((r) => setTimeout(r, 100));
  const t0 = Date.now();
  svc.child.kill('SIGTERM');
  assert.equal(await svc.exited, 0, svc.output());
  assert.ok(Date.now() - t0 < 2000, 'the drain closed the upload instead of waiting for it');
  await b.closed;
  assert.match(svc.output(), /"uploadsClosed":1/);
});

test('shutdown: uploads in flight are capped by MAX_INFLIGHT_BODY_BYTES (429) on the bytes they hold; an aborted upload is logged as such', async (t) => {
  const svc = await start(t, { MAX_INFLIGHT_BODY_BYTES: '100000' });
  const a = await stalledUpload(svc, 65_536, 60_000);
  await new Promise((r) => setTimeout(r, 100));
  const res = await fetch(`${svc.url}/decode?shape=1,4,64,64`, { method: 'POST', body: latent(64) });
  assert.equal(res.status, 429);
  const err = ((await res.json()) as { error: { code: string; message: string } }).error;
  assert.equal(err.code, 'QUEUE_FULL');
  assert.match(err.message, /uploads in progress hold 60000 bytes and this one declares 65536: over the limit of 100000 \(MAX_INFLIGHT_BODY_BYTES\)/);
  a.socket.destroy();
  await a.closed;
  await new Promise((r) => setTimeout(r, 200));
  assert.match(svc.output(), /"code":"CLIENT_CLOSED".*the client aborted the upload/);
  assert.equal((await fetch(`${svc.url}/decode?shape=1,4,8,8&scaling_factor=1`, { method: 'POST', body: latent(8) })).status, 200, 'its bytes were released');
});

test('shutdown: past DRAIN_TIMEOUT_MS what is left gets 503 and the process ends though a run is in progress; a second signal ends it at once', async (t) => {
  const svc = await start(t, { MAX_BATCH_SIZE: '1', DRAIN_TIMEOUT_MS: '300' });
  const slow = [post(svc, 128), post(svc, 128)]; // runs of seconds each on two cores
  await new Promise((r) => setTimeout(r, 300));
  const t0 = Date.now();
  svc.child.kill('SIGTERM');
  const answers = await Promise.all(slow);
  assert.deepEqual(answers, [{ status: 503, code: 'SHUTTING_DOWN' }, { status: 503, code: 'SHUTTING_DOWN' }]);
  assert.equal(await svc.exited, null, 'ended by its signal: a run was in progress');
  assert.equal(svc.child.signalCode, 'SIGTERM');
  assert.ok(Date.now() - t0 < 2500, `ended ${Date.now() - t0} ms after the signal`);
  assert.doesNotMatch(svc.output(), /terminate called|Napi::Error|Aborted/);

  const again = await start(t, { MAX_BATCH_SIZE: '1' });
  const pending = post(again, 128).catch(() => 'connection closed');
  await new Promise((r) => setTimeout(r, 300));
  const t1 = Date.now();
  again.child.kill('SIGTERM');
  await new Promise((r) => setTimeout(r, 50));
  again.child.kill('SIGTERM');
  await again.exited;
  assert.ok(Date.now() - t1 < 1000, `the second signal ended it in ${Date.now() - t1} ms`);
  assert.match(again.output(), /second signal: exiting now/);
  assert.doesNotMatch(again.output(), /terminate called|Napi::Error|Aborted/);
  await pending;
});
