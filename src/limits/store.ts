import { LRUCache } from 'lru-cache'
import { redactUrl } from '../config/refs.js'
import type { StoreConfig } from '../config/schema.js'
import type { Logger } from '../observability/logger.js'

/** The answer to one limit check. Times are milliseconds from now. */
export interface LimitDecision {
  allowed: boolean
  /** Requests (or cost units) left after this one. */
  remaining: number
  /** Until the limit is back to full (bucket refilled, or the window ends). */
  resetMs: number
  /** Until a refused request would fit; 0 when allowed. */
  retryMs: number
}

/** One limit's counters: each method is one atomic decision. */
export interface LimitCounters {
  /**
   * GCRA: `intervalMs` is the emission interval (period / rate); up to `burst` requests fit at
   * once. Charges `cost` only when allowed.
   */
  gcra (key: string, intervalMs: number, burst: number, cost: number): LimitDecision | Promise<LimitDecision>
  /**
   * Fixed window of `windowMs` (aligned to the epoch, so UTC minutes, hours and days): charges
   * `cost` when `used + cost <= limit`. With cost 0 it only looks: allowed while used < limit.
   */
  quota (key: string, limit: number, windowMs: number, cost: number): LimitDecision | Promise<LimitDecision>
  /** Add `amount` to the current window unconditionally (costs known only after the response). */
  charge (key: string, windowMs: number, amount: number): void | Promise<void>
}

/**
 * Shared counters for rate limits and quotas. Each method is one atomic decision (on Redis, one
 * Lua script and one round trip). Results may be synchronous (memory) or a Promise (network).
 * One contract test suite (test/unit/limit-store.test.ts) runs against every implementation.
 */
export interface LimitStore extends LimitCounters {
  readonly kind: 'memory' | 'redis'
  readonly fingerprint: string
  /**
   * The counters of the limit named `limit`, for its compiled policy to hold. In memory each
   * limit has its own bounded map, so one limit's keys can never push out another's;
   * `onEvict` is called for each bucket dropped for room while it still counted (the latest
   * `onEvict` given for a name is the one called).
   */
  counters (limit: string, onEvict: () => void): LimitCounters
  start (): Promise<void>
  close (): Promise<void>
  /** A cached response (see src/cache), or null. */
  cacheGet (key: string): Buffer | null | Promise<Buffer | null>
  /** Keep `value` for `ttlMs`. */
  cacheSet (key: string, value: Buffer, ttlMs: number): void | Promise<void>
  /** For /readyz: a store that cannot answer leaves routes to their on_store_error. */
  status (): { status: 'ok' | 'unavailable', kind: string }
}

/** The GCRA step, shared by the memory store and (as Lua) the Redis one. `tat`: theoretical arrival time. */
export function gcraStep (tat: number, now: number, intervalMs: number, burst: number, cost: number): { decision: LimitDecision, tat: number } {
  const from = tat > now ? tat : now
  const next = from + intervalMs * cost
  const capacity = burst * intervalMs
  if (next - now > capacity) {
    return {
      tat: from,
      decision: { allowed: false, remaining: Math.max(0, Math.floor((capacity - (from - now)) / intervalMs)), resetMs: from - now, retryMs: next - now - capacity },
    }
  }
  return { tat: next, decision: { allowed: true, remaining: Math.floor((capacity - (next - now)) / intervalMs), resetMs: next - now, retryMs: 0 } }
}

/**
 * In-process counters: exact for one gateway, bounded by `max_keys` per limit (least recently
 * used keys go first; an evicted key starts afresh, which errs on the side of letting a request
 * through). One map per limit: a flood of fresh keys on one route cannot evict the buckets of
 * another route's limits.
 */
export class MemoryLimitStore implements LimitStore {
  readonly kind = 'memory' as const
  readonly fingerprint: string
  readonly #maxKeys: number
  readonly #limits = new Map<string, MemoryCounters>()
  /** For callers that name no limit (the contract tests): one more partition. */
  #anonymous: MemoryCounters | null = null
  /** Cached responses, bounded by bytes (no up-front allocation without `max`). */
  readonly #responses: LRUCache<string, Buffer>

  constructor (cfg: Extract<StoreConfig, { kind: 'memory' }>) {
    this.fingerprint = JSON.stringify(cfg)
    this.#maxKeys = cfg.max_keys
    this.#responses = new LRUCache({ maxSize: cfg.max_bytes, sizeCalculation: (v) => v.length + 64 })
  }

