import { hash } from 'node:crypto'
import { isIP } from 'node:net'
import type { RateLimitConfig, RouteConfig } from '../../config/schema.js'
import { gatewayError, type GatewayError } from '../../errors/index.js'
import { claimAt } from '../auth/policy.js'
import type { Identity } from '../../identity/types.js'
import type { Metrics } from '../../observability/metrics.js'
import { plainAddress } from '../../net/client-ip.js'
import { LRUCache } from 'lru-cache'
import type { Charge, Exchange, ResponseTap } from '../../pipeline/exchange.js'
import type { Step } from '../../pipeline/step.js'
import type { Counters, CounterStore, LimitDecision } from '../../stores/counter.js'

type Outcome = GatewayError | null

/** A quota charged from the response: which limit, which bucket. */
interface LimitCharge extends Charge {
  readonly limit: CompiledLimit
}

/** What a limit reads from a request (filled in by the pipeline before the check). */
export interface LimitSubject {
  identity: Identity | null
  /** The client address, as `ip` rules see it (trusted proxies honoured). */
  clientIp: string
  /** The TCP peer: what `ip` limits count by when clientIp is not an address (a garbage X-Forwarded-For). */
  readonly peerIp: string
  /** Request header lookup by lower-case name (first value). */
  header(name: string): string | null
  /** Set by the check: the RateLimit field value to send with the response. */
  rateLimit: string | null
  /** Set by the check: quotas to charge from the response, with their bucket keys. */
  charges: Charge[] | null
}

export interface CompiledLimit {
  readonly name: string
  readonly keyKind: 'subject' | 'client_id' | 'api_key' | 'ip' | 'header' | 'claim'
  readonly keyArg: string
  /** For claim keys: keyArg split on dots, once. */
  readonly claimPath: readonly string[]
  readonly gcra: { intervalMs: number, burst: number } | null
  readonly quota: { limit: number, windowMs: number } | null
  /** A fixed cost, or the JSON path (after `response.`) to read the cost from. */
  readonly cost: number | readonly string[]
  readonly store: CounterStore
  /** This limit's own counters in the store (see CounterStore.counters). */
  readonly counters: Counters
  readonly storeName: string
  readonly missing: 'deny' | 'ip'
  /** IPv6 addresses count by this many leading bits (see addressBucket). */
  readonly ipv6Prefix: number
  /** This limit's RateLimit-Policy item. */
  readonly policyItem: string
  /** gatehouse_quota_cost_total for this route and limit (a limit whose cost a response gives). */
  readonly costCounter: { inc(amount: number): void } | null
  /** Local token leases for a GCRA limit on a remote store (null: one decision per request). */
  readonly leases: GcraLeases | null
}

/**
 * A route's `rate_limit` list, compiled. Limits are checked in order; the first that refuses
 * answers 429 (limits before it have already counted the request). Synchronous with memory
 * stores, a Promise as soon as one store is remote.
 */
export class RateLimitPolicy implements Step {
  readonly name = 'rate_limit'
  readonly limits: readonly CompiledLimit[]
  /** RateLimit-Policy field value, sent with every response of the route. */
  readonly policyHeader: string
  readonly onStoreError: 'allow' | 'deny'
  readonly needsResponse: boolean
  readonly #metrics: Metrics
  readonly #route: string

  constructor (route: RouteConfig, stores: ReadonlyMap<string, CounterStore>, metrics: Metrics) {
    this.#route = route.name
    this.#metrics = metrics
    this.onStoreError = route.on_store_error
    this.limits = route.rate_limit!.map((l) =>
      compileLimit(route.name, l, stores.get(l.store)!, metrics)
    )
    this.policyHeader = this.limits.map((l) => l.policyItem).join(', ')
    this.needsResponse = this.limits.some((l) => typeof l.cost !== 'number')
  }

  run (ex: Exchange): Outcome | Promise<Outcome> {
    // Limits may count by client address (after trusted_proxies).
    ex.resolveClientIp()
    return this.check(ex)
  }

  check (s: LimitSubject): Outcome | Promise<Outcome> {
    return this.#from(s, 0, [])
  }

