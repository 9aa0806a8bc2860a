// The `latent-decoder` command: convert a checkpoint, pull a VAE from the Hugging Face Hub, list
// the model repository. Usage errors exit 2, failures exit 1, both with one line on stderr.
import { stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { convertCheckpoint, type ConvertResult } from './convert/convert.js';
import { CONFIG_FILE, FAMILIES, FAMILY_NAMES, MODEL_FILE, isFamily, type Family } from './serving/model-config.js';
import { pull } from './convert/hub.js';
import { FP16_ACTIVATION_LIMIT } from './convert/fp16-guard.js';
import { writeHint } from './convert/output.js';

const DEFAULT_MODELS_DIR = 'models';
// "sd1, sd2 0.18215/0; sdxl 0.13025/0; ...": families grouped by their factors, wrapped under the option
const FAMILY_HELP = (() => {
  const groups = new Map<string, string[]>();
  for (const f of FAMILY_NAMES) {
    const key = `${FAMILIES[f].scalingFactor}/${FAMILIES[f].shiftFactor}`;
    groups.set(key, [...(groups.get(key) ?? []), f]);
  }
  const lines = [''];
  for (const item of [...groups].map(([factors, names]) => `${names.join(', ')} ${factors}`)) {
    if (lines.at(-1)!.length + item.length > 68) lines.push('');
    lines[lines.length - 1] += lines.at(-1) ? `; ${item}` : item;
  }
  return lines.map((l) => `${' '.repeat(25)}${l}`).join('\n');
})();

const HELP: Record<string, string> = {
  main: `Usage: latent-decoder <command> [options]

Commands:
  convert <weights.safetensors> <out.onnx>   convert a VAE checkpoint to an ONNX decoder
  pull <hf-repo-id>                          download a diffusers VAE from the Hub and convert it
  models                                     list the converted models

Run 'latent-decoder <command> --help' for a command's options.`,
  convert: `Usage: latent-decoder convert <weights.safetensors> <out.onnx> [options]

Reads LDM (first_stage_model./vae./bare) or diffusers AutoencoderKL safetensors, and TAESD
decoders (taesd_decoder.safetensors or diffusers AutoencoderTiny), F32/F16/BF16; the architecture
is told from the keys. When <out.onnx> is <dir>/model.onnx, config.json is written beside it
(a model repository folder). An encoder in the weights (KL Encoder + quant_conv, or a TAESD
encoder file) is written too, always float32: <dir>/encoder.onnx (else <out>.encoder.onnx); an
encoder-only file gives an encode-only folder, and a second run can add the other half. FLUX.2's
BatchNorm statistics (bn.running_mean/var, batch_norm_eps 1e-4) go into config.json.

Options:
  --family NAME          the model family: sets the latent factors (scaling/shift) and is
                         recorded in the model; TAESD decoders take unscaled latents:
${FAMILY_HELP}
  --fp16                 float16 weights and compute (float32 input and output); refused when
                         float16 cannot hold the decoder's activations or loses accuracy
  --name NAME            model name (default: the folder or file name)
  --allow-nan            convert weights holding NaN or ±Inf (refused by default, naming the
                         tensor: such a model decodes every input to NaN); a warning is printed
  --scaling-factor F     latent scaling factor (default: the family's; 0.18215 for 4-channel
                         KL VAEs, 1 for TAESD; required for 16-channel KL VAEs without --family)
  --shift-factor S       latent shift factor (default: the family's, else 0)
  -h, --help             show this help`,
  pull: `Usage: latent-decoder pull <hf-repo-id> [options]

Downloads <subfolder>/config.json and diffusion_pytorch_model[.fp16].safetensors from the Hub
(HF_ENDPOINT, HF_TOKEN honoured), then converts into <models-dir>/<name>/.

Downloads go to the Hugging Face cache shared with Python's huggingface_hub: $HF_HUB_CACHE, else
$HF_HOME/hub, else ~/.cache/huggingface/hub (models--<owner>--<name>/blobs, refs, snapshots).
The revision is resolved to a commit each time: files already cached for that commit are not
downloaded again; a branch that moved downloads the new commit; with the Hub unreachable, the
commit cached for the revision is used. Interrupted downloads resume.
Every file is checked against the SHA-256 (git SHA-1 for small files) the Hub gives; a file
without one is refused.

Options:
  --revision REV         branch, tag or commit (default main)
  --subfolder DIR        folder holding the VAE (default vae; '' for a VAE-only repository)
  --name NAME            model name (default: the repository name)
  --family NAME          ${FAMILY_NAMES.join('|')} (see convert --help)
  --fp16                 float16 weights and compute (checked as in convert)
  --models-dir DIR       model repository folder (default $MODELS_DIR, else ${DEFAULT_MODELS_DIR}),
                         the folder the server serves from
  --no-verify            accept files the Hub gives no checksum for (a warning is printed)
  -h, --help             show this help`,
  models: `Usage: latent-decoder models [--models-dir DIR]

Lists the models the server would serve with the same environment: the built-in preview, the
MODEL_PATH file when set, and the folders of the model repository (--models-dir, else MODELS_DIR,
else ${DEFAULT_MODELS_DIR}) that hold ${MODEL_FILE} (+ ${CONFIG_FILE}); an entry the server would skip
is named on stderr with the reason.`,
};

class UsageError extends Error {}

type Options = NonNullable<ParseArgsConfig['options']>;
const HELP_OPTION: Options = { help: { type: 'boolean', short: 'h' } };

function parse(command: string, args: string[], options: Options, positionals: number) {
  let parsed;
  try {
    parsed = parseArgs({ args, options: { ...options, ...HELP_OPTION }, allowPositionals: true, strict: true });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  if (parsed.values.help) return undefined;
  if (parsed.positionals.length !== positionals) {
    throw new UsageError(`${command} takes ${positionals} argument${positionals === 1 ? '' : 's'}, got ${parsed.positionals.length}`);
  }
  return { values: parsed.values as Record<string, string | boolean | undefined>, positionals: parsed.positionals };
}

function familyOption(values: Record<string, unknown>): Family | undefined {
  const v = values.family;
  if (v === undefined) return undefined;
  if (!isFamily(v)) throw new UsageError(`--family must be one of ${FAMILY_NAMES.join(', ')}, got ${JSON.stringify(v)}`);
  return v;
}

function numberOption(values: Record<string, unknown>, key: string): number | undefined {
  const v = values[key];
  if (v === undefined) return undefined;
  const n = Number(v);
  if (typeof v !== 'string' || v.trim() === '' || !Number.isFinite(n)) throw new UsageError(`--${key} must be a number, got ${JSON.stringify(v)}`);
  return n;
}

/** A one-line progress display, only when a person is watching stderr. */
function progress(label: string): ((done: number, total: number) => void) | undefined {
  if (!process.stderr.isTTY) return undefined;
  return (done, total) => {
    const pct = total > 0 ? ` ${((100 * done) / total).toFixed(0)}%` : ` ${(done / 2 ** 20).toFixed(1)} MiB`;
    process.stderr.write(`\r${label}${pct}\x1b[K${total > 0 && done >= total ? '\n' : ''}`);
  };
}

function report(r: ConvertResult, out: string): void {
  const c = r.config;
  console.log(`${out}: ${c.name}, ${c.latentChannels} latent channels, ${r.architecture}, ` +
    `${c.precision}, ${c.latentsMean ? 'per-channel latents_mean/latents_std' : `scaling ${c.scalingFactor} shift ${c.shiftFactor}`}${c.family ? `, family ${c.family}` : ''}, ` +
    `${(r.bytes / 2 ** 20).toFixed(1)} MiB in ${r.seconds.toFixed(1)} s`);
  if (r.encoder) console.log(`${r.encoder.path}: ${r.encoderOnly ? 'encoder only (no decoder in the weights)' : 'the encoder'}, ${r.encoder.architecture}, fp32`);
  if (r.encoderSkipped) console.log(`encoder not written: ${r.encoderSkipped}`);
  const g = r.fp16Check;
  if (g) {
    console.log(`float16 check: max activation ${g.maxActivation.toExponential(2)} (limit ${FP16_ACTIVATION_LIMIT}), ` +
      `PSNR ${g.psnr.toFixed(1)} dB against float32, ${g.seconds.toFixed(1)} s`);
  }
}

async function convertCommand(args: string[]): Promise<void> {
  const p = parse('convert', args, {
    fp16: { type: 'boolean' },
    name: { type: 'string' },
    family: { type: 'string' },
    'scaling-factor': { type: 'string' },
    'shift-factor': { type: 'string' },
    'allow-nan': { type: 'boolean' },
  }, 2);
  if (!p) return void console.log(HELP.convert);
  const [weights, out] = p.positionals as [string, string];
  const result = await convertCheckpoint({
    weights,
    out,
    fp16: p.values.fp16 === true,
    name: p.values.name as string | undefined,
    family: familyOption(p.values),
    scalingFactor: numberOption(p.values, 'scaling-factor'),
    shiftFactor: numberOption(p.values, 'shift-factor'),
    allowNonFinite: p.values['allow-nan'] === true,
    warn: (m) => void process.stderr.write(`latent-decoder: warning: ${m}\n`),
    onProgress: progress('converting'),
  });
  report(result, out);
}

async function pullCommand(args: string[]): Promise<void> {
  const p = parse('pull', args, {
    revision: { type: 'string' },
    subfolder: { type: 'string' },
    name: { type: 'string' },
    family: { type: 'string' },
    fp16: { type: 'boolean' },
    'models-dir': { type: 'string' },
    'no-verify': { type: 'boolean' },
  }, 1);
  if (!p) return void console.log(HELP.pull);
  const show = { download: progress('downloading'), convert: progress('converting') };
  const result = await pull(p.positionals[0]!, {
    revision: p.values.revision as string | undefined,
    subfolder: p.values.subfolder as string | undefined,
    name: p.values.name as string | undefined,
    family: familyOption(p.values),
    fp16: p.values.fp16 === true,
    modelsDir: (p.values['models-dir'] as string | undefined) ?? (process.env.MODELS_DIR || DEFAULT_MODELS_DIR),
    verify: p.values['no-verify'] !== true,
    onProgress: (phase, done, total) => show[phase]?.(done, total),
  });
  report(result, join(result.dir, MODEL_FILE));
}

async function modelsCommand(args: string[]): Promise<void> {
  const p = parse('models', args, { 'models-dir': { type: 'string' } }, 0);
  if (!p) return void console.log(HELP.models);
  // The same discovery as the server, from the same environment: what is listed is what it serves.
  const { loadConfig } = await import('./config.js');
  const { discoverModels } = await import('./serving/registry.js');
  const cfg = loadConfig(process.env);
  const dir = p.values['models-dir'] as string | undefined;
  if (dir !== undefined) {
    // the server skips a missing folder; a folder named on the command line is a typo to report
    if (!(await stat(dir).then((s) => s.isDirectory(), () => false))) throw new Error(`models folder ${resolve(dir)} does not exist`);
    cfg.modelsDir = dir;
  }
  const rows: string[][] = [];
  const warn = { warn: (_: object, msg: string) => void process.stderr.write(`latent-decoder: ${msg}\n`) };
  for (const spec of await discoverModels(cfg, warn)) {
    const c = spec.file;
    // decoder and encoder files together; an encode-only folder has no model.onnx
    const files = [spec.modelPath, spec.encoderPath].filter((f): f is string => f !== undefined);
    const bytes = await Promise.all(files.map((f) => stat(f).then((st) => st.size, () => NaN)));
    const total = bytes.reduce((a, b) => a + b, 0);
    const size = spec.builtin ? 'built-in' : Number.isNaN(total) ? 'missing' : `${(total / 2 ** 20).toFixed(1)} MiB`;
    const directions = [spec.builtin || spec.modelPath || spec.modelBytes ? 'decode' : '', spec.encoderPath ? 'encode' : ''].filter(Boolean).join(',');
    rows.push([spec.name, String(c.latentChannels ?? '?'), c.precision ?? '?', String(c.scalingFactor ?? '?'), String(c.shiftFactor ?? 0), size, c.family ?? '', directions]);
  }
  const table = [['NAME', 'CHANNELS', 'PRECISION', 'SCALING', 'SHIFT', 'SIZE', 'FAMILY', 'DIRECTIONS'], ...rows];
  const widths = table[0]!.map((_, i) => Math.max(...table.map((r) => r[i]!.length)));
  for (const r of table) console.log(r.map((cell, i) => cell.padEnd(widths[i]!)).join('  ').trimEnd());
}

const COMMANDS: Record<string, (args: string[]) => Promise<void>> = {
  convert: convertCommand,
  pull: pullCommand,
  models: modelsCommand,
};

/** Runs the command line; returns the exit code. */
export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined || command === '--help' || command === '-h' || command === 'help') {
    console.log(HELP.main);
    return command === undefined ? 2 : 0;
  }
  const run = COMMANDS[command];
  try {
    if (!run) throw new UsageError(`unknown command ${JSON.stringify(command)}`);
    await run(rest);
    return 0;
  } catch (err) {
    const usage = err instanceof UsageError;
    process.stderr.write(`latent-decoder: ${writeHint(err) ?? (err as Error).message}\n${usage ? `Run 'latent-decoder ${run ? `${command} ` : ''}--help' for usage.\n` : ''}`);
    return usage ? 2 : 1;
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  process.exitCode = await main(process.argv.slice(2));
}
