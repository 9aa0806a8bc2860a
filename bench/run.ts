// `npm run bench [-- --quick] [options]`: the service against raw ONNX Runtime, stage by stage.
//
// The service runs as a real child process (`node --import tsx src/server.ts`, from source, as
// `npm run dev` does; --dist runs `node dist/server.js` after `npm run build` instead) and is driven
// over HTTP by a separate load-generator process (bench/load.ts, undici), with a separate /healthz
// prober process (bench/probe.ts) and a burst process (bench/burst.ts). The raw ceiling runs in its
// own process (bench/raw-ort.ts) while nothing else of ours runs. Results:
// bench/results/<date>-<host>.{md,json,svg}. What each mode measures: bench/plans.ts.
//
// Options:
//   --quick                 CI smoke (~1-2 min): fixture model only, 2 levels, short phases
//   --gpu                   EXECUTION_PROVIDERS=cuda and GPU-sized phases for every model (see bench/gpu.sh)
//   --small PATH            the small (overhead) model; default test/fixtures/sdvae-ch32/torch-export.onnx
//   --large PATH            the full-width model; default bench/results/tmp/models/sdvae-ch128.onnx,
//                           built from seeded weights with scripts/make-seeded-vae.ts + convertCheckpoint
//   --small-side N          the small model's latent side (default 16: 128² images; 32 is the issue-17
//                           measurement at 256²)
//   --no-large              skip the full-width model
//   --only-large            run the full-width model only (the others' results are not produced)
//   --no-taesd              skip the TAESD row (full and GPU modes)
//   --models LIST           only these of small,large,taesd (e.g. large,taesd: the KL/TAESD comparison)
//   --env KEY=VALUE         extra environment for the service and the raw process (repeatable), e.g.
//                           --env ORT_INTRA_OP_THREADS=2 --env UV_THREADPOOL_SIZE=2
//   --no-profile            skip the --cpu-prof run of the service (full mode runs one)
//   --no-cpu-side           skip the CPU-side ceiling (bench/cpu-side.ts: the null decoder per answer format)
//   --dist                  run the built service (node dist/server.js; run `npm run build` first)
//   --out DIR               results folder (default bench/results)
//   --quiet-wait S          before each phase, wait until other processes use < 25 % of the cores,
//                           at most S seconds over the whole run (default 300 full, 15 quick)
import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { plans, type Mode } from './plans.js';
import { log, quietWaitedS, ROOT, SERVICE_DIST, SERVICE_SOURCE, setQuietBudget, TMP, withService } from './proc.js';
import { runModel } from './model-run.js';
import { loadPhase, metricsState } from './phases.js';
import { summarizeProfiles } from './profile.js';
import { renderMarkdown } from './report.js';
import { renderChart } from './chart.js';
import { cpuSideChart, runCpuSide } from './cpu-side.js';
import { machineInfo } from './sys.js';
import type { BenchResult, ModelResult } from './types.js';

