// Which shapes a session runs before it is ready. On a GPU, cuDNN chooses its convolution
// algorithms per input shape, batch size included, with an exhaustive search the first time it
// sees one (onnxruntime-node 1.30 forwards only `deviceId` to the CUDA provider, so the search
// mode cannot be changed from Node): every batch size the batcher can form, at every latent size
// the service expects, is run once here instead of on a request. A CPU has nothing to tune: one
// small run checks the model works.
import type { ExecutionProvider } from '../config.js';

/** [batch, h, w] per warm-up run. */
export type WarmupShape = [number, number, number];

const GPU_DEFAULT: [number, number][] = [[64, 64]];
const CPU_DEFAULT: [number, number][] = [[8, 8]];

export function warmupPlan(provider: ExecutionProvider, sizes: [number, number][] | undefined, maxBatchSize: number): WarmupShape[] {
  const gpu = provider !== 'cpu';
  const batches = gpu ? Array.from({ length: maxBatchSize }, (_, i) => i + 1) : [1];
  return (sizes ?? (gpu ? GPU_DEFAULT : CPU_DEFAULT)).flatMap(([h, w]) => batches.map((n): WarmupShape => [n, h, w]));
}
