import { hash, randomUUID } from 'node:crypto'
import type { Dispatcher } from 'undici'
import type { DeliveryRoute, DeliveryTable } from './route.js'
import type { Config, DeliveryStoreConfig, RouteDeliveryConfig } from '../config/schema.js'
import { gatewayError, isGatewayError, type GatewayError } from '../errors/index.js'
import type { Logger } from '../observability/logger.js'
import type { DeliveryRouteStats, Metrics } from '../observability/metrics.js'
import type { Upstream } from '../upstream/balancer.js'
import {
  answered,
  dispatch,
  failed,
  pickTarget,
  release,
  upstreamRequest,
} from '../upstream/dispatch.js'
import { neverSent } from '../upstream/errors.js'
import type { Target } from '../upstream/target.js'
import { upstreamTimeouts } from '../upstream/timeouts.js'
import { DeliveryKeys, openHeaders, sealHeaders, storagePlan, type StoragePlan } from './secrets.js'
import type { DeliveryRecord, DeliveryStore, Settlement } from './store.js'

/*
 * Async routes: persist what the pipeline accepted (pipeline/accept.ts answers 202 once it is
 * durable) and deliver it (workers per route, at least once). The store is opened only when
 * some route is async, and kept across reloads while its config is unchanged; workers follow
 * the route table (a reload changes a route's upstream or schedule for the next attempt; a
 * removed route's messages wait in the store).
 */

/** An admitted async request, as the pipeline hands it over: plain data. */
export interface AsyncRequest {
  readonly route: DeliveryRoute
  /** The table the request was routed on: its credentials are stored by that table's rules. */
  readonly table: DeliveryTable
  readonly method: string
  /** Path and query for the upstream (after strip_prefix and rewrites), without a target's base path. */
  readonly target: string
  /** The forwarded header fields, flat [name, value, …], without Host and framing. */
  readonly headers: readonly string[]
  /** The Host the client sent (or the first target's, for a client that sent none). */
  readonly host: string
  readonly body: Buffer
  /** The Idempotency-Key field as sent (1 to 255 printable characters), or null. */
  readonly idempotencyKey: string | null
  /**
   * Who sent it, as its Idempotency-Key is scoped (pipeline/accept.ts callerOf): the
   * authenticated caller per provider, or the client's address on a route without auth. ''
   * when there is no key.
   */
  readonly caller: string
  /** The token minted for the caller, on a route that mints phantom tokens (see secrets.ts). */
  readonly phantomToken: string | null
}