async function main(): Promise<void> {
  const started = performance.now();
  const { values } = parseArgs({
    options: {
      quick: { type: 'boolean', default: false },
      small: { type: 'string', default: resolve(ROOT, 'test/fixtures/sdvae-ch32/torch-export.onnx') },
      large: { type: 'string', default: join(TMP, 'models/sdvae-ch128.onnx') },
      'small-side': { type: 'string' },
      'no-large': { type: 'boolean', default: false },
      'only-large': { type: 'boolean', default: false },
      'no-taesd': { type: 'boolean', default: false },
      models: { type: 'string' },
      env: { type: 'string', multiple: true, default: [] },
      'no-profile': { type: 'boolean', default: false },
      dist: { type: 'boolean', default: false },
      out: { type: 'string', default: join(ROOT, 'bench/results') },
      'quiet-wait': { type: 'string' },
      gpu: { type: 'boolean', default: false },
      'no-cpu-side': { type: 'boolean', default: false },
    },
  });
  const quick = values.quick;
  const mode: Mode = values.gpu ? 'gpu' : quick ? 'quick' : 'full';
  setQuietBudget(Number(values['quiet-wait'] ?? (quick ? 15 : 300)));
  mkdirSync(TMP, { recursive: true });
  const extraEnv = Object.fromEntries(values.env.map((kv) => {
    const i = kv.indexOf('=');
    if (i < 1) throw new Error(`--env ${kv}: expected KEY=VALUE`);
    return [kv.slice(0, i), kv.slice(i + 1)];
  }));
  if (values.dist && !existsSync(join(ROOT, SERVICE_DIST))) throw new Error(`--dist: ${SERVICE_DIST} is missing; run \`npm run build\` first`);
  // MAX_QUEUE_DELAY_MS is left to the service's default (0 since issue 11: an idle model runs a
  // request at once); --env MAX_QUEUE_DELAY_MS=N measures another value.
  // On a GPU the service batches up to 8; on the CPU its defaults (PERFORMANCE_HINT=throughput: two
  // sessions, one sample per run) are what is measured. The load's concurrency level and the raw
  // batch sizes compared stay at 8 either way (--env MAX_BATCH_SIZE=N changes all three).
  const baseEnv: Record<string, string> = {
    EXECUTION_PROVIDERS: values.gpu ? 'cuda' : 'cpu',
    ...(values.gpu ? { MAX_BATCH_SIZE: '8' } : {}),
    MAX_QUEUE_SIZE: '64',
    LOG_LEVEL: 'info',
    ...extraEnv,
  };
  const maxBatch = Number(baseEnv.MAX_BATCH_SIZE ?? 8);
  const machine = machineInfo();
  log(`machine: ${machine.cpuModel}, ${machine.cores} cores, ${machine.ramGiB} GiB, node ${machine.node}, ORT ${machine.ort}; mode ${mode}`);

  let modelPlans = plans(mode, resolve(values.small), resolve(values.large), maxBatch);
  if (values['small-side']) {
    const side = Number(values['small-side']);
    if (!Number.isInteger(side) || side < 1) throw new Error(`--small-side ${values['small-side']}: expected a positive integer`);
    for (const p of modelPlans) if (p.key === 'small') p.side = side;
  }
  if (values['no-large']) modelPlans = modelPlans.filter((p) => p.key !== 'large');
  if (values['only-large']) modelPlans = modelPlans.filter((p) => p.key === 'large');
  if (values['no-taesd']) modelPlans = modelPlans.filter((p) => p.key !== 'taesd');
  if (values.models) {
    const keep = new Set(values.models.split(',').map((k) => k.trim()));
    modelPlans = modelPlans.filter((p) => keep.has(p.key));
  }

  const models: ModelResult[] = [];
  for (const plan of modelPlans) models.push(await runModel(plan, baseEnv, { dist: values.dist }));

  // a CPU profile of the service under load (full mode): where the main thread's time goes
  let profile: BenchResult['profile'];
  const small = modelPlans.find((p) => p.key === 'small');
  if (!quick && !values['no-profile'] && small) {
    const dir = join(TMP, `cpu-prof-${Date.now()}`);
    mkdirSync(dir, { recursive: true });
    log('profile: service with --cpu-prof, c=1 and c=16 JPEG, 10 s each');
    const env = { ...baseEnv, MODEL_PATH: small.path, REQUEST_TIMEOUT_MS: '30000' };
    const bodyFile = join(TMP, 'bodies', `latents-1x4x${small.side}x${small.side}.f32`);
    const startupMs = await withService(env, { dist: values.dist, cpuProfDir: dir, tag: 'profile' }, async (svc) => {
      for (const c of [1, 16]) {
        await loadPhase(svc, { model: 'small', side: small.side, format: 'jpeg', concurrency: c, bodyFile, warmup: 8, min: 20, max: 5000, seconds: 10, timeoutMs: 30_000, probe: false, label: 'profiled' });
      }
      return svc.startupMs;
    });
    const files = readdirSync(dir).filter((f) => f.endsWith('.cpuprofile')).map((f) => join(dir, f));
    if (files.length) {
      const skip = startupMs + 500;
      profile = { ...summarizeProfiles(files, skip), note: `service run with --cpu-prof (${relative(ROOT, dir)}), fixture model, 10 s at c=1 then 10 s at c=16, JPEG; the first ${(skip / 1000).toFixed(1)} s (start-up to ready) left out` };
    }
  }

  // the CPU side's ceiling: the null decoder, per answer format (quick: JPEG and raw uint8 at c=8)
  const cpuSide = values['no-cpu-side'] || values.gpu ? undefined : await runCpuSide({ quick, env: extraEnv, dist: values.dist });

  const serviceCommand = values.dist ? `node ${SERVICE_DIST}` : `node --import tsx ${SERVICE_SOURCE}`;
  const result: BenchResult = {
    date: new Date().toISOString(),
    mode,
    machine,
    command: `npm run bench${process.argv.length > 2 ? ' -- ' + process.argv.slice(2).join(' ') : ''}`,
    serviceCommand,
    settings: {
      ...baseEnv,
      MAX_QUEUE_DELAY_MS: baseEnv.MAX_QUEUE_DELAY_MS ?? '(unset: service default)',
      ORT_INTRA_OP_THREADS: baseEnv.ORT_INTRA_OP_THREADS ?? (values.gpu ? '(unset: ORT default)' : '(unset: the service\'s CPU layout, CPUs ÷ MODEL_INSTANCES)'),
      ...(values.gpu ? {} : { PERFORMANCE_HINT: baseEnv.PERFORMANCE_HINT ?? '(unset: throughput — 2 sessions, MAX_BATCH_SIZE 1)' }),
      UV_THREADPOOL_SIZE: baseEnv.UV_THREADPOOL_SIZE ?? '(unset: libuv default 4)',
    },
    models,
    profile,
    cpuSide,
    durationS: (performance.now() - started) / 1000,
    quietWaitedS: quietWaitedS(),
    metricsAvailable: metricsState.seen,
  };
  const stem = `${result.date.slice(0, 10)}-${machine.hostname}${values.gpu ? '-gpu' : quick ? '-quick' : ''}`;
  mkdirSync(values.out, { recursive: true });
  const base = join(values.out, stem);
  writeFileSync(`${base}.json`, JSON.stringify(result, null, 1));
  writeFileSync(`${base}.svg`, renderChart(result));
  if (cpuSide) writeFileSync(`${base}-cpu.svg`, cpuSideChart(cpuSide));
  writeFileSync(`${base}.md`, renderMarkdown(result, `${stem}.svg`));
  log(`wrote ${relative(ROOT, base)}.{md,json,svg} in ${result.durationS.toFixed(0)} s`);
}

main().then(() => process.exit(0), (e: unknown) => {
  process.stderr.write(`bench failed: ${(e as Error).stack ?? String(e)}\n`);
  process.exit(1);
});
