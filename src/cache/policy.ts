import { createHash, hash } from 'node:crypto'
import type { CacheConfig } from '../config/schema.js'
import type { Identity } from '../identity/types.js'
import type { LimitStore } from '../limits/store.js'

/** A stored response: status, the header fields to replay, the body, and when it was stored. */
export interface CacheEntry {
  status: number
  headers: string[]
  body: Buffer
  storedAt: number
}

/** Header fields never stored: they belong to one exchange. */
const PER_EXCHANGE = new Set(['x-request-id', 'age', 'x-cache', 'ratelimit', 'ratelimit-policy', 'date'])

/**
 * A route's `cache` block, compiled. The key is a SHA-256 over the method, path, the chosen
 * query and headers, the caller (provider and subject, unless the route has no auth) and the
 * body (JSON canonicalised: sorted keys, ignored top-level fields dropped), so one consumer is
 * never served another's response. Concurrent misses for one key wait for the first
 * (coalescing); a miss streams to its client while a copy is kept for the store.
 */
export class CachePolicy {
  readonly methods: ReadonlySet<string>
  readonly store: LimitStore
  readonly storeName: string
  readonly ttlMs: number
  readonly maxEntry: number
  readonly bodyMax: number
  readonly #cfg: CacheConfig
  readonly #statuses: ReadonlySet<number>
  readonly #ignore: ReadonlySet<string>
  readonly #anonymous: boolean
  readonly #route: string
  /** Misses in progress: followers wait for the leader's entry (null: go upstream yourself). */
  readonly #inflight = new Map<string, Promise<CacheEntry | null>>()
  /** Entries decoded from a synchronous store's values, keyed by the stored Buffer itself. */
  readonly #decoded = new WeakMap<Buffer, CacheEntry | null>()

  constructor (route: string, cfg: CacheConfig, store: LimitStore, storeName: string, anonymous: boolean) {
    this.#route = route
    this.#cfg = cfg
    this.methods = new Set(cfg.methods)
    this.store = store
    this.storeName = storeName
    this.ttlMs = cfg.ttl
    this.maxEntry = cfg.max_entry
    this.bodyMax = cfg.key.body.max_size
    this.#statuses = new Set(cfg.statuses)
    this.#ignore = new Set(cfg.key.body.ignore)
    this.#anonymous = anonymous
  }