/** A persisted request (or the earlier one its Idempotency-Key names). */
export interface Accepted {
  readonly id: string
  readonly duplicate: boolean
  /** Where the caller reads its state: `<status_path>/<id>`. */
  readonly statusUrl: string
}

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
  #table: DeliveryTable | null = null
  #statusPrefix = ''
  #expireTimer: NodeJS.Timeout | null = null
  #closed = false
  #keys = new DeliveryKeys({})
  /** Credential header names already logged as not stored, by route (once per process). */
  readonly #warnedUnkept = new Map<string, Set<string>>()

  constructor (logger: Logger, metrics: Metrics) {
    this.#logger = logger
    this.#metrics = metrics
    metrics.readDeliveriesFrom(this)
  }

  /** The store's per-route counts, for the delivery gauges (read at scrape time). */
  async deliveryStats (): Promise<Record<string, DeliveryRouteStats>> {
    return this.#store === null ? {} : await this.#store.stats(Date.now())
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
    if (!config.routes.some((r) => r.delivery?.mode === 'async')) {
      return { store: null, created: false }
    }
    const key = JSON.stringify(config.delivery.store)
    if (this.#store !== null && key === this.#storeKey) {
      return { store: this.#store, created: false }
    }
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
  commit (table: DeliveryTable, prepared: { store: DeliveryStore | null, created: boolean }): void {
    const old = this.#store
    if (prepared.created || prepared.store === null) {
      if (old !== null && old !== prepared.store) {
        for (const w of this.#workers.values()) w.stop()
        this.#workers.clear()
        old.close().catch((err: Error) =>
          this.#logger.warn({ msg: 'closing the old delivery store failed', err: err.message })
        )
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
        const worker = new RouteWorker(
          route,
          planFor(route, table),
          this.#store,
          this.#logger,
          this.#metrics,
          () => this.#keys,
        )
        this.#workers.set(name, worker)
        worker.start()
      }
    }
    if (this.#expireTimer === null) {
      // Delivered and dead records are kept `retention` for status lookups and replay.
      this.#expireTimer = setInterval(() => {
        const t = this.#table
        if (t === null || this.#store === null) return
        this.#store.expire(Date.now() - t.config.delivery.retention).catch((err: Error) =>
          this.#logger.warn({ msg: 'delivery retention sweep failed', err: err.message })
        )
      }, 60_000)
      this.#expireTimer.unref()
    }
  }

  /**
   * Persist an admitted request. The caller answers only once this resolved: the message is
   * durable then. A GatewayError: 503 when the store cannot keep it, 422 for an
   * Idempotency-Key reused with another request (its form is checked before, in the pipeline).
   */
  async enqueue (req: AsyncRequest): Promise<Accepted | GatewayError> {
    const store = this.#store
    const table = this.#table!
    if (store === null) {
      return gatewayError('GH_DELIVERY_STORE_UNAVAILABLE', 'The delivery store is not open', {
        headers: { 'retry-after': '5' },
      })
    }
    // Its form was checked where it came in (pipeline/accept.ts keyProblem).
    const key = req.idempotencyKey
    const route = req.route
    const id = randomUUID()
    // No credential is stored in the clear (see secrets.ts).
    const { headers, unkept } = sealHeaders(
      req.headers,
      planFor(route, req.table),
      id,
      req.phantomToken,
      this.#keys,
    )
    if (unkept !== null) this.#warnUnkept(route.name, unkept)
    // Stored last, as records have always kept it; each attempt decides whether it is sent (send()).
    headers.push('host', req.host)
    const body = req.body
    const fingerprint = hash(
      'sha256',
      Buffer.concat([Buffer.from(`${req.method}\0${req.target}\0`), body]),
      'base64',
    )
    const msg = {
      id,
      route: route.name,
      method: req.method,
      target: req.target,
      headers,
      body,
      idempotencyKey: key,
      // A digest: the store compares it and never needs to show who it was.
      caller: req.caller === '' ? '' : hash('sha256', req.caller, 'base64url').slice(0, 22),
      fingerprint,
      createdAt: Date.now(),
    }
    let result
    try {
      result = await store.enqueue(msg, table.config.delivery.idempotency_window)
    } catch (err) {
      if (isGatewayError(err)) return err
      return gatewayError(
        'GH_DELIVERY_STORE_UNAVAILABLE',
        'The delivery store cannot accept requests now; try again shortly',
        { reason: (err as Error).message, headers: { 'retry-after': '5' } },
      )
    }
    return {
      id: result.id,
      duplicate: result.duplicate,
      statusUrl: table.config.delivery.status_path + '/' + result.id,
    }
  }

  /** Once per route and header name: a caller's credential this route cannot store, so does not forward. */
  #warnUnkept (route: string, names: readonly string[]): void {
    let seen = this.#warnedUnkept.get(route)
    if (seen === undefined) this.#warnedUnkept.set(route, seen = new Set())
    for (const name of names) {
      if (seen.has(name)) continue
      seen.add(name)
      this.#logger.warn({
        msg:
          'async request stored without a credential header: set delivery.encryption_key to forward it',
        route,
        header: name,
      })
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

  async list (
    state: string | undefined,
    route: string | undefined,
    limit: number,
  ): Promise<DeliveryStatusView[]> {
    if (this.#store === null) return []
    const filter = {
      limit,
      ...(state === undefined ? {} : { state: state as DeliveryRecord['state'] }),
      ...(route === undefined ? {} : { route }),
    }
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
      new Promise<void>((resolve) => {
        timer = setTimeout(resolve, grace)
      }),
    ])
    clearTimeout(timer)
    this.#workers.clear()
    // Attempts still running are abandoned: their leases expire and they are delivered again.
    await this.#store?.close()
    this.#store = null
  }
}

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

const plans = new WeakMap<DeliveryRoute, StoragePlan>()