  counters (limit: string, onEvict: () => void): LimitCounters {
    let c = this.#limits.get(limit)
    if (c === undefined) {
      c = new MemoryCounters(this.#maxKeys, onEvict)
      this.#limits.set(limit, c)
    } else {
      // A reload compiles the limit again: its buckets stay, counted by the new table's metrics.
      c.onEvict = onEvict
    }
    return c
  }

  cacheGet (key: string): Buffer | null {
    return this.#responses.get(key) ?? null
  }

  cacheSet (key: string, value: Buffer, ttlMs: number): void {
    if (value.length + 64 <= this.#responses.maxSize) this.#responses.set(key, value, { ttl: ttlMs })
  }

  gcra (key: string, intervalMs: number, burst: number, cost: number): LimitDecision {
    return (this.#anonymous ??= new MemoryCounters(this.#maxKeys, () => {})).gcra(key, intervalMs, burst, cost)
  }

  quota (key: string, limit: number, windowMs: number, cost: number): LimitDecision {
    return (this.#anonymous ??= new MemoryCounters(this.#maxKeys, () => {})).quota(key, limit, windowMs, cost)
  }

  charge (key: string, windowMs: number, amount: number): void {
    (this.#anonymous ??= new MemoryCounters(this.#maxKeys, () => {})).charge(key, windowMs, amount)
  }

  async start (): Promise<void> {}
  async close (): Promise<void> {}
  status (): { status: 'ok', kind: string } {
    return { status: 'ok', kind: 'memory' }
  }
}

/** One limit's buckets in memory: GCRA arrival times and quota windows, each up to maxKeys. */
class MemoryCounters implements LimitCounters {
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
      dispose: (tat, _key, reason) => { if (reason === 'evict' && tat > Date.now()) this.onEvict() },
    }))
  }

  get #used (): LRUCache<string, number> {
    return (this.#usedCache ??= new LRUCache({
      max: this.#maxKeys,
      noDisposeOnSet: true,
      dispose: (_used, key, reason) => {
        if (reason === 'evict' && Number(key.slice(key.lastIndexOf(':') + 1)) >= Math.floor(Date.now() / this.#windowMs)) this.onEvict()
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
      return used < limit ? { allowed: true, remaining: limit - used, resetMs, retryMs: 0 } : { allowed: false, remaining: 0, resetMs, retryMs: resetMs }
    }
    if (used + cost > limit) return { allowed: false, remaining: Math.max(0, limit - used), resetMs, retryMs: resetMs }
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

// Redis: each decision is one script (EVALSHA), using the server's clock so that every gateway
// sharing the store agrees on time. Keys are built from the store's prefix; the quota scripts add
// the window index themselves (a single Redis or a primary/replica pair, not Redis Cluster).

/** Every script starts from the server's clock, in ms. */
const NOW_LUA = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
`

const GCRA_LUA = NOW_LUA + `
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local nexttat = tat + interval * cost
local capacity = burst * interval
if nexttat - now > capacity then
  return {0, math.max(0, math.floor((capacity - (tat - now)) / interval)), math.ceil(tat - now), math.ceil(nexttat - now - capacity)}
end
redis.call('SET', KEYS[1], tostring(nexttat), 'PX', math.max(1, math.ceil(nexttat - now)))
return {1, math.floor((capacity - (nexttat - now)) / interval), math.ceil(nexttat - now), 0}
`

const QUOTA_LUA = NOW_LUA + `
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local index = math.floor(now / window)
local key = KEYS[1] .. ':' .. index
local reset = (index + 1) * window - now
local used = tonumber(redis.call('GET', key) or 0)
if cost == 0 then
  if used < limit then return {1, limit - used, reset, 0} end
  return {0, 0, reset, reset}
end
if used + cost > limit then return {0, math.max(0, limit - used), reset, reset} end
used = redis.call('INCRBY', key, cost)
redis.call('PEXPIRE', key, reset + 1000)
return {1, limit - used, reset, 0}
`

const CHARGE_LUA = NOW_LUA + `
local window = tonumber(ARGV[1])
local index = math.floor(now / window)
local key = KEYS[1] .. ':' .. index
redis.call('INCRBY', key, ARGV[2])
redis.call('PEXPIRE', key, (index + 1) * window - now + 1000)
return 1
`

interface RedisScripts {
  ghGcra (key: string, interval: number, burst: number, cost: number): Promise<[number, number, number, number]>
  ghQuota (key: string, limit: number, window: number, cost: number): Promise<[number, number, number, number]>
  ghCharge (key: string, window: number, amount: number): Promise<number>
  quit (): Promise<unknown>
  disconnect (): void
  getBuffer (key: string): Promise<Buffer | null>
  set (key: string, value: Buffer, px: 'PX', ms: number): Promise<unknown>
  readonly status: string
}

/**
 * Counters in Redis, shared by every gateway that points at it. Commands fail fast while the
 * connection is down (no offline queue) and time out after `timeout`, so an outage costs each
 * request at most that long before the route's on_store_error applies.
 */
export class RedisLimitStore implements LimitStore {
  readonly kind = 'redis' as const
  readonly fingerprint: string
  readonly #cfg: Extract<StoreConfig, { kind: 'redis' }>
  readonly #logger: Logger
  #client: RedisScripts | null = null
  #lastErrorLog = 0

  constructor (cfg: Extract<StoreConfig, { kind: 'redis' }>, logger: Logger) {
    this.#cfg = cfg
    this.#logger = logger
    this.fingerprint = JSON.stringify(cfg)
  }

  async start (): Promise<void> {
    if (this.#client !== null) return
    // Loaded only when a Redis store is configured.
    const { Redis } = await import('ioredis')
    const client = new Redis(this.#cfg.url, {
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      commandTimeout: this.#cfg.timeout,
      connectTimeout: Math.max(1000, this.#cfg.timeout * 4),
      retryStrategy: (attempt: number) => Math.min(attempt * 100, 2000),
      lazyConnect: false,
      // Commands issued in the same tick go out in one write: at c=50 most decisions share a syscall.
      enableAutoPipelining: true,
    })
    // Without a listener an 'error' event would crash the process; log, at most every 10 s.
    client.on('error', (err: Error) => {
      const now = Date.now()
      if (now - this.#lastErrorLog < 10_000) return
      this.#lastErrorLog = now
      this.#logger.warn({ msg: 'limit store unreachable', store: redactUrl(this.#cfg.url), err: err.message })
    })
    client.defineCommand('ghGcra', { numberOfKeys: 1, lua: GCRA_LUA })
    client.defineCommand('ghQuota', { numberOfKeys: 1, lua: QUOTA_LUA })
    client.defineCommand('ghCharge', { numberOfKeys: 1, lua: CHARGE_LUA })
    this.#client = client as unknown as RedisScripts
    // Wait for the connection, briefly: a gateway must start (and apply on_store_error) even
    // when Redis is down; ioredis keeps reconnecting in the background.
    if (client.status !== 'ready') {
      let timer: NodeJS.Timeout | undefined
      await Promise.race([
        new Promise<void>((resolve) => client.once('ready', () => resolve())),
        new Promise<void>((resolve) => { timer = setTimeout(resolve, Math.max(1000, this.#cfg.timeout * 4)) }),
      ])
      clearTimeout(timer)
    }
  }

  status (): { status: 'ok' | 'unavailable', kind: string } {
    return { status: this.#client?.status === 'ready' ? 'ok' : 'unavailable', kind: 'redis' }
  }

  #redis (): RedisScripts {
    if (this.#client === null) throw new Error('the Redis store is not started')
    return this.#client
  }

  /** Redis keys are shared by every gateway, and evicted by Redis itself: one keyspace. */
  counters (_limit: string, _onEvict: () => void): LimitCounters {
    return this
  }

  async gcra (key: string, intervalMs: number, burst: number, cost: number): Promise<LimitDecision> {
    return toDecision(await this.#redis().ghGcra(this.#cfg.prefix + key, intervalMs, burst, cost))
  }

  async quota (key: string, limit: number, windowMs: number, cost: number): Promise<LimitDecision> {
    return toDecision(await this.#redis().ghQuota(this.#cfg.prefix + key, limit, windowMs, cost))
  }

  async charge (key: string, windowMs: number, amount: number): Promise<void> {
    await this.#redis().ghCharge(this.#cfg.prefix + key, windowMs, amount)
  }

  async cacheGet (key: string): Promise<Buffer | null> {
    return await this.#redis().getBuffer(this.#cfg.prefix + key)
  }

  async cacheSet (key: string, value: Buffer, ttlMs: number): Promise<void> {
    await this.#redis().set(this.#cfg.prefix + key, value, 'PX', Math.max(1, Math.ceil(ttlMs)))
  }

  async close (): Promise<void> {
    const c = this.#client
    this.#client = null
    if (c === null) return
    try {
      await c.quit()
    } catch {
      c.disconnect()
    }
  }
}

function toDecision (r: [number, number, number, number]): LimitDecision {
  return { allowed: r[0] === 1, remaining: Number(r[1]), resetMs: Number(r[2]), retryMs: Number(r[3]) }
}

export function createStore (cfg: StoreConfig, logger: Logger): LimitStore {
  return cfg.kind === 'memory' ? new MemoryLimitStore(cfg) : new RedisLimitStore(cfg, logger)
}
