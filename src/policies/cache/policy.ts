import { createHash, hash } from 'node:crypto'
import type { CacheConfig } from '../../config/schema.js'
import type { Identity } from '../../identity/types.js'
import type { CacheStore } from '../../stores/cache.js'
import { canonicalJson } from './canonical-json.js'

/** A stored response: status, the header fields to replay, the body, and when it was stored. */
export interface CacheEntry {
  status: number
  headers: string[]
  body: Buffer
  storedAt: number
}

/**
 * What a key is made of: the request as the gateway parsed it (the Exchange is one). Header
 * values are Node's latin1 strings, so a value's length in UTF-16 units is also its length in
 * the key's bytes.
 */
export interface CacheRequest {
  readonly method: string
  readonly path: string
  readonly query: string
  readonly hostHeader: string | null
  /** First values (as forwarded from a trusted proxy), or the joined list for Forwarded. */
  readonly xForwardedHost: string | null
  readonly xForwardedProto: string | null
  readonly forwarded: string | null
  readonly authorization: string | null
  readonly authorizationCount: number
  /** API-key headers named by an identity provider, flat [lower-case name, value, …]. */
  readonly credHeaders: readonly string[] | null
  readonly identity: Identity | null
  readonly req: { readonly rawHeaders: readonly string[] }
}

/** Header fields never stored: they belong to one exchange. */
const PER_EXCHANGE = new Set(['x-request-id', 'age', 'x-cache', 'ratelimit', 'ratelimit-policy',
  'date'])

/**
 * Bumped whenever the preimage's layout changes: entries under an older layout simply miss (v1
 * began "gatehouse-cache-v1"). Short, so that a typical GET's preimage fits in one SHA-256 block.
 */
const KEY_VERSION = 'cache2'

/**
 * A route's `cache` block, compiled. The key is a SHA-256 over a preimage in which every
 * variable part is length-prefixed (so no two requests share one by where a field ends): the
 * route, the method, the authority, path, query, every value of the keyed headers, the caller
 * (provider, subject and client id, unless the route has no auth), on a route without auth the
 * credentials the request carries, and the body (JSON canonicalised when that is lossless, else
 * its bytes). One consumer is never served another's response. Concurrent misses for one key
 * wait for the first, for at most coalesce_timeout (coalescing); a miss streams to its client
 * while a copy is kept for the store.
 */
export class CachePolicy {
  readonly methods: ReadonlySet<string>
  readonly store: CacheStore
  readonly storeName: string
  readonly ttlMs: number
  readonly maxEntry: number
  readonly bodyMax: number
  readonly coalesceMs: number
  readonly #cfg: CacheConfig
  readonly #statuses: ReadonlySet<number>
  readonly #ignore: ReadonlySet<string>
  readonly #anonymous: boolean
  readonly #headers: readonly string[]
  /** A route that keys on Cookie stores answers to requests with cookies as any other. */
  readonly #keysCookie: boolean
  readonly #prefix: string
  /** Misses in progress: followers wait for the leader's entry (null: go upstream yourself). */
  readonly #inflight = new Map<string, Inflight>()
  /** Entries decoded from a synchronous store's values, keyed by the stored Buffer itself. */
  readonly #decoded = new WeakMap<Buffer, CacheEntry | null>()

  constructor (
    route: string,
    cfg: CacheConfig,
    store: CacheStore,
    storeName: string,
    anonymous: boolean,
  ) {
    this.#cfg = cfg
    this.methods = new Set(cfg.methods)
    this.store = store
    this.storeName = storeName
    this.ttlMs = cfg.ttl
    this.maxEntry = cfg.max_entry
    this.bodyMax = cfg.key.body.max_size
    // setTimeout takes at most 2^31-1 ms (~24.8 days) and fires at once beyond it.
    this.coalesceMs = Math.min(cfg.coalesce_timeout, 2 ** 31 - 1)
    this.#statuses = new Set(cfg.statuses)
    this.#ignore = new Set(cfg.key.body.ignore)
    this.#anonymous = anonymous
    this.#headers = cfg.key.headers
    this.#keysCookie = cfg.key.headers.includes('cookie')
    // JSON.stringify: a route name may hold any character; its JSON text ends unambiguously.
    this.#prefix = `${KEY_VERSION}\0${JSON.stringify(route)}\0`
  }

