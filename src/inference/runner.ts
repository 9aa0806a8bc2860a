// The main thread's side of the inference worker: starts it, waits for the model to load and warm
// up, and turns runs into promises. A worker that dies fails the runs it had and is restarted with
// backoff; runs asked for meanwhile wait for the new worker (their request's deadline still
// applies, upstream). After `maxRestarts` failed restarts in a row the runner gives up and says so
// through `onFatal`: a model that cannot run must not leave the pod Ready. Closing cancels a
// restart that waits out its backoff and waits for a worker that is starting (never terminated
// mid-load), so no worker outlives close().
import { Worker } from 'node:worker_threads';
import './telemetry.cjs'; // ONNX Runtime telemetry off in the process before a worker loads it
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

export interface RunnerOptions {
  /** Failed restarts in a row before giving up. */
  maxRestarts?: number;
  /** First restart delay; doubles with each failure. */
  restartDelayMs?: number;
  /** Called once when the runner gives up on its worker. */
  onFatal?: (err: Error) => void;
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

/** The model is broken whatever it is given (a NaN weight, NaN on zero latents): the message says where. */
export class ModelDefectError extends Error {
  override name = 'ModelDefectError';
}

type Pending = { resolve: (r: RunResult) => void; reject: (e: Error) => void };

export class InferenceRunner {
  private worker!: Worker;
  private nextId = 0;
  private readonly pending = new Map<number, Pending>();
  private closing = false;
  /** False while the worker (re)starts or after it failed to. */
  private alive = false;
  private fatal: Error | undefined;
  /** Resolves when a restarting worker is ready (or the runner gave up or closed). */
  private restarted: Promise<void> = Promise.resolve();
  /** Ends the restart backoff now (close). */
  private wake: (() => void) | undefined;
  /** Resolves when the current worker has exited. */
  private exited: Promise<void> = Promise.resolve();
  io!: ModelIo;

  private constructor(private readonly init: WorkerInit, private readonly log: RunnerLogger, private readonly opts: RunnerOptions) {}

  static async start(init: WorkerInit, log: RunnerLogger, opts: RunnerOptions = {}): Promise<InferenceRunner> {
    const r = new InferenceRunner(init, log, opts);
    r.io = await r.spawn();
    return r;
  }

  /** Ready to run now: loaded, warmed up, not restarting, not given up. */
  get healthy(): boolean {
    return this.alive && !this.closing;
  }

  private spawn(): Promise<ModelIo> {
    return new Promise((resolve, reject) => {
      const w = newWorker(this.init);
      this.worker = w;
      this.exited = new Promise((done) => w.once('exit', () => done()));
      let ready = false;
      w.on('message', (m: WorkerMessage) => {
        switch (m.type) {
          case 'ready':
            ready = true;
            this.alive = true;
            if (this.closing) w.postMessage({ type: 'close' }); // closed while it restarted
            resolve(m.io);
            break;
          case 'failed': reject(m.defect ? new ModelDefectError(m.message) : new Error(m.message)); void w.terminate(); break;
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
        else if (!this.closing) this.restarted = this.restart();
      });
    });
  }

  private async restart(): Promise<void> {
    const max = this.opts.maxRestarts ?? 5;
    let delay = this.opts.restartDelayMs ?? 100;
    for (let attempt = 1; attempt <= max && !this.closing; attempt++) {
      this.log.warn({ attempt, delayMs: delay }, 'restarting the inference worker');
      await new Promise<void>((r) => {
        const timer = setTimeout(r, delay);
        this.wake = () => {
          clearTimeout(timer);
          r();
        };
      });
      this.wake = undefined;
      if (this.closing) return;
      try {
        this.io = await this.spawn();
        return;
      } catch (e) {
        this.log.error({ err: e, attempt }, 'the inference worker did not restart');
        delay *= 2;
      }
    }
    if (this.closing) return;
    this.fatal = new Error(`the inference worker did not restart after ${max} attempts`);
    this.opts.onFatal?.(this.fatal);
  }

  private settle(id: number): Pending | undefined {
    const p = this.pending.get(id);
    this.pending.delete(id);
    return p;
  }

  /** Runs the model on float32 NCHW latents; `data`'s buffer is transferred (unusable after). */
  run(data: Float32Array, dims: [number, number, number, number], fetch: OutputName[]): Promise<RunResult> {
    return this.request({ type: 'run', data: data.buffer, dims, fetch }, [data.buffer as ArrayBuffer]);
  }

  /**
   * Posts `message` with a new id (a run, or a video step: src/video/protocol.ts) and resolves
   * with the worker's result for that id; `transfer`'s buffers are moved, not copied.
   */
  async request(message: { type: string } & Record<string, unknown>, transfer: ArrayBuffer[]): Promise<RunResult> {
    if (!this.alive && !this.closing && !this.fatal) await this.restarted;
    if (this.closing) throw new Error('the inference worker is closed');
    if (this.fatal) throw this.fatal;
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.worker.postMessage({ ...message, id }, transfer);
    });
  }

  /** Posts a message that has no answer (a video stream's end); dropped while the worker is down. */
  notify(message: { type: string } & Record<string, unknown>): void {
    if (this.alive && !this.closing) this.worker.postMessage(message);
  }

  /**
   * Lets the worker finish the runs already posted and exit; resolves once no worker of this
   * runner is left. A restart waiting out its backoff is cancelled; a worker still loading is
   * told to close once it is ready (spawn's 'ready' handler) and waited for. Worker.terminate()
   * during a native ORT call aborts the whole process (seen: "terminate called after throwing
   * an instance of 'Napi::Error'").
   */
  async close(): Promise<void> {
    this.closing = true;
    this.wake?.();
    if (this.alive) this.worker.postMessage({ type: 'close' });
    await this.restarted;
    await this.exited;
  }
}
