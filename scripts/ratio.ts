// Service ÷ raw ORT throughput, side by side in one run: raw ORT (bench/raw-ort.ts, its own
// process) at the given batch sizes, then the service under each variant's environment at
// concurrency c, in rounds (raw, variant 1, variant 2, …, repeated) so that drift in the machine's
// load hits every variant alike.
//
//   node --import tsx scripts/ratio.ts [--side 16] [--c 8] [--seconds 15] [--rounds 2] \
//     [--batches 1,4,8] [--format jpeg] [--variant 'name:KEY=V,KEY=V'] …
//
// Prints one line per measurement and a table at the end (images/s, ratio to the round's best raw batch).
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { loadPhase } from '../bench/phases.js';
import { log, ROOT, runChild, TMP, TSX, withService } from '../bench/proc.js';
import type { RawResult } from '../bench/raw-ort.js';
import { gaussianLatents } from '../bench/stats.js';

const { values } = parseArgs({
  options: {
    side: { type: 'string', default: '16' },
    c: { type: 'string', default: '8' },
    seconds: { type: 'string', default: '15' },
    rounds: { type: 'string', default: '2' },
    batches: { type: 'string', default: '1,4,8' },
    format: { type: 'string', default: 'jpeg' },
    model: { type: 'string', default: resolve(ROOT, 'test/fixtures/sdvae-ch32/torch-export.onnx') },
    variant: { type: 'string', multiple: true, default: ['default:'] },
  },
});
const side = Number(values.side);
const c = Number(values.c);
const seconds = Number(values.seconds);
const variants = values.variant.map((v) => {
  const i = v.indexOf(':');
  const env = Object.fromEntries(v.slice(i + 1).split(',').filter(Boolean).map((kv) => kv.split('=') as [string, string]));
  return { name: v.slice(0, i), env };
});
mkdirSync(join(TMP, 'bodies'), { recursive: true });
const bodyFile = join(TMP, 'bodies', `latents-1x4x${side}x${side}.f32`);
const lat = gaussianLatents(4 * side * side, 42);
writeFileSync(bodyFile, Buffer.from(lat.buffer, lat.byteOffset, lat.byteLength));

const rows: { round: number; name: string; imgS: number; extra: string }[] = [];
for (let round = 1; round <= Number(values.rounds); round++) {
  const out = join(TMP, `ratio-raw-${round}.json`);
  await runChild([...TSX, 'bench/raw-ort.ts', '--model', values.model, '--side', String(side), '--batches', values.batches,
    '--min-seconds', String(Math.max(3, seconds / 3)), '--out', out]);
  const raw = JSON.parse(readFileSync(out, 'utf8')) as RawResult;
  for (const p of raw.points) rows.push({ round, name: `raw b=${p.batch}`, imgS: p.imagesPerSec, extra: `CPU ${p.cpuPct.toFixed(0)} %` });
  for (const v of variants) {
    const env = { EXECUTION_PROVIDERS: 'cpu', MODEL_PATH: values.model, LOG_LEVEL: 'warn', REQUEST_TIMEOUT_MS: '120000', MAX_QUEUE_SIZE: '256', ...v.env };
    const r = await withService(env, { dist: false, tag: `ratio-${v.name}` }, (svc) => loadPhase(svc, {
      model: 'x', side, format: values.format as 'jpeg', concurrency: c, bodyFile, timeoutMs: 120_000, probe: false,
      warmup: 2 * c, min: 2 * c, max: 100_000, seconds, label: v.name,
    }));
    rows.push({ round, name: v.name, imgS: r.imagesPerSec, extra: `batch ${r.meanBatch.value.toFixed(2)}, svc CPU ${r.cpu.servicePct.toFixed(0)} %, other ${r.cpu.otherPct.toFixed(0)} %` });
  }
}
const lines = ['| round | what | img/s | ÷ best raw | |', '| ---: | --- | ---: | ---: | --- |'];
for (const r of rows) {
  const best = Math.max(...rows.filter((x) => x.round === r.round && x.name.startsWith('raw')).map((x) => x.imgS));
  lines.push(`| ${r.round} | ${r.name} | ${r.imgS.toFixed(2)} | ${(r.imgS / best).toFixed(3)} | ${r.extra} |`);
}
log(`side ${side}, c=${c}, ${values.format}, ${seconds} s per phase`);
process.stdout.write(lines.join('\n') + '\n');