  /** The entry key for a request. `body` is the whole request body (POST) or null. */
  key (method: string, path: string, query: string, header: (name: string) => string | null, identity: Identity | null, body: Buffer | null): string {
    let head = `gatehouse-cache-v1\0${this.#route}\0${method === 'HEAD' ? 'GET' : method}\0${path}\0${this.#cfg.key.query ? query : ''}\0`
    for (const name of this.#cfg.key.headers) head += `${name}:${header(name) ?? ''}\0`
    // The caller is part of the key unless the route is anonymous.
    head += this.#anonymous ? '-\0' : `${identity?.provider ?? ''}:${identity?.subject ?? ''}:${identity?.clientId ?? ''}\0`
    // One-shot hash() costs a third of createHash() for a short input; both hash the same bytes,
    // so the key is the same either way (and across versions sharing a Redis store).
    if (body === null || body.length === 0) return `c:${hash('sha256', head, 'base64url')}`
    const h = createHash('sha256')
    h.update(head)
    h.update(this.#cfg.key.body.json ? canonicalBody(body, this.#ignore) : body)
    return `c:${h.digest('base64url')}`
  }

  /**
   * The stored entry for `key`. A store that answers synchronously (memory) is answered without
   * a promise, and hands back the same Buffer on every hit, so its decoded form is kept beside
   * it (entries are never modified) instead of parsing the head's JSON on every hit.
   */
  lookup (key: string): CacheEntry | null | Promise<CacheEntry | null> {
    const r = this.store.cacheGet(key)
    if (r instanceof Promise) return r.then(decode)
    if (r === null) return null
    let e = this.#decoded.get(r)
    if (e === undefined) {
      e = decode(r)
      this.#decoded.set(r, e)
    }
    return e
  }

  /** The miss in progress for `key`, if any. */
  follower (key: string): Promise<CacheEntry | null> | null {
    return this.#inflight.get(key) ?? null
  }

  /** Become the leader for `key`; call the returned function with the entry (or null) once done. */
  lead (key: string): (entry: CacheEntry | null) => void {
    let settle!: (e: CacheEntry | null) => void
    this.#inflight.set(key, new Promise((resolve) => { settle = resolve }))
    return (entry) => {
      this.#inflight.delete(key)
      settle(entry)
    }
  }

  /**
   * Whether a response may be stored, and for how long (ms): its status is listed, it sets no
   * cookie, Cache-Control allows it (no no-store, private or no-cache; max-age/s-maxage
   * shorten the route's ttl) and its Vary names only headers in the key.
   */
  storable (status: number, headers: readonly string[]): number | null {
    if (!this.#statuses.has(status)) return null
    let ttl = this.ttlMs
    for (let i = 0; i < headers.length; i += 2) {
      const name = headers[i]!.toLowerCase()
      const value = headers[i + 1]!
      if (name === 'set-cookie') return null
      // A stream of events (a model's tokens) is never a cacheable document, and a follower
      // must not wait for a stream that may last minutes.
      if (name === 'content-type' && value.trimStart().toLowerCase().startsWith('text/event-stream')) return null
      if (name === 'vary') {
        for (const v of value.split(',')) {
          const f = v.trim().toLowerCase()
          if (f === '*' || (f !== '' && !this.#cfg.key.headers.includes(f))) return null
        }
      }
      if (name === 'cache-control') {
        const cc = parseCacheControl(value)
        if (cc.has('no-store') || cc.has('private') || cc.has('no-cache')) return null
        const age = cc.get('s-maxage') ?? cc.get('max-age')
        if (age !== undefined) {
          const s = Number(age)
          if (!Number.isFinite(s) || s <= 0) return null
          ttl = Math.min(ttl, s * 1000)
        }
      }
    }
    return ttl
  }

  save (key: string, entry: CacheEntry, ttlMs: number): Promise<void> {
    try {
      const r = this.store.cacheSet(key, encode(entry), ttlMs)
      return r instanceof Promise ? r : Promise.resolve()
    } catch (err) {
      return Promise.reject(err)
    }
  }
}

/** The header fields worth storing (per-exchange ones dropped). */
export function storedHeaders (headers: readonly string[]): string[] {
  const out: string[] = []
  for (let i = 0; i < headers.length; i += 2) {
    if (PER_EXCHANGE.has(headers[i]!.toLowerCase())) continue
    out.push(headers[i]!, headers[i + 1]!)
  }
  return out
}

export function parseCacheControl (value: string): Map<string, string> {
  const out = new Map<string, string>()
  for (const part of value.split(',')) {
    const [k, v] = part.split('=', 2) as [string, string | undefined]
    const key = k.trim().toLowerCase()
    if (key !== '') out.set(key, (v ?? '').trim().replace(/^"|"$/g, ''))
  }
  return out
}

/** JSON with sorted keys and ignored top-level fields dropped; other bodies as they are. */
function canonicalBody (body: Buffer, ignore: ReadonlySet<string>): string | Buffer {
  let value: unknown
  try {
    value = JSON.parse(body.toString('utf8'))
  } catch {
    return body
  }
  if (value !== null && typeof value === 'object' && !Array.isArray(value) && ignore.size > 0) {
    value = Object.fromEntries(Object.entries(value).filter(([k]) => !ignore.has(k)))
  }
  return JSON.stringify(sortKeys(value))
}

function sortKeys (v: unknown): unknown {
  if (Array.isArray(v)) return v.map(sortKeys)
  if (v !== null && typeof v === 'object') {
    return Object.fromEntries(Object.keys(v).sort().map((k) => [k, sortKeys((v as Record<string, unknown>)[k])]))
  }
  return v
}

/** [4-byte length][JSON head][body]: one value per entry, in memory or in Redis. */
function encode (e: CacheEntry): Buffer {
  const head = Buffer.from(JSON.stringify({ s: e.status, h: e.headers, t: e.storedAt }))
  const len = Buffer.allocUnsafe(4)
  len.writeUInt32BE(head.length)
  return Buffer.concat([len, head, e.body])
}

function decode (b: Buffer | null): CacheEntry | null {
  if (b === null || b.length < 4) return null
  const n = b.readUInt32BE(0)
  try {
    const head = JSON.parse(b.subarray(4, 4 + n).toString('utf8')) as { s: number, h: string[], t: number }
    return { status: head.s, headers: head.h, storedAt: head.t, body: b.subarray(4 + n) }
  } catch {
    return null
  }
}

/**
 * The leader's copy of a response as it streams to its client: kept only while it can still be
 * stored (status, headers, size within max_entry), handed to waiting followers and the store
 * when the response completes, dropped if it fails or is cut short.
 */
export class CacheCapture {
  readonly #policy: CachePolicy
  readonly #key: string
  readonly #done: (entry: CacheEntry | null) => void
  #ttl: number | null = null
  #status = 0
  #headers: string[] = []
  #chunks: Buffer[] = []
  #size = 0
  #settled = false

  constructor (policy: CachePolicy, key: string, done: (entry: CacheEntry | null) => void) {
    this.#policy = policy
    this.#key = key
    this.#done = done
  }

  head (status: number, headers: readonly string[]): void {
    this.#status = status
    this.#ttl = this.#policy.storable(status, headers)
    if (this.#ttl !== null) this.#headers = storedHeaders(headers)
    // Followers waiting for this response go upstream themselves as soon as it cannot be stored.
    else this.abort()
  }

  push (chunk: Buffer): void {
    if (this.#ttl === null) return
    this.#size += chunk.length
    if (this.#size > this.#policy.maxEntry) {
      // Too big to keep: it streams on, unstored, and its followers are released.
      this.#ttl = null
      this.#chunks = []
      this.abort()
      return
    }
    this.#chunks.push(chunk)
  }

  complete (): void {
    if (this.#settled) return
    this.#settled = true
    if (this.#ttl === null) return this.#done(null)
    const entry: CacheEntry = { status: this.#status, headers: this.#headers, body: Buffer.concat(this.#chunks, this.#size), storedAt: Date.now() }
    this.#policy.save(this.#key, entry, this.#ttl).catch(() => {})
    this.#done(entry)
  }

  /** The response failed or was cut short: nothing is stored; followers go upstream themselves. */
  abort (): void {
    if (this.#settled) return
    this.#settled = true
    this.#done(null)
  }
}
