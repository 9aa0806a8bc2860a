// Bearer-token auth on the real service (built-in preview model): off without AUTH_TOKEN; with
// several tokens each is accepted, anything else is 401 UNAUTHORIZED; probes and metrics stay open.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { InjectOptions } from 'fastify';
import { loadConfig } from '../src/config.js';
import { startService } from './helpers/service.js';

const TOKENS = ['alpha-0123456789', 'beta-rotated-token-with-another-length'];
const decode = { method: 'POST', url: '/decode?shape=1,4,8,8', payload: Buffer.alloc(4 * 8 * 8 * 4) } as const;
const bearer = (token: string): InjectOptions['headers'] => ({ authorization: `Bearer ${token}` });

test('auth: without AUTH_TOKEN every route is open', async (t) => {
  const { app } = await startService(t, { MODEL_PATH: '' });
  for (const url of ['/v1/models', '/docs/json', '/healthz', '/metrics']) assert.equal((await app.inject(url)).statusCode, 200, url);
  assert.equal((await app.inject(decode)).statusCode, 200);
});

test('auth config: a blank or whitespace-only AUTH_TOKEN stops the start, naming it; unset means no auth', () => {
  assert.deepEqual(loadConfig({}).authTokens, []);
  for (const blank of ['', ' ', ' , ', ',,']) {
    assert.throws(() => loadConfig({ AUTH_TOKEN: blank }), new RegExp(`^ConfigError: AUTH_TOKEN=${JSON.stringify(blank)} holds no token`), JSON.stringify(blank));
  }
  assert.deepEqual(loadConfig({ AUTH_TOKEN: ' a , ,b ' }).authTokens, ['a', 'b']);
});

test('auth: with two tokens both are accepted, anything else gets 401 UNAUTHORIZED', async (t) => {
  const { app } = await startService(t, { MODEL_PATH: '', AUTH_TOKEN: ` ${TOKENS.join(' , ')} ` });
  for (const token of TOKENS) {
    assert.equal((await app.inject({ url: '/v1/models', headers: bearer(token) })).statusCode, 200, token);
    const res = await app.inject({ ...decode, headers: bearer(token) });
    assert.equal(res.statusCode, 200, res.body);
    assert.equal(res.headers['content-type'], 'image/png');
  }
  assert.equal((await app.inject({ url: '/v1/models', headers: { authorization: `bearer ${TOKENS[0]}` } })).statusCode, 200, 'the scheme is case-insensitive');

  const refused: [string, InjectOptions['headers']][] = [
    ['missing', {}],
    ['wrong token', bearer('alpha-0123456780')],
    ['a prefix of a token', bearer(TOKENS[0]!.slice(0, -1))],
    ['a token with more after it', bearer(`${TOKENS[0]}x`)],
    ['both tokens', bearer(TOKENS.join(','))],
    ['another scheme', { authorization: `Basic ${Buffer.from(`u:${TOKENS[0]}`).toString('base64')}` }],
    ['no token after the scheme', { authorization: 'Bearer ' }],
  ];
  for (const [what, headers] of refused) {
    for (const req of [{ url: '/v1/models', headers }, { ...decode, headers }]) {
      const res = await app.inject(req);
      assert.equal(res.statusCode, 401, `${what}: ${req.url}`);
      assert.equal(res.json().error.code, 'UNAUTHORIZED', what);
      assert.ok(res.json().error.message, what);
      assert.match(res.headers['www-authenticate'] as string, /^Bearer realm="latent-decoder"/, what);
    }
  }
  const wrong = await app.inject({ url: '/v1/models', headers: bearer('nope') });
  assert.match(wrong.headers['www-authenticate'] as string, /error="invalid_token"/);
});

test('auth: probes and metrics stay open; docs and unknown routes do not', async (t) => {
  const { app } = await startService(t, { MODEL_PATH: '', AUTH_TOKEN: TOKENS.join(',') });
  for (const url of ['/healthz', '/readyz', '/metrics']) {
    assert.equal((await app.inject(url)).statusCode, 200, url);
    assert.equal((await app.inject({ method: 'HEAD', url })).statusCode, 200, `HEAD ${url}`);
  }
  assert.equal((await app.inject('/docs/json')).statusCode, 401);
  assert.equal((await app.inject({ url: '/docs/json', headers: bearer(TOKENS[1]!) })).statusCode, 200);
  // Unknown paths do not reveal which routes exist.
  assert.equal((await app.inject('/admin')).statusCode, 401);
  assert.equal((await app.inject({ url: '/admin', headers: bearer(TOKENS[1]!) })).statusCode, 404);
});

test('auth: an unauthenticated body is refused before it is read', async (t) => {
  const { app } = await startService(t, { MODEL_PATH: '', AUTH_TOKEN: TOKENS[0]!, BODY_LIMIT_BYTES: '1024' });
  const res = await app.inject({ ...decode, payload: Buffer.alloc(4096) });
  assert.equal(res.statusCode, 401, 'not 413: the body limit is never reached');
  const authed = await app.inject({ ...decode, payload: Buffer.alloc(4096), headers: bearer(TOKENS[0]!) });
  assert.equal(authed.statusCode, 413);
});
