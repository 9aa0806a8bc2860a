// What the decoder weight readers (KL VAE, TAESD) share: a safetensors file whose canonical
// tensor names map to the file's own keys by a detected layout, with shape checks and typed reads.
import type { SafetensorsFile } from './safetensors.js';

/** Shapes compare equal when they differ only by trailing 1s: diffusers stores 1×1 attention convs as Linear [C, C]. */
export function sameShape(a: readonly number[], b: readonly number[]): boolean {
  const strip = (s: readonly number[]) => {
    let n = s.length;
    while (n > 0 && s[n - 1] === 1) n--;
    return s.slice(0, n).join(',');
  };
  return strip(a) === strip(b);
}

/** Runs `build` on a file it takes ownership of: the file is closed if building throws. */
export async function owning<T>(file: SafetensorsFile, build: () => T): Promise<T> {
  try {
    return build();
  } catch (err) {
    await file.close();
    throw err;
  }
}

export abstract class LayoutWeights {
  protected constructor(readonly file: SafetensorsFile) {}

  /** The key of a canonical weight in this file. */
  abstract key(canonical: string): string;

  get path(): string {
    return this.file.path;
  }

  /** Throws, naming the tensor and the file, unless the weight is present with the expected shape. */
  check(canonical: string, shape: readonly number[]): void {
    const key = this.key(canonical);
    const info = this.file.info(key);
    if (!info) throw new Error(`${this.path}: missing tensor ${key}`);
    if (!sameShape(info.shape, shape)) {
      throw new Error(`${this.path}: tensor ${key} has shape [${info.shape.join(', ')}], expected [${shape.join(', ')}]`);
    }
  }

  read(canonical: string, type: 'float32' | 'float16'): Promise<Float32Array | Uint16Array> {
    const key = this.key(canonical);
    return type === 'float32' ? this.file.readFloat32(key) : this.file.readFloat16(key);
  }

  close(): Promise<void> {
    return this.file.close();
  }
}
