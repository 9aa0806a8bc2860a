// What the batcher has measured of its runs: how long a run of k samples under a key takes, and how
// fast the model works through queued cost (for Retry-After). Pure; the clock is injected.
//
// Run times are kept per key (one latent size, so one cost per sample) and per batch size, each an
// exponentially weighted mean, and read as a lower bound that decays with age: a run of b samples
// takes at least what a run of m ≤ b took (more samples never run faster) and at least m's time ×
// b/m for m > b (a batch amortises, so a sample alone costs no less than its share of a batch).
// A measurement loses half its weight every `halfLifeMs`, so a slow spell cannot refuse work
// forever: the bound shrinks until a run happens and measures again. Used only to drop a request
// that, starting now on a free instance, could not finish before its deadline (batcher.ts).

/** Weight of the newest run in a mean. */
const EWMA = 0.3;
/** Keys remembered (latent sizes); the least recently measured is forgotten beyond. */
const MAX_KEYS = 256;

interface Measured {
  ms: number;
  /** When it was last updated (the injected clock's ms). */
  at: number;
}

/** A run-time bound and what it was derived from, for messages. */
export interface RunEstimate {
  /** The bound, ms. */
  ms: number;
  /** The batch size it was measured on. */
  fromSampleCount: number;
  /** That batch size's mean run time, ms, before decay. */
  measuredMs: number;
  /** Age of that measurement, ms. */
  ageMs: number;
}

export interface EstimateOptions {
  now: () => number;
  /** Half-life of a measurement's weight, ms. */
  halfLifeMs?: number;
  /** Runs that proceed at once (model instances): the model's rate is one run's × this. */
  concurrency?: number;
}

export class RunEstimates {
  private readonly byKey = new Map<string, Map<number, Measured>>();
  private readonly halfLifeMs: number;
  private readonly concurrency: number;
  /** Queued cost the model works through per ms, over all keys. 0: nothing measured yet. */
  private costPerMs = 0;

  constructor(private readonly opts: EstimateOptions) {
    this.halfLifeMs = opts.halfLifeMs ?? 60_000;
    this.concurrency = opts.concurrency ?? 1;
  }

  /** A run of `sampleCount` samples under `key`, each of cost `cost`, took `ms`. */
  record(key: string, sampleCount: number, cost: number, ms: number): void {
    const now = this.opts.now();
    let sizes = this.byKey.get(key);
    if (sizes) this.byKey.delete(key); // re-inserted last: Map order is recency
    else sizes = new Map();
    this.byKey.set(key, sizes);
    if (this.byKey.size > MAX_KEYS) this.byKey.delete(this.byKey.keys().next().value!);
    const prev = sizes.get(sampleCount);
    sizes.set(sampleCount, { ms: prev ? prev.ms + EWMA * (ms - prev.ms) : ms, at: now });
    const rate = ((sampleCount * cost) / Math.max(ms, 0.001)) * this.concurrency;
    this.costPerMs = this.costPerMs === 0 ? rate : this.costPerMs + EWMA * (rate - this.costPerMs);
  }

  /**
   * The least a run of `sampleCount` samples under `key` is expected to take, from the runs
   * measured under that key (see the file comment); undefined when none was.
   */
  runMs(key: string, sampleCount: number): RunEstimate | undefined {
    const sizes = this.byKey.get(key);
    if (!sizes) return undefined;
    const now = this.opts.now();
    let best: RunEstimate | undefined;
    for (const [m, { ms, at }] of sizes) {
      const ageMs = Math.max(0, now - at);
      const decayed = ms * 0.5 ** (ageMs / this.halfLifeMs);
      const bound = m <= sampleCount ? decayed : (decayed * sampleCount) / m;
      if (!best || bound > best.ms) best = { ms: bound, fromSampleCount: m, measuredMs: ms, ageMs };
    }
    return best;
  }

  /**
   * Seconds until `cost` of queued work has run, at the measured rate, rounded up, at least 1;
   * 1 before any run was measured.
   */
  secondsFor(cost: number): number {
    if (this.costPerMs <= 0) return 1;
    return Math.max(1, Math.ceil(cost / this.costPerMs / 1000));
  }
}

/** `1 sample`, `8 samples`. */
export const describeCount = (n: number): string => (n === 1 ? '1 sample' : `${n} samples`);

/** The estimate in words: "at least 713 ms (a run of 8 samples took 5700 ms, measured 3 s ago)". */
export function describeEstimate(e: RunEstimate): string {
  const age = e.ageMs < 1000 ? `${Math.round(e.ageMs)} ms` : `${Math.round(e.ageMs / 1000)} s`;
  return `at least ${Math.round(e.ms)} ms (a run of ${describeCount(e.fromSampleCount)} took ${Math.round(e.measuredMs)} ms, measured ${age} ago)`;
}
