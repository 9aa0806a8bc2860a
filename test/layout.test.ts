// The source layout's rules (README, "How it works"): no import cycle in src/, type-only imports
// included, and no source file over 400 lines. Imports are read with the TypeScript parser, so
// `import type`, `export … from` and dynamic `import('…')` all count.
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import ts from 'typescript';
import { REPO } from './helpers/paths.js';

const SRC = path.join(REPO, 'src');
const MAX_LINES = 400;

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    return e.isDirectory() ? sources(p) : e.name.endsWith('.ts') ? [p] : [];
  });
}

/** The src/ files `file` imports (relative specifiers only; `.js` written for `.ts`). */
export function importsOf(file: string, text = readFileSync(file, 'utf8')): string[] {
  const sf = ts.createSourceFile(file, text, ts.ScriptTarget.Latest, false);
  const specs: string[] = [];
  const visit = (node: ts.Node): void => {
    if ((ts.isImportDeclaration(node) || ts.isExportDeclaration(node)) && node.moduleSpecifier && ts.isStringLiteral(node.moduleSpecifier)) {
      specs.push(node.moduleSpecifier.text);
    } else if (ts.isCallExpression(node) && node.expression.kind === ts.SyntaxKind.ImportKeyword && node.arguments[0] && ts.isStringLiteral(node.arguments[0])) {
      specs.push(node.arguments[0].text);
    } else if (ts.isImportTypeNode(node) && ts.isLiteralTypeNode(node.argument) && ts.isStringLiteral(node.argument.literal)) {
      specs.push(node.argument.literal.text);
    }
    ts.forEachChild(node, visit);
  };
  visit(sf);
  return specs.filter((s) => s.startsWith('.')).map((s) => path.resolve(path.dirname(file), s.replace(/\.js$/, '.ts')));
}

/** Every cycle in the graph, each once, as a list of files from its first to its last node. */
export function findCycles(graph: Map<string, string[]>): string[][] {
  const cycles: string[][] = [];
  const state = new Map<string, 'active' | 'done'>();
  const stack: string[] = [];
  const visit = (n: string): void => {
    state.set(n, 'active');
    stack.push(n);
    for (const m of graph.get(n) ?? []) {
      if (state.get(m) === 'active') cycles.push(stack.slice(stack.indexOf(m)));
      else if (!state.has(m)) visit(m);
    }
    stack.pop();
    state.set(n, 'done');
  };
  for (const n of [...graph.keys()].sort()) if (!state.has(n)) visit(n);
  return cycles;
}

test('layout: the cycle finder finds a type-only cycle', () => {
  const a = path.join(SRC, 'a.ts');
  const b = path.join(SRC, 'b.ts');
  assert.deepEqual(importsOf(a, "import type { B } from './b.js';\nexport const x: B = 1;"), [b]);
  assert.deepEqual(importsOf(b, "export type B = typeof import('./a.js').x;"), [a]);
  assert.deepEqual(findCycles(new Map([[a, [b]], [b, [a]]])), [[a, b]]);
  assert.deepEqual(findCycles(new Map([[a, [b]], [b, []]])), []);
});

test('layout: no import cycle in src/, type-only imports included', () => {
  const files = sources(SRC);
  const graph = new Map(files.map((f) => [f, importsOf(f)]));
  const cycles = findCycles(graph).map((c) => c.map((f) => path.relative(SRC, f)).join(' → '));
  assert.deepEqual(cycles, []);
});

test(`layout: no file in src/ is over ${MAX_LINES} lines`, () => {
  const long = sources(SRC)
    .map((f) => ({ file: path.relative(SRC, f), lines: readFileSync(f, 'utf8').split('\n').length }))
    .filter((x) => x.lines > MAX_LINES);
  assert.deepEqual(long, []);
});
