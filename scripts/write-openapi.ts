// npm run openapi: writes openapi/openapi.json from the route schemas. The app is built without
// models (the document does not depend on them); keys are sorted so that the file changes only
// when the API does, not when routes are registered in another order.
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildApp } from '../src/app.js';
import { loadConfig } from '../src/config.js';
import { createLogger } from '../src/logger.js';

export const OPENAPI_FILE = fileURLToPath(new URL('../openapi/openapi.json', import.meta.url));

/** The document the service serves at /docs/json. */
export async function openapiDocument(): Promise<unknown> {
  const app = buildApp({ config: loadConfig({}), logger: createLogger('silent') });
  try {
    await app.ready();
    return app.swagger();
  } finally {
    await app.close();
  }
}

function sortKeys(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (v === null || typeof v !== 'object') return v;
  return Object.fromEntries(Object.keys(v).sort().map((k) => [k, sortKeys((v as Record<string, unknown>)[k])]));
}

export const formatDocument = (doc: unknown): string => `${JSON.stringify(sortKeys(doc), null, 2)}\n`;

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  mkdirSync(dirname(OPENAPI_FILE), { recursive: true });
  writeFileSync(OPENAPI_FILE, formatDocument(await openapiDocument()));
  process.stdout.write(`wrote ${relative(process.cwd(), OPENAPI_FILE)}\n`);
}