  /**
   * The entry key for a request. `body` is the whole request body (POST) or null.
   *
   * Preimage (v2), each `<s>` written as `<length>:<s>`, `-` for an absent value:
   * prefix, method (HEAD as GET) `\0`, Host (lower-cased), X-Forwarded-Host, X-Forwarded-Proto,
   * Forwarded, path, query (`-` when key.query is off), for each key header `<count>#` and its
   * values in order, then the caller: `-` on a route without auth, else `i` and the JSON of
   * [provider, subject, clientId]; then on a route without auth the credentials: `-`, or `c`
   * and the count and values of Authorization, of Cookie (unless keyed) and of API-key headers.
   * A body adds the values of Content-Type and Content-Encoding, then `j` and its canonical
   * JSON text or `r` and its bytes.
   */
  key (r: CacheRequest, body: Buffer | null): string {
    const raw = r.req.rawHeaders
    const host = r.hostHeader
    let head = this.#prefix + (r.method === 'HEAD' ? 'GET\0' : r.method + '\0') +
      (host === null ? '-' : field(host.toLowerCase())) +
      opt(r.xForwardedHost) + opt(r.xForwardedProto) + opt(r.forwarded) +
      field(r.path) + (this.#cfg.key.query ? field(r.query) : '-')
    const names = this.#headers
    for (let i = 0; i < names.length; i++) head += values(raw, names[i]!)
    if (this.#anonymous) {
      head += '-'
      head += this.#credentials(r) ?? '-'
    } else {
      const id = r.identity
      head += 'i' +
        JSON.stringify([id?.provider ?? null, id?.subject ?? null, id?.clientId ?? null])
    }
    // One-shot hash() costs a third of createHash() for a short input.
    if (body === null || body.length === 0) return `c:${hash('sha256', head, 'base64url')}`
    const type = values(raw, 'content-type')
    const coding = values(raw, 'content-encoding')
    head += type + coding
    const h = createHash('sha256')
    const canonical = this.#cfg.key.body.json && coding === '0#' && isJsonType(type)
      ? canonicalJson(body, this.#ignore)
      : null
    if (canonical !== null) {
      h.update(head + 'j')
      h.update(canonical)
    } else {
      h.update(head + 'r')
      h.update(body)
    }
    return `c:${h.digest('base64url')}`
  }

  /**
   * On a route without auth, the credentials a request carries, for its key: null when it has
   * none. Such a request's answer may be meant for that caller only, so it is keyed apart and
   * stored only when the response says it may be shared (see storable).
   */
  #credentials (r: CacheRequest): string | null {
    let out = ''
    if (r.authorizationCount > 0) {
      out += 'a' +
        (r.authorizationCount === 1
          ? '1#' + field(r.authorization!)
          : values(r.req.rawHeaders, 'authorization'))
    }
    if (!this.#keysCookie) {
      const cookies = values(r.req.rawHeaders, 'cookie')
      if (cookies !== '0#') out += 'k' + cookies
    }
    const cred = r.credHeaders
    if (cred !== null) {
      out += 'h' + String(cred.length / 2) + '#'
      for (let i = 0; i < cred.length; i++) out += field(cred[i]!)
    }
    return out === '' ? null : 'c' + out
  }

  /** Whether this request's answer may be stored for everyone under its key (see #credentials). */
  shared (r: CacheRequest): boolean {
    return !this.#anonymous || this.#credentials(r) === null
  }

  /**
   * The stored entry for `key`. A store that answers synchronously (memory) is answered without
   * a promise, and hands back the same Buffer on every hit, so its decoded form is kept beside
   * it (entries are never modified) instead of parsing the head's JSON on every hit.
   */
  lookup (key: string): CacheEntry | null | Promise<CacheEntry | null> {
    const r = this.store.get(key)
    if (r instanceof Promise) return r.then(decode)
    if (r === null) return null
    let e = this.#decoded.get(r)
    if (e === undefined) {
      e = decode(r)
      this.#decoded.set(r, e)
    }
    return e
  }

  /**
   * The miss in progress for `key`, if any: its entry, or null once it is known not to be
   * stored, fails, or has kept its followers waiting for coalesce_timeout (a leader whose client
   * stops reading holds its upstream response back, and must not hold back other callers). One
   * timer per coalesced miss, started by its first follower; a follower that comes later waits
   * less.
   */
  follower (key: string): Promise<CacheEntry | null> | null {
    const f = this.#inflight.get(key)
    if (f === undefined) return null
    if (f.timer === null) {
      f.timer = setTimeout(releaseFollowers, this.coalesceMs, this.#inflight, key, f)
      f.timer.unref()
    }
    return f.promise
  }

  /**
   * Become the leader for `key`, or null if another request already is. Call the returned
   * function with the entry (or null) once done. With coalesce_timeout 0 nobody waits: each
   * miss goes upstream and may store its answer.
   */
  lead (key: string): ((entry: CacheEntry | null) => void) | null {
    if (this.coalesceMs === 0) return noFollowers
    if (this.#inflight.has(key)) return null
    let settle!: (e: CacheEntry | null) => void
    const promise = new Promise<CacheEntry | null>((resolve) => {
      settle = resolve
    })
    const f: Inflight = { promise, settle, timer: null }
    this.#inflight.set(key, f)
    const inflight = this.#inflight
    return (entry) => {
      if (f.timer !== null) clearTimeout(f.timer)
      // After a timeout a released follower may lead the key anew: leave its entry alone.
      if (inflight.get(key) === f) inflight.delete(key)
      settle(entry)
    }
  }

  /**
   * Whether a response may be stored, and for how long (ms): its status is listed, it sets no
   * cookie, Cache-Control allows it (no no-store, private or no-cache; max-age/s-maxage
   * shorten the route's ttl), its Vary names only headers in the key, and a declared length
   * is within max_entry. `shared` is false for an answer to credentials on a route without
   * auth: RFC 9111 §3.5 lets a shared cache store that only when the response says `public`,
   * `s-maxage` or `must-revalidate`.
   */
  storable (status: number, headers: readonly string[], shared = true): number | null {
    if (!this.#statuses.has(status)) return null
    let ttl = this.ttlMs
    let allowed = shared
    for (let i = 0; i < headers.length; i += 2) {
      const name = headers[i]!.toLowerCase()
      const value = headers[i + 1]!
      if (name === 'set-cookie') return null
      // A stream of events (a model's tokens) is never a cacheable document, and a follower
      // must not wait for a stream that may last minutes.
      if (
        name === 'content-type' && value.trimStart().toLowerCase().startsWith('text/event-stream')
      ) return null
      // Known too big from its head: followers need not wait for the body to find out.
      if (name === 'content-length' && Number(value) > this.maxEntry) return null
      if (name === 'vary') {
        for (const v of value.split(',')) {
          const f = v.trim().toLowerCase()
          if (f === '*' || (f !== '' && !this.#cfg.key.headers.includes(f))) return null
        }
      }
      if (name === 'cache-control') {
        const cc = parseCacheControl(value)
        if (cc.has('no-store') || cc.has('private') || cc.has('no-cache')) return null
        if (cc.has('public') || cc.has('s-maxage') || cc.has('must-revalidate')) allowed = true
        const age = cc.get('s-maxage') ?? cc.get('max-age')
        if (age !== undefined) {
          const s = Number(age)
          if (!Number.isFinite(s) || s <= 0) return null
          ttl = Math.min(ttl, s * 1000)
        }
      }
    }
    return allowed ? ttl : null
  }

  save (key: string, entry: CacheEntry, ttlMs: number): Promise<void> {
    try {
      const r = this.store.set(key, encode(entry), ttlMs)
      return r instanceof Promise ? r : Promise.resolve()
    } catch (err) {
      return Promise.reject(err)
    }
  }
}

interface Inflight {
  promise: Promise<CacheEntry | null>
  settle: (entry: CacheEntry | null) => void
  timer: NodeJS.Timeout | null
}

function releaseFollowers (inflight: Map<string, Inflight>, key: string, f: Inflight): void {
  if (inflight.get(key) === f) inflight.delete(key)
  f.settle(null)
}

function noFollowers (): void {}

/** `<length>:<s>`: a field that ends where its length says, whatever it contains. */
function field (s: string): string {
  return `${s.length}:${s}`
}

function opt (s: string | null): string {
  return s === null ? '-' : field(s)
}

/** `<count>#` and every value of a request header, in order (Node keeps only the first of some). */
function values (raw: readonly string[], name: string): string {
  let out = ''
  let n = 0
  for (let i = 0; i < raw.length; i += 2) {
    const k = raw[i]!
    if (k.length === name.length && k.toLowerCase() === name) {
      out += field(raw[i + 1]!)
      n++
    }
  }
  return n === 0 ? '0#' : `${n}#${out}`
}

/**
 * A body is read as JSON only when it says it is (or says nothing, as many clients do); a
 * text/plain body that happens to parse is kept byte for byte, whitespace and all. `type` is
 * the output of values(): one Content-Type at most.
 */
function isJsonType (type: string): boolean {
  if (type === '0#') return true
  if (!type.startsWith('1#')) return false
  const value = type.slice(type.indexOf(':') + 1)
  const semi = value.indexOf(';')
  const media = (semi === -1 ? value : value.slice(0, semi)).trim().toLowerCase()
  return media === 'application/json' ||
    (media.startsWith('application/') && media.endsWith('+json'))
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
    const head = JSON.parse(b.subarray(4, 4 + n).toString('utf8')) as {
      s: number
      h: string[]
      t: number
    }
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
  readonly #shared: boolean
  #ttl: number | null = null
  #status = 0
  #headers: string[] = []
  #chunks: Buffer[] = []
  #size = 0
  #settled = false

  /** `shared`: CachePolicy.shared() of the request (false: stored only if the answer says so). */
  constructor (
    policy: CachePolicy,
    key: string,
    done: (entry: CacheEntry | null) => void,
    shared: boolean,
  ) {
    this.#policy = policy
    this.#key = key
    this.#done = done
    this.#shared = shared
  }

  head (status: number, headers: readonly string[]): void {
    this.#status = status
    this.#ttl = this.#policy.storable(status, headers, this.#shared)
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
    const entry: CacheEntry = {
      status: this.#status,
      headers: this.#headers,
      body: Buffer.concat(this.#chunks, this.#size),
      storedAt: Date.now(),
    }
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
