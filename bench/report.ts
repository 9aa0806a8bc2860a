// The Markdown report from a BenchResult: machine, settings, targets with their status and, where
// one is missed, what the numbers say about why; then every table.
//   node --import tsx bench/report.ts bench/results/X.json   re-renders X.md and X.svg
import { readFileSync, writeFileSync } from 'node:fs';
import { basename } from 'node:path';
import type { BenchResult, ModelResult, PhaseResult } from './types.js';
import type { RawPoint } from './raw-ort.js';
import { renderChart } from './chart.js';
import { cpuSideChart, cpuSideMarkdown } from './cpu-side.js';
import { errorsText, f, f2, ips, ms, table } from './format.js';
import { scaleSection } from './report-scale.js';

export type Status = 'PASS' | 'MISS' | 'not measured';
export interface Target { name: string; goal: string; measured: string; status: Status; why?: string[] }

function rawAt(m: ModelResult, batch: number, output: RawPoint['output'] = 'image'): RawPoint | undefined {
  const pts = m.raw?.points.filter((p) => p.output === output) ?? [];
  return pts.find((p) => p.batch === batch) ?? pts.filter((p) => p.batch <= batch).at(-1);
}

const main = (m: ModelResult): PhaseResult[] => m.phases.filter((p) => !p.label);

/** The best raw `image` throughput over batch sizes 1..maxBatch: a stricter ceiling. */
function bestRaw(m: ModelResult, maxBatch: number): RawPoint | undefined {
  return m.raw?.points.filter((p) => p.output === 'image' && p.batch <= maxBatch).sort((a, b) => b.imagesPerSec - a.imagesPerSec)[0];
}

/** Floor of the work in one SD VAE decode at 512² (64×64 latents), in TFLOP. */
export const TFLOP_PER_512_IMAGE = 2.5;
const tflops = (m: ModelResult, imagesPerSec: number): string => (m.side === 64 ? f2(imagesPerSec * TFLOP_PER_512_IMAGE) : '–');

