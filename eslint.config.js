// ESLint with typescript-eslint's type-checked rules (as fastify, fastify/demo and
// platformatic/kafka ship): floating promises, unsafe `any` and misused promises are errors.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/', 'node_modules/', 'bench/results/', 'models/', 'test/fixtures/', 'coverage/'] },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      // node:test's test()/describe() return promises the runner awaits itself.
      '@typescript-eslint/no-floating-promises': ['error', {
        allowForKnownSafeCalls: [{ from: 'package', package: 'node:test', name: ['test', 'it', 'describe', 'suite'] }],
      }],
      // Promise.reject(x) as `throw x` (only-throw-error's defaults): a value of unknown type passed
      // on, a catch variable or an AbortSignal's reason, is rejected as it came; new values are Errors.
      '@typescript-eslint/prefer-promise-reject-errors': ['error', { allowThrowingAny: true, allowThrowingUnknown: true }],
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none' }],
    },
  },
  {
    // Fastify's contract: a plugin or a hook is async or takes `done`, and an async one with nothing
    // to await (registering routes, a check that throws a ServiceError) is its documented style;
    // `done` callbacks instead would only add ways to answer twice. Still on everywhere else.
    files: ['src/app.ts', 'src/plugins/**/*.ts', 'src/routes/**/*.ts'],
    rules: { '@typescript-eslint/require-await': 'off' },
  },
  {
    files: ['**/*.js', '**/*.cjs', '**/*.mjs'],
    ...tseslint.configs.disableTypeChecked,
    // Plain JS runs on Node: its globals, written out rather than adding the `globals` package
    // for the one launcher script (TypeScript checks the .ts files' globals itself).
    languageOptions: {
      ...tseslint.configs.disableTypeChecked.languageOptions,
      globals: Object.fromEntries([
        'process', 'Buffer', 'URL', 'URLSearchParams', 'console', 'performance', 'fetch',
        'setTimeout', 'clearTimeout', 'setInterval', 'clearInterval', 'setImmediate', 'clearImmediate',
        'queueMicrotask', 'structuredClone', 'AbortController', 'AbortSignal', 'TextEncoder', 'TextDecoder',
      ].map((name) => [name, 'readonly'])),
    },
  },
);
