// Which execution providers can load here, decided before any session is created. onnxruntime-node
// ships the CUDA/TensorRT provider libraries only when installed with ONNXRUNTIME_NODE_INSTALL=cuda12;
// without them, creating a CUDA session prints a red ONNX Runtime error on every start and fails.
// Checking for the library first keeps the default `cuda,cpu` quiet on a CPU machine.
import { existsSync, readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import type { ExecutionProvider } from '../config.js';

const LIBRARIES: Partial<Record<ExecutionProvider, string>> = {
  cuda: 'onnxruntime_providers_cuda',
  tensorrt: 'onnxruntime_providers_tensorrt',
};

/** The folder holding onnxruntime-node's native binding and provider libraries, if found. */
function bindingDir(): string | null {
  try {
    const bin = path.resolve(path.dirname(createRequire(import.meta.url).resolve('onnxruntime-node')), '..', 'bin');
    for (const napi of readdirSync(bin)) {
      const dir = path.join(bin, napi, process.platform, process.arch);
      if (existsSync(dir)) return dir;
    }
  } catch {
    // an unusual install layout: let ONNX Runtime decide
  }
  return null;
}

/** Splits the configured providers into those worth trying and those whose library is absent. */
export function availableProviders(providers: readonly ExecutionProvider[], dir: string | null = bindingDir()): { usable: ExecutionProvider[]; missing: ExecutionProvider[] } {
  const files = dir ? readdirSync(dir) : undefined;
  const usable: ExecutionProvider[] = [];
  const missing: ExecutionProvider[] = [];
  for (const p of providers) {
    const lib = LIBRARIES[p];
    if (!lib || !files || files.some((f) => f.includes(lib))) usable.push(p);
    else missing.push(p);
  }
  return { usable, missing };
}
