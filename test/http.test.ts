// The HTTP path on a real socket (built-in preview model, real ORT worker): keep-alive that
// outlives proxies, Expect: 100-continue answered only after the header checks, Content-Encoding,
// deadlines counted from arrival, the upload budget charged as bytes arrive, every /decode request
// counted once, Node's own error answers in the service's JSON format.
import assert from 'node:assert/strict';
import net from 'node:net';
import { test, type TestContext } from 'node:test';
import { Writable } from 'node:stream';
import { deflateSync, gzipSync } from 'node:zlib';
import pino from 'pino';
import { buildApp } from '../src/app.js';
import { loadConfig } from '../src/config.js';
import { tempDir } from './helpers/paths.js';

/** 1×4×8×8 float32 latents: the preview model decodes them into a 64×64 image in milliseconds. */
const LATENTS = Buffer.from(new Float32Array(4 * 8 * 8).map((_, i) => Math.sin(i / 7)).buffer);
const RAW_URL = '/decode?shape=1,4,8,8&scaling_factor=1';
const JSON_BODY = Buffer.from(JSON.stringify({ latents: LATENTS.toString('base64'), shape: [1, 4, 8, 8], scaling_factor: 1 }));

interface Service {
  port: number;
  app: ReturnType<typeof buildApp>;
  /** The JSON log lines written so far. */
  logs: Record<string, unknown>[];
}

/** The real service on the preview model, listening on a loopback port, with its logs captured. */
async function serve(t: TestContext, env: Record<string, string> = {}): Promise<Service> {
  const logs: Record<string, unknown>[] = [];
  const sink = new Writable({ write(chunk, _enc, cb) { logs.push(JSON.parse(String(chunk)) as Record<string, unknown>); cb(); } });
  const app = buildApp({ config: loadConfig({ MODEL_PATH: '', MODELS_DIR: tempDir(t), EXECUTION_PROVIDERS: 'cpu', ...env }), logger: pino({ level: 'info' }, sink) });
  t.after(() => app.close());
  await app.ready();
  await app.models.load();
  await app.listen({ port: 0, host: '127.0.0.1' });
  return { port: (app.server.address() as net.AddressInfo).port, app, logs };
}

/** A raw client connection: what it received so far, and a wait for a pattern in it. */
class Conn {
  readonly sock: net.Socket;
  text = '';
  closed: Promise<void>;

  constructor(port: number) {
    this.sock = net.connect(port, '127.0.0.1');
    this.sock.on('data', (d: Buffer) => (this.text += d.toString('latin1')));
    this.sock.on('error', () => {});
    this.closed = new Promise((r) => this.sock.on('close', () => r()));
  }

  write(data: string | Buffer): void {
    this.sock.write(data);
  }

  /** Resolves once the received text matches `re` (or rejects after `ms`). */
  async waitFor(re: RegExp, ms = 5000): Promise<RegExpExecArray> {
    const until = Date.now() + ms;
    for (;;) {
      const m = re.exec(this.text);
      if (m) return m;
      if (Date.now() > until) throw new Error(`no ${re} within ${ms} ms; got ${JSON.stringify(this.text.slice(0, 400))}`);
      await sleep(10);
    }
  }

