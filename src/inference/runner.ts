// The main thread's side of the inference worker: starts it, waits for the model to load and warm
// up, and turns runs into promises. A worker that dies fails its pending runs and is restarted.
import { Worker } from 'node:worker_threads';
import type { ModelIo, OutputName, RunOutputs, WorkerInit, WorkerMessage } from './protocol.js';

export interface RunResult {
  outputs: RunOutputs;
  /** Time inside session.run, measured in the worker. */
  ms: number;
}

export interface RunnerLogger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

// Under tsx (tests, `npm run dev`) the worker is the .ts source; built, it is the .js next to this.
const FROM_SOURCE = import.meta.url.endsWith('.ts');
const WORKER_URL = new URL(FROM_SOURCE ? './worker.ts' : './worker.js', import.meta.url);

function newWorker(workerData: WorkerInit): Worker {
  if (!FROM_SOURCE) return new Worker(WORKER_URL, { workerData });
  // Node 20 does not apply loader hooks to a worker's entry file: register tsx, then import it.
  const api = import.meta.resolve('tsx/esm/api');
  const boot = `import(${JSON.stringify(api)}).then((t) => { t.register(); return import(${JSON.stringify(WORKER_URL.href)}); })`;
  return new Worker(boot, { eval: true, workerData });
}

export class InferenceRunner {
  private worker!: Worker;
  private nextId = 0;
  private readonly pending = new Map<number, { resolve: (r: RunResult) => void; reject: (e: Error) => void }>();
  private closing = false;
  /** False while the worker (re)starts or after it failed to: runs are refused, not left hanging. */
  private alive = false;
  io!: ModelIo;

  private constructor(private readonly init: WorkerInit, private readonly log: RunnerLogger) {}

  static async start(init: WorkerInit, log: RunnerLogger): Promise<InferenceRunner> {
    const r = new InferenceRunner(init, log);
    r.io = await r.spawn();
    return r;
  }

  private spawn(): Promise<ModelIo> {
    return new Promise((resolve, reject) => {
      const w = newWorker(this.init);
      this.worker = w;
      let ready = false;
      w.on('message', (m: WorkerMessage) => {
        switch (m.type) {
          case 'ready':
            ready = true;
            this.alive = true;
            if (this.closing) w.postMessage({ type: 'close' }); // closed while it restarted
            resolve(m.io);
            break;
          case 'failed': reject(new Error(m.message)); void w.terminate(); break;
          case 'log': this.log[m.level](m.data ?? {}, m.msg); break;
          case 'result': this.settle(m.id)?.resolve({ outputs: m.outputs, ms: m.ms }); break;
          case 'error': this.settle(m.id)?.reject(new Error(m.message)); break;
        }
      });
      w.on('error', (e) => {
        if (!ready) reject(e);
        this.log.error({ err: e }, 'inference worker crashed');
      });
      w.on('exit', (code) => {
        this.alive = false;
        const err = new Error(`the inference worker exited (code ${code})`);
        for (const id of [...this.pending.keys()]) this.settle(id)?.reject(err);
        if (!ready) reject(err);
        else if (!this.closing) {
          this.log.warn({ code }, 'restarting the inference worker');
          this.spawn().then((io) => { this.io = io; }, (e: unknown) => this.log.error({ err: e }, 'the inference worker did not restart'));
        }
      });
    });
  }

  private settle(id: number): { resolve: (r: RunResult) => void; reject: (e: Error) => void } | undefined {
    const p = this.pending.get(id);
    this.pending.delete(id);
    return p;
  }

  /** Runs the model on float32 NCHW latents; `data`'s buffer is transferred (unusable after). */
  run(data: Float32Array, dims: [number, number, number, number], fetch: OutputName[]): Promise<RunResult> {
    if (this.closing) return Promise.reject(new Error('the inference worker is closed'));
    if (!this.alive) return Promise.reject(new Error('the inference worker is restarting'));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      const buffer = data.buffer as ArrayBuffer;
      this.worker.postMessage({ type: 'run', id, data: buffer, dims, fetch }, [buffer]);
    });
  }

  /**
   * Lets the worker finish its run and exit. Worker.terminate() during a native ORT run aborts the
   * whole process (seen: "terminate called after throwing an instance of 'Napi::Error'").
   */
  async close(): Promise<void> {
    this.closing = true;
    if (!this.alive) return;
    const exited = new Promise((resolve) => this.worker.once('exit', resolve));
    this.worker.postMessage({ type: 'close' });
    await exited;
  }
}
