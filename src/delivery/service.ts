import { hash, randomUUID } from 'node:crypto'
import { upstreamPath, type CompiledRoute, type RouteTable, type RouteExchange } from '../compile/table.js'
import type { Config, DeliveryStoreConfig, RouteDeliveryConfig } from '../config/schema.js'
import { gatewayError, isGatewayError, type GatewayError } from '../errors/index.js'
import type { Logger } from '../observability/logger.js'
import type { Metrics } from '../observability/metrics.js'
import { dropHeaders, isLengthField } from '../net/fields.js'
import { releaseSlot } from '../upstream/target.js'
import { isConnectFailure } from '../upstream/errors.js'
import dispatcherRequest from 'undici/lib/api/api-request.js'
import { DeliveryKeys, openHeaders, sealHeaders, storagePlan, type StoragePlan } from './secrets.js'
import type { DeliveryRecord, DeliveryStore, Settlement } from './store.js'

/*
 * Async routes: accept (persist, then 202) and deliver (workers per route, at least once).
 * The store is opened only when some route is async, and kept across reloads while its
 * config is unchanged; workers follow the route table (a reload changes a route's upstream
 * or schedule for the next attempt; a removed route's messages wait in the store).
 */

export interface DeliveryStatusView {
  id: string
  route: string
  state: string
  attempts: number
  next_attempt_at: string | null
  last_status: number | null
  last_error: string | null
  created_at: string
  updated_at: string
  body_bytes?: number
  method?: string
  target?: string
}

export class DeliveryService {
  readonly #logger: Logger
  readonly #metrics: Metrics
  #store: DeliveryStore | null = null
  #storeKey = ''
  readonly #workers = new Map<string, RouteWorker>()
  #table: RouteTable | null = null
  #statusPrefix = ''
  #expireTimer: NodeJS.Timeout | null = null
  #closed = false
  #keys = new DeliveryKeys({})
  /** Credential header names already logged as not stored, by route (once per process). */
  readonly #warnedUnkept = new Map<string, Set<string>>()

  constructor (logger: Logger, metrics: Metrics) {
    this.#logger = logger
    this.#metrics = metrics
    metrics.deliveryStats = async () => this.#store === null ? {} : await this.#store.stats(Date.now())
  }

  get store (): DeliveryStore | null {
    return this.#store
  }

  /** `<status_path>/` while some route is async, else '' (the request path skips the check). */
  get statusPrefix (): string {
    return this.#statusPrefix
  }

