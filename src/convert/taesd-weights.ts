// The TAESD ("tiny autoencoder", madebyollin/taesd) decoder's weights in the two layouts they are
// published in, mapped onto one canonical set: the original taesd_decoder's nn.Sequential names
// without a prefix (`1.weight`, `3.conv.0.weight`, ..., `19.bias`). The layout is told apart from
// the KL VAE's by its keys alone, so `convert` needs no flag to pick the architecture.
import type { SafetensorsFile } from './safetensors.js';
import { LayoutWeights, owning } from './weights.js';

/** 'original': taesd_decoder.safetensors; 'diffusers': AutoencoderTiny (`decoder.layers.{i-1}.…`). */
export type TaesdLayout = 'original' | 'diffusers';

export interface TaesdConfig {
  latentChannels: number;
  /** The width of every hidden layer: 64 in every published TAESD. */
  ch: number;
}

// Indices of the original nn.Sequential: 0 is the tanh clamp (no weights), 1 the input conv,
// 2 its ReLU; then Blocks, Upsample (no weights) and a bias-free conv; 19 the output conv.
export const TAESD_CONV_IN = 1;
export const TAESD_STAGES = [
  { blocks: [3, 4, 5], upsample: 6, conv: 7 },
  { blocks: [8, 9, 10], upsample: 11, conv: 12 },
  { blocks: [13, 14, 15], upsample: 16, conv: 17 },
] as const;
export const TAESD_LAST_BLOCK = 18;
export const TAESD_CONV_OUT = 19;

const DIFFUSERS_PREFIX = 'decoder.layers.';

/** The key a canonical (original, unprefixed) name has in the given layout. */
export function taesdKey(canonical: string, layout: TaesdLayout): string {
  if (layout === 'original') return canonical;
  const m = /^(\d+)\.(.*)$/.exec(canonical);
  if (!m) throw new Error(`not a TAESD weight name: ${canonical}`);
  return `${DIFFUSERS_PREFIX}${Number(m[1]) - 1}.${m[2]}`;
}

/**
 * The layout of a TAESD decoder checkpoint, or undefined when the keys are not TAESD's. Both
 * the input and the output conv must be there, so a KL VAE (or any other file) never matches.
 */
export function detectTaesd(keys: ReadonlySet<string>): TaesdLayout | undefined {
  for (const layout of ['original', 'diffusers'] as const) {
    const has = (i: number, rest: string) => keys.has(taesdKey(`${i}.${rest}`, layout));
    if (has(TAESD_CONV_IN, 'weight') && has(TAESD_CONV_OUT, 'weight') && has(TAESD_STAGES[0].blocks[0], 'conv.0.weight')) return layout;
  }
  return undefined;
}

export class TaesdWeights extends LayoutWeights {
  private constructor(
    file: SafetensorsFile,
    readonly layout: TaesdLayout,
    readonly config: TaesdConfig,
  ) {
    super(file);
  }

  /** Takes ownership of `file` (closes it on failure); throws unless it holds a TAESD decoder. */
  static fromFile(file: SafetensorsFile): Promise<TaesdWeights> {
    return owning(file, () => {
      const layout = detectTaesd(new Set(file.keys()));
      if (!layout) {
        throw new Error(`${file.path} holds no TAESD decoder: no tensors ${TAESD_CONV_IN}.weight and ${TAESD_CONV_OUT}.weight (or ${DIFFUSERS_PREFIX}0.weight and ${DIFFUSERS_PREFIX}18.weight)`);
      }
      const convIn = taesdKey(`${TAESD_CONV_IN}.weight`, layout);
      const shape = file.info(convIn)!.shape;
      if (shape.length !== 4) throw new Error(`${file.path}: tensor ${convIn} has shape [${shape.join(', ')}], expected [out, latent channels, 3, 3]`);
      return new TaesdWeights(file, layout, { latentChannels: shape[1]!, ch: shape[0]! });
    });
  }


  override key(canonical: string): string {
    return taesdKey(canonical, this.layout);
  }
}
