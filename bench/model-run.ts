// One model's part of the run, as its plan asks: the raw ceiling, then its service (load phases,
// /healthz prober, bare /healthz round trip, bursts, soak), then the services started only for a
// comparison (another MAX_QUEUE_DELAY_MS, MODEL_INSTANCES × ORT_INTRA_OP_THREADS, warm-up shapes).
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { scrape, warmupFromLog, warmupSecondsOf } from './metrics.js';
import { burstPhase, healthzRttPhase, loadPhase, soakPhase } from './phases.js';
import { ensureModel } from './plans.js';
import { log, ROOT, runChild, TMP, TSX, waitQuiet, withService, type Service } from './proc.js';
import type { RawResult } from './raw-ort.js';
import { gaussianLatents } from './stats.js';
import type { InstanceVariant, ModelPlan, ModelResult, WarmupInfo } from './types.js';

interface RunOptions { dist: boolean }

/** Warm-up as the service reports it: the metric now (while it runs), the log lines later. */
async function warmupMetric(svc: Service): Promise<Record<string, number> | undefined> {
  return warmupSecondsOf(await scrape(svc.origin));
}

function warmupInfo(env: Record<string, string>, svc: Service, metricSeconds: Record<string, number> | undefined): WarmupInfo {
  const l = warmupFromLog(svc.logFile);
  return { sizes: env.WARMUP_LATENT_SIZES ?? '(unset: service default)', startupMs: svc.startupMs, metricSeconds, logged: l.logged, readyLineMs: l.readyLineMs };
}

