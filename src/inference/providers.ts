// Which execution providers can load here, decided before any session is created. onnxruntime-node
// ships the CUDA/TensorRT provider libraries only when installed with ONNXRUNTIME_NODE_INSTALL=cuda12;
// without them, creating a CUDA session prints a red ONNX Runtime error on every start and fails.
// WebGPU is built into the Linux x64 binding (Dawn over Vulkan) but needs the system's Vulkan
// loader (libvulkan.so.1) and a driver manifest (icd.d/*.json); without them Dawn prints a warning
// and the session fails. Checking for these files first keeps `cuda,cpu` or `webgpu,cpu` quiet on
// a CPU machine.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
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

/** Where the dynamic loader and the Vulkan loader look; injectable for tests. */
export interface VulkanPaths {
  /** Folders searched for libvulkan.so.1 (LD_LIBRARY_PATH's, then the system's). */
  libDirs: string[];
  /** ldconfig's cache, which names every library the system loader knows. */
  ldCache: string;
  /** Folders of Vulkan driver manifests (the Khronos loader's search path). */
  icdDirs: string[];
  /** VK_DRIVER_FILES / VK_ICD_FILENAMES: manifests named explicitly. */
  driverFiles?: string;
}

export function defaultVulkanPaths(env: NodeJS.ProcessEnv = process.env): VulkanPaths {
  const multiarch = process.arch === 'arm64' ? 'aarch64-linux-gnu' : 'x86_64-linux-gnu';
  const xdg = (env.XDG_DATA_DIRS ?? '/usr/local/share:/usr/share').split(':').filter(Boolean);
  return {
    libDirs: [...(env.LD_LIBRARY_PATH ?? '').split(':').filter(Boolean), `/lib/${multiarch}`, `/usr/lib/${multiarch}`, '/lib64', '/usr/lib64', '/lib', '/usr/lib', '/usr/local/lib'],
    ldCache: '/etc/ld.so.cache',
    icdDirs: ['/etc/vulkan/icd.d', ...xdg.map((d) => path.join(d, 'vulkan', 'icd.d'))],
    driverFiles: env.VK_DRIVER_FILES ?? env.VK_ICD_FILENAMES,
  };
}

/** Why WebGPU (Dawn over Vulkan) cannot start here, or null when the loader and a driver manifest exist. */
export function vulkanMissing(p: VulkanPaths = defaultVulkanPaths()): string | null {
  const inCache = (): boolean => {
    try {
      return readFileSync(p.ldCache).includes('libvulkan.so.1');
    } catch {
      return false;
    }
  };
  if (!p.libDirs.some((d) => existsSync(path.join(d, 'libvulkan.so.1'))) && !inCache()) {
    return 'the Vulkan loader libvulkan.so.1 is not installed (Debian/Ubuntu: libvulkan1)';
  }
  const manifests = p.icdDirs.some((d) => {
    try {
      return readdirSync(d).some((f) => f.endsWith('.json'));
    } catch {
      return false;
    }
  });
  if (!manifests && !p.driverFiles) {
    return 'no Vulkan driver manifest (icd.d/*.json): the GPU driver\'s Vulkan part is not mounted (NVIDIA container runtime: NVIDIA_DRIVER_CAPABILITIES must include graphics)';
  }
  return null;
}

/**
 * Splits the configured providers into those worth trying and those that cannot load here, with
 * the reason for each missing one. `dir`: onnxruntime-node's binding folder (null: unknown layout,
 * let ORT decide); `vulkan`: the result of vulkanMissing().
 */
export function availableProviders(providers: readonly ExecutionProvider[], dir: string | null = bindingDir(), vulkan: () => string | null = () => vulkanMissing()):
  { usable: ExecutionProvider[]; missing: ExecutionProvider[]; reasons: Partial<Record<ExecutionProvider, string>> } {
  const files = dir ? readdirSync(dir) : undefined;
  const usable: ExecutionProvider[] = [];
  const missing: ExecutionProvider[] = [];
  const reasons: Partial<Record<ExecutionProvider, string>> = {};
  for (const p of providers) {
    const lib = LIBRARIES[p];
    let why: string | null = null;
    if (lib && files && !files.some((f) => f.includes(lib))) why = `ONNX Runtime's ${p} provider library is not installed (install onnxruntime-node with ONNXRUNTIME_NODE_INSTALL=cuda12)`;
    else if (p === 'webgpu') why = vulkan();
    if (why) {
      missing.push(p);
      reasons[p] = why;
    } else usable.push(p);
  }
  return { usable, missing, reasons };
}
