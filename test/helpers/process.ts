// The service as a real process on a real socket, for what only a process shows: signals,
// draining, exit codes, start-up without configuration.
import { spawn, type ChildProcess } from 'node:child_process';
import type { TestContext } from 'node:test';
import { freePort } from './shared.js';

export interface ServiceProcess {
  child: ChildProcess;
  url: string;
  output: () => string;
  exited: Promise<number | null>;
}

/** Starts `node <args>` with env (PORT set) and waits until /readyz answers 200. */
export async function startProcess(t: TestContext, args: string[], env: Record<string, string>, opts: { cwd: string; readyMs?: number }): Promise<ServiceProcess> {
  const port = await freePort();
  const child = spawn(process.execPath, args, {
    cwd: opts.cwd,
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', HOST: '127.0.0.1', PORT: String(port), WARMUP_LATENT_SIZES: '8x8', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  t.after(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  const url = `http://127.0.0.1:${port}`;
  const until = Date.now() + (opts.readyMs ?? 60_000);
  for (;;) {
    if (child.exitCode !== null) throw new Error(`the service exited with ${child.exitCode}:\n${out}`);
    if (Date.now() > until) throw new Error(`the service was not ready in time:\n${out}`);
    const ok = await fetch(`${url}/readyz`).then((r) => r.status === 200, () => false);
    if (ok) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  return { child, url, output: () => out, exited };
}