export function evaluate(r: BenchResult): Target[] {
  const maxBatch = Number(r.settings.MAX_BATCH_SIZE ?? 8);
  // older results always set it (5); newer ones leave it to the service and say so
  const delay = Number(r.settings.MAX_QUEUE_DELAY_MS ?? 5);
  const targets: Target[] = [];
  const measured = r.models.filter((m) => !m.skipped && m.phases.length);

  // 1. throughput ratio
  {
    const rows: string[] = [];
    const why: string[] = [];
    let worst = Infinity;
    for (const m of measured) {
      const raw = rawAt(m, maxBatch);
      const best = bestRaw(m, maxBatch);
      if (!raw || !best) continue;
      for (const p of main(m).filter((p) => p.concurrency >= maxBatch)) {
        // against the best raw batch size: the service may batch differently (on a CPU, not at all)
        const ratio = p.imagesPerSec / best.imagesPerSec;
        worst = Math.min(worst, ratio);
        rows.push(`${m.key} ${p.format} c=${p.concurrency}: ${f2(ratio)} (raw batch ${best.batch})` + (best.batch !== raw.batch ? `, ${f2(p.imagesPerSec / raw.imagesPerSec)} vs raw batch ${raw.batch}` : ''));
        if (ratio < 0.95) {
          // where the gap is: batching (fewer samples per run) or slower runs (contention)
          const perSampleSvc = p.stages.infer.p50 / Math.max(p.meanBatch.value, 1e-9);
          const rawAtMean = rawAt(m, Math.max(1, Math.round(p.meanBatch.value)));
          const perSampleRaw = rawAtMean ? rawAtMean.runMs.p50 / rawAtMean.batch : NaN;
          why.push(`${m.key} ${p.format} c=${p.concurrency}: ratio ${f2(ratio)}; mean batch ${f2(p.meanBatch.value)} (${p.meanBatch.source}); ` +
            `service infer p50 ${ms(p.stages.infer.p50)} per batch ≈ ${ms(perSampleSvc)}/sample vs raw ${ms(perSampleRaw)}/sample at batch ${rawAtMean?.batch ?? '?'}` +
            ` (×${f2(perSampleSvc / perSampleRaw)}); encode p50 ${ms(p.stages.encode.p50)}/image; service CPU ${f(p.cpu.servicePct, 0)} % of ${r.machine.cores * 100} %, ` +
            `other processes ${f(p.cpu.otherPct, 0)} % (load avg ${f(p.cpu.loadavgStart)}→${f(p.cpu.loadavgEnd)})`);
        }
      }
    }
    targets.push({
      name: `service ≥ 0.95 × raw ORT throughput at concurrency ≥ ${maxBatch}`,
      goal: `≥ 0.95 (raw = InferenceSession.run with the in-graph postprocess at its fastest batch size, 1…${maxBatch})`,
      measured: rows.join('; ') || '–',
      status: rows.length === 0 ? 'not measured' : worst >= 0.95 ? 'PASS' : 'MISS',
      why,
    });
    if (r.models.some((m) => m.key === 'large' && m.skipped)) {
      targets[targets.length - 1]!.why!.push(`full-width model not measured: ${r.models.find((m) => m.key === 'large')!.skipped}`);
    }
  }

  // 2. overhead at c=1: judged on the server-side figure (Server-Timing total − infer − encode)
  // when the service sends `total`, since the client-side one also holds the HTTP round trip
  // that no service change removes; else on the client-side figure, as before
  {
    const small = measured.find((m) => m.key === 'small') ?? measured[0];
    const c1 = small ? main(small).filter((p) => p.concurrency === 1) : [];
    const judged = (p: PhaseResult): number => (p.stages.serverOverhead ?? p.stages.overhead).p50;
    const serverSide = c1.length > 0 && c1.every((p) => p.stages.serverOverhead);
    const worst = Math.max(...c1.map(judged));
    const why: string[] = [];
    for (const p of c1) {
      if (judged(p) <= 1) continue;
      why.push(`${p.format}: e2e p50 ${ms(p.latency.p50)} = parse ${ms(p.stages.parse.p50)} + queue ${ms(p.stages.queue.p50)} + infer ${ms(p.stages.infer.p50)} + encode ${ms(p.stages.encode.p50)} + unaccounted ${ms(p.stages.unaccounted.p50)} (p50s)` +
        (p.stages.total ? `; Server-Timing total p50 ${ms(p.stages.total.p50)}` : ''));
      if (p.stages.queue.p50 >= 0.8 * delay && delay > 0) {
        why.push(`queue p50 ${ms(p.stages.queue.p50)} ≈ MAX_QUEUE_DELAY_MS=${delay}: with one client the runner is idle, yet the batcher holds the lone request for the full delay`);
      } else if (p.stages.queue.p50 > 0.5) {
        why.push(`queue p50 ${ms(p.stages.queue.p50)} with one client, whose request always finds the model idle: the batcher waits before an idle run ` +
          `(MAX_QUEUE_DELAY_MS ${r.settings.MAX_QUEUE_DELAY_MS ?? '?'}; issue 11's idle dispatch runs such a request at once)`);
      }
    }
    if (small?.healthzRtt) why.push(`a bare /healthz round trip at c=1 on the same kind of connection: p50 ${ms(small.healthzRtt.ms.p50)} (the client-side floor)`);
    const alt = small?.delayCheck ?? (small?.zeroDelay ? { delayMs: 0, phase: small.zeroDelay } : undefined);
    if (alt) {
      const z = alt.phase;
      why.push(`same c=1 JPEG with MAX_QUEUE_DELAY_MS=${alt.delayMs}: overhead p50 ${ms(z.stages.overhead.p50)}${z.stages.serverOverhead ? ` (server-side ${ms(z.stages.serverOverhead.p50)})` : ''} ` +
        `(parse ${ms(z.stages.parse.p50)}, queue ${ms(z.stages.queue.p50)}, unaccounted ${ms(z.stages.unaccounted.p50)}), ${ips(z.imagesPerSec)} img/s`);
    }
    targets.push({
      name: `non-model, non-encode overhead p50 at concurrency 1 (${serverSide ? 'server-side: Server-Timing total − infer − encode' : 'e2e − infer − encode'})`,
      goal: '≤ 1 ms',
      measured: c1.map((p) => `${p.format} ${serverSide ? `server ${ms(p.stages.serverOverhead!.p50)}, client ` : ''}${ms(p.stages.overhead.p50)}`).join(', ') || '–',
      status: c1.length === 0 ? 'not measured' : worst <= 1 ? 'PASS' : 'MISS',
      why,
    });
  }

  // 3. healthz while decoding
  {
    const probed = measured.flatMap((m) => [...main(m), ...(m.probePhase ? [m.probePhase] : [])].filter((p) => p.healthz).map((p) => ({ m, p })));
    // "while a long decode runs": the full-width model's phase when there is one
    const long = probed.filter(({ m }) => m.key === 'large');
    const judged = long.length ? long : probed;
    const worst = Math.max(...judged.map(({ p }) => p.healthz!.ms.p99));
    const why: string[] = [];
    for (const { m, p } of judged) {
      if (p.healthz!.ms.p99 > 20) {
        why.push(`${m.key} ${p.format} c=${p.concurrency}: /healthz p50 ${ms(p.healthz!.ms.p50)}, p99 ${ms(p.healthz!.ms.p99)}, max ${ms(p.healthz!.ms.max)}; ` +
          `service CPU ${f(p.cpu.servicePct, 0)} %, other ${f(p.cpu.otherPct, 0)} %, on ${r.machine.cores} cores: the event loop waits for a core behind ORT's intra-op threads and sharp's pool`);
      }
    }
    targets.push({
      name: '/healthz p99 while a decode runs (prober every 10 ms)',
      goal: '≤ 20 ms',
      measured: probed.map(({ m, p }) => `${m.key} ${p.format} c=${p.concurrency}: p50 ${ms(p.healthz!.ms.p50)}, p99 ${ms(p.healthz!.ms.p99)} (${p.healthz!.n} probes)`).join('; ') || '–',
      status: judged.length === 0 ? 'not measured' : worst <= 20 ? 'PASS' : 'MISS',
      why,
    });
  }

  // 4. RSS growth
  {
    const soaks = measured.filter((m) => m.soak).map((m) => m.soak!);
    const worst = Math.max(...soaks.map((s) => s.growthPct));
    const why: string[] = [];
    for (const s of soaks) {
      if (s.growthPct > 5) {
        why.push(`${s.model}: ${f(s.rssAfterWarmupMiB, 0)} → ${f(s.rssEndMiB, 0)} MiB at the end (${f(s.growthPct)} %), ${f(s.rssEndIdleMiB, 0)} MiB after 2 s idle (${f(s.growthIdlePct)} %)`);
      }
    }
    targets.push({
      name: `RSS growth over the soak (end vs after its first 10 %)`,
      goal: '≤ 5 %',
      measured: soaks.map((s) => `${s.model}: ${f(s.growthPct)} % over ${s.requests} requests (peak ${f(s.peakRssMiB, 0)} MiB)`).join('; ') || '–',
      status: soaks.length === 0 ? 'not measured' : worst <= 5 ? 'PASS' : 'MISS',
      why,
    });
  }
  return targets;
}