/** The route's storage plan, built on first use (a compiled route never changes). */
function planFor (route: DeliveryRoute, table: DeliveryTable): StoragePlan {
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
  if (
    /^status \d{3}$/.test(base) || /^older than max_age \(\d+ ms\) before delivery$/.test(base) ||
    /^claimed \d+ times without an outcome \(lease \d+ ms\)/.test(base)
  ) return error
  if (base.startsWith(CONNECT_ERROR)) return 'connect_error' + suffix
  if (base.startsWith(TIMEOUT)) return 'timeout' + suffix
  // Records written before errors carried their kind, and anything else (stored credentials
  // that no key opens: the key ids are the operator's business too).
  if (
    /^(?:no target of upstream|(?:ECONNREFUSED|ENOTFOUND|EAI_AGAIN|EHOSTUNREACH|ENETUNREACH|UND_ERR_CONNECT_TIMEOUT)\b)/
      .test(base)
  ) return 'connect_error' + suffix
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
type Attempt = { status: number, retryAfter: number | null } | {
  error: 'connect_error' | 'timeout'
  message: string
}

/**
 * Claims and delivers one route's messages, at most `concurrency` at once. A poison message
 * holds one slot for one attempt at a time, never the route: the others keep flowing.
 */
class RouteWorker {
  #route: DeliveryRoute
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

  constructor (
    route: DeliveryRoute,
    plan: StoragePlan,
    store: DeliveryStore,
    logger: Logger,
    metrics: Metrics,
    keys: () => DeliveryKeys,
  ) {
    this.#route = route
    this.#plan = plan
    this.#cfg = route.delivery!
    this.#keys = keys
    this.#store = store
    this.#logger = logger
    this.#metrics = metrics
  }

  update (route: DeliveryRoute, plan: StoragePlan): void {
    const changed = this.#cfg.max_attempts !== route.delivery!.max_attempts ||
      leaseFor(this.#cfg) !== leaseFor(route.delivery!)
    this.#route = route
    this.#plan = plan
    this.#cfg = route.delivery!
    if (changed) {
      this.#store.openRoute(route.name, {
        leaseMs: leaseFor(this.#cfg),
        maxAttempts: this.#cfg.max_attempts,
      }).catch(() => {})
    }
    this.#wake?.()
  }

  start (): void {
    this.#loop = this.#run().catch((err: Error) =>
      this.#logger.error({
        msg: 'delivery worker stopped',
        route: this.#route.name,
        err: err.stack,
      })
    )
  }

  stop (): void {
    this.#abort.abort()
    this.#wake?.()
  }

  /** Resolves once the loop has ended and no attempt is running. */
  async idle (): Promise<void> {
    await this.#loop
    if (this.#running === 0) return
    await new Promise<void>((resolve) => {
      this.#idle = resolve
    })
  }

  async #run (): Promise<void> {
    const signal = this.#abort.signal
    const name = this.#route.name
    while (!signal.aborted) {
      try {
        await this.#store.openRoute(name, {
          leaseMs: leaseFor(this.#cfg),
          maxAttempts: this.#cfg.max_attempts,
        })
        break
      } catch (err) {
        this.#logger.warn({
          msg: 'delivery store not ready; retrying',
          route: name,
          err: (err as Error).message,
        })
        await pause(1000, signal)
      }
    }
    while (!signal.aborted) {
      const free = this.#cfg.concurrency - this.#running
      if (free <= 0) {
        await new Promise<void>((resolve) => {
          this.#wake = resolve
        })
        this.#wake = null
        continue
      }
      let batch: DeliveryRecord[]
      try {
        batch = await this.#store.claim(name, free, 1000, signal)
      } catch (err) {
        if (signal.aborted) break
        this.#logger.warn({
          msg: 'claiming deliveries failed; retrying',
          route: name,
          err: (err as Error).message,
        })
        await pause(1000, signal)
        continue
      }
      for (const rec of batch) {
        this.#running++
        this.#deliver(rec).catch((err: Error) => {
          // The lease expires and the message comes back: nothing is lost.
          this.#logger.error({
            msg: 'delivery attempt failed unexpectedly',
            route: name,
            id: rec.id,
            err: err.stack,
          })
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
      return this.#settle(rec, {
        kind: 'dead',
        at: now,
        error: `older than max_age (${cfg.max_age} ms) before delivery`,
        status: rec.lastStatus,
      })
    }
    const headers = await openHeaders(rec.headers, {
      id: rec.id,
      keys: this.#keys(),
      plan: this.#plan,
      now,
    })
    if (!Array.isArray(headers)) {
      // Sent without it, the request would not be the one accepted; replay once the key is back.
      return this.#settle(rec, {
        kind: 'dead',
        at: now,
        error: clip(headers.error) + ' (not retried)',
        status: rec.lastStatus,
      })
    }
    const result = await send(route, rec, headers, attempt, cfg.timeout)
    const at = Date.now()
    if ('status' in result && result.status < 400) {
      return this.#settle(rec, { kind: 'delivered', status: result.status, at })
    }
    const error = 'status' in result
      ? `status ${result.status}`
      : clip(`${result.error}: ${result.message}`)
    const status = 'status' in result ? result.status : null
    const retryable = 'status' in result
      ? cfg.retry_on.includes(result.status)
      : cfg.retry_on.includes(result.error)
    if (!retryable) {
      return this.#settle(rec, { kind: 'dead', at, error: `${error} (not retried)`, status })
    }
    if (attempt >= cfg.max_attempts) {
      return this.#settle(rec, {
        kind: 'dead',
        at,
        error: `${error} (after ${attempt} attempts)`,
        status,
      })
    }
    let delay = backoff(cfg, attempt)
    // Retry-After from a 429 or 503 says when the upstream wants us back: never earlier.
    if ('status' in result && result.retryAfter !== null) delay = Math.max(delay, result.retryAfter)
    if (at + delay - rec.createdAt > cfg.max_age) {
      return this.#settle(rec, {
        kind: 'dead',
        at,
        error: `${error} (next attempt would pass max_age)`,
        status,
      })
    }
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
      this.#logger.warn({
        msg: 'delivery dead-lettered',
        route,
        id: rec.id,
        attempts: rec.attempts + 1,
        error: outcome.error,
      })
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
async function send (
  route: DeliveryRoute,
  rec: DeliveryRecord,
  headers: string[],
  attempt: number,
  timeout: number,
): Promise<Attempt> {
  const upstream = route.upstream
  const target = pickTarget(upstream, Date.now())
  if (target === null) {
    return {
      error: 'connect_error',
      message: `no target of upstream "${upstream.name}" is available`,
    }
  }
  // The Host the request came with: sent again with preserve_host, else the target's own.
  const host = takeHost(headers)
  headers.push('x-gatehouse-delivery-id', rec.id, 'x-gatehouse-delivery-attempt', String(attempt))
  const body = rec.body.length === 0 && (rec.method === 'GET' || rec.method === 'HEAD')
    ? null
    : rec.body
  // `timeout` bounds the whole attempt: connect, send and the whole response.
  const req = upstreamRequest(
    rec.method,
    rec.target,
    headers,
    route.preserveHost ? host : null,
    body,
    upstreamTimeouts(0, 0, timeout),
  )
  const outcome = await new Promise<Attempt | GatewayError>((resolve) =>
    dispatch(target, req, new DeliveryAttempt(upstream, target, resolve))
  )
  if (!isGatewayError(outcome)) return outcome
  // Mapped in one place (upstream/errors.ts); retry_on names the two kinds.
  return {
    error: neverSent(outcome) ? 'connect_error' : 'timeout',
    message: outcome.reason ?? outcome.detail,
  }
}

