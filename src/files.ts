// Opening files the service did not write (models, configs, checkpoints) without trusting them:
// a regular file only, a symbolic link followed once (its target checked, chains and loops
// refused), a size bound checked before reading, and never an open() that can block — the type is
// checked first and the file is opened O_NONBLOCK, so a FIFO cannot hang the caller and a link to
// /dev/zero is not read for ever. Imports nothing of the service.
import { constants, type Stats } from 'node:fs';
import { lstat, open, readlink, type FileHandle } from 'node:fs/promises';
import path from 'node:path';

/** A path that is not a file the caller may read: the message names the path and why. */
export class FileRefusedError extends Error {
  constructor(readonly file: string, readonly reason: string) {
    super(`${file}: ${reason}`);
    this.name = 'FileRefusedError';
  }
}

/** What a non-regular file is, in words ("a FIFO", "a character device", ...). */
export function kindOf(st: Stats): string {
  if (st.isDirectory()) return 'a directory';
  if (st.isFIFO()) return 'a FIFO (named pipe)';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  if (st.isSocket()) return 'a socket';
  if (st.isSymbolicLink()) return 'a symbolic link';
  return st.isFile() ? 'a regular file' : 'not a regular file';
}

const size = (n: number): string => `${n} bytes${n >= 2 ** 20 ? ` (${(n / 2 ** 20).toFixed(1)} MiB)` : ''}`;

/**
 * The lstat of `file`, or of its target when it is a symbolic link (followed once: a link to a
 * link, which includes every loop, is refused). Resolves with the target's path and stats; a
 * missing path rejects with Node's ENOENT error.
 * @throws FileRefusedError for a link to a link
 */
export async function statOnce(file: string): Promise<{ target: string; stats: Stats }> {
  const st = await lstat(file);
  if (!st.isSymbolicLink()) return { target: file, stats: st };
  const target = path.resolve(path.dirname(file), await readlink(file));
  const tst = await lstat(target).catch((e: NodeJS.ErrnoException) => {
    throw new FileRefusedError(file, `a symbolic link to ${target}, which cannot be read (${e.code ?? e.message})`);
  });
  if (tst.isSymbolicLink()) throw new FileRefusedError(file, `a symbolic link to another link (${target}); links are followed once, so chains and loops are refused`);
  return { target, stats: tst };
}

/**
 * Checks that `file` is a regular file (a link followed once) of at most `maxBytes` bytes,
 * without opening it. `what` names the setting that bounds it, for the message.
 * @returns its size in bytes
 * @throws FileRefusedError naming the path and the reason; Node's ENOENT error when it is missing
 */
export async function checkRegularFile(file: string, maxBytes: number, what = 'the size limit'): Promise<number> {
  const { target, stats } = await statOnce(file);
  const via = target === file ? '' : ` (a link to ${target})`;
  if (!stats.isFile()) throw new FileRefusedError(file, `${kindOf(stats)}${via}, not a regular file`);
  if (stats.size > maxBytes) throw new FileRefusedError(file, `${size(stats.size)}${via}, over ${what} (${size(maxBytes)})`);
  return stats.size;
}

/**
 * Opens a regular file for reading after `checkRegularFile`; the open handle is checked again
 * (type and size) in case the path changed in between. The caller closes the handle.
 * @throws FileRefusedError, or Node's errors (ENOENT, EACCES)
 */
export async function openRegularFile(file: string, maxBytes: number, what?: string): Promise<FileHandle> {
  await checkRegularFile(file, maxBytes, what);
  const fh = await open(file, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY);
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new FileRefusedError(file, `${kindOf(st)}, not a regular file`);
    if (st.size > maxBytes) throw new FileRefusedError(file, `${size(st.size)}, over ${what ?? 'the size limit'} (${size(maxBytes)})`);
    return fh;
  } catch (e) {
    await fh.close();
    throw e;
  }
}

/**
 * Reads a whole regular file of at most `maxBytes` bytes (see `openRegularFile`).
 * @throws FileRefusedError, also when the file changes size while it is read
 */
export async function readRegularFile(file: string, maxBytes: number, what?: string): Promise<Buffer> {
  const fh = await openRegularFile(file, maxBytes, what);
  try {
    const { size: n } = await fh.stat();
    const buf = Buffer.allocUnsafe(n);
    let off = 0;
    while (off < n) {
      const { bytesRead } = await fh.read(buf, off, n - off, off);
      if (bytesRead === 0) break;
      off += bytesRead;
    }
    if (off !== n) throw new FileRefusedError(file, `shrank from ${n} to ${off} bytes while it was read`);
    return buf;
  } finally {
    await fh.close();
  }
}

/** True when `file` exists (as anything, a dangling link included). */
export async function exists(file: string): Promise<boolean> {
  return lstat(file).then(() => true, () => false);
}
