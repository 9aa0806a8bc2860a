// Where the converter writes: the output path is checked before anything is read (an existing
// output must be a regular file; its folder must be on a filesystem that holds files, not /proc or
// /sys), its folders are made one at a time (Node's recursive mkdir spins for ever under /proc),
// and every file is written under a temporary name beside it and renamed, so a model repository
// never sees a partial model or config.
import { accessSync, constants } from 'node:fs';
import { lstat, mkdir, rename, rm, stat, statfs, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { kindOf, statOnce } from '../files.js';

// statfs f_type of the kernel's pseudo filesystems (linux/magic.h): they hold no files of ours
const PSEUDO_FS: Record<number, string> = { 0x9fa0: 'procfs', 0x62656572: 'sysfs', 0x1cd1: 'devpts', 0x27e0eb: 'cgroup', 0x63677270: 'cgroup2' };

/** The output path is not somewhere a model can be written. */
export class OutputPathError extends Error {
  override name = 'OutputPathError';
}

async function existing(p: string): Promise<boolean> {
  return lstat(p).then(() => true, () => false);
}

/**
 * Checks that `out` can be written as a file and makes its folder. An existing `out` must be a
 * regular file (a link followed once); the nearest existing folder above it must be a folder on a
 * real filesystem; missing folders are made one by one.
 * @throws OutputPathError naming the path and why; Node's EACCES/EROFS from mkdir
 */
export async function prepareOutput(out: string): Promise<void> {
  const file = path.resolve(out);
  if (await existing(file)) {
    const { target, stats } = await statOnce(file).catch((e: Error) => { throw new OutputPathError(`output ${e.message}`); });
    if (!stats.isFile()) throw new OutputPathError(`output ${file} is ${kindOf(stats)}${target === file ? '' : ` (a link to ${target})`}, not a regular file: choose another output path`);
  }
  const missing: string[] = [];
  let dir = path.dirname(file);
  while (!(await existing(dir))) {
    missing.unshift(dir);
    dir = path.dirname(dir);
  }
  const st = await stat(dir);
  if (!st.isDirectory()) throw new OutputPathError(`cannot write ${file}: ${dir} is ${kindOf(st)}, not a folder`);
  const fs = PSEUDO_FS[Number((await statfs(dir)).type)];
  if (fs) throw new OutputPathError(`cannot write ${file}: ${dir} is on ${fs}, a kernel filesystem that holds no model files: choose another output path`);
  for (const d of missing) await mkdir(d);
}

/**
 * Writes `file` through `write(partialPath)` and renames it into place; the partial file is
 * removed if writing throws.
 */
export async function writeAtomically<T>(file: string, write: (partial: string) => Promise<T>): Promise<T> {
  const partial = `${file}.partial`;
  try {
    const r = await write(partial);
    await rename(partial, file);
    return r;
  } catch (err) {
    await rm(partial, { force: true });
    throw err;
  }
}

/** Writes a small text file (config.json) atomically. */
export function writeTextAtomically(file: string, text: string): Promise<void> {
  return writeAtomically(file, (partial) => writeFile(partial, text));
}

const READS = new Set(['scandir', 'stat', 'lstat', 'readlink', 'access', 'read']);

/** Whether a failed syscall on `file` was reading it (an open of an existing file that this user cannot read). */
function wasRead(syscall: string | undefined, file: string | undefined): boolean {
  if (READS.has(syscall ?? '')) return true;
  if (syscall !== 'open' || !file) return false;
  try {
    accessSync(file, constants.R_OK);
    return false;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code !== 'ENOENT';
  }
}

/**
 * The hint for a filesystem error the person running the CLI can fix: permission denied or a
 * read-only filesystem names the path and the ways out; undefined for any other error.
 */
export function writeHint(err: unknown): string | undefined {
  const e = err as NodeJS.ErrnoException;
  if (e?.code !== 'EACCES' && e?.code !== 'EROFS' && e?.code !== 'EPERM') return undefined;
  const who = process.getuid ? `user ${process.getuid()}` : 'this user';
  const code = `${e.code}${e.syscall ? ` on ${e.syscall}` : ''}`;
  if (e.code !== 'EROFS' && wasRead(e.syscall, e.path)) {
    return `cannot read ${e.path ?? 'a file'}: it is not readable by ${who} (${code}); make it readable for that user or run as its owner`;
  }
  const folder = e.path ? path.dirname(e.path) : 'the output folder';
  const why = e.code === 'EROFS' ? 'is on a read-only filesystem' : `is not writable by ${who}`;
  return `cannot ${e.syscall === 'mkdir' ? 'create' : 'write'} ${e.path ?? 'the output'}: ${folder} ${why} (${code}). ` +
    'Mount it writable for that user (e.g. chown it to the service user), or choose another output path ' +
    '(convert: <out.onnx>; pull: --models-dir or MODELS_DIR, and HF_HOME for its download cache)';
}