  /** Check limit `i`; #after goes on with the next one (synchronously while stores answer so). */
  #from (s: LimitSubject, i: number, items: string[]): Outcome | Promise<Outcome> {
    const limit = this.limits[i]!
    const value = keyValue(limit, s)
    if (value === null) {
      return gatewayError(
        'GH_LIMIT_KEY_MISSING',
        'The request lacks what this route\'s limits count by',
        {
          reason: `limit "${limit.name}": no ${limit.keyKind}${
            limit.keyArg === '' ? '' : ` "${limit.keyArg}"`
          }`,
        },
      )
    }
    const key = `rl:${limit.name}:${value.length > 64 ? hash('sha256', value, 'base64url') : value}`
    let d: LimitDecision | Promise<LimitDecision>
    try {
      d = decide(limit, key)
    } catch (err) {
      return this.#storeError(s, limit, err as Error, i, items)
    }
    if (d instanceof Promise) {
      return d.then(
        (r) => this.#after(s, limit, key, r, i, items),
        (err: Error) => this.#storeError(s, limit, err, i, items),
      )
    }
    return this.#after(s, limit, key, d, i, items)
  }

  /** Record one decision; refuse, or go on with the next limit. */
  #after (
    s: LimitSubject,
    limit: CompiledLimit,
    key: string,
    d: LimitDecision,
    i: number,
    items: string[],
  ): Outcome | Promise<Outcome> {
    const item = `"${limit.name}";r=${d.remaining};t=${Math.max(0, Math.ceil(d.resetMs / 1000))}`
    if (!d.allowed) {
      this.#metrics.rateLimited.labels(this.#route, limit.name).inc()
      const retry = Math.max(1, Math.ceil(d.retryMs / 1000))
      const headers: Record<string, string> = {
        'retry-after': String(retry),
        'ratelimit-policy': this.policyHeader,
        ratelimit: item,
      }
      // A spent quota comes back at the end of its window, hours away: tell clients that retry
      // on their own (both OpenAI SDKs honour this field) not to sleep until then. Retry-After
      // stays true for those that read it.
      if (limit.quota !== null) headers['x-should-retry'] = 'false'
      return gatewayError('GH_RATE_LIMITED', `Too many requests; retry in ${retry} s`, {
        reason: `limit "${limit.name}" (${limit.store.kind}) exhausted for ${limit.keyKind}`,
        headers,
      })
    }
    items.push(item)
    if (typeof limit.cost !== 'number') {
      const c: LimitCharge = { limit, key }
      ;(s.charges ??= []).push(c)
    }
    if (i + 1 === this.limits.length) {
      s.rateLimit = items.join(', ')
      return null
    }
    return this.#from(s, i + 1, items)
  }

  #storeError (
    s: LimitSubject,
    limit: CompiledLimit,
    err: Error,
    i: number,
    items: string[],
  ): Outcome | Promise<Outcome> {
    this.#metrics.limitStoreErrors.labels(limit.storeName, this.onStoreError).inc()
    if (this.onStoreError === 'deny') {
      return gatewayError(
        'GH_LIMIT_STORE_UNAVAILABLE',
        'The rate-limit store is unavailable; try again shortly',
        {
          reason: `limit "${limit.name}": store "${limit.storeName}": ${err.message}`,
          headers: { 'retry-after': '1' },
        },
      )
    }
    // allow: this limit is skipped for this request; the others still apply.
    if (i + 1 === this.limits.length) {
      s.rateLimit = items.length === 0 ? null : items.join(', ')
      return null
    }
    return this.#from(s, i + 1, items)
  }

  /** After the response: charge quotas whose cost the response carries (`tap` saw its body). */
  charge (charges: readonly Charge[], tap: ResponseTap | null): void {
    // Both were made here: the charges by #after (LimitCharge), the tap by costTap (response.ts).
    const costs = tap as CostTap | null
    for (const { limit, key } of charges as readonly LimitCharge[]) {
      const path = limit.cost as readonly string[]
      const v = costs === null ? undefined : costs.find(path)
      // No usable number in the response: the call still counts, as 1.
      const amount = typeof v === 'number' && Number.isFinite(v) && v >= 0 ? Math.ceil(v) : 1
      if (amount === 0) continue
      limit.costCounter!.inc(amount)
      try {
        const r = limit.counters.charge(key, limit.quota!.windowMs, amount)
        if (r instanceof Promise) {
          r.catch(() => this.#metrics.limitStoreErrors.labels(limit.storeName, 'charge').inc())
        }
      } catch {
        this.#metrics.limitStoreErrors.labels(limit.storeName, 'charge').inc()
      }
    }
  }
}