  /** The complete responses received so far: status, headers, body. */
  responses(): { status: number; headers: Record<string, string>; body: string }[] {
    const out: { status: number; headers: Record<string, string>; body: string }[] = [];
    let rest = this.text;
    for (;;) {
      const end = rest.indexOf('\r\n\r\n');
      if (end < 0) return out;
      const lines = rest.slice(0, end).split('\r\n');
      const headers: Record<string, string> = {};
      for (const l of lines.slice(1)) headers[l.slice(0, l.indexOf(':')).toLowerCase()] = l.slice(l.indexOf(':') + 1).trim();
      const len = Number(headers['content-length'] ?? 0);
      if (rest.length - end - 4 < len) return out;
      out.push({ status: Number(lines[0]!.split(' ')[1]), headers, body: rest.slice(end + 4, end + 4 + len) });
      rest = rest.slice(end + 4 + len);
    }
  }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const head = (url: string, headers: Record<string, string | number>): string =>
  [`POST ${url} HTTP/1.1`, 'Host: localhost', ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`), '', ''].join('\r\n');
const errorCode = (body: string): string => (JSON.parse(body) as { error: { code: string } }).error.code;

test('keep-alive: 72 s by default, the configured value in the header, and a socket idle longer than Node\'s 5 s is reused', async (t) => {
  assert.equal(loadConfig({}).keepAliveTimeoutMs, 72_000);
  assert.throws(() => loadConfig({ KEEP_ALIVE_TIMEOUT_MS: '10' }), /KEEP_ALIVE_TIMEOUT_MS="10" is not valid/);
  // An upload budget below the body limit would refuse a body between the two forever (429).
  assert.throws(() => loadConfig({ BODY_LIMIT_BYTES: '100000', MAX_INFLIGHT_BODY_BYTES: '50000' }), /MAX_INFLIGHT_BODY_BYTES="50000" is not valid: expected an integer from 100000/);
  const byDefault = await serve(t);
  assert.equal(byDefault.app.server.keepAliveTimeout, 72_000);
  assert.equal(byDefault.app.server.requestTimeout, 30_000, 'BODY_TIMEOUT_MS');
  assert.equal(byDefault.app.server.headersTimeout, 30_000, 'at most requestTimeout, which Node enforces');
  const res = await fetch(`http://127.0.0.1:${byDefault.port}/healthz`);
  assert.equal(res.headers.get('keep-alive'), 'timeout=72');

  // Configured 8 s, BODY_TIMEOUT_MS (and so headersTimeout) 1 s: a socket idle 5.5 s, past Node's
  // default keep-alive and the headers timeout, still answers its next request.
  const svc = await serve(t, { KEEP_ALIVE_TIMEOUT_MS: '8000', BODY_TIMEOUT_MS: '1000' });
  const c = new Conn(svc.port);
  c.write(head(RAW_URL, { 'Content-Length': LATENTS.length }));
  c.write(LATENTS);
  await c.waitFor(/\r\n\r\n[\s\S]*$/);
  await sleep(5500);
  c.write(head(RAW_URL, { 'Content-Length': LATENTS.length }));
  c.write(LATENTS);
  const until = Date.now() + 5000;
  while (c.responses().length < 2 && Date.now() < until) await sleep(10);
  const [first, second] = c.responses();
  assert.equal(first?.headers['keep-alive'], 'timeout=8');
  assert.equal(second?.status, 200, 'the idle socket was kept and reused');
  c.sock.destroy();
});

test('Expect: 100-continue: a request refused from its headers gets its final status, never 100 Continue, and the connection closes; an admitted one gets 100, then 200', async (t) => {
  const svc = await serve(t, { BODY_LIMIT_BYTES: '65536' });
  const cases: [string, Record<string, string | number>, number, string][] = [
    ['/decode?model=nope&shape=1,4,8,8', { 'Content-Length': 1024 }, 404, 'MODEL_NOT_FOUND'],
    [RAW_URL, { 'Content-Length': 100_000 }, 413, 'BODY_TOO_LARGE'],
    [RAW_URL, { 'Content-Length': 1000 }, 400, 'SIZE_MISMATCH'],
    [RAW_URL, { 'Content-Length': 1024, 'Content-Encoding': 'br' }, 415, 'UNSUPPORTED_CONTENT_ENCODING'],
    ['/nowhere', { 'Content-Length': 1024 }, 404, 'NOT_FOUND'],
  ];
  for (const [url, headers, status, code] of cases) {
    const c = new Conn(svc.port);
    c.write(head(url, { ...headers, 'Expect': '100-continue' }));
    await c.closed;
    assert.doesNotMatch(c.text, /100 Continue/, `${url}: told to send a body it then refused`);
    const [res] = c.responses();
    assert.equal(res?.status, status, `${url}: ${c.text}`);
    assert.equal(errorCode(res.body), code);
    assert.equal(res.headers.connection, 'close');
  }

  const c = new Conn(svc.port);
  c.write(head(RAW_URL, { 'Content-Length': LATENTS.length, 'Expect': '100-continue' }));
  await c.waitFor(/^HTTP\/1\.1 100 Continue\r\n\r\n/);
  c.write(LATENTS);
  await c.waitFor(/HTTP\/1\.1 200 OK/);
  c.sock.destroy();
});

