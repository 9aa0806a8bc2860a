// The one copy of two helpers that the tests, the benchmark (bench/) and scripts/ all need: a
// seeded PRNG and a free TCP port. They live here, beside the other test helpers, so that
// production code (src/) never imports bench or script code; bench/ and scripts/ import this file.
import net from 'node:net';

/** mulberry32: small, seedable, and the same sequence on every platform. Uniform in [0, 1). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Standard-normal values from a uniform source (Box-Muller, one draw pair per value). */
export function gaussian(next: () => number): () => number {
  return () => Math.sqrt(-2 * Math.log(1 - next())) * Math.cos(2 * Math.PI * next());
}

/**
 * A port that was free a moment ago on 127.0.0.1 (the OS picks it; the listener is closed before
 * returning, so a process started next can bind it).
 */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
    s.on('error', reject);
  });
}