function decide (limit: CompiledLimit, key: string): LimitDecision | Promise<LimitDecision> {
  if (limit.leases !== null) return limit.leases.take(limit, key)
  if (limit.gcra !== null) {
    return limit.counters.gcra(key, limit.gcra.intervalMs, limit.gcra.burst, 1)
  }
  const q = limit.quota!
  // A cost known only from the response: look now (refused once the budget is spent), charge later.
  return limit.counters.quota(
    key,
    q.limit,
    q.windowMs,
    typeof limit.cost === 'number' ? limit.cost : 0,
  )
}

function keyValue (limit: CompiledLimit, s: LimitSubject): string | null {
  let v: unknown
  switch (limit.keyKind) {
    case 'ip':
      return `ip:${addressBucket(limitAddress(s), limit.ipv6Prefix)}`
    case 'subject':
      v = s.identity?.subject
      break
    case 'client_id':
      v = s.identity?.clientId
      break
    case 'api_key':
      v = s.identity?.kind === 'api_key' ? s.identity.subject : null
      break
    case 'header':
      v = s.header(limit.keyArg)
      break
    case 'claim':
      v = s.identity === null ? undefined : claimAt(s.identity.claims, limit.claimPath)
      break
  }
  if (typeof v === 'number' || typeof v === 'boolean') v = String(v)
  if (typeof v === 'string' && v !== '') {
    // A subject (an API key's id) is unique only within its provider: `alice` of one IdP is not
    // `alice` of another. Provider names have no ':', so the pair cannot be forged by a subject.
    if (limit.keyKind === 'subject' || limit.keyKind === 'api_key') {
      return `${limit.keyKind}:${s.identity!.provider}:${v}`
    }
    return `${limit.keyKind}:${v}`
  }
  return limit.missing === 'ip' ? `ip:${addressBucket(limitAddress(s), limit.ipv6Prefix)}` : null
}

/**
 * The address to count by. A trusted proxy's X-Forwarded-For entry that is no address at all
 * would otherwise be a fresh bucket per spelling: such requests count against the proxy itself.
 */
function limitAddress (s: LimitSubject): string {
  // clientIp is already plain (clientAddress); the peer may be ::ffff:a.b.c.d, one bucket with a.b.c.d.
  return isIP(s.clientIp) !== 0 ? s.clientIp : plainAddress(s.peerIp)
}

function compileLimit (
  route: string,
  l: RateLimitConfig,
  store: CounterStore,
  metrics: Metrics,
): CompiledLimit {
  const colon = l.key.indexOf(':')
  const keyKind = (colon === -1 ? l.key : l.key.slice(0, colon)) as CompiledLimit['keyKind']
  const keyArg = colon === -1
    ? ''
    : (keyKind === 'header' ? l.key.slice(colon + 1).toLowerCase() : l.key.slice(colon + 1))
  const name = l.name ?? `${route}.${l.key.replace(/[^A-Za-z0-9_.:-]/g, '_')}`
  let gcra: CompiledLimit['gcra'] = null
  let quota: CompiledLimit['quota'] = null
  let policyItem: string
  if (l.rate !== undefined) {
    const intervalMs = l.rate.periodMs / l.rate.count
    const burst = l.burst ?? Math.max(1, Math.round(l.rate.count))
    gcra = { intervalMs, burst }
    // As a quota: `burst` requests per the time a full bucket takes to refill.
    policyItem = `"${name}";q=${burst};w=${Math.max(1, Math.ceil(burst * intervalMs / 1000))}`
  } else {
    quota = { limit: Math.floor(l.quota!.count), windowMs: l.quota!.periodMs }
    policyItem = `"${name}";q=${quota.limit};w=${quota.windowMs / 1000}`
  }
  // Memory stores only: a Redis store never drops a bucket for room (Redis expires them when full).
  // Shown from 0, so that a rate() over it starts at the first eviction.
  const evictions = store.kind === 'memory' ? metrics.limitEvictions.labels(l.store, name) : null
  evictions?.inc(0)
  return {
    name,
    keyKind,
    keyArg,
    claimPath: keyArg.split('.'),
    gcra,
    quota,
    cost: typeof l.cost === 'number' ? l.cost : l.cost.slice('response.'.length).split('.'),
    store,
    counters: store.counters(name, evictions === null ? noop : () => evictions.inc()),
    storeName: l.store,
    missing: l.missing,
    ipv6Prefix: l.ipv6_prefix ?? DEFAULT_IPV6_PREFIX,
    policyItem,
    costCounter: typeof l.cost === 'number' ? null : metrics.quotaCost.labels(route, name),
    // Leasing pays off only for big buckets; small ones keep one exact decision per request.
    leases: gcra !== null && store.kind !== 'memory' && Math.floor(gcra.burst * LEASE_SHARE) >= 2
      ? new GcraLeases(Math.floor(gcra.burst * LEASE_SHARE), gcra.intervalMs)
      : null,
  }
}