function modelSection(m: ModelResult, r: BenchResult): string {
  const maxBatch = Number(r.settings.MAX_BATCH_SIZE ?? 8);
  const out: string[] = [`## ${m.label}`, '', `Model: \`${m.path}\`; request latents 1×4×${m.side}×${m.side} → ${m.imageSide}×${m.imageSide} image.`];
  if (m.note) out.push('', `_${m.note}_`);
  if (m.skipped) { out.push('', `**Not measured:** ${m.skipped}`); return out.join('\n'); }
  if (m.startupMs !== undefined) out.push('', `Service start to /readyz 200: ${ms(m.startupMs)}.`);
  if (m.side === 64) out.push('', `TFLOP/s columns: images/s × ${TFLOP_PER_512_IMAGE} TFLOP, the floor of the work in one 512² SD VAE decode.`);
  if (m.raw) {
    out.push('', `### Raw ONNX Runtime (separate process, intra-op threads: ${m.raw.intraOpThreads}, session load ${ms(m.raw.loadMs)})`, '');
    out.push(table(['output', 'batch', 'runs', 'run p50', 'run mean', 'per image', 'images/s', 'TFLOP/s (×2.5)', 'CPU %'],
      m.raw.points.map((p) => [p.output === 'image' ? '`image` uint8 (in-graph postprocess)' : '`sample` float32 (original graph)', p.batch, p.iters,
        ms(p.runMs.p50), ms(p.runMs.mean), ms(p.runMs.mean / p.batch), ips(p.imagesPerSec), tflops(m, p.imagesPerSec), f(p.cpuPct, 0)])));
  }
  const phases = main(m);
  if (phases.length) {
    const raw = rawAt(m, maxBatch);
    out.push('', '### Service over HTTP', '',
      `Closed loop: c clients, one request (one image) each at a time. Stage columns are p50 of the Server-Timing values; ` +
      `overhead = e2e − infer − encode (p50); ratio = images/s ÷ raw \`image\` at batch ${raw?.batch ?? maxBatch} (${ips(raw?.imagesPerSec)} images/s).`, '');
    const best = bestRaw(m, maxBatch);
    out.push(table(['format', 'c', 'requests', 'images/s', 'TFLOP/s (×2.5)', 'ratio', `ratio vs best raw (batch ${best?.batch ?? '–'})`, 'p50', 'p95', 'p99', 'mean batch', 'parse', 'queue', 'infer', 'encode', 'overhead', 'svc CPU %', 'other CPU %', 'errors'],
      phases.map((p) => [p.format, p.concurrency, p.ok, ips(p.imagesPerSec), tflops(m, p.imagesPerSec), raw ? f2(p.imagesPerSec / raw.imagesPerSec) : '–',
        best ? f2(p.imagesPerSec / best.imagesPerSec) : '–',
        ms(p.latency.p50), ms(p.latency.p95), ms(p.latency.p99), `${f2(p.meanBatch.value)}${p.meanBatch.source === 'metrics' ? '' : '*'}`,
        ms(p.stages.parse.p50), ms(p.stages.queue.p50), ms(p.stages.infer.p50), ms(p.stages.encode.p50), ms(p.stages.overhead.p50),
        f(p.cpu.servicePct, 0), f(p.cpu.otherPct, 0), errorsText(p.errors)])));
    if (phases.some((p) => p.meanBatch.source !== 'metrics')) {
      out.push('', '\\* mean batch size estimated from Server-Timing (requests of one batch share its `infer` value and start time); ' +
        '`latent_decoder_batches_total` / `latent_decoder_batch_samples_total` were not exposed by /metrics during this run.');
    }
    out.push('', `CPU columns: share of all ${r.machine.cores} cores (${r.machine.cores * 100} % = all) during the phase; "other" is everything but the service (load generator, prober, and any other process on the machine).`);
    const c1 = phases.filter((p) => p.concurrency === 1);
    if (c1.length) {
      out.push('', '#### Overhead at concurrency 1 (p50, ms)', '');
      const row = (name: string, p: PhaseResult): string[] => [name, ms(p.latency.p50), ms(p.stages.parse.p50), ms(p.stages.queue.p50), ms(p.stages.infer.p50), ms(p.stages.encode.p50),
        ms(p.stages.unaccounted.p50), ms(p.stages.overhead.p50), ms(p.stages.total?.p50), ms(p.stages.serverOverhead?.p50)];
      const rows = c1.map((p) => row(p.format, p));
      const alt = m.delayCheck ?? (m.zeroDelay ? { delayMs: 0, phase: m.zeroDelay } : undefined);
      if (alt) rows.push(row(`${alt.phase.format}, MAX_QUEUE_DELAY_MS=${alt.delayMs}`, alt.phase));
      out.push(table(['format', 'e2e', 'parse', 'queue', 'infer', 'encode', 'unaccounted (HTTP, routing, transfer)', 'overhead = e2e − infer − encode', 'server total', 'server-side = total − infer − encode'], rows));
      if (m.healthzRtt) out.push('', `Bare GET /healthz at c=1 (same client, one keep-alive connection, ${m.healthzRtt.n} requests): p50 ${ms(m.healthzRtt.ms.p50)}, p99 ${ms(m.healthzRtt.ms.p99)}.`);
    }
    const probed = [...phases, ...(m.probePhase ? [m.probePhase] : [])].filter((p) => p.healthz);
    if (probed.length) {
      out.push('', '#### /healthz while decoding (a separate process, GET every 10 ms)', '');
      out.push(table(['phase', 'probes', 'failures', 'p50', 'p99', 'max', 'images/s meanwhile'],
        probed.map((p) => [`${p.format} c=${p.concurrency}${p.label ? ' (a phase of its own)' : ' (a measured phase)'}`, p.healthz!.n, p.healthz!.failures, ms(p.healthz!.ms.p50), ms(p.healthz!.ms.p99), ms(p.healthz!.ms.max), ips(p.imagesPerSec)])));
    }
  }
  if (m.soak) {
    const s = m.soak;
    out.push('', `#### Memory: ${s.requests}-request soak (JPEG, c=${s.concurrency}; RSS of the service process from /proc/<pid>/status every 250 ms)`, '');
    out.push(table(['RSS after warm-up (first 10 %)', 'RSS at end', 'growth', 'RSS 2 s later', 'growth (idle)', 'peak (VmHWM)', 'images/s', 'errors'],
      [[`${f(s.rssAfterWarmupMiB, 0)} MiB`, `${f(s.rssEndMiB, 0)} MiB`, `${f(s.growthPct)} %`, `${f(s.rssEndIdleMiB, 0)} MiB`, `${f(s.growthIdlePct)} %`, `${f(s.peakRssMiB, 0)} MiB`, ips(s.imagesPerSec),
        errorsText(s.errors)]]));
  }
  return out.join('\n');
}

