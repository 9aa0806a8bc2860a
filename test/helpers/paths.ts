// Where things are: the repository and its golden fixtures (test/fixtures, copied from the team's
// shared fixtures so that a bare clone passes its tests); temp folders removed after each test.
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';

export const REPO = path.resolve(fileURLToPath(new URL('../..', import.meta.url)));
export const FIXTURES = path.join(REPO, 'test', 'fixtures', 'sdvae-ch32');
export const FIXTURE_MODEL = path.join(FIXTURES, 'torch-export.onnx');
export const fixture = (file: string): string => path.join(FIXTURES, file);

export function tempDir(t: TestContext, prefix = 'latent-decoder-'): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), prefix));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}