export async function runModel(plan: ModelPlan, baseEnv: Record<string, string>, o: RunOptions): Promise<ModelResult> {
  const env: Record<string, string> = { ...baseEnv, ...plan.env, MODEL_PATH: plan.path, REQUEST_TIMEOUT_MS: String(plan.timeoutMs) };
  const mr: ModelResult = { key: plan.key, label: plan.label, path: relative(ROOT, plan.path), side: plan.side, imageSide: plan.side * 8, note: plan.note, phases: [], serviceEnv: env };
  const built = await ensureModel(plan);
  if (!built.ok) { mr.skipped = built.why; log(`skipping ${plan.key}: ${built.why}`); return mr; }
  const bodyDir = join(TMP, 'bodies');
  mkdirSync(bodyDir, { recursive: true });
  const bodyFile = join(bodyDir, `latents-1x4x${plan.side}x${plan.side}.f32`);
  const lat = gaussianLatents(4 * plan.side * plan.side, 42);
  writeFileSync(bodyFile, Buffer.from(lat.buffer, lat.byteOffset, lat.byteLength));
  const common = { model: plan.key, side: plan.side, bodyFile, timeoutMs: plan.timeoutMs };

  // 1. raw ceiling, alone on the machine (as far as this benchmark goes)
  if (plan.rawBatches.length) {
    await waitQuiet([]);
    log(`${plan.key}: raw ORT, batches ${plan.rawBatches.join(',')}`);
    const rawOut = join(TMP, `raw-${plan.key}.json`);
    const rawArgs = [...TSX, 'bench/raw-ort.ts', '--model', plan.path, '--side', String(plan.side), '--batches', plan.rawBatches.join(','),
      '--min-iters', String(plan.raw.minIters), '--max-iters', String(plan.raw.maxIters), '--min-seconds', String(plan.raw.minSeconds), '--warm', plan.raw.warm,
      '--out', rawOut, ...(plan.rawFloat ? ['--float'] : [])];
    const rr = await runChild(rawArgs, { ...process.env, ...env }, join(TMP, `raw-${plan.key}.stdout`));
    if (rr.code !== 0) throw new Error(`bench/raw-ort.ts exited with code ${rr.code}`);
    mr.raw = JSON.parse(readFileSync(rawOut, 'utf8')) as RawResult;
  }

  // 2. the service
  log(`${plan.key}: starting the service`);
  let metricSeconds: Record<string, number> | undefined;
  const main = await withService(env, { dist: o.dist, tag: plan.key }, async (svc) => {
    mr.startupMs = svc.startupMs;
    metricSeconds = await warmupMetric(svc);
    if (plan.key === 'large') {
      // the CPU service warms up on 8×8 latents; the first 64×64 run plans and allocates
      await loadPhase(svc, { ...common, format: 'jpeg', concurrency: 1, warmup: 0, min: 1, max: 1, seconds: 0, probe: false, label: 'shape-warmup' });
    }
    for (const format of plan.formats) {
      for (const c of plan.levels) {
        const probe = !!plan.probeAt && !plan.probeAt.dedicated && plan.probeAt.format === format && plan.probeAt.concurrency === c;
        mr.phases.push(await loadPhase(svc, { ...common, format, concurrency: c, ...plan.phase(c), probe }));
      }
    }
    if (plan.probeAt?.dedicated) {
      const c = plan.probeAt.concurrency;
      mr.probePhase = await loadPhase(svc, { ...common, format: plan.probeAt.format, concurrency: c, ...plan.phase(c), seconds: plan.probeAt.seconds ?? 10, probe: true, label: 'healthz' });
    }
    if (plan.healthzRtt) mr.healthzRtt = await healthzRttPhase(svc, { model: plan.key, requests: plan.healthzRtt.requests });
    if (plan.bursts) {
      mr.bursts = [];
      for (const size of plan.bursts.sizes) mr.bursts.push(await burstPhase(svc, { ...common, size, repeats: plan.bursts.repeats }));
    }
    if (plan.soakRequests > 0) {
      mr.soak = await soakPhase(svc, { ...common, requests: plan.soakRequests, concurrency: plan.soakConcurrency });
    }
    return svc;
  });
  mr.warmups = [warmupInfo(env, main, metricSeconds)];

  // 3. comparisons, each on a service of its own
  if (plan.delayCheckMs !== undefined && env.MAX_QUEUE_DELAY_MS !== String(plan.delayCheckMs)) {
    const delayMs = plan.delayCheckMs;
    log(`${plan.key}: diagnostic — c=1 with MAX_QUEUE_DELAY_MS=${delayMs}`);
    const phase = await withService({ ...env, MAX_QUEUE_DELAY_MS: String(delayMs) }, { dist: o.dist, tag: `${plan.key}-delay${delayMs}` },
      (svc) => loadPhase(svc, { ...common, format: 'jpeg', concurrency: 1, ...plan.phase(1), probe: false, label: `delay${delayMs}` }));
    mr.delayCheck = { delayMs, phase };
  }
  if (plan.instances) {
    const { concurrency, shape } = plan.instances;
    const variants: InstanceVariant[] = [];
    for (const v of plan.instances.variants) {
      const tag = `${v.instances}x${v.intraOpThreads}`;
      log(`${plan.key}: MODEL_INSTANCES=${v.instances} ORT_INTRA_OP_THREADS=${v.intraOpThreads}, JPEG c=${concurrency}`);
      const vEnv = { ...env, MODEL_INSTANCES: String(v.instances), ORT_INTRA_OP_THREADS: String(v.intraOpThreads) };
      try {
        const { phase, svc } = await withService(vEnv, { dist: o.dist, tag: `${plan.key}-inst${tag}` }, async (svc) =>
          ({ svc, phase: await loadPhase(svc, { ...common, format: 'jpeg', concurrency, ...shape, probe: false, label: `inst${tag}` }) }));
        variants.push({ ...v, phase, loggedInstances: warmupFromLog(svc.logFile).instances });
      } catch (e) {
        // a service that refuses the variable must not cost the rest of the run
        variants.push({ ...v, skipped: (e as Error).message.split('\n')[0] });
      }
    }
    mr.instances = { concurrency, variants };
  }
  for (const sizes of plan.warmupShapes ?? []) {
    log(`${plan.key}: warm-up only, WARMUP_LATENT_SIZES=${sizes}`);
    const wEnv = { ...env, WARMUP_LATENT_SIZES: sizes };
    try {
      const { svc, metric } = await withService(wEnv, { dist: o.dist, tag: `${plan.key}-warmup-${sizes.replace(/,/g, '_')}` }, async (svc) => ({ svc, metric: await warmupMetric(svc) }));
      mr.warmups.push(warmupInfo(wEnv, svc, metric));
    } catch (e) {
      mr.warmups.push({ sizes, startupMs: NaN, logged: [{ msg: `failed to start: ${(e as Error).message.split('\n')[0]}` }] });
    }
  }
  return mr;
}
