import type { GatewayError } from '../errors/index.js'

/*
 * The durable log behind async routes. A route in async mode writes the whole request here
 * (enqueue), answers 202 only once the store says it is durable, and delivery workers claim,
 * attempt and settle messages. Two backends implement this one interface (sqlite for one
 * machine, NATS JetStream for a fleet), and one contract suite
 * (test/contract/delivery-store.test.ts) runs against both.
 */

export type DeliveryState = 'pending' | 'delivered' | 'dead'

/** A request as accepted, before any attempt. */
export interface NewDelivery {
  /** Random, unguessable (it names the public status resource). */
  readonly id: string
  readonly route: string
  readonly method: string
  /** Upstream path and query (after strip_prefix, rewrites and plugins), as sent at each attempt. */
  readonly target: string
  /**
   * Header fields to forward, flat [name, value, …], hop-by-hop fields removed and credentials
   * sealed (see secrets.ts). Empty in a delivered record: its headers go with its body.
   */
  readonly headers: readonly string[]
  /** Empty in a delivered record (deleted at delivery). */
  readonly body: Buffer
  /** The client's Idempotency-Key, or null. */
  readonly idempotencyKey: string | null
  /**
   * Whose key it is: a digest of the caller (its identity, or its address on a route without
   * auth; see DeliveryService.enqueue). Keys are unique per (route, caller, key), so two callers
   * never share a delivery. '' in records without a key, and in records stored before keys
   * were per caller: no request with a key has it.
   */
  readonly caller: string
  /** SHA-256 (base64) of method, target and body: a repeated key with another fingerprint is a conflict. */
  readonly fingerprint: string
  /** Epoch ms. */
  readonly createdAt: number
}

export interface DeliveryRecord extends NewDelivery {
  readonly state: DeliveryState
  /** Attempts finished so far. */
  readonly attempts: number
  /** Epoch ms before which a pending message is not attempted (again). */
  readonly nextAttemptAt: number
  /** The last attempt's error ("connect ECONNREFUSED", "status 500", …), null before any. */
  readonly lastError: string | null
  readonly lastStatus: number | null
  /** Epoch ms of the last state change. */
  readonly updatedAt: number
}

export type EnqueueResult =
  { readonly id: string, readonly duplicate: false } |
  /** The Idempotency-Key was seen within the window with the same fingerprint: the first id. */
  { readonly id: string, readonly duplicate: true }

/** The outcome of one attempt; each counts as one attempt (attempts + 1). */
export type Settlement =
  { readonly kind: 'delivered', readonly status: number, readonly at: number } |
  {
    readonly kind: 'retry'
    readonly at: number
    readonly nextAttemptAt: number
    readonly error: string
    readonly status: number | null
  } |
  {
    readonly kind: 'dead'
    readonly at: number
    readonly error: string
    readonly status: number | null
  }

export interface DeliveryFilter {
  readonly state?: DeliveryState
  readonly route?: string
  /** Most records returned (newest first). */
  readonly limit: number
}

export interface RouteStats {
  readonly pending: number
  readonly dead: number
  /** createdAt of the oldest pending message, or null. */
  readonly oldestPendingAt: number | null
}

export interface DeliveryStore {
  readonly kind: 'sqlite' | 'nats'
  /** Open files or connections and create tables, streams and consumers. */
  start(): Promise<void>
  /**
   * Persist a new message. Resolves only once it is durable (fsynced, or acknowledged by the
   * JetStream server). Rejects with a GatewayError: GH_IDEMPOTENCY_CONFLICT (422) for a key
   * reused with another fingerprint, GH_DELIVERY_STORE_UNAVAILABLE (503, Retry-After) when the
   * store is full, unwritable or unreachable. Never resolves for a message it did not keep.
   */
  enqueue(msg: NewDelivery, idempotencyWindowMs: number): Promise<EnqueueResult>
  /**
   * Declare a route's delivery settings before claiming (idempotent; called again after a
   * reload that changed them). `leaseMs`: how long a claim is held before it is claimable
   * again (the process died mid-attempt). `maxAttempts`: the worker dead-letters at this count
   * itself; a backend may use it as a safety net (JetStream max_deliver).
   */
  openRoute(route: string, opts: { leaseMs: number, maxAttempts: number }): Promise<void>
  /**
   * Take up to `max` pending messages of `route` that are due (nextAttemptAt <= now) and not
   * leased, and lease them. Resolves at once when work is due; otherwise it may wait up to
   * `waitMs` for some (an enqueue or replay, or a retry falling due), and resolves with []
   * when `signal` aborts. Oldest due first.
   */
  claim(route: string, max: number, waitMs: number, signal: AbortSignal): Promise<DeliveryRecord[]>
  /** Record an attempt's outcome for a claimed message. */
  settle(id: string, outcome: Settlement): Promise<void>
  get(id: string): Promise<DeliveryRecord | null>
  list(filter: DeliveryFilter): Promise<DeliveryRecord[]>
  /**
   * Dead messages back to pending with attempts reset, due now: the ids given (only those
   * that are dead), or every dead message (of `route`, when given) for 'dead'. Returns how
   * many were replayed.
   */
  replay(
    which: { ids: readonly string[] } | { dead: true, route?: string },
    now: number,
  ): Promise<number>
  /** Delete dead or delivered records (of `route`, when given); returns how many. */
  purge(state: 'dead' | 'delivered', route: string | undefined): Promise<number>
  /** Delete delivered and dead records last updated before `before` (retention). */
  expire(before: number): Promise<number>
  stats(now: number): Promise<Record<string, RouteStats>>
  status(): { status: 'ok' | 'unavailable', kind: string, [key: string]: unknown }
  close(): Promise<void>
}

export type DeliveryStoreError = GatewayError
