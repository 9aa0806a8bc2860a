// The --require preload as the build emits it, for tests that run it without building dist/.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import ts from 'typescript';
import { REPO } from './paths.js';

/**
 * Writes what tsc emits for the preload, dist/threadpool.cjs and the dist/inference/telemetry.cjs
 * it requires, under `dir` (same relative layout); returns the preload's path.
 */
export function emitPreload(dir: string): string {
  mkdirSync(path.join(dir, 'inference'), { recursive: true });
  for (const file of ['threadpool.cts', 'inference/telemetry.cts']) {
    const js = ts.transpileModule(readFileSync(path.join(REPO, 'src', file), 'utf8'), {
      compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022 },
    }).outputText;
    writeFileSync(path.join(dir, file.replace(/\.cts$/, '.cjs')), js);
  }
  return path.join(dir, 'threadpool.cjs');
}
