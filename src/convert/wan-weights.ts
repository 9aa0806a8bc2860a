// The Wan 2.1 VAE decoder's weights (diffusers' AutoencoderKLWan / AutoencoderKLQwenImage) in the
// two layouts they are published in, mapped onto one canonical set: diffusers' names without a
// prefix (`decoder.conv_in.weight`, `decoder.up_blocks.0.upsamplers.0.time_conv.weight`, ...).
// The other layout is the original Wan 2.1 one (Wan2.1_VAE.pth, ComfyUI's wan_2.1_vae.safetensors:
// `decoder.conv1`, `decoder.middle.*`, `decoder.upsamples.*`, `decoder.head.*`, `conv2`), with the
// table of diffusers' `convert_wan_vae_to_diffusers`. The decoder's shape is read from the
// tensors, so a bare checkpoint needs no config file.
import type { SafetensorsFile } from './safetensors.js';
import { LayoutWeights, owning } from './weights.js';

/** 'diffusers': AutoencoderKLWan names; 'wan': the original Wan 2.1 names. */
export type WanLayout = 'diffusers' | 'wan';

export interface WanUpBlock {
  /** Channels into the block's first resnet and out of every resnet. */
  inChannels: number;
  outChannels: number;
  /** Resnets in the block (num_res_blocks + 1). */
  resnets: number;
  /** 'upsample3d' doubles time (time_conv) and space; 'upsample2d' space only. */
  upsample: 'upsample3d' | 'upsample2d' | null;
}

export interface WanConfig {
  /** z_dim: 16 for Wan 2.1 and Qwen-Image. */
  latentChannels: number;
  /** Channels of conv_in's output and of the mid block (base_dim × dim_mult[-1]). */
  midChannels: number;
  upBlocks: WanUpBlock[];
  /** Channels into norm_out / conv_out. */
  outChannels: number;
}

const PREFIXES = ['', 'vae.', 'first_stage_model.'];
const MARKERS: Record<WanLayout, string> = {
  diffusers: 'decoder.mid_block.resnets.0.norm1.gamma',
  wan: 'decoder.middle.0.residual.0.gamma',
};

/** The layout and key prefix of a Wan VAE checkpoint, or undefined when the keys are not Wan's. */
export function detectWan(keys: Set<string>): { layout: WanLayout; prefix: string } | undefined {
  for (const prefix of PREFIXES) {
    for (const layout of ['diffusers', 'wan'] as const) {
      if (keys.has(prefix + MARKERS[layout])) return { layout, prefix };
    }
  }
  return undefined;
}

const RESNET_PARTS: [RegExp, string][] = [
  [/^norm1\.gamma$/, 'residual.0.gamma'],
  [/^conv1\./, 'residual.2.'],
  [/^norm2\.gamma$/, 'residual.3.gamma'],
  [/^conv2\./, 'residual.6.'],
  [/^conv_shortcut\./, 'shortcut.'],
];

function resnetPart(rest: string): string {
  for (const [re, to] of RESNET_PARTS) if (re.test(rest)) return rest.replace(re, to);
  throw new Error(`not a Wan resnet weight: ${rest}`);
}

/**
 * The original Wan key of a canonical (diffusers) name. `resnets` is the resnets per up block:
 * the original keeps every up block's resnets and upsampler in one flat `decoder.upsamples` list.
 */
export function wanKey(canonical: string, resnets: number): string {
  let m = /^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)$/.exec(canonical);
  if (m) return `decoder.upsamples.${Number(m[1]) * (resnets + 1) + Number(m[2])}.${resnetPart(m[3]!)}`;
  m = /^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.*)$/.exec(canonical);
  if (m) return `decoder.upsamples.${Number(m[1]) * (resnets + 1) + resnets}.${m[2]}`;
  m = /^decoder\.mid_block\.resnets\.(\d+)\.(.*)$/.exec(canonical);
  if (m) return `decoder.middle.${2 * Number(m[1])}.${resnetPart(m[2]!)}`;
  m = /^decoder\.mid_block\.attentions\.0\.(.*)$/.exec(canonical);
  if (m) return `decoder.middle.1.${m[1]}`;
  return canonical
    .replace(/^post_quant_conv\./, 'conv2.')
    .replace(/^decoder\.conv_in\./, 'decoder.conv1.')
    .replace(/^decoder\.norm_out\./, 'decoder.head.0.')
    .replace(/^decoder\.conv_out\./, 'decoder.head.2.');
}

