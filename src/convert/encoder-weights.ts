// The KL VAE encoder's weights (LDM `Encoder` + `quant_conv`) in the layouts the decoder reader
// knows (LDM, diffusers, legacy diffusers attention names), mapped onto canonical unprefixed LDM
// names, with the encoder's shape inferred from tensor shapes.
import type { SafetensorsFile } from './safetensors.js';
import { countIndices, DIFFUSERS_ATTN, LEGACY_ATTN, PREFIXES, type KeyLayout } from './vae-weights.js';
import { LayoutWeights, owning } from './weights.js';

export interface EncoderConfig {
  /** conv_in's output channels: the channels of the first down level. */
  ch: number;
  chMult: number[];
  numResBlocks: number;
  /** Channels of the posterior mean (half of conv_out's, or of quant_conv's, output). */
  latentChannels: number;
  /** FLUX.1's VAE has none. */
  hasQuantConv: boolean;
  /** diffusers' `mid_block_add_attention` (true for every published image VAE). */
  hasMidAttention: boolean;
}


/** The key a canonical (unprefixed LDM) encoder name has in the given layout; down levels keep their numbers. */
export function encoderKey(canonical: string, layout: KeyLayout): string {
  if (layout === 'ldm') return canonical;
  let m = /^encoder\.down\.(\d+)\.block\.(\d+)\.(.*)$/.exec(canonical);
  if (m) return `encoder.down_blocks.${m[1]}.resnets.${m[2]}.${m[3]!.replace(/^nin_shortcut\./, 'conv_shortcut.')}`;
  m = /^encoder\.down\.(\d+)\.downsample\.conv\.(.*)$/.exec(canonical);
  if (m) return `encoder.down_blocks.${m[1]}.downsamplers.0.conv.${m[2]}`;
  m = /^encoder\.mid\.block_([12])\.(.*)$/.exec(canonical);
  if (m) return `encoder.mid_block.resnets.${Number(m[1]) - 1}.${m[2]}`;
  m = /^encoder\.mid\.attn_1\.(\w+)\.(.*)$/.exec(canonical);
  if (m) return `encoder.mid_block.attentions.0.${(layout === 'diffusers' ? DIFFUSERS_ATTN : LEGACY_ATTN)[m[1]!]}.${m[2]}`;
  return canonical.replace(/^encoder\.norm_out\./, 'encoder.conv_norm_out.');
}

/** Whether the checkpoint holds a KL decoder under one of the prefixes the readers know. */
export function hasKlDecoder(keys: ReadonlySet<string>): boolean {
  return PREFIXES.some((p) => keys.has(`${p}decoder.conv_in.weight`));
}

/** The prefix under which a checkpoint keeps a KL encoder, or undefined when it holds none. */
export function findKlEncoder(keys: ReadonlySet<string>): string | undefined {
  return PREFIXES.find((p) => keys.has(`${p}encoder.conv_in.weight`) && keys.has(`${p}encoder.conv_out.weight`));
}


export class EncoderWeights extends LayoutWeights {
  private constructor(file: SafetensorsFile, readonly layout: KeyLayout, readonly prefix: string, readonly config: EncoderConfig) {
    super(file);
  }

  /**
   * Reads the encoder's shape from `file` (not taking ownership: the decoder reader may share it).
   * Throws, naming the file, unless it holds a KL encoder.
   */
  static describe(file: SafetensorsFile): EncoderWeights {
    const keys = new Set(file.keys());
    const prefix = findKlEncoder(keys);
    if (prefix === undefined) throw new Error(`${file.path} holds no VAE encoder: no tensors encoder.conv_in.weight and encoder.conv_out.weight`);
    const under = [...keys].filter((k) => k.startsWith(prefix)).map((k) => k.slice(prefix.length));
    const diffusers = under.some((k) => k.startsWith('encoder.down_blocks.'));
    const layout: KeyLayout = !diffusers ? 'ldm' : keys.has(`${prefix}encoder.mid_block.attentions.0.query.weight`) ? 'diffusers-legacy' : 'diffusers';
    const levels = countIndices(under, diffusers ? /^encoder\.down_blocks\.(\d+)\./ : /^encoder\.down\.(\d+)\./);
    if (levels === 0) throw new Error(`${file.path}: the VAE encoder has no down levels`);
    const dim = (canonical: string, axis: number): number => {
      const key = prefix + encoderKey(canonical, layout);
      const d = file.info(key)?.shape[axis];
      if (d === undefined) throw new Error(`${file.path}: missing tensor ${key}`);
      return d;
    };
    const resnets = countIndices(under, diffusers ? /^encoder\.down_blocks\.0\.resnets\.(\d+)\./ : /^encoder\.down\.0\.block\.(\d+)\./);
    if (resnets < 1) throw new Error(`${file.path}: the first down level of the VAE encoder has no resnets`);
    const ch = dim('encoder.conv_in.weight', 0);
    const hasQuantConv = keys.has(`${prefix}quant_conv.weight`);
    const moments = hasQuantConv ? dim('quant_conv.weight', 0) : dim('encoder.conv_out.weight', 0);
    if (moments % 2 !== 0) throw new Error(`${file.path}: the VAE encoder outputs ${moments} channels; a KL encoder outputs mean and log-variance (an even count)`);
    return new EncoderWeights(file, layout, prefix, {
      ch,
      chMult: Array.from({ length: levels }, (_, i) => dim(`encoder.down.${i}.block.0.conv2.weight`, 0) / ch),
      numResBlocks: resnets,
      latentChannels: moments / 2,
      hasQuantConv,
      hasMidAttention: keys.has(prefix + encoderKey('encoder.mid.attn_1.norm.weight', layout)),
    });
  }

  /** Takes ownership of `file` (closes it on failure). */
  static fromFile(file: SafetensorsFile): Promise<EncoderWeights> {
    return owning(file, () => EncoderWeights.describe(file));
  }

  override key(canonical: string): string {
    return this.prefix + encoderKey(canonical, this.layout);
  }
}
