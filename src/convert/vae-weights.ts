// Maps the key layouts SD-family VAE checkpoints come in onto one canonical set of decoder
// weights — the original LDM names without a prefix — and infers the decoder's configuration
// from tensor shapes, so no config file is needed to convert a bare checkpoint.
import { SafetensorsFile } from './safetensors.js';
import { LayoutWeights, owning } from './weights.js';

export type KeyLayout = 'ldm' | 'diffusers' | 'diffusers-legacy';

export interface VaeConfig {
  /** Base channel count: the channels of the shallowest up level. */
  ch: number;
  chMult: number[];
  numResBlocks: number;
  latentChannels: number;
  hasPostQuantConv: boolean;
}

// Where a checkpoint keeps its VAE: a full LDM checkpoint, some merged single-file checkpoints,
// or a bare VAE file.
export const PREFIXES = ['first_stage_model.', 'vae.', ''];

/** The mid-block attention's LDM names → diffusers' (and legacy diffusers') names; the encoder's are the same. */
export const DIFFUSERS_ATTN: Record<string, string> = { norm: 'group_norm', q: 'to_q', k: 'to_k', v: 'to_v', proj_out: 'to_out.0' };
export const LEGACY_ATTN: Record<string, string> = { norm: 'group_norm', q: 'query', k: 'key', v: 'value', proj_out: 'proj_attn' };

/** The key a canonical (unprefixed LDM) name has in the given layout. */
export function layoutKey(canonical: string, layout: KeyLayout, levels: number): string {
  if (layout === 'ldm') return canonical;
  let m = /^decoder\.up\.(\d+)\.block\.(\d+)\.(.*)$/.exec(canonical);
  if (m) return `decoder.up_blocks.${levels - 1 - Number(m[1])}.resnets.${m[2]}.${m[3]!.replace(/^nin_shortcut\./, 'conv_shortcut.')}`;
  m = /^decoder\.up\.(\d+)\.upsample\.conv\.(.*)$/.exec(canonical);
  if (m) return `decoder.up_blocks.${levels - 1 - Number(m[1])}.upsamplers.0.conv.${m[2]}`;
  m = /^decoder\.mid\.block_([12])\.(.*)$/.exec(canonical);
  if (m) return `decoder.mid_block.resnets.${Number(m[1]) - 1}.${m[2]}`;
  m = /^decoder\.mid\.attn_1\.(\w+)\.(.*)$/.exec(canonical);
  if (m) return `decoder.mid_block.attentions.0.${(layout === 'diffusers' ? DIFFUSERS_ATTN : LEGACY_ATTN)[m[1]!]}.${m[2]}`;
  return canonical.replace(/^decoder\.norm_out\./, 'decoder.conv_norm_out.');
}

export class VaeWeights extends LayoutWeights {
  private constructor(
    file: SafetensorsFile,
    readonly layout: KeyLayout,
    readonly prefix: string,
    readonly config: VaeConfig,
  ) {
    super(file);
  }

  static async open(path: string): Promise<VaeWeights> {
    return VaeWeights.fromFile(await SafetensorsFile.open(path));
  }

  /** Takes ownership of `file` (closes it on failure); throws unless it holds a KL VAE decoder. */
  static fromFile(file: SafetensorsFile): Promise<VaeWeights> {
    const path = file.path;
    return owning(file, () => {
      const keys = new Set(file.keys());
      const prefix = PREFIXES.find((p) => keys.has(`${p}decoder.conv_in.weight`));
      if (prefix === undefined) {
        throw new Error(`${path} holds no VAE decoder: no tensor decoder.conv_in.weight (with prefix ${PREFIXES.filter(Boolean).join(', ')} or none), ` +
          'nor a TAESD decoder (1.weight … 19.weight, or decoder.layers.0.weight … decoder.layers.18.weight)');
      }
      const under = [...keys].filter((k) => k.startsWith(prefix)).map((k) => k.slice(prefix.length));
      const diffusers = under.some((k) => k.startsWith('decoder.up_blocks.') || k.startsWith('decoder.mid_block.'));
      const layout: KeyLayout = !diffusers ? 'ldm'
        : keys.has(`${prefix}decoder.mid_block.attentions.0.query.weight`) ? 'diffusers-legacy' : 'diffusers';
      const levels = countIndices(under, diffusers ? /^decoder\.up_blocks\.(\d+)\./ : /^decoder\.up\.(\d+)\./);
      if (levels === 0) throw new Error(`${path}: the VAE decoder has no up levels (no decoder.up.* or decoder.up_blocks.* tensors)`);
      const dim = (canonical: string, axis: number): number => {
        const key = prefix + layoutKey(canonical, layout, levels);
        const d = file.info(key)?.shape[axis];
        if (d === undefined) throw new Error(`${path}: missing tensor ${key}`);
        return d;
      };
      const level0 = diffusers ? new RegExp(`^decoder\\.up_blocks\\.${levels - 1}\\.resnets\\.(\\d+)\\.`) : /^decoder\.up\.0\.block\.(\d+)\./;
      const resnets = countIndices(under, level0);
      if (resnets < 1) throw new Error(`${path}: the shallowest up level of the VAE decoder has no resnets`);
      const levelChannels = Array.from({ length: levels }, (_, i) => dim(`decoder.up.${i}.block.0.conv2.weight`, 0));
      const ch = levelChannels[0]!;
      const hasPostQuantConv = keys.has(`${prefix}post_quant_conv.weight`);
      return new VaeWeights(file, layout, prefix, {
        ch,
        chMult: levelChannels.map((c) => c / ch),
        numResBlocks: resnets - 1,
        latentChannels: hasPostQuantConv ? dim('post_quant_conv.weight', 1) : dim('decoder.conv_in.weight', 1),
        hasPostQuantConv,
      });
    });
  }


  override key(canonical: string): string {
    return this.prefix + layoutKey(canonical, this.layout, this.config.chMult.length);
  }
}

/** One more than the largest index `re` captures in `keys` (0 when none matches): how many levels or blocks. */
export function countIndices(keys: string[], re: RegExp): number {
  let max = -1;
  for (const k of keys) {
    const m = re.exec(k);
    if (m) max = Math.max(max, Number(m[1]));
  }
  return max + 1;
}
