import type { Counters, CounterStore, LimitDecision } from '../counter.js'
import type { RedisConnection } from './connection.js'

// Each decision is one script (EVALSHA), using the server's clock so that every gateway sharing
// the store agrees on time. Keys are the connection's prefix and the caller's key; the quota
// scripts add the window index themselves (a single Redis or a primary/replica pair, not Redis
// Cluster).

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

interface CounterScripts {
  ghGcra(
    key: string,
    interval: number,
    burst: number,
    cost: number,
  ): Promise<[number, number, number, number]>
  ghQuota(
    key: string,
    limit: number,
    window: number,
    cost: number,
  ): Promise<[number, number, number, number]>
  ghCharge(key: string, window: number, amount: number): Promise<number>
}

/** Counters in Redis, shared by every gateway that points at it. */
export class RedisCounterStore implements CounterStore, Counters {
  readonly kind = 'redis' as const
  readonly #conn: RedisConnection

  constructor (conn: RedisConnection) {
    this.#conn = conn
    conn.defineScript('ghGcra', GCRA_LUA)
    conn.defineScript('ghQuota', QUOTA_LUA)
    conn.defineScript('ghCharge', CHARGE_LUA)
  }

  /** Redis keys are shared by every gateway, and evicted by Redis itself: one keyspace. */
  counters (_name: string, _onEvict: () => void): Counters {
    return this
  }

  async gcra (
    key: string,
    intervalMs: number,
    burst: number,
    cost: number,
  ): Promise<LimitDecision> {
    return toDecision(
      await this.#conn.client<CounterScripts>().ghGcra(
        this.#conn.prefix + key,
        intervalMs,
        burst,
        cost,
      ),
    )
  }

  async quota (key: string, limit: number, windowMs: number, cost: number): Promise<LimitDecision> {
    return toDecision(
      await this.#conn.client<CounterScripts>().ghQuota(
        this.#conn.prefix + key,
        limit,
        windowMs,
        cost,
      ),
    )
  }

  async charge (key: string, windowMs: number, amount: number): Promise<void> {
    await this.#conn.client<CounterScripts>().ghCharge(this.#conn.prefix + key, windowMs, amount)
  }
}

function toDecision (r: [number, number, number, number]): LimitDecision {
  return {
    allowed: r[0] === 1,
    remaining: Number(r[1]),
    resetMs: Number(r[2]),
    retryMs: Number(r[3]),
  }
}