/** Remove the Host field from stored headers; its value, or null for a record without one. */
function takeHost (headers: string[]): string | null {
  for (let i = headers.length - 2; i >= 0; i -= 2) {
    if (headers[i]!.length === 4 && headers[i]!.toLowerCase() === 'host') {
      return headers.splice(i, 2)[1]!
    }
  }
  return null
}

/** The most of an answer read (and dropped) before the connection is cut instead. */
const DRAIN_LIMIT = 1024 * 1024

/**
 * The handler of one delivery attempt: the status and Retry-After are kept, the body is read
 * and dropped (up to DRAIN_LIMIT). Resolves with them, or with the mapped failure when no
 * answer came.
 */
class DeliveryAttempt implements Dispatcher.DispatchHandler {
  readonly #upstream: Upstream
  readonly #target: Target
  readonly #resolve: (outcome: Attempt | GatewayError) => void
  #abort: ((err?: Error) => void) | null = null
  #status = 0
  #retryAfter: string | undefined = undefined
  #bytes = 0

  constructor (
    upstream: Upstream,
    target: Target,
    resolve: (outcome: Attempt | GatewayError) => void,
  ) {
    this.#upstream = upstream
    this.#target = target
    this.#resolve = resolve
  }

  onConnect (abort: (err?: Error) => void): void {
    this.#abort = abort
  }

  onHeaders (statusCode: number, rawHeaders: Buffer[]): boolean {
    if (statusCode < 200) return true
    this.#status = statusCode
    answered(this.#upstream, this.#target)
    for (let i = 0; i < rawHeaders.length; i += 2) {
      const name = rawHeaders[i]!
      if (name.length === 11 && name.toString('latin1').toLowerCase() === 'retry-after') {
        this.#retryAfter = rawHeaders[i + 1]!.toString('latin1')
        break
      }
    }
    return true
  }

  onData (chunk: Buffer): boolean {
    this.#bytes += chunk.length
    if (this.#bytes <= DRAIN_LIMIT) return true
    // Not worth reading on: the status is what counts.
    this.#abort?.()
    return false
  }

  onComplete (): void {
    release(this.#target)
    this.#answer()
  }

  onError (err: Error): void {
    release(this.#target)
    // An answer whose body failed or was cut (DRAIN_LIMIT) is still an answer.
    if (this.#status !== 0) return this.#answer()
    // Not replayable: an attempt is not retried on another target (the schedule retries).
    this.#resolve(failed(this.#upstream, this.#target, err))
  }

  #answer (): void {
    this.#resolve({ status: this.#status, retryAfter: parseRetryAfter(this.#retryAfter) })
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