  /**
   * The store a config needs (null: no async route), reusing the running one when its config
   * is unchanged. A new store is started here; the caller commits or discards it.
   */
  async prepare (config: Config): Promise<{ store: DeliveryStore | null, created: boolean }> {
    if (!config.routes.some((r) => r.delivery?.mode === 'async')) return { store: null, created: false }
    const key = JSON.stringify(config.delivery.store)
    if (this.#store !== null && key === this.#storeKey) return { store: this.#store, created: false }
    const store = await openStore(config.delivery.store, this.#logger)
    try {
      await store.start()
    } catch (err) {
      await store.close().catch(() => {})
      throw err
    }
    return { store, created: true }
  }

  discard (prepared: { store: DeliveryStore | null, created: boolean }): void {
    if (prepared.created) prepared.store!.close().catch(() => {})
  }

  /** Make `table` (and its store) the running one: start, update or stop route workers. */
  commit (table: RouteTable, prepared: { store: DeliveryStore | null, created: boolean }): void {
    const old = this.#store
    if (prepared.created || prepared.store === null) {
      if (old !== null && old !== prepared.store) {
        for (const w of this.#workers.values()) w.stop()
        this.#workers.clear()
        old.close().catch((err: Error) => this.#logger.warn({ msg: 'closing the old delivery store failed', err: err.message }))
      }
      this.#store = prepared.store
      this.#storeKey = prepared.store === null ? '' : JSON.stringify(table.config.delivery.store)
    }
    this.#table = table
    this.#statusPrefix = this.#store === null ? '' : table.config.delivery.status_path + '/'
    const keys = new DeliveryKeys(table.config.delivery)
    if (keys.fingerprint !== this.#keys.fingerprint) this.#keys = keys
    const async = new Map(table.routes.filter((r) => r.delivery !== null).map((r) => [r.name, r]))
    for (const [name, w] of this.#workers) {
      if (!async.has(name)) {
        w.stop()
        this.#workers.delete(name)
      }
    }
    if (this.#store === null || this.#closed) return
    for (const [name, route] of async) {
      const w = this.#workers.get(name)
      if (w !== undefined) {
        w.update(route, planFor(route, table))
      } else {
        const worker = new RouteWorker(route, planFor(route, table), this.#store, this.#logger, this.#metrics, () => this.#keys)
        this.#workers.set(name, worker)
        worker.start()
      }
    }
    if (this.#expireTimer === null) {
      // Delivered and dead records are kept `retention` for status lookups and replay.
      this.#expireTimer = setInterval(() => {
        const t = this.#table
        if (t === null || this.#store === null) return
        this.#store.expire(Date.now() - t.config.delivery.retention).catch((err: Error) => this.#logger.warn({ msg: 'delivery retention sweep failed', err: err.message }))
      }, 60_000)
      this.#expireTimer.unref()
    }
  }

  /**
   * Persist the admitted request, then answer 202 (or the error: 503 when the store cannot
   * keep it, 422 for a reused Idempotency-Key). The 202 is written only after the store said
   * the message is durable.
   */
  async accept (ex: RouteExchange, encrypted: boolean, finishHeaders: (ex: RouteExchange, route: CompiledRoute, encrypted: boolean) => void): Promise<GatewayError | null> {
    const store = this.#store
    const route = ex.route!
    const table = this.#table!
    if (store === null) return gatewayError('GH_DELIVERY_STORE_UNAVAILABLE', 'The delivery store is not open', { headers: { 'retry-after': '5' } })
    const key = ex.header('idempotency-key')
    if (key !== null && (key.length === 0 || key.length > 255 || !PRINTABLE.test(key))) {
      return gatewayError('GH_BAD_REQUEST', 'Idempotency-Key must be 1 to 255 printable characters')
    }
    finishHeaders(ex, route, encrypted)
    // undici sets the length of the stored body itself.
    dropHeaders(ex.outHeaders, isLengthField)
    const id = randomUUID()
    // No credential is stored in the clear (see secrets.ts).
    const { headers, unkept } = sealHeaders(ex.outHeaders, planFor(route, ex.table as RouteTable), id, ex.phantomToken, this.#keys)
    if (unkept !== null) this.#warnUnkept(route.name, unkept)
    const method = ex.upstreamMethod ?? ex.method
    const target = (ex.upstreamPathOverride ?? upstreamPath(route, ex.path)) + ex.query
    const body = ex.bodyBuffer ?? EMPTY
    const fingerprint = hash('sha256', Buffer.concat([Buffer.from(`${method}\0${target}\0`), body]), 'base64')
    const msg = { id, route: route.name, method, target, headers, body, idempotencyKey: key, fingerprint, createdAt: Date.now() }
    let result
    try {
      result = await store.enqueue(msg, table.config.delivery.idempotency_window)
    } catch (err) {
      if (isGatewayError(err)) return err
      return gatewayError('GH_DELIVERY_STORE_UNAVAILABLE', 'The delivery store cannot accept requests now; try again shortly', { reason: (err as Error).message, headers: { 'retry-after': '5' } })
    }
    if (ex.finished) return null
    if (!result.duplicate) this.#metrics.deliveryEnqueued.labels(route.name).inc()
    const location = table.config.delivery.status_path + '/' + result.id
    const text = JSON.stringify({ delivery_id: result.id, status_url: location })
    const res = ex.res
    const out = ['content-type', 'application/json', 'content-length', String(Buffer.byteLength(text)), 'location', location, 'x-request-id', ex.requestId, 'cache-control', 'no-store']
    if (result.duplicate) out.push('idempotent-replayed', 'true')
    ex.pushRateLimitFields(out)
    const status = route.delivery!.ack_status
    ex.status = status
    ex.bytesOut = Buffer.byteLength(text)
    if (this.#closed) res.shouldKeepAlive = false
    res.writeHead(status, out as unknown as string[])
    res.end(text)
    return null
  }

  /** Once per route and header name: a caller's credential this route cannot store, so does not forward. */
  #warnUnkept (route: string, names: readonly string[]): void {
    let seen = this.#warnedUnkept.get(route)
    if (seen === undefined) this.#warnedUnkept.set(route, seen = new Set())
    for (const name of names) {
      if (seen.has(name)) continue
      seen.add(name)
      this.#logger.warn({ msg: 'async request stored without a credential header: set delivery.encryption_key to forward it', route, header: name })
    }
  }

  /** GET <status_path>/<id> on the proxy port: the delivery's state, never its body or headers. */
  async publicStatus (id: string): Promise<DeliveryStatusView | null> {
    if (this.#store === null || !ID.test(id)) return null
    const rec = await this.#store.get(id)
    return rec === null ? null : view(rec, false)
  }

  // --- admin ---------------------------------------------------------------------------------

  async get (id: string): Promise<DeliveryStatusView | null> {
    const rec = this.#store === null ? null : await this.#store.get(id)
    return rec === null ? null : view(rec, true)
  }

  async list (state: string | undefined, route: string | undefined, limit: number): Promise<DeliveryStatusView[]> {
    if (this.#store === null) return []
    const filter = { limit, ...(state === undefined ? {} : { state: state as DeliveryRecord['state'] }), ...(route === undefined ? {} : { route }) }
    return (await this.#store.list(filter)).map((r) => view(r, true))
  }

  async replay (which: { ids: string[] } | { dead: true, route?: string }): Promise<number> {
    return this.#store === null ? 0 : await this.#store.replay(which, Date.now())
  }

  async purge (state: 'dead' | 'delivered', route: string | undefined): Promise<number> {
    return this.#store === null ? 0 : await this.#store.purge(state, route)
  }

  status (): Record<string, { status: string, kind: string }> {
    return this.#store === null ? {} : { delivery: this.#store.status() }
  }

  /** Stop claiming; attempts in flight finish (up to `grace`); then the store closes. */
  async close (grace: number): Promise<void> {
    this.#closed = true
    if (this.#expireTimer !== null) clearInterval(this.#expireTimer)
    const workers = [...this.#workers.values()]
    for (const w of workers) w.stop()
    let timer: NodeJS.Timeout | undefined
    await Promise.race([
      Promise.all(workers.map((w) => w.idle())),
      new Promise<void>((resolve) => { timer = setTimeout(resolve, grace) }),
    ])
    clearTimeout(timer)
    this.#workers.clear()
    // Attempts still running are abandoned: their leases expire and they are delivered again.
    await this.#store?.close()
    this.#store = null
  }
}

const EMPTY = Buffer.alloc(0)
const PRINTABLE = /^[\x20-\x7e]+$/
const ID = /^[0-9a-f-]{36}$/

function view (r: DeliveryRecord, admin: boolean): DeliveryStatusView {
  return {
    id: r.id,
    route: r.route,
    state: r.state,
    attempts: r.attempts,
    next_attempt_at: r.state === 'pending' ? new Date(r.nextAttemptAt).toISOString() : null,
    last_status: r.lastStatus,
    // The detail (addresses, upstream names) is the operator's: callers get the kind of failure.
    last_error: admin ? r.lastError : publicError(r.lastError),
    created_at: new Date(r.createdAt).toISOString(),
    updated_at: new Date(r.updatedAt).toISOString(),
    ...(admin ? { method: r.method, target: r.target, body_bytes: r.body.length } : {}),
  }
}

const plans = new WeakMap<CompiledRoute, StoragePlan>()

/** The route's storage plan, built on first use (a compiled route never changes). */
function planFor (route: CompiledRoute, table: RouteTable): StoragePlan {
  let plan = plans.get(route)
  if (plan === undefined) plans.set(route, plan = storagePlan(route, table))
  return plan
}

/** Kept short: an error message must not grow a record much after it was accepted (the store's reserve). */
const MAX_ERROR = 200

function clip (text: string): string {
  return text.length <= MAX_ERROR ? text : text.slice(0, MAX_ERROR - 1) + '…'
}

/** Prefixes of last_error for a failure without an answer: the retry_on names. */
const CONNECT_ERROR = 'connect_error: '
const TIMEOUT = 'timeout: '
/** What an outcome adds to the error: `(not retried)`, `(after N attempts)`, `(next attempt would pass max_age)`. */
const SUFFIX = / \((?:not retried|after \d+ attempts|next attempt would pass max_age)\)$/

/**
 * last_error as callers see it. An answer's status and what the gateway decided are theirs to
 * know; a transport error's text names the upstream's address ("connect ECONNREFUSED
 * 10.0.3.7:8000", "no target of upstream \"ranker\""), which is not: only its kind is shown.
 */
export function publicError (error: string | null): string | null {
  if (error === null) return null
  const suffix = SUFFIX.exec(error)?.[0] ?? ''
  const base = suffix === '' ? error : error.slice(0, -suffix.length)
  if (/^status \d{3}$/.test(base) || /^older than max_age \(\d+ ms\) before delivery$/.test(base) || /^claimed \d+ times without an outcome \(lease \d+ ms\)/.test(base)) return error
  if (base.startsWith(CONNECT_ERROR)) return 'connect_error' + suffix
  if (base.startsWith(TIMEOUT)) return 'timeout' + suffix
  // Records written before errors carried their kind, and anything else (stored credentials
  // that no key opens: the key ids are the operator's business too).
  if (/^(?:no target of upstream|(?:ECONNREFUSED|ENOTFOUND|EAI_AGAIN|EHOSTUNREACH|ENETUNREACH|UND_ERR_CONNECT_TIMEOUT)\b)/.test(base)) return 'connect_error' + suffix
  if (/^(?:UND_ERR_|ECONNRESET|EPIPE|AbortError|TimeoutError)/.test(base)) return 'timeout' + suffix
  return 'the delivery failed' + suffix
}

async function openStore (cfg: DeliveryStoreConfig, logger: Logger): Promise<DeliveryStore> {
  if (cfg.kind === 'sqlite') {
    // On its own thread: the commits' fsyncs must not stop the gateway's event loop.
    const { ThreadedSqliteDeliveryStore } = await import('./sqlite-thread.js')
    return new ThreadedSqliteDeliveryStore(cfg, logger)
  }
  const { NatsDeliveryStore } = await import('./nats.js')
  return new NatsDeliveryStore(cfg, logger)
}

/** The outcome of one attempt, before the schedule is applied. */
type Attempt = { status: number, retryAfter: number | null } | { error: 'connect_error' | 'timeout', message: string }

/**
 * Claims and delivers one route's messages, at most `concurrency` at once. A poison message
 * holds one slot for one attempt at a time, never the route: the others keep flowing.
 */
class RouteWorker {
  #route: CompiledRoute
  #plan: StoragePlan
  #cfg: RouteDeliveryConfig
  readonly #keys: () => DeliveryKeys
  readonly #store: DeliveryStore
  readonly #logger: Logger
  readonly #metrics: Metrics
  readonly #abort = new AbortController()
  #running = 0
  #wake: (() => void) | null = null
  #idle: (() => void) | null = null
  #loop: Promise<void> | null = null

  constructor (route: CompiledRoute, plan: StoragePlan, store: DeliveryStore, logger: Logger, metrics: Metrics, keys: () => DeliveryKeys) {
    this.#route = route
    this.#plan = plan
    this.#cfg = route.delivery!
    this.#keys = keys
    this.#store = store
    this.#logger = logger
    this.#metrics = metrics
  }

  update (route: CompiledRoute, plan: StoragePlan): void {
    const changed = this.#cfg.max_attempts !== route.delivery!.max_attempts || leaseFor(this.#cfg) !== leaseFor(route.delivery!)
    this.#route = route
    this.#plan = plan
    this.#cfg = route.delivery!
    if (changed) this.#store.openRoute(route.name, { leaseMs: leaseFor(this.#cfg), maxAttempts: this.#cfg.max_attempts }).catch(() => {})
    this.#wake?.()
  }

  start (): void {
    this.#loop = this.#run().catch((err: Error) => this.#logger.error({ msg: 'delivery worker stopped', route: this.#route.name, err: err.stack }))
  }

  stop (): void {
    this.#abort.abort()
    this.#wake?.()
  }

  /** Resolves once the loop has ended and no attempt is running. */
  async idle (): Promise<void> {
    await this.#loop
    if (this.#running === 0) return
    await new Promise<void>((resolve) => { this.#idle = resolve })
  }

  async #run (): Promise<void> {
    const signal = this.#abort.signal
    const name = this.#route.name
    while (!signal.aborted) {
      try {
        await this.#store.openRoute(name, { leaseMs: leaseFor(this.#cfg), maxAttempts: this.#cfg.max_attempts })
        break
      } catch (err) {
        this.#logger.warn({ msg: 'delivery store not ready; retrying', route: name, err: (err as Error).message })
        await pause(1000, signal)
      }
    }
    while (!signal.aborted) {
      const free = this.#cfg.concurrency - this.#running
      if (free <= 0) {
        await new Promise<void>((resolve) => { this.#wake = resolve })
        this.#wake = null
        continue
      }
      let batch: DeliveryRecord[]
      try {
        batch = await this.#store.claim(name, free, 1000, signal)
      } catch (err) {
        if (signal.aborted) break
        this.#logger.warn({ msg: 'claiming deliveries failed; retrying', route: name, err: (err as Error).message })
        await pause(1000, signal)
        continue
      }
      for (const rec of batch) {
        this.#running++
        this.#deliver(rec).catch((err: Error) => {
          // The lease expires and the message comes back: nothing is lost.
          this.#logger.error({ msg: 'delivery attempt failed unexpectedly', route: name, id: rec.id, err: err.stack })
        }).finally(() => {
          this.#running--
          this.#wake?.()
          if (this.#running === 0) this.#idle?.()
        })
      }
    }
  }

  async #deliver (rec: DeliveryRecord): Promise<void> {
    const route = this.#route
    const cfg = this.#cfg
    const now = Date.now()
    const attempt = rec.attempts + 1
    if (now - rec.createdAt > cfg.max_age) {
      return this.#settle(rec, { kind: 'dead', at: now, error: `older than max_age (${cfg.max_age} ms) before delivery`, status: rec.lastStatus })
    }
    const headers = await openHeaders(rec.headers, { id: rec.id, keys: this.#keys(), plan: this.#plan, now })
    if (!Array.isArray(headers)) {
      // Sent without it, the request would not be the one accepted; replay once the key is back.
      return this.#settle(rec, { kind: 'dead', at: now, error: clip(headers.error) + ' (not retried)', status: rec.lastStatus })
    }
    const result = await send(route, rec, headers, attempt, cfg.timeout)
    const at = Date.now()
    if ('status' in result && result.status < 400) {
      return this.#settle(rec, { kind: 'delivered', status: result.status, at })
    }
    const error = 'status' in result ? `status ${result.status}` : clip(`${result.error}: ${result.message}`)
    const status = 'status' in result ? result.status : null
    const retryable = 'status' in result ? cfg.retry_on.includes(result.status) : cfg.retry_on.includes(result.error)
    if (!retryable) return this.#settle(rec, { kind: 'dead', at, error: `${error} (not retried)`, status })
    if (attempt >= cfg.max_attempts) return this.#settle(rec, { kind: 'dead', at, error: `${error} (after ${attempt} attempts)`, status })
    let delay = backoff(cfg, attempt)
    // Retry-After from a 429 or 503 says when the upstream wants us back: never earlier.
    if ('status' in result && result.retryAfter !== null) delay = Math.max(delay, result.retryAfter)
    if (at + delay - rec.createdAt > cfg.max_age) return this.#settle(rec, { kind: 'dead', at, error: `${error} (next attempt would pass max_age)`, status })
    return this.#settle(rec, { kind: 'retry', at, nextAttemptAt: at + delay, error, status })
  }

  async #settle (rec: DeliveryRecord, outcome: Settlement): Promise<void> {
    await this.#store.settle(rec.id, outcome)
    const route = rec.route
    if (outcome.kind === 'delivered') {
      this.#metrics.deliveryDelivered.labels(route).inc()
      this.#metrics.deliveryLatency.labels(route).observe((outcome.at - rec.createdAt) / 1000)
    } else if (outcome.kind === 'retry') {
      this.#metrics.deliveryRetried.labels(route).inc()
    } else {
      this.#metrics.deliveryDead.labels(route).inc()
      this.#logger.warn({ msg: 'delivery dead-lettered', route, id: rec.id, attempts: rec.attempts + 1, error: outcome.error })
    }
  }
}

/**
 * A claim outlives the longest attempt (its timeout), so a live worker's message is never
 * handed to another; twice that bounds how long a crashed process's claims wait.
 */
function leaseFor (cfg: RouteDeliveryConfig): number {
  return Math.max(cfg.timeout * 2, cfg.timeout + 1_000)
}

/** initial × factor^(attempt-1), capped at max, moved by ±jitter. */
export function backoff (cfg: RouteDeliveryConfig, attempt: number): number {
  const b = cfg.backoff
  const base = Math.min(b.max, b.initial * Math.pow(b.factor, attempt - 1))
  return Math.max(0, Math.round(base * (1 + b.jitter * (2 * Math.random() - 1))))
}

/**
 * One attempt: the stored request (with `headers`, as opened from the stored ones) to a target of
 * the route's upstream, the answer read and dropped.
 */
async function send (route: CompiledRoute, rec: DeliveryRecord, headers: string[], attempt: number, timeout: number): Promise<Attempt> {
  const upstream = route.upstream
  const target = upstream.pick(Date.now())
  if (target === null) return { error: 'connect_error', message: `no target of upstream "${upstream.name}" is available` }
  // Host is the last field (see finishRequestHeaders); the target's own unless preserve_host.
  if (!route.preserveHost && headers.length >= 2 && headers[headers.length - 2]!.toLowerCase() === 'host') headers[headers.length - 1] = target.authority
  headers.push('x-gatehouse-delivery-id', rec.id, 'x-gatehouse-delivery-attempt', String(attempt))
  target.inFlight++
  try {
    // undici's request API, unbound (the pools come from a deep import without it; see target.ts).
    const res = await dispatcherRequest.call(target.pool, {
      origin: target.origin,
      path: target.basePath + rec.target,
      method: rec.method as 'POST',
      headers,
      body: rec.body.length === 0 && (rec.method === 'GET' || rec.method === 'HEAD') ? null : rec.body,
      headersTimeout: timeout,
      bodyTimeout: timeout,
      signal: AbortSignal.timeout(timeout),
    })
    await res.body.dump({ limit: 1024 * 1024 }).catch(() => {})
    upstream.recordSuccess(target)
    const ra = res.headers['retry-after']
    return { status: res.statusCode, retryAfter: parseRetryAfter(Array.isArray(ra) ? ra[0] : ra) }
  } catch (err) {
    const e = err as { code?: string, message?: string, name?: string }
    if (isConnectFailure(err)) {
      upstream.recordConnectFailure(target, Date.now())
      return { error: 'connect_error', message: `${e.code} ${e.message ?? ''}`.trim() }
    }
    // Timeouts, resets and aborted sends: the upstream may or may not have acted (at least once).
    return { error: 'timeout', message: `${e.code ?? e.name ?? 'error'} ${e.message ?? ''}`.trim() }
  } finally {
    releaseSlot(target)
  }
}

/** Retry-After as milliseconds: delta-seconds or an HTTP date (RFC 9110 §10.2.3). */
export function parseRetryAfter (v: string | undefined): number | null {
  if (v === undefined) return null
  if (/^\s*\d+\s*$/.test(v)) return Number(v) * 1000
  const t = Date.parse(v)
  return Number.isNaN(t) ? null : Math.max(0, t - Date.now())
}

function pause (ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve()
    const timer = setTimeout(done, ms)
    function done (): void {
      clearTimeout(timer)
      signal.removeEventListener('abort', done)
      resolve()
    }
    signal.addEventListener('abort', done, { once: true })
  })
}
