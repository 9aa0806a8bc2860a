// Run time by the order of input shapes in one ONNX Runtime session (the service's CPU session
// options): with the arena off, ORT plans its memory for the first shape a session runs only, and
// other shapes pay fresh pages for their large tensors. Prints ms per run and kernel (sys) ms.
//   node --import tsx scripts/shape-order.ts 8 64 64 64      (latent sides, one run each, in order)
//   NOPAT=1 … (memory patterns off); GLIBC_TUNABLES=… to try malloc settings
import { readFileSync } from 'node:fs';
import '../src/inference/telemetry.cjs';
import * as ort from 'onnxruntime-node';
import { IMAGE_OUTPUT, withPostprocess } from '../src/onnx/postprocess.js';
const seq = process.argv.slice(2).map(Number);
const { bytes, io } = withPostprocess(readFileSync('/work/main/test/fixtures/sdvae-ch32/torch-export.onnx'));
const s = await ort.InferenceSession.create(bytes, { executionProviders: ['cpu'], graphOptimizationLevel: 'all', enableCpuMemArena: false, enableMemPattern: process.env.NOPAT ? false : true, extra: { session: { intra_op: { allow_spinning: '0' } } } });
const out: string[] = [];
for (const side of seq) {
  const c0 = process.cpuUsage(); const t = performance.now();
  await s.run({ [io.input]: new ort.Tensor('float32', new Float32Array(4 * side * side).map((_, i) => Math.sin(i)), [1, 4, side, side]) }, [IMAGE_OUTPUT]);
  const c = process.cpuUsage(c0);
  out.push(`${side}:${Math.round(performance.now() - t)}ms/sys${Math.round(c.system / 1000)}`);
}
console.log(out.join(' '));
