// The report's "latency and scale-up" section (issue 11): the c=1 overhead as the server and the
// client see it next to a bare /healthz round trip, how simultaneous bursts were batched, one
// instance with two intra-op threads against two with one, the warm-up per shape, and TAESD
// against the KL decoder at the same latent size.
import { errorsText, f, f2, ips, ms, table } from './format.js';
import type { BenchResult, BurstResult, ModelResult, PhaseResult } from './types.js';

/** "[1,7] ×3, [8] ×2": each distinct split, most frequent first. */
export function burstDistribution(b: BurstResult): string {
  const counts = new Map<string, number>();
  for (const r of b.runs) {
    const k = `[${r.sizes.join(',')}]`;
    counts.set(k, (counts.get(k) ?? 0) + 1);
  }
  return [...counts.entries()].sort((a, b2) => b2[1] - a[1]).map(([k, n]) => `${k} ×${n}`).join(', ');
}

/** The c=1 JPEG phase (the overhead's reference) of a model. */
const c1 = (m: ModelResult): PhaseResult | undefined => m.phases.find((p) => !p.label && p.concurrency === 1 && p.format === 'jpeg')
  ?? m.phases.find((p) => !p.label && p.concurrency === 1);

function overheadPart(m: ModelResult): string[] {
  const p = c1(m);
  if (!p) return [];
  const so = p.stages.serverOverhead;
  const rtt = m.healthzRtt?.ms;
  const rows: (string | number)[][] = [
    ['server-side: Server-Timing total − infer − encode', so ? ms(so.p50) : '– (no `total` in Server-Timing)', so ? ms(so.p99) : '–'],
    ['client-side: e2e − infer − encode', ms(p.stages.overhead.p50), ms(p.stages.overhead.p99)],
    ['bare GET /healthz round trip (same client, one keep-alive connection)', rtt ? ms(rtt.p50) : '–', rtt ? ms(rtt.p99) : '–'],
    ['client-side − /healthz (what a decode adds over any request: body transfer, routing, stages outside `total`)', rtt ? ms(p.stages.overhead.p50 - rtt.p50) : '–', '–'],
  ];
  const out = [`### ${m.label}: overhead at concurrency 1 (${p.format}, ${p.ok} requests)`, '', table(['figure', 'p50', 'p99'], rows)];
  const delay = m.delayCheck ?? (m.zeroDelay ? { delayMs: 0, phase: m.zeroDelay } : undefined);
  if (delay) {
    const d = delay.phase;
    out.push('', `Same phase with MAX_QUEUE_DELAY_MS=${delay.delayMs}: client-side overhead p50 ${ms(d.stages.overhead.p50)}` +
      (d.stages.serverOverhead ? `, server-side ${ms(d.stages.serverOverhead.p50)}` : '') +
      `, queue p50 ${ms(d.stages.queue.p50)} (vs ${ms(p.stages.queue.p50)} in this run's setting), ${ips(d.imagesPerSec)} vs ${ips(p.imagesPerSec)} images/s.`);
  }
  return out;
}

function burstPart(m: ModelResult, maxBatch: number): string[] {
  if (!m.bursts?.length) return [];
  const rows = m.bursts.map((b) => {
    const mismatch = b.runs.filter((r) => r.metrics && r.metrics.batches !== r.sizes.length).length;
    const metrics = b.runs.some((r) => r.metrics)
      ? b.runs.map((r) => (r.metrics ? `${r.metrics.batches}/${r.metrics.samples}` : '–')).join(' ')
      : '– (no batch counters)';
    return [`${b.size} → ${burstDistribution(b)}`, metrics, mismatch ? `**${mismatch} run(s) disagree**` : 'yes',
      ms(Math.max(...b.runs.map((r) => r.spanMs))), b.runs.reduce((a, r) => a + r.errors, 0)];
  });
  return [`### ${m.label}: simultaneous bursts at an idle service (MAX_BATCH_SIZE=${maxBatch})`, '',
    `Each burst: N requests sent in one tick on N pre-opened keep-alive connections, ${m.bursts[0]!.runs.length} times, 300 ms idle before each. ` +
    'Batch sizes in the order the batches started, from Server-Timing (the requests of one batch share its `infer` value and start); ' +
    'metrics = `latent_decoder_batches_total` / `batch_samples_total` deltas over each burst (batches/samples), which agree when they count as many batches.', '',
    table(['burst → batch sizes', 'metrics per run', 'agree', 'slowest burst (first send → last answer)', 'errors'], rows)];
}

