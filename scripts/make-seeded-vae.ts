// Writes a VAE decoder checkpoint with seeded random weights of the right shapes, for
// conversion benchmarks and tests that need a decoder other than the fixture.
//   node --import tsx scripts/make-seeded-vae.ts OUT.safetensors [--ch 128] [--ch-mult 1,2,4,4]
//     [--num-res-blocks 2] [--z 4] [--no-post-quant-conv] [--layout ldm|diffusers] [--seed 1] [--encoder]
// --encoder adds a seeded KL encoder (Encoder + quant_conv, LDM names) of the same shape.
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { writeSafetensors, type TensorToWrite } from '../src/convert/safetensors.js';
import { buildEncoderGraph } from '../src/convert/encoder-graph.js';
import { buildDecoderGraph, type WeightRef } from '../src/convert/vae-graph.js';
import { layoutKey, type KeyLayout, type VaeConfig } from '../src/convert/vae-weights.js';
import { gaussian, mulberry32 } from '../test/helpers/shared.js';

/**
 * Seeded decoder weights under the names of `layout`. Conv weights have std 1/sqrt(fan_in) so
 * activations stay of order one through the residual stack; norms are near identity.
 */
export function seededVae(cfg: VaeConfig, opts: { seed?: number; layout?: KeyLayout; prefix?: string; encoder?: boolean } = {}): TensorToWrite[] {
  const normal = gaussian(mulberry32(opts.seed ?? 1));
  const encoder: WeightRef[] = opts.encoder
    ? buildEncoderGraph({ ch: cfg.ch, chMult: cfg.chMult, numResBlocks: cfg.numResBlocks, latentChannels: cfg.latentChannels, hasQuantConv: true, hasMidAttention: true }, 'float32').weights
    : [];
  return [...buildDecoderGraph(cfg, 'float32').weights, ...encoder].map(({ name, shape }) => {
    const data = new Float32Array(shape.reduce((a, d) => a * d, 1));
    const isNorm = /norm\w*\.weight$|\.norm\.weight$/.test(name);
    const fanIn = shape.slice(1).reduce((a, d) => a * d, 1);
    for (let i = 0; i < data.length; i++) {
      const n = normal();
      data[i] = shape.length > 1 ? n / Math.sqrt(fanIn) : isNorm ? 1 + 0.1 * n : 0.05 * n;
    }
    const key = name.startsWith('encoder.') || name.startsWith('quant_conv.') ? name : layoutKey(name, opts.layout ?? 'ldm', cfg.chMult.length);
    return { name: (opts.prefix ?? '') + key, dtype: 'F32', shape, data };
  });
}

async function cli(): Promise<void> {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      ch: { type: 'string', default: '128' },
      'ch-mult': { type: 'string', default: '1,2,4,4' },
      'num-res-blocks': { type: 'string', default: '2' },
      z: { type: 'string', default: '4' },
      'no-post-quant-conv': { type: 'boolean', default: false },
      layout: { type: 'string', default: 'ldm' },
      seed: { type: 'string', default: '1' },
      encoder: { type: 'boolean', default: false },
    },
  });
  const out = positionals[0];
  if (!out) throw new Error('usage: make-seeded-vae.ts OUT.safetensors [options]');
  const cfg: VaeConfig = {
    ch: Number(values.ch),
    chMult: values['ch-mult'].split(',').map(Number),
    numResBlocks: Number(values['num-res-blocks']),
    latentChannels: Number(values.z),
    hasPostQuantConv: !values['no-post-quant-conv'],
  };
  if (values.encoder && values.layout !== 'ldm') throw new Error('--encoder writes LDM names: use --layout ldm');
  const tensors = seededVae(cfg, { seed: Number(values.seed), layout: values.layout as KeyLayout, encoder: values.encoder });
  await writeSafetensors(out, tensors);
  const params = tensors.reduce((a, t) => a + t.data.length, 0);
  console.log(`${out}: ${tensors.length} tensors, ${(params / 1e6).toFixed(2)}M parameters`);
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) await cli();
