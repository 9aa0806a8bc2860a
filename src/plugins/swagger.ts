// The OpenAPI 3.1 document, built by @fastify/swagger from the route schemas (src/schemas.ts), and
// Swagger UI at /docs (/docs/json serves the document). Registered before the routes: the
// document collects them as they are added.
import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import type { FastifyInstance } from 'fastify';
import fp from 'fastify-plugin';
import { readFileSync } from 'node:fs';

const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string; description: string };

export default fp(async (app: FastifyInstance) => {
  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: { title: 'latent-decoder', version: pkg.version, description: pkg.description },
      components: {
        securitySchemes: {
          bearerAuth: { type: 'http', scheme: 'bearer', description: 'Required only when the service runs with AUTH_TOKEN set' },
        },
      },
      security: [{ bearerAuth: [] }],
    },
    // Shared schemas appear under their $id (#/components/schemas/Error), not def-0.
    refResolver: { buildLocalReference: (json, _baseUri, _fragment, i) => (typeof json.$id === 'string' ? json.$id : `def-${i}`) },
  });
  await app.register(swaggerUi, { routePrefix: '/docs' });
}, { name: 'swagger', fastify: '5.x' });
