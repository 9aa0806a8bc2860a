// The helpers that the tests, the benchmark (bench/) and scripts/ all need: a seeded PRNG (its one
// copy is src/tensor/random.ts, which /encode's sampling uses too) and a free TCP port. They live
// here, beside the other test helpers, so that production code (src/) never imports bench or
// script code; bench/ and scripts/ import this file.
import net from 'node:net';

export { gaussian, mulberry32 } from '../../src/tensor/random.js';

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
