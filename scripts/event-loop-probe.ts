// How long a request can hold the service's event loop: starts the service of a checkout (this
// one, or another given with --repo, e.g. a base commit) as a child process on the fixture
// decoder, and for each scenario probes /healthz every 10 ms from a worker thread (its own event
// loop, so the clients' work does not delay the probes) while 4 clients each send one request.
// No request runs the decoder, so what is measured is reading, parsing and refusing, not ORT
// competing for the CPU: the service waits up to MAX_QUEUE_DELAY_MS (60 s) for a fuller batch and
// its batches hold MAX_BATCH_SIZE=1024 samples (the queue holds 64), so an accepted request waits
// in the queue, after its body was read and parsed, until its deadline (X-Request-Timeout-Ms:
// DEADLINE_MS, long enough for any upload here) drops it with 504, unless the run-time estimate
// refuses it sooner. Deadlines count from a request's arrival, so the 1 ms deadline used before
// would now end each request 1 ms into its upload. Each row counts the batches run during it
// (from /metrics): anything but 0 means the measurement is void.
//   npx tsx scripts/event-loop-probe.ts [--repo DIR] [--only a,b,...] [--clients 4] [--deadline-ms 10000]
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Worker } from 'node:worker_threads';

const args = process.argv.slice(2);
const arg = (name: string, def: string): string => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && args[i + 1] ? args[i + 1]! : def;
};
const REPO = path.resolve(arg('repo', process.cwd()));
const CLIENTS = Number(arg('clients', '4'));
const ONLY = arg('only', '');
/** Each request's deadline (ms): its upload and parsing end well before, and no run can start. */
const DEADLINE_MS = Number(arg('deadline-ms', '10000'));

interface Scenario {
  id: string;
  what: string;
  url: string;
  type: string;
  body: () => Buffer;
}

const LATENT = 4 * 128 * 128; // floats per sample at the default MAX_LATENT_SIDE of 128

function base64Json(samples: number): Buffer {
  const bytes = Buffer.alloc(samples * LATENT * 4, 0x3e); // 0x3e3e3e3e: a finite float32
  return Buffer.from(`{"latents": "${bytes.toString('base64')}", "shape": [${samples}, 4, 128, 128]}`);
}

const SCENARIOS: Scenario[] = [
  { id: '0', what: 'no request (the machine\'s noise floor), 1 s', url: '', type: '', body: () => Buffer.alloc(0) },
  { id: 'a', what: 'largest accepted raw request: [64, 4, 128, 128] float32, 16 MiB', url: '/decode?shape=64,4,128,128', type: 'application/octet-stream',
    body: () => Buffer.alloc(64 * LATENT * 4, 0x3e) },
  { id: 'b', what: '45 MB JSON array', url: '/decode', type: 'application/json',
    body: () => Buffer.from(`[${'0.1234567,'.repeat(4_500_000)}0]`) },
  { id: 'c', what: '52 MB JSON object, 3 M keys', url: '/decode', type: 'application/json',
    body: () => Buffer.from(`{${Array.from({ length: 3_000_000 }, (_, i) => `"key_${String(i).padStart(8, '0')}":${i % 10}`).join(',')},"latents":"AAAA"}`) },
  { id: 'd', what: '64 MiB base64 JSON body ([191, 4, 128, 128], over the queue)', url: '/decode', type: 'application/json',
    body: () => base64Json(191) },
  { id: 'e', what: 'largest accepted JSON request: [64, 4, 128, 128] base64, 22 MB', url: '/decode', type: 'application/json',
    body: () => base64Json(64) },
];

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

