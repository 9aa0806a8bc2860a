// MP4 (H.264, yuv420p) and WebM (VP9) encoding with an ffmpeg binary, fed raw RGB frames on its
// stdin as they are decoded. The binary: FFMPEG_PATH, else the npm package @ffmpeg-installer/ffmpeg
// (an optional dependency whose platform package carries a static ffmpeg inside the tarball, so it
// installs with scripts skipped), else `ffmpeg` on PATH (Debian's ffmpeg package in an image).
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import type { Readable } from 'node:stream';

export type ContainerFormat = 'mp4' | 'webm';
const STDERR_KEPT = 4096;

function executable(file: string): boolean {
  try {
    accessSync(file, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** The ffmpeg binary to use, or undefined when there is none (see the file comment for the order). */
export function findFfmpeg(configured?: string): string | undefined {
  if (configured) return executable(configured) ? configured : undefined;
  try {
    const pkg = createRequire(import.meta.url)('@ffmpeg-installer/ffmpeg') as { path: string };
    if (executable(pkg.path)) return pkg.path;
  } catch {
    // not installed for this platform: try PATH
  }
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    const file = path.join(dir, 'ffmpeg');
    if (dir && executable(file)) return file;
  }
  return undefined;
}

export interface EncoderOptions {
  width: number;
  height: number;
  fps: number;
  format: ContainerFormat;
  /** 1-100 (higher is better); unset: x264's CRF 18, VP9's CRF 32. */
  quality?: number;
  /** Write a fragmented MP4 to `output` as frames arrive (frag_keyframe+empty_moov), instead of a file answered at the end. */
  fragmented: boolean;
}

/** 1-100 → a CRF: H.264's scale is 0-51, VP9's 0-63. */
function crf(format: ContainerFormat, quality?: number): number {
  const top = format === 'mp4' ? 51 : 63;
  if (quality === undefined) return format === 'mp4' ? 18 : 32;
  return Math.round(top - (quality / 100) * top);
}

/** One video being encoded: frames in (RGB24, height × width × 3 each), the container out. */
export class VideoEncoder {
  private readonly proc: ChildProcess;
  private readonly exited: Promise<number | null>;
  private stderr = '';
  /** The container as it is written (fragmented MP4 and WebM only). */
  readonly output: Readable | undefined;

  private constructor(bin: string, private readonly opts: EncoderOptions, private readonly dir: string | undefined) {
    // streamed: no lookahead and a keyframe every second, so a fragment leaves each second of video
    const live = opts.fragmented ? ['-tune', 'zerolatency', '-g', String(Math.max(1, Math.round(opts.fps)))] : [];
    const codec = opts.format === 'mp4'
      ? ['-c:v', 'libx264', '-preset', 'veryfast', ...live, '-crf', String(crf('mp4', opts.quality)), '-pix_fmt', 'yuv420p']
      : ['-c:v', 'libvpx-vp9', '-b:v', '0', '-crf', String(crf('webm', opts.quality)), '-deadline', 'realtime', '-cpu-used', '8', '-pix_fmt', 'yuv420p'];
    const out = opts.fragmented || opts.format === 'webm'
      ? [...(opts.format === 'mp4' ? ['-movflags', 'frag_keyframe+empty_moov+default_base_moof'] : []), '-flush_packets', '1', '-f', opts.format, 'pipe:1']
      : ['-movflags', '+faststart', '-f', 'mp4', path.join(dir!, 'out.mp4')];
    this.proc = spawn(bin, ['-hide_banner', '-loglevel', 'error', '-f', 'rawvideo', '-pix_fmt', 'rgb24',
      // no probing: ffmpeg would otherwise buffer 5 MB of frames before it starts
      '-s', `${opts.width}x${opts.height}`, '-r', String(opts.fps), '-probesize', '32', '-analyzeduration', '0', '-i', 'pipe:0', ...codec, ...out], { stdio: ['pipe', 'pipe', 'pipe'] });
    this.output = opts.fragmented || opts.format === 'webm' ? this.proc.stdout! : undefined;
    if (!this.output) this.proc.stdout!.resume();
    this.proc.stderr!.on('data', (d: Buffer) => { this.stderr = (this.stderr + d.toString()).slice(-STDERR_KEPT); });
    this.proc.stdin!.on('error', () => { /* reported by the exit code */ });
    this.exited = new Promise((resolve) => {
      this.proc.once('close', (code) => resolve(code));
      this.proc.once('error', (e) => { this.stderr += e.message; resolve(-1); });
    });
  }

  /** Starts ffmpeg for one video. */
  static async start(bin: string, opts: EncoderOptions): Promise<VideoEncoder> {
    const file = !opts.fragmented && opts.format === 'mp4';
    return new VideoEncoder(bin, opts, file ? await mkdtemp(path.join(os.tmpdir(), 'latent-decoder-mp4-')) : undefined);
  }

  /** Queues frames (RGB24, whole frames); resolves when ffmpeg can take more. */
  async write(frames: Uint8Array): Promise<void> {
    const stdin = this.proc.stdin!;
    if (stdin.destroyed) throw new Error(`ffmpeg stopped: ${this.stderr.trim() || 'no message'}`);
    if (!stdin.write(frames)) {
      await new Promise<void>((resolve) => {
        const done = (): void => { stdin.off('drain', done); stdin.off('close', done); resolve(); };
        stdin.on('drain', done);
        stdin.on('close', done);
      });
    }
  }

  /** Ends the input; resolves with the file's bytes (non-fragmented MP4) or an empty buffer. @throws when ffmpeg fails */
  async finish(): Promise<Buffer> {
    this.proc.stdin!.end();
    const code = await this.exited;
    try {
      if (code !== 0) throw new Error(`ffmpeg exited with code ${code}: ${this.stderr.trim() || 'no message'}`);
      return this.dir ? await readFile(path.join(this.dir, 'out.mp4')) : Buffer.alloc(0);
    } finally {
      if (this.dir) await rm(this.dir, { recursive: true, force: true });
    }
  }

  /** Stops ffmpeg (a failed or abandoned video) and removes its files. */
  async abort(): Promise<void> {
    this.proc.kill('SIGKILL');
    await this.exited;
    if (this.dir) await rm(this.dir, { recursive: true, force: true });
  }
}
