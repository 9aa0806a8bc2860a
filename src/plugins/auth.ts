// Optional bearer-token auth (AUTH_TOKEN, comma-separated so that tokens can be rotated). Runs on
// onRequest, before the body is read, so an unauthenticated client cannot make the service buffer
// a large body. The routes whose schema declares `security: []` (probes, metrics) stay open; so
// the OpenAPI document and the hook cannot disagree.
import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyInstance, FastifyRequest, onRequestAsyncHookHandler } from 'fastify';
import fp from 'fastify-plugin';
import { ServiceError } from '../errors.js';

const digest = (s: string): Buffer => createHash('sha256').update(s).digest();

const BEARER = /^Bearer +(\S+) *$/i;
const CHALLENGE = 'Bearer realm="latent-decoder"';

function isPublic(req: FastifyRequest): boolean {
  const security = (req.routeOptions.schema as { security?: unknown[] } | undefined)?.security;
  return Array.isArray(security) && security.length === 0;
}

function bearerAuth(tokens: readonly string[]): onRequestAsyncHookHandler {
  // Digests have one length whatever the token's, so comparing them leaks neither the length nor
  // the content; every token is compared, so which one matched does not show either.
  const accepted = tokens.map(digest);
  return async (req) => {
    if (isPublic(req)) return;
    const m = BEARER.exec(req.headers.authorization ?? '');
    if (!m) throw new ServiceError('UNAUTHORIZED', 'this service needs an Authorization: Bearer <token> header', { headers: { 'www-authenticate': CHALLENGE } });
    const given = digest(m[1]!);
    let ok = false;
    for (const a of accepted) ok = timingSafeEqual(a, given) || ok;
    if (!ok) throw new ServiceError('UNAUTHORIZED', 'the bearer token is not valid', { headers: { 'www-authenticate': `${CHALLENGE}, error="invalid_token"` } });
  };
}

/** Adds the check to every route of the app when tokens are configured; nothing otherwise. */
export default fp(async (app: FastifyInstance, opts: { tokens: readonly string[] }) => {
  if (opts.tokens.length > 0) app.addHook('onRequest', bearerAuth(opts.tokens));
}, { name: 'auth', fastify: '5.x' });