async function startService(): Promise<{ url: string; stop: () => void }> {
  const port = await freePort();
  const models = mkdtempSync(path.join(os.tmpdir(), 'probe-models-'));
  const extra = (process.env.PROBE_NODE_ARGS ?? '').split(' ').filter(Boolean);
  const child = spawn(process.execPath, [...extra, '--import', 'tsx', 'src/server.ts'], {
    cwd: REPO,
    env: {
      PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', HOST: '127.0.0.1', PORT: String(port),
      MODEL_PATH: path.join(REPO, 'test/fixtures/sdvae-ch32/torch-export.onnx'), MODELS_DIR: models,
      EXECUTION_PROVIDERS: 'cpu', ORT_INTRA_OP_THREADS: '1', LOG_LEVEL: 'fatal',
      // A batch never fills (1024 samples, and 64 × 128² fits its area) and waits 60 s for more:
      // accepted requests reach their deadline in the queue, without a run.
      MAX_BATCH_SIZE: '1024', MAX_QUEUE_DELAY_MS: '60000',
    },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  const url = `http://127.0.0.1:${port}`;
  for (let i = 0; ; i++) {
    if (child.exitCode !== null) throw new Error(`the service exited with ${child.exitCode}`);
    if (await fetch(`${url}/readyz`).then((r) => r.status === 200, () => false)) break;
    if (i > 600) throw new Error('the service did not become ready in 60 s');
    await new Promise((r) => setTimeout(r, 100));
  }
  return { url, stop: () => { child.kill(process.env.PROBE_NODE_ARGS ? 'SIGINT' : 'SIGKILL'); rmSync(models, { recursive: true, force: true }); } };
}

// The prober: sequential GET /healthz, 10 ms apart, on its own event loop.
const PROBER = `
const { parentPort, workerData } = require('node:worker_threads');
const http = require('node:http');
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
const lat = [];
let stop = false;
parentPort.on('message', () => { stop = true; });
function probe() {
  if (stop) { parentPort.postMessage(lat); return; }
  const t0 = performance.now();
  http.get(workerData.url + '/healthz', { agent }, (res) => {
    res.resume();
    res.on('end', () => { lat.push(performance.now() - t0); setTimeout(probe, 10); });
  }).on('error', () => setTimeout(probe, 10));
}
probe();
`;

function send(url: string, s: Scenario, body: Buffer): Promise<number> {
  return new Promise((resolve) => {
    const req = http.request(`${url}${s.url}`, {
      method: 'POST',
      headers: { 'content-type': s.type, 'content-length': body.length, 'x-request-timeout-ms': String(DEADLINE_MS) },
      agent: false,
    }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('error', () => resolve(-1)); // a refusal that closes the connection mid-upload
    req.end(body);
  });
}

const quantile = (xs: number[], q: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))] ?? NaN;
};

/** Batches the service has run (all models), from /metrics. */
async function batchesRun(url: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  return [...text.matchAll(/^latent_decoder_batches_total\{[^}]*\} (\d+)$/gm)].reduce((a, m) => a + Number(m[1]), 0);
}

async function run(url: string, s: Scenario): Promise<string> {
  const body = s.body();
  const batches = await batchesRun(url);
  const worker = new Worker(PROBER, { eval: true, workerData: { url } });
  await new Promise((r) => setTimeout(r, 300)); // a few undisturbed probes first
  const t0 = performance.now();
  const statuses = s.url === ''
    ? (await new Promise((r) => setTimeout(r, 1000)), [])
    : await Promise.all(Array.from({ length: CLIENTS }, () => send(url, s, body)));
  const wall = performance.now() - t0;
  await new Promise((r) => setTimeout(r, 200));
  const lat = await new Promise<number[]>((resolve) => {
    worker.once('message', resolve);
    worker.postMessage('stop');
  });
  await worker.terminate();
  const counts = [...new Set(statuses)].map((c) => `${statuses.filter((x) => x === c).length}×${c === -1 ? 'reset' : c}`).join(' ');
  const runs = (await batchesRun(url)) - batches;
  return `| ${s.id} | ${s.what} | ${(body.length / 1e6).toFixed(1)} MB | ${counts} | ${runs} | ${Math.round(wall)} | ${lat.length} | ${quantile(lat, 0.99).toFixed(1)} | ${Math.max(...lat).toFixed(1)} |`;
}

const svc = await startService();
try {
  const rows: string[] = [];
  for (const s of SCENARIOS) {
    if (ONLY && !ONLY.split(',').includes(s.id)) continue;
    rows.push(await run(svc.url, s));
    process.stderr.write(`${rows.at(-1)}\n`);
  }
  process.stdout.write([
    `service: ${REPO}; ${CLIENTS} clients, one request each; /healthz probed every 10 ms; ${os.cpus().length} CPUs, load ${os.loadavg()[0]!.toFixed(1)}`,
    '',
    '| | request | body | answers | runs | wall ms | probes | /healthz p99 ms | /healthz max ms |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- |',
    ...rows,
    '',
  ].join('\n'));
} finally {
  svc.stop();
}
