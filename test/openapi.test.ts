// The OpenAPI document: served equals committed, valid OpenAPI 3.1, complete; and the route schemas
// change nothing at run time (no validation on /decode, JSON answers serialized as before).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { Validator } from '@seriousme/openapi-schema-validator';
import type { RouteOptions } from 'fastify';
import pino from 'pino';
import { buildApp } from '../src/app.js';
import { loadConfig } from '../src/config.js';
import { ErrorCodes } from '../src/errors.js';
import { OPENAPI_FILE } from '../scripts/write-openapi.js';
import { startService } from './helpers/service.js';

const PREVIEW = { MODEL_PATH: '' }; // only the built-in preview model
const committed = (): Record<string, unknown> => JSON.parse(readFileSync(OPENAPI_FILE, 'utf8')) as Record<string, unknown>;
const latents = (n: number): Buffer => Buffer.alloc(n * 4 * 8 * 8 * 4);

test('openapi: the served document is the committed openapi/openapi.json', async (t) => {
  const { app } = await startService(t, PREVIEW);
  const res = await app.inject('/docs/json');
  assert.equal(res.statusCode, 200);
  assert.deepEqual(res.json(), committed(), 'openapi/openapi.json is out of date: run `npm run openapi` and commit the result');
});

test('openapi: the committed document is valid OpenAPI 3.1', async () => {
  const doc = committed();
  assert.equal(doc.openapi, '3.1.0');
  const validator = new Validator();
  const result = await validator.validate(doc);
  assert.equal(validator.version, '3.1');
  assert.deepEqual(result, { valid: true });
});

test('openapi: every route of the app is documented, /docs serves Swagger UI', async (t) => {
  const app = buildApp({ config: loadConfig({}), logger: pino({ level: 'silent' }) });
  t.after(() => app.close());
  const routes: RouteOptions[] = [];
  app.addHook('onRoute', (r) => void routes.push(r));
  await app.ready();
  const paths = (app.swagger() as { paths: Record<string, Record<string, unknown>> }).paths;
  // Fastify adds a HEAD route beside each GET; Swagger UI's own routes are hidden.
  const documented = routes.flatMap((r) => [r.method].flat().filter((m) => m !== 'HEAD').map((m) => ({ method: m, url: r.url, schema: r.schema })))
    .filter((r) => !r.schema?.hide);
  for (const known of ['GET /healthz', 'GET /readyz', 'GET /metrics', 'GET /v1/models', 'POST /decode']) {
    assert.ok(documented.some((r) => `${r.method} ${r.url}` === known), `${known} was not seen`);
  }
  for (const r of documented) {
    const op = paths[r.url]?.[r.method.toLowerCase()] as { summary?: string } | undefined;
    assert.ok(op, `${r.method} ${r.url} is not in the document`);
    assert.ok(op.summary, `${r.method} ${r.url} has no schema: add one to src/schemas.ts`);
  }
  let res = await app.inject('/docs');
  if (res.statusCode >= 300 && res.statusCode < 400) res = await app.inject(new URL(res.headers.location as string, 'http://x/docs/').pathname);
  assert.equal(res.statusCode, 200);
  assert.match(res.headers['content-type'] as string, /^text\/html/);
  assert.match(res.body, /swagger-ui/i);
});

test('openapi: /decode documents every code of the error table under its status, and so does the README', () => {
  const responses = ((committed().paths as Record<string, Record<string, { responses: Record<string, { description: string }> }>>)['/decode']!.post!).responses;
  const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8');
  for (const [code, status] of Object.entries(ErrorCodes)) {
    const documented = responses[String(status)]?.description ?? '';
    assert.match(documented, new RegExp(`\\b${code}\\b`), `${code} (${status}) is not among the documented answers of /decode: run \`npm run openapi\``);
    const row = readme.split('\n').find((l) => l.startsWith(`| ${status} |`)) ?? '';
    assert.match(row, new RegExp(`\`${code}\``), `the README's error table has no ${code} in its ${status} row`);
  }
  for (const status of Object.keys(responses).filter((s) => s !== '200')) {
    assert.ok(Object.values(ErrorCodes).includes(Number(status) as never), `/decode documents ${status}, which no code has`);
  }
  const timing = ((committed().paths as Record<string, Record<string, { responses: Record<string, { headers: Record<string, { description: string }> }> }>>)['/decode']!.post!).responses['200']!.headers['server-timing']!;
  assert.match(timing.description, /images and tensors/);
});