function instancePart(m: ModelResult): string[] {
  if (!m.instances) return [];
  const { concurrency, variants } = m.instances;
  const rows = variants.map((v) => {
    const p = v.phase;
    const name = `MODEL_INSTANCES=${v.instances} × ORT_INTRA_OP_THREADS=${v.intraOpThreads}`;
    if (!p) return [name, '–', '–', '–', '–', '–', '–', v.skipped ?? 'not run'];
    return [name, ips(p.imagesPerSec), ms(p.latency.p50), ms(p.latency.p99), `${f2(p.meanBatch.value)}${p.meanBatch.source === 'metrics' ? '' : '*'}`,
      f(p.cpu.servicePct, 0), v.loggedInstances ?? '–', errorsText(p.errors)];
  });
  const out = [`### ${m.label}: one instance × 2 intra-op threads against 2 × 1 (JPEG, c=${concurrency})`, '',
    table(['variant', 'images/s', 'p50', 'p99', 'mean batch', 'svc CPU %', 'instances (service log)', 'errors'], rows)];
  if (variants.some((v) => v.phase && v.loggedInstances === undefined)) {
    out.push('', '"instances (service log)" is – where the service logged no instance count: a build without MODEL_INSTANCES ignores the ' +
      'variable, and then both rows ran one instance (differing only in intra-op threads).');
  }
  return out;
}

function warmupPart(m: ModelResult, provider: string): string[] {
  if (!m.warmups?.length) return [];
  const rows = m.warmups.map((w) => [
    `\`${w.sizes}\``, ms(w.startupMs),
    w.metricSeconds ? Object.entries(w.metricSeconds).map(([k, v]) => `${k}: ${f2(v)} s`).join(', ') : '– (no metric)',
    w.logged.length ? w.logged.map((l) => `${l.model ? `${l.model}: ` : ''}${l.msg}${l.shapes !== undefined ? ` ${JSON.stringify(l.shapes)}` : ''}${l.ms !== undefined ? ` ${ms(l.ms)}` : ''}`).join('; ') : '– (no warm-up line)',
    w.readyLineMs ? Object.entries(w.readyLineMs).map(([k, v]) => `${k}: ${ms(v)}`).join(', ') : '–',
  ]);
  return [`### ${m.label}: warm-up (${provider})`, '',
    'On CUDA the service warms every batch size 1..MAX_BATCH_SIZE at each WARMUP_LATENT_SIZES shape (cuDNN plans per shape); on the CPU one small run. ' +
    'The first row is the measured service, the others were started only to time their warm-up.', '',
    table(['WARMUP_LATENT_SIZES', 'start → /readyz 200', '`latent_decoder_model_warmup_seconds`', 'logged warm-up', '"ready" line warmupMs'], rows)];
}

function taesdPart(r: BenchResult): string[] {
  const taesd = r.models.find((m) => m.key === 'taesd');
  if (!taesd) return [];
  const kl = r.models.find((m) => m.key === 'large');
  const at = (m: ModelResult | undefined, c: number): PhaseResult | undefined => m?.phases.find((p) => !p.label && p.format === 'jpeg' && p.concurrency === c);
  const row = (name: string, m: ModelResult | undefined): (string | number)[] => {
    if (!m) return [name, '–', '–', '–', 'not in this run'];
    if (m.skipped) return [name, '–', '–', '–', m.skipped];
    const [a, b] = [at(m, 1), at(m, 8)];
    return [name, ips(a?.imagesPerSec), ips(b?.imagesPerSec), ms(a?.latency.p50), ''];
  };
  const out = [`### TAESD against the KL decoder, 64×64 latents → 512² (${r.settings.EXECUTION_PROVIDERS ?? 'cpu'}, JPEG)`, '',
    table(['decoder', 'images/s c=1', 'images/s c=8', 'p50 c=1', 'note'], [row('KL (SD VAE, ch=128)', kl), row('TAESD (ch=64)', taesd)])];
  const [t, k] = [at(taesd, 8), at(kl, 8)];
  if (t && k) out.push('', `TAESD ÷ KL at c=8: ×${f(t.imagesPerSec / k.imagesPerSec)}.`);
  return out;
}

export function scaleSection(r: BenchResult): string {
  const maxBatch = Number(r.settings.MAX_BATCH_SIZE ?? 8);
  const provider = r.settings.EXECUTION_PROVIDERS ?? 'cpu';
  const parts: string[][] = [];
  for (const m of r.models.filter((x) => !x.skipped)) {
    parts.push(overheadPart(m), burstPart(m, maxBatch), instancePart(m), warmupPart(m, provider));
  }
  parts.push(taesdPart(r));
  const body = parts.filter((p) => p.length).map((p) => p.join('\n'));
  if (!body.length) return '';
  return ['## Latency and scale-up', '', `MAX_QUEUE_DELAY_MS: \`${r.settings.MAX_QUEUE_DELAY_MS ?? '5 (older run)'}\`.`, '', body.join('\n\n')].join('\n');
}