test('an Expect other than 100-continue: 417 EXPECTATION_FAILED in the service\'s JSON format, before the body, counted as a /decode request', async (t) => {
  const svc = await serve(t);
  const c = new Conn(svc.port);
  c.write(head(RAW_URL, { 'Content-Length': LATENTS.length, 'Expect': 'something-else' }));
  await c.closed;
  const [res] = c.responses();
  assert.equal(res?.status, 417, c.text);
  assert.equal(res.headers['content-type'], 'application/json; charset=utf-8');
  assert.equal(errorCode(res.body), 'EXPECTATION_FAILED');
  assert.match(res.body, /something-else/);
  assert.equal(res.headers.connection, 'close');
  const text = await (await fetch(`http://127.0.0.1:${svc.port}/metrics`)).text();
  assert.match(text, /^latent_decoder_requests_total\{model="none",direction="decode",outcome="bad_request"\} 1$/m);
});

test('Content-Encoding: gzip and deflate bodies decode as the plain ones; a decompression bomb is 413 at the limit; br is 415 naming it', async (t) => {
  const svc = await serve(t, { BODY_LIMIT_BYTES: '65536' });
  const post = (url: string, payload: Buffer, headers: Record<string, string> = {}) =>
    svc.app.inject({ method: 'POST', url, payload, headers: { 'content-type': 'application/octet-stream', ...headers } });
  const plain = await post(RAW_URL, LATENTS);
  assert.equal(plain.statusCode, 200);
  for (const [enc, zip] of [['gzip', gzipSync], ['deflate', deflateSync]] as const) {
    const raw = await post(RAW_URL, zip(LATENTS), { 'content-encoding': enc });
    assert.equal(raw.statusCode, 200, raw.body);
    assert.deepEqual(raw.rawPayload, plain.rawPayload, `${enc} raw body`);
  }
  const json = await post('/decode', gzipSync(JSON_BODY), { 'content-type': 'application/json', 'content-encoding': 'gzip' });
  assert.equal(json.statusCode, 200, json.body);
  assert.deepEqual(json.rawPayload, plain.rawPayload, 'gzip JSON body');

  // 64 MiB of zeros in 65 KB of gzip: refused once 64 KiB have been inflated.
  const bomb = gzipSync(Buffer.alloc(64 * 1024 * 1024));
  const refused = await post(RAW_URL, bomb, { 'content-encoding': 'gzip' });
  assert.equal(refused.statusCode, 413);
  assert.equal(errorCode(refused.body), 'BODY_TOO_LARGE');
  assert.match(refused.body, /decompressed body is over the limit of 65536 bytes/);
  assert.equal(svc.app.uploads.bytes, 0, 'its bytes were released');

  const br = await post(RAW_URL, LATENTS, { 'content-encoding': 'br' });
  assert.equal(br.statusCode, 415);
  assert.equal(errorCode(br.body), 'UNSUPPORTED_CONTENT_ENCODING');
  assert.match(br.body, /Content-Encoding \\"br\\" is not supported/);
  assert.equal(br.headers['accept-encoding'], 'gzip, deflate, identity');
  const broken = await post(RAW_URL, LATENTS, { 'content-encoding': 'gzip' });
  assert.equal(broken.statusCode, 400);
  assert.equal(errorCode(broken.body), 'BAD_CONTENT_ENCODING');
});

test('deadlines count from arrival: an upload that outlasts X-Request-Timeout-Ms is 504, not decoded', async (t) => {
  const svc = await serve(t);
  const c = new Conn(svc.port);
  const t0 = Date.now();
  c.write(head(RAW_URL, { 'Content-Length': LATENTS.length, 'X-Request-Timeout-Ms': 300 }));
  c.write(LATENTS.subarray(0, 512));
  await sleep(600);
  c.write(LATENTS.subarray(512));
  await c.waitFor(/\r\n\r\n\{.*\}$/);
  const [res] = c.responses();
  assert.equal(res?.status, 504, c.text);
  assert.equal(errorCode(res.body), 'DEADLINE_EXCEEDED');
  assert.ok(Date.now() - t0 < 2000);
  c.sock.destroy();
});

