// Which shapes a session runs before it is ready. On a GPU, cuDNN chooses its convolution
// algorithms per input shape, batch size included, with an exhaustive search the first time it
// sees one (onnxruntime-node 1.30 forwards only `deviceId` to the CUDA provider, so the search
// mode cannot be changed from Node): every batch size the batcher can form, at every latent size
// the service expects, is run once here instead of on a request. On a CPU one run at batch 1 per
// size checks the model works, and its first size matters: with the arena off, ONNX Runtime
// plans its memory (one block per run) only for the first shape a session runs, and every other
// shape allocates each tensor afresh, which for tensors over glibc's 32 MiB mmap ceiling means
// fresh pages every run (fixture, 64×64 latents after an 8×8 first run: 1.9 s per run with 1.4 s
// of it in the kernel, against 1.05 s after a 64×64 first run; scripts/worker-vs-main.ts). So the
// CPU warms up at 64×64, SD's latent size, unless WARMUP_LATENT_SIZES names the model's own.
import type { ExecutionProvider } from '../config.js';

/** [batch, h, w] per warm-up run. */
export type WarmupShape = [number, number, number];

const GPU_DEFAULT: [number, number][] = [[64, 64]];
const CPU_DEFAULT: [number, number][] = [[64, 64]];

/**
 * The warm-up runs, in order: on a GPU every batch size 1…maxBatchSize at each size (default 64×64),
 * on the CPU batch 1 at each size (default 64×64; the first is the shape ONNX Runtime plans for).
 * @param sizes WARMUP_LATENT_SIZES as [h, w] latent sizes, or undefined for the default
 * @returns [batch, h, w] per run
 */
export function warmupPlan(provider: ExecutionProvider, sizes: [number, number][] | undefined, maxBatchSize: number): WarmupShape[] {
  const gpu = provider !== 'cpu';
  const batches = gpu ? Array.from({ length: maxBatchSize }, (_, i) => i + 1) : [1];
  return (sizes ?? (gpu ? GPU_DEFAULT : CPU_DEFAULT)).flatMap(([h, w]) => batches.map((n): WarmupShape => [n, h, w]));
}