function countIndices(keys: Iterable<string>, re: RegExp): number {
  let max = -1;
  for (const k of keys) {
    const m = re.exec(k);
    if (m) max = Math.max(max, Number(m[1]));
  }
  return max + 1;
}

export class WanWeights extends LayoutWeights {
  private constructor(
    file: SafetensorsFile,
    readonly layout: WanLayout,
    readonly prefix: string,
    readonly config: WanConfig,
  ) {
    super(file);
  }

  /**
   * Takes ownership of `file` (closes it on failure). Throws, naming the file, unless it holds a
   * Wan 2.1 VAE decoder whose shape can be read from its tensors; the encoder and quant_conv are
   * ignored.
   */
  static fromFile(file: SafetensorsFile): Promise<WanWeights> {
    return owning(file, () => {
      const keys = new Set(file.keys());
      const found = detectWan(keys);
      if (!found) throw new Error(`${file.path} holds no Wan VAE decoder: no tensor ${MARKERS.diffusers} nor ${MARKERS.wan}`);
      const { layout, prefix } = found;
      const under = [...keys].filter((k) => k.startsWith(prefix)).map((k) => k.slice(prefix.length));
      let resnets: number;
      let blocks: number;
      if (layout === 'diffusers') {
        blocks = countIndices(under, /^decoder\.up_blocks\.(\d+)\./);
        resnets = countIndices(under, /^decoder\.up_blocks\.0\.resnets\.(\d+)\./);
      } else {
        // the first upsampler's index is the resnets per block; blocks × (resnets + 1) − 1 entries
        const upsamplers = under.flatMap((k) => /^decoder\.upsamples\.(\d+)\.resample\.1\.weight$/.exec(k)?.[1] ?? []).map(Number);
        resnets = upsamplers.length > 0 ? Math.min(...upsamplers) : 0;
        blocks = (countIndices(under, /^decoder\.upsamples\.(\d+)\./) + 1) / (resnets + 1);
      }
      if (!Number.isInteger(blocks) || blocks < 1 || resnets < 1) {
        throw new Error(`${file.path}: the Wan VAE decoder's up blocks cannot be read (${blocks} blocks of ${resnets} resnets)`);
      }
      const key = (canonical: string): string => prefix + (layout === 'diffusers' ? canonical : wanKey(canonical, resnets));
      const shape = (canonical: string): number[] => {
        const info = file.info(key(canonical));
        if (!info) throw new Error(`${file.path}: missing tensor ${key(canonical)}`);
        return info.shape;
      };
      const convIn = shape('decoder.conv_in.weight');
      const upBlocks: WanUpBlock[] = [];
      for (let i = 0; i < blocks; i++) {
        const b = `decoder.up_blocks.${i}`;
        const [outChannels, inChannels] = shape(`${b}.resnets.0.conv1.weight`) as [number, number];
        const has = (canonical: string): boolean => keys.has(key(canonical));
        const upsample = has(`${b}.upsamplers.0.time_conv.weight`) ? 'upsample3d'
          : has(`${b}.upsamplers.0.resample.1.weight`) ? 'upsample2d' : null;
        upBlocks.push({ inChannels, outChannels, resnets, upsample });
      }
      const latentChannels = convIn[1]!;
      if (latentChannels !== 16) {
        throw new Error(`${file.path}: a Wan VAE decoder with ${latentChannels} latent channels (Wan 2.2's 48-channel VAE?) is not supported; Wan 2.1 and Qwen-Image take 16`);
      }
      return new WanWeights(file, layout, prefix, {
        latentChannels,
        midChannels: convIn[0]!,
        upBlocks,
        outChannels: upBlocks[blocks - 1]!.outChannels,
      });
    });
  }

  override key(canonical: string): string {
    return this.prefix + (this.layout === 'diffusers' ? canonical : wanKey(canonical, this.config.upBlocks[0]!.resnets));
  }
}