const noop = (): void => {}

/**
 * A /64 is the smallest unit of IPv6 a subscriber is usually given (RFC 6177): one client can
 * send from any address in it, so counting by whole address gives it 2^64 buckets.
 */
export const DEFAULT_IPV6_PREFIX = 64

/**
 * The bucket an address counts in: an IPv4 address as it is (an IPv4-mapped one arrives
 * unmapped, see plainAddress); an IPv6 address as its first `prefix` bits, `2001:db8:0:0::/64`
 * (`/128`: every group). Also for other policies that count by address. Something that does not
 * parse stays as it is.
 */
export function addressBucket (address: string, prefix: number): string {
  if (address.indexOf(':') === -1 || !parseIPv6(address)) return address
  const n = Math.ceil(prefix / 16)
  let out = ''
  for (let i = 0; i < n; i++) {
    let g = GROUPS[i]!
    if (i === n - 1 && prefix % 16 !== 0) g &= (0xffff << (16 - prefix % 16)) & 0xffff
    out += i === 0 ? g.toString(16) : ':' + g.toString(16)
  }
  return n === 8 ? `${out}/${prefix}` : `${out}::/${prefix}`
}

/** parseIPv6's output: one reused array, not one per request. */
const GROUPS = new Uint16Array(8)

/**
 * Parse an IPv6 address (`::` compression, an IPv4 tail, a `%zone` ignored) into GROUPS, by
 * char codes: this runs per request for IPv6 clients on `ip` limits. False when it is no address.
 */
function parseIPv6 (s: string): boolean {
  const zone = s.indexOf('%')
  const end = zone === -1 ? s.length : zone
  let gi = 0
  let gap = -1
  let i = 0
  if (s.charCodeAt(0) === 58) {
    if (s.charCodeAt(1) !== 58) return false
    gap = 0
    i = 2
  }
  while (i < end) {
    const start = i
    let v = 0
    for (; i < end && i - start < 5; i++) {
      const h = hexValue(s.charCodeAt(i))
      if (h === -1) break
      v = v * 16 + h
    }
    if (i < end && s.charCodeAt(i) === 46) {
      // a.b.c.d as the last 32 bits
      const v4 = ipv4Value(s, start, end)
      if (v4 === -1 || gi > 6) return false
      GROUPS[gi++] = v4 >>> 16
      GROUPS[gi++] = v4 & 0xffff
      i = end
      break
    }
    if (i === start || i - start > 4 || gi === 8) return false
    GROUPS[gi++] = v
    if (i === end) break
    if (s.charCodeAt(i) !== 58) return false
    i++
    if (s.charCodeAt(i) === 58 && i < end) {
      if (gap !== -1) return false
      gap = gi
      i++
    } else if (i === end) {
      return false
    }
  }
  if (gap === -1) return gi === 8
  if (gi === 8) return false
  // Move the groups after `::` to the end; the gap is zeros.
  const tail = gi - gap
  for (let k = 0; k < tail; k++) GROUPS[7 - k] = GROUPS[gi - 1 - k]!
  for (let k = gap; k < 8 - tail; k++) GROUPS[k] = 0
  return true
}

function hexValue (c: number): number {
  if (c >= 48 && c <= 57) return c - 48
  const l = c | 0x20
  return l >= 97 && l <= 102 ? l - 87 : -1
}

function ipv4Value (s: string, start: number, end: number): number {
  let value = 0
  let parts = 0
  let i = start
  while (parts < 4) {
    let n = 0
    const from = i
    for (; i < end && i - from < 4; i++) {
      const c = s.charCodeAt(i)
      if (c < 48 || c > 57) break
      n = n * 10 + c - 48
    }
    if (i === from || i - from > 3 || n > 255) return -1
    value = value * 256 + n
    parts++
    if (parts < 4) {
      if (i >= end || s.charCodeAt(i) !== 46) return -1
      i++
    }
  }
  return i === end ? value : -1
}

