// Small real ONNX models built for tests that need a decoder to behave in a particular way.
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { GraphBuilder, attr, encodeModel } from '../../src/onnx/graph.js';

/**
 * A real model that ONNX Runtime fails on for some inputs: it reshapes the latents to
 * [-1, 4, 16, 16], which only works when N·h·w is a multiple of 256.
 */
export function fragileModel(dir: string): string {
  const g = new GraphBuilder('fragile');
  const x = g.input('latent_sample', 'float32', ['batch', 4, 'height', 'width']);
  const r = g.node('Reshape', [x, g.ints('shape', [-1, 4, 16, 16])]);
  const w = g.constant('w', 'float32', [3, 4, 1, 1], new Float32Array(12).fill(0.1));
  const c = g.node('Conv', [r, w], { kernel_shape: attr.ints([1, 1]) });
  g.node('Resize', [c, '', g.constant('scales', 'float32', [4], new Float32Array([1, 1, 8, 8]))], { mode: attr.s('nearest') }, 'sample');
  g.output('sample', 'float32', ['batch', 3, 'h8', 'w8']);
  const file = path.join(dir, 'fragile.onnx');
  writeFileSync(file, encodeModel(g.model()));
  return file;
}

/**
 * A real model whose output overflows float32 for latents far inside the accepted range: a 1×1
 * convolution with weights of 1e35 (|x| ≳ 1 → ±Inf, 0·Inf → NaN), then 8× nearest upsampling.
 * For the non-finite output check, which in-range latents cannot trip on a float32 VAE.
 */
export function overflowingModel(dir: string): string {
  const g = new GraphBuilder('overflowing');
  const x = g.input('latent_sample', 'float32', ['batch', 4, 'height', 'width']);
  const w = g.constant('w', 'float32', [3, 4, 1, 1], new Float32Array(12).fill(1e35));
  const c = g.node('Conv', [x, w], { kernel_shape: attr.ints([1, 1]) });
  g.node('Resize', [c, '', g.constant('scales', 'float32', [4], new Float32Array([1, 1, 8, 8]))], { mode: attr.s('nearest') }, 'sample');
  g.output('sample', 'float32', ['batch', 3, 'h8', 'w8']);
  const file = path.join(dir, 'overflowing.onnx');
  writeFileSync(file, encodeModel(g.model()));
  return file;
}