export function renderMarkdown(r: BenchResult, chartFile: string, notes?: string): string {
  const targets = evaluate(r);
  const mc = r.machine;
  const out: string[] = [
    `# latent-decoder benchmark — ${r.date.slice(0, 10)} on ${mc.hostname} (${r.mode})`, '',
    `Command: \`${r.command}\` — took ${f(r.durationS / 60)} min. Service: \`${r.serviceCommand}\` as a child process; load from a separate ` +
    'process (bench/load.ts, undici, keep-alive, closed loop); /healthz prober in a third process; raw ORT in a fourth, run alone before the service starts.', '',
    `Waited ${f(r.quietWaitedS ?? 0, 0)} s in all for other processes on the machine to quiet down before phases (each phase's table row shows the CPU others used during it).`, '',
    '## Machine', '',
    table(['CPU', 'cores', 'RAM', 'Node', 'onnxruntime-node', 'provider', 'sharp', 'fastify', 'kernel'],
      [[mc.cpuModel, mc.cores, `${mc.ramGiB} GiB`, mc.node, mc.ort, r.settings.EXECUTION_PROVIDERS ?? 'cpu', mc.sharp, mc.fastify, mc.kernel]]),
    '', '## Settings', '',
    table(['variable', 'value'], Object.entries(r.settings).map(([k, v]) => [`\`${k}\``, `\`${v}\``])),
    '', 'REQUEST_TIMEOUT_MS per model: see each section. The load generator, the prober, the service\'s event loop, sharp\'s libuv pool and ORT\'s intra-op threads all share these cores.',
    '', '## Targets', '',
    table(['target', 'goal', 'measured', 'status'], targets.map((t) => [t.name, t.goal, t.measured, `**${t.status}**`])),
  ];
  const whys = targets.filter((t) => t.why && t.why.length);
  if (whys.length) {
    out.push('', '### Why (from this run\'s numbers)', '');
    for (const t of whys) {
      out.push(`- **${t.name}** (${t.status})`);
      for (const w of t.why!) out.push(`  - ${w}`);
    }
  }
  const scale = scaleSection(r);
  if (scale) out.push('', scale);
  if (notes) out.push('', notes.trim());
  if (r.cpuSide) out.push('', cpuSideMarkdown(r.cpuSide, chartFile.replace(/\.svg$/, '-cpu.svg')));
  out.push('', '## Chart', '', `![throughput and p99 latency against concurrency](${chartFile})`);
  for (const m of r.models) out.push('', modelSection(m, r));
  if (r.profile) {
    out.push('', '## CPU profile of the service', '', r.profile.note + '.');
    for (const t of r.profile.threads.slice(0, 3)) {
      out.push('', `### ${t.thread} (${t.file}): ${f(t.totalMs / 1000)} s sampled, idle ${f(t.idlePct)} %, GC ${f(t.gcPct)} %, (program) ${f(t.programPct)} %`, '');
      out.push(table(['area', 'self time', '% of busy'], t.byArea.map((a) => [a.area, ms(a.selfMs), f(a.pctBusy)])));
      out.push('', table(['function', 'where', 'self time', '% of busy'], t.top.slice(0, 12).map((e) => [`\`${e.fn}\``, e.where ? `\`${e.where}\`` : '', ms(e.selfMs), f(e.pctBusy)])));
    }
  }
  out.push('', '---', `Raw data: \`${basename(chartFile, '.svg')}.json\`. Re-render: \`node --import tsx bench/report.ts bench/results/${basename(chartFile, '.svg')}.json\`.`, '');
  return out.join('\n');
}

if (process.argv[1]?.endsWith('report.ts') && process.argv[2]) {
  const file = process.argv[2];
  const r = JSON.parse(readFileSync(file, 'utf8')) as BenchResult;
  const stem = file.replace(/\.json$/, '');
  let notes: string | undefined;
  try { notes = readFileSync(`${stem}.notes.md`, 'utf8'); } catch { /* none */ }
  writeFileSync(`${stem}.md`, renderMarkdown(r, `${basename(stem)}.svg`, notes));
  writeFileSync(`${stem}.svg`, renderChart(r));
  if (r.cpuSide) writeFileSync(`${stem}-cpu.svg`, cpuSideChart(r.cpuSide));
  process.stdout.write(`wrote ${stem}.md and ${stem}.svg\n`);
}