/** Most of a bucket one gateway may hold unspent: two gateways stay within 1 % of the limit. */
const LEASE_SHARE = 0.005

/**
 * Token leases for a GCRA limit in a shared store: instead of a round trip per request, a
 * gateway takes `size` tokens at once (one atomic decision of cost `size`) and spends them
 * locally. Nothing is ever admitted beyond the global bucket; the price is that tokens a gateway
 * leased but did not spend within the lease's life (the time they take to refill) are lost, so
 * with N gateways the limit can err low by at most N × 0.5 % of the burst. A bucket with less
 * than a lease left is served one token at a time. RateLimit `r=` values between leases are the
 * ones the last lease saw.
 */
class GcraLeases {
  readonly #size: number
  readonly #lifeMs: number
  readonly #leases = new LRUCache<
    string,
    { tokens: number, expires: number, remaining: number, resetMs: number }
  >({ max: 10_000 })
  readonly #pending = new Map<string, Promise<LimitDecision>>()

  constructor (size: number, intervalMs: number) {
    this.#size = size
    this.#lifeMs = Math.max(1, size * intervalMs)
  }

  take (limit: CompiledLimit, key: string): LimitDecision | Promise<LimitDecision> {
    const l = this.#leases.get(key)
    if (l !== undefined && l.tokens > 0 && l.expires > Date.now()) {
      l.tokens--
      return { allowed: true, remaining: l.remaining, resetMs: l.resetMs, retryMs: 0 }
    }
    // One lease fetch per key at a time; requests arriving meanwhile spend from it.
    const pending = this.#pending.get(key)
    if (pending !== undefined) return pending.then(() => this.take(limit, key))
    const fetch = this.#fetch(limit, key).finally(() => this.#pending.delete(key))
    this.#pending.set(key, fetch)
    return fetch
  }

  async #fetch (limit: CompiledLimit, key: string): Promise<LimitDecision> {
    const g = limit.gcra!
    const d = await limit.counters.gcra(key, g.intervalMs, g.burst, this.#size)
    if (d.allowed) {
      this.#leases.set(key, {
        tokens: this.#size - 1,
        expires: Date.now() + this.#lifeMs,
        remaining: d.remaining,
        resetMs: d.resetMs,
      })
      return d
    }
    return await limit.counters.gcra(key, g.intervalMs, g.burst, 1)
  }
}

const JSON_CAP = 1024 * 1024
const SSE_TAIL = 64 * 1024

/**
 * A copy of just enough of a response body to read its cost once it ends, taken as the body
 * streams past (the client never waits for it): a JSON body up to 1 MiB (larger: cost unknown),
 * or the last 64 KiB of an event stream, where completions put `usage` in the final event.
 */
export class CostTap {
  readonly #sse: boolean
  #chunks: Buffer[] = []
  #size = 0
  #overflow = false

  constructor (eventStream: boolean) {
    this.#sse = eventStream
  }

  push (chunk: Buffer): void {
    if (this.#overflow) return
    this.#chunks.push(chunk)
    this.#size += chunk.length
    if (this.#sse) {
      while (this.#size - this.#chunks[0]!.length >= SSE_TAIL) {
        this.#size -= this.#chunks.shift()!.length
      }
    } else if (this.#size > JSON_CAP) {
      this.#overflow = true
      this.#chunks = []
    }
  }

  /** The number at `path` in the JSON body, or in the last event whose data has it. */
  find (path: readonly string[]): unknown {
    if (this.#overflow || this.#chunks.length === 0) return undefined
    const text = Buffer.concat(this.#chunks).toString('utf8')
    if (!this.#sse) {
      try {
        return claimAt(JSON.parse(text), path)
      } catch {
        return undefined
      }
    }
    const lines = text.split(/\r?\n/)
    for (let i = lines.length - 1; i >= 0; i--) {
      const line = lines[i]!
      if (!line.startsWith('data:')) continue
      try {
        const v = claimAt(JSON.parse(line.slice(5)), path)
        if (v !== undefined && v !== null) return v
      } catch {
        // "[DONE]" and other non-JSON events
      }
    }
    return undefined
  }
}
