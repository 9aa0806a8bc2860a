// The one seeded PRNG of the project: /encode's sample_mode=sample draws its noise from it, and
// the tests, the benchmark and scripts/ (through test/helpers/shared.ts) their seeded data.

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
