/** The answer to one counter decision. Times are milliseconds from now. */
export interface LimitDecision {
  allowed: boolean
  /** Requests (or cost units) left after this one. */
  remaining: number
  /** Until the limit is back to full (bucket refilled, or the window ends). */
  resetMs: number
  /** Until a refused request would fit; 0 when allowed. */
  retryMs: number
}

/**
 * One partition's counters: each method is one atomic decision (on Redis, one Lua script and
 * one round trip). Results may be synchronous (memory) or a Promise (network): callers keep the
 * synchronous path free of promises.
 */
export interface Counters {
  /**
   * GCRA: `intervalMs` is the emission interval (period / rate); up to `burst` requests fit at
   * once. Charges `cost` only when allowed.
   */
  gcra(
    key: string,
    intervalMs: number,
    burst: number,
    cost: number,
  ): LimitDecision | Promise<LimitDecision>
  /**
   * Fixed window of `windowMs` (aligned to the epoch, so UTC minutes, hours and days): charges
   * `cost` when `used + cost <= limit`. With cost 0 it only looks: allowed while used < limit.
   */
  quota(
    key: string,
    limit: number,
    windowMs: number,
    cost: number,
  ): LimitDecision | Promise<LimitDecision>
  /** Add `amount` to the current window unconditionally (costs known only after the response). */
  charge(key: string, windowMs: number, amount: number): void | Promise<void>
}

/**
 * Shared counters: what rate limits and quotas count with (and what failure limits and
 * idempotency dedup are meant to). One contract suite (test/contract/counter-store.test.ts)
 * runs against every backend.
 */
export interface CounterStore {
  /**
   * The backend. Callers choose by it: a memory store drops buckets for room (worth a metric),
   * a remote one costs a round trip per decision (worth leasing tokens).
   */
  readonly kind: 'memory' | 'redis'
  /**
   * The counters of the partition named `name` (a limit), for its compiled policy to hold.
   * Keys are the caller's: the partition does not prefix them. In memory each partition has
   * its own bounded map, so one limit's keys can never push out another's; `onEvict` is called
   * for each bucket dropped for room while it still counted (the latest `onEvict` given for a
   * name is the one called). A remote store has one keyspace, which it expires itself.
   */
  counters(name: string, onEvict: () => void): Counters
}