test('a Content-Length over the body limit is 413, not a 429 to retry, even when it is over the upload budget too', async (t) => {
  // Budget 4 × 65536: a body of 300,000 bytes could never be accepted, so "retry" would be a lie.
  const svc = await serve(t, { BODY_LIMIT_BYTES: '65536' });
  for (const url of [RAW_URL, '/decode']) {
    const c = new Conn(svc.port);
    c.write(head(url, { 'Content-Length': 300_000, 'Content-Type': url === RAW_URL ? 'application/octet-stream' : 'application/json' }));
    await c.waitFor(/\r\n\r\n\{.*\}$/);
    const [res] = c.responses();
    assert.equal(res?.status, 413, `${url}: ${c.text}`);
    assert.equal(errorCode(res.body), 'BODY_TOO_LARGE');
    c.sock.destroy();
  }
});

test('upload budget: four connections that send only headers announcing 22 MB do not block a fifth client (finding 14)', async (t) => {
  const svc = await serve(t); // default limits: BODY_LIMIT_BYTES 22435158, MAX_INFLIGHT_BODY_BYTES 4 × that
  const idle = Array.from({ length: 4 }, () => {
    const c = new Conn(svc.port);
    c.write(head('/decode', { 'Content-Type': 'application/json', 'Content-Length': 22_435_158 }));
    return c;
  });
  try {
    await sleep(200);
    const res = await fetch(`http://127.0.0.1:${svc.port}${RAW_URL}`, { method: 'POST', body: new Uint8Array(LATENTS) });
    assert.equal(res.status, 200, await res.clone().text());
    assert.equal(svc.app.uploads.bytes, 0, 'headers alone hold nothing');
  } finally {
    for (const c of idle) c.sock.destroy();
  }
});

test('a client that sends its whole body and closes while its request waits is counted once, as cancelled', async (t) => {
  // Requests wait up to 2 s for a fuller batch: the client is gone before its run.
  const svc = await serve(t, { MAX_QUEUE_DELAY_MS: '2000' });
  for (let i = 0; i < 3; i++) {
    const c = new Conn(svc.port);
    c.write(head(RAW_URL, { 'Content-Length': LATENTS.length }));
    c.write(LATENTS);
    await sleep(200);
    c.sock.destroy();
    await c.closed;
  }
  await sleep(2500);
  const text = await (await fetch(`http://127.0.0.1:${svc.port}/metrics`)).text();
  const counts: Record<string, number> = {};
  for (const m of text.matchAll(/^latent_decoder_requests_total\{[^}]*outcome="(\w+)"[^}]*\} (\d+)$/gm)) counts[m[1]!] = (counts[m[1]!] ?? 0) + Number(m[2]);
  assert.equal(counts.cancelled, 3, JSON.stringify(counts));
  assert.equal(Object.values(counts).reduce((a, b) => a + b, 0), 3, JSON.stringify(counts));
});