test('openapi: /decode documents its query but does not validate it (the service answers with its own codes)', async (t) => {
  const { app } = await startService(t, PREVIEW);
  const cases = [
    { url: '/decode?shape=1,4,8,8&quality=abc', code: 'BAD_PARAMETER', message: /quality="abc" is not valid/ },
    { url: '/decode?shape=1,4,8,8&dtype=int7', code: 'UNKNOWN_DTYPE', message: /dtype "int7"/ },
    { url: '/decode?shape=1,4,8,8&format=gif', code: 'UNKNOWN_FORMAT', message: /format "gif"/ },
  ];
  for (const c of cases) {
    const res = await app.inject({ method: 'POST', url: c.url, payload: latents(1) });
    assert.equal(res.statusCode, 400, c.url);
    assert.equal(res.json<{ error: { code: string } }>().error.code, c.code, c.url);
    assert.match(res.json<{ error: { message: string } }>().error.message, c.message);
  }
  // Values Ajv would coerce or reject (a one-element shape string, "True") go through as today.
  const ok = await app.inject({ method: 'POST', url: '/decode?shape=[1, 4, 8, 8]&output_type=pt&partial_postprocess=True', payload: latents(1) });
  assert.equal(ok.statusCode, 200, ok.body);
  assert.equal(ok.headers.dtype, 'uint8');
});

test('openapi: response schemas serialize every JSON answer exactly as JSON.stringify would', async (t) => {
  const { app, host } = await startService(t, PREVIEW);
  const plain = buildApp({ config: app.config, models: host, logger: pino({ level: 'silent' }) });
  plain.setSerializerCompiler(() => (data) => JSON.stringify(data));
  t.after(() => plain.close());
  const requests = [
    { method: 'GET', url: '/healthz' },
    { method: 'GET', url: '/readyz' },
    { method: 'GET', url: '/v1/models' },
    { method: 'POST', url: '/decode?shape=2,4,8,8', payload: latents(2) },
    { method: 'POST', url: '/decode?shape=1,4,8,8', payload: latents(1).subarray(1) },
    { method: 'POST', url: '/decode?model=nope', payload: latents(1) },
    { method: 'POST', url: '/decode', payload: latents(1), headers: { 'content-type': 'text/plain' } },
  ] as const;
  for (const r of requests) {
    const [a, b] = await Promise.all([app.inject(r), plain.inject(r)]);
    const what = `${r.method} ${r.url}`;
    assert.match(a.headers['content-type'] as string, /^application\/json/, what);
    assert.equal(a.statusCode, b.statusCode, what);
    assert.deepEqual(a.json(), b.json(), what);
  }
  host.draining = true;
  const readyz = { url: '/readyz', headers: { 'x-request-id': 'drain-check' } };
  const [a, b] = await Promise.all([app.inject(readyz), plain.inject(readyz)]);
  assert.equal(a.statusCode, 503);
  assert.deepEqual(a.json(), b.json());
  assert.equal(a.json<{ error: { code: string } }>().error.code, 'SHUTTING_DOWN');
  assert.equal(a.json<{ error: { requestId: string } }>().error.requestId, 'drain-check', 'a 5xx body names the request id');
});

test('openapi: /encode documents every option its parser reads', async () => {
  const { ENCODE_OPTION_NAMES } = await import('../src/encoding/options.js');
  const op = ((committed().paths as Record<string, Record<string, { parameters: { name: string; in: string }[] }>>)['/encode']!.post!);
  const query = op.parameters.filter((p) => p.in === 'query').map((p) => p.name);
  for (const name of ENCODE_OPTION_NAMES) assert.ok(query.includes(name), `/encode's query option ${name} is not documented: add it to encodeOptions in src/schemas.ts`);
});

test('openapi: /encode documents every status the shared HTTP layer can answer it with (408 upload timeout, 417, 431, 499)', () => {
  const paths = committed().paths as Record<string, Record<string, { responses: Record<string, unknown> }>>;
  const decode = Object.keys(paths['/decode']!.post!.responses).sort();
  const encode = Object.keys(paths['/encode']!.post!.responses).sort();
  assert.deepEqual(encode, decode);
});
