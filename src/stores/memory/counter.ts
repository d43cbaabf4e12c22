import { LRUCache } from 'lru-cache'
import type { Counters, CounterStore, LimitDecision } from '../counter.js'

/**
 * In-process counters: exact for one gateway, bounded by `max_keys` per partition (least
 * recently used keys go first; an evicted key starts afresh, which errs on the side of letting
 * a request through). One map per partition: a flood of fresh keys on one route cannot evict
 * the buckets of another route's limits.
 */
export class MemoryCounterStore implements CounterStore {
  readonly kind = 'memory' as const
  readonly #maxKeys: number
  readonly #partitions = new Map<string, MemoryCounters>()

  constructor (maxKeys: number) {
    this.#maxKeys = maxKeys
  }

  counters (name: string, onEvict: () => void): Counters {
    let c = this.#partitions.get(name)
    if (c === undefined) {
      c = new MemoryCounters(this.#maxKeys, onEvict)
      this.#partitions.set(name, c)
    } else {
      // A reload compiles the limit again: its buckets stay, counted by the new table's metrics.
      c.onEvict = onEvict
    }
    return c
  }
}

/** The GCRA step, as the Redis store runs it in Lua. `tat`: theoretical arrival time. */
function gcraStep (
  tat: number,
  now: number,
  intervalMs: number,
  burst: number,
  cost: number,
): { decision: LimitDecision, tat: number } {
  const from = tat > now ? tat : now
  const next = from + intervalMs * cost
  const capacity = burst * intervalMs
  if (next - now > capacity) {
    return {
      tat: from,
      decision: {
        allowed: false,
        remaining: Math.max(0, Math.floor((capacity - (from - now)) / intervalMs)),
        resetMs: from - now,
        retryMs: next - now - capacity,
      },
    }
  }
  return {
    tat: next,
    decision: {
      allowed: true,
      remaining: Math.floor((capacity - (next - now)) / intervalMs),
      resetMs: next - now,
      retryMs: 0,
    },
  }
}

/** One partition's buckets in memory: GCRA arrival times and quota windows, each up to maxKeys. */
class MemoryCounters implements Counters {
  onEvict: () => void
  readonly #maxKeys: number
  // Made on first use: lru-cache allocates its max_keys-sized arrays up front (~13 ms and ~1.6 MB
  // per 100,000 keys here), and a limit uses one of the two.
  #tatCache: LRUCache<string, number> | null = null
  #usedCache: LRUCache<string, number> | null = null
  /** The quota's window, for telling a past window (harmless to drop) from the current one. */
  #windowMs = 0

  constructor (maxKeys: number, onEvict: () => void) {
    this.#maxKeys = maxKeys
    this.onEvict = onEvict
  }

  get #tat (): LRUCache<string, number> {
    // dispose runs on eviction only (noDisposeOnSet: not on the per-request update). A bucket
    // whose arrival time has passed is full, as a new one would be: dropping it loses nothing.
    return (this.#tatCache ??= new LRUCache({
      max: this.#maxKeys,
      noDisposeOnSet: true,
      dispose: (tat, _key, reason) => {
        if (reason === 'evict' && tat > Date.now()) this.onEvict()
      },
    }))
  }

  get #used (): LRUCache<string, number> {
    return (this.#usedCache ??= new LRUCache({
      max: this.#maxKeys,
      noDisposeOnSet: true,
      dispose: (_used, key, reason) => {
        if (
          reason === 'evict' &&
          Number(key.slice(key.lastIndexOf(':') + 1)) >= Math.floor(Date.now() / this.#windowMs)
        ) this.onEvict()
      },
    }))
  }

  gcra (key: string, intervalMs: number, burst: number, cost: number): LimitDecision {
    const now = Date.now()
    const { decision, tat } = gcraStep(this.#tat.get(key) ?? now, now, intervalMs, burst, cost)
    // No per-entry TTL: a TAT in the past is harmless (it reads as "full bucket"), and lru-cache
    // deleting the last expired entry clears (fills) its max_keys-sized arrays, which at one
    // busy key cost ~50 µs per request (BENCHMARKS.md). Old keys leave by LRU eviction.
    if (decision.allowed) this.#tat.set(key, tat)
    return decision
  }

  quota (key: string, limit: number, windowMs: number, cost: number): LimitDecision {
    const now = Date.now()
    this.#windowMs = windowMs
    const index = Math.floor(now / windowMs)
    const k = `${key}:${index}`
    const used = this.#used.get(k) ?? 0
    const resetMs = (index + 1) * windowMs - now
    if (cost === 0) {
      return used < limit
        ? { allowed: true, remaining: limit - used, resetMs, retryMs: 0 }
        : { allowed: false, remaining: 0, resetMs, retryMs: resetMs }
    }
    if (used + cost > limit) {
      return { allowed: false, remaining: Math.max(0, limit - used), resetMs, retryMs: resetMs }
    }
    // Windows are keyed by index; past windows leave by LRU eviction (see gcra for why no TTL).
    this.#used.set(k, used + cost)
    return { allowed: true, remaining: limit - used - cost, resetMs, retryMs: 0 }
  }

  charge (key: string, windowMs: number, amount: number): void {
    const now = Date.now()
    this.#windowMs = windowMs
    const index = Math.floor(now / windowMs)
    const k = `${key}:${index}`
    this.#used.set(k, (this.#used.get(k) ?? 0) + amount)
  }
}