test('every /decode request is counted once by outcome, including 408 stalls, aborts, 413 while reading, upload-budget 429 and Node\'s own 400/431', async (t) => {
  const svc = await serve(t, { BODY_LIMIT_BYTES: '16000', MAX_INFLIGHT_BODY_BYTES: '16000', BODY_TIMEOUT_MS: '1000' });
  const url = `http://127.0.0.1:${svc.port}`;
  const status = async (path: string, body: Buffer, headers: Record<string, string> = {}) =>
    (await fetch(url + path, { method: 'POST', body: new Uint8Array(body), headers })).status;
  let sent = 0;
  const expect: Record<string, number> = { ok: 0, bad_request: 0, rejected: 0, cancelled: 0 };
  const check = (got: number, want: number, outcome: string): void => {
    sent++;
    expect[outcome]!++;
    assert.equal(got, want);
  };
  check(await status(RAW_URL, LATENTS), 200, 'ok');
  check(await status('/decode?shape=1,4,9,8&scaling_factor=1', LATENTS), 400, 'bad_request');
  check(await status('/decode?model=nope', LATENTS), 404, 'bad_request');
  check(await status(RAW_URL, LATENTS, { 'content-encoding': 'br' }), 415, 'bad_request');

  // 413 found while reading: a chunked body (no Content-Length) over the limit.
  const chunked = new Conn(svc.port);
  chunked.write(head(RAW_URL, { 'Transfer-Encoding': 'chunked' }));
  chunked.write(`${(30_000).toString(16)}\r\n`);
  chunked.write(Buffer.alloc(30_000));
  await chunked.waitFor(/^HTTP\/1\.1 (\d+)/);
  check(chunked.responses()[0]?.status ?? 0, 413, 'bad_request');
  chunked.sock.destroy();

  // A stalled upload holding 15,000 bytes: the next upload is refused 429 from its headers, a
  // chunked one once its bytes pass the budget; then the stalled client aborts (499).
  const stalled = new Conn(svc.port);
  stalled.write(head('/decode', { 'Content-Type': 'application/json', 'Content-Length': 16_000 }));
  stalled.write(Buffer.alloc(15_000, 0x20));
  const until = Date.now() + 2000;
  while (svc.app.uploads.bytes < 15_000 && Date.now() < until) await sleep(5);
  check(await status(RAW_URL, LATENTS), 429, 'rejected');
  const overBudget = new Conn(svc.port);
  overBudget.write(head(RAW_URL, { 'Transfer-Encoding': 'chunked' }));
  overBudget.write(`${(8000).toString(16)}\r\n`);
  overBudget.write(Buffer.alloc(8000));
  await overBudget.waitFor(/^HTTP\/1\.1 (\d+)/);
  check(overBudget.responses()[0]?.status ?? 0, 429, 'rejected');
  overBudget.sock.destroy();
  stalled.sock.destroy();
  await stalled.closed;
  sent++;
  expect.cancelled!++;

  // A stall past BODY_TIMEOUT_MS: Node answers 408 in the service's format; logged as 408.
  const slow = new Conn(svc.port);
  slow.write(head(RAW_URL, { 'Content-Length': LATENTS.length }));
  slow.write(LATENTS.subarray(0, 100));
  await slow.closed;
  const [timedOut] = slow.responses();
  check(timedOut?.status ?? 0, 408, 'bad_request');
  assert.equal(errorCode(timedOut!.body), 'REQUEST_TIMEOUT');

  // A malformed chunk under a request already in the app's hands: Node's 400, counted once as such.
  const badChunk = new Conn(svc.port);
  badChunk.write(head(RAW_URL, { 'Transfer-Encoding': 'chunked' }));
  badChunk.write('400\r\n' + 'x'.repeat(1024) + '\r\nzz\r\n');
  await badChunk.closed;
  check(badChunk.responses()[0]?.status ?? 0, 400, 'bad_request');
  assert.equal(errorCode(badChunk.responses()[0]!.body), 'BAD_REQUEST');

  // Node's HTTP parser: a malformed request line (400) and oversized headers (431).
  for (const [raw, want, code] of [['NOT HTTP\r\n\r\n', 400, 'BAD_REQUEST'], [head(RAW_URL, { 'X-Big': 'x'.repeat(20_000) }), 431, 'REQUEST_HEADER_FIELDS_TOO_LARGE']] as const) {
    const c = new Conn(svc.port);
    c.write(raw);
    await c.closed;
    const [res] = c.responses();
    check(res?.status ?? 0, want, 'bad_request');
    assert.equal(res?.headers['content-type'], 'application/json');
    assert.equal(errorCode(res.body), code);
  }

  await sleep(100);
  const text = await (await fetch(`${url}/metrics`)).text();
  const counts: Record<string, number> = {};
  for (const m of text.matchAll(/^latent_decoder_requests_total\{[^}]*outcome="(\w+)"[^}]*\} (\d+)$/gm)) counts[m[1]!] = (counts[m[1]!] ?? 0) + Number(m[2]);
  assert.equal(Object.values(counts).reduce((a, b) => a + b, 0), sent, JSON.stringify(counts));
  for (const [outcome, n] of Object.entries(expect)) assert.equal(counts[outcome] ?? 0, n, `${outcome}: ${JSON.stringify(counts)}`);
  assert.ok(svc.logs.some((l) => l.code === 'REQUEST_TIMEOUT' && l.status === 408), 'the stall is logged as a 408');
  assert.ok(!svc.logs.some((l) => l.code === 'CLIENT_CLOSED' && /408/.test(String(l.msg))));
});
