import { mkdirSync } from 'node:fs'
import { dirname } from 'node:path'
import { importModule } from '../util/import.js'
import type { DeliveryStoreConfig } from '../config/schema.js'
import { gatewayError, type GatewayError } from '../errors/index.js'
import type {
  DeliveryFilter,
  DeliveryRecord,
  DeliveryState,
  DeliveryStore,
  EnqueueResult,
  NewDelivery,
  RouteStats,
  Settlement,
} from './store.js'

// The subset of better-sqlite3 used here. The package ships no types (and @types/better-sqlite3
// is not a dependency), so the module is loaded through a specifier TypeScript does not resolve
// and typed by these interfaces.
interface RunResult {
  changes: number
  lastInsertRowid: number | bigint
}
interface Statement<Row = unknown> {
  run(...params: unknown[]): RunResult
  get(...params: unknown[]): Row | undefined
  all(...params: unknown[]): Row[]
}
interface Database {
  prepare<Row = unknown>(sql: string): Statement<Row>
  pragma(source: string, options?: { simple?: boolean }): unknown
  exec(sql: string): void
  transaction<A extends unknown[], R>(
    fn: (...args: A) => R,
  ): ((...args: A) => R) & { immediate: (...args: A) => R }
  close(): void
  readonly inTransaction: boolean
}
type DatabaseConstructor = new(filename: string, options?: { timeout?: number }) => Database
const SQLITE_MODULE = 'better-sqlite3'

interface Row {
  id: string
  route: string
  method: string
  target: string
  headers: string
  body: Buffer
  idempotency_key: string | null
  caller: string
  fingerprint: string
  created_at: number
  state: DeliveryState
  attempts: number
  next_attempt_at: number
  lease_until: number
  last_error: string | null
  last_status: number | null
  updated_at: number
}

export type SqliteConfig = Extract<DeliveryStoreConfig, { kind: 'sqlite' }>

/** What the store logs through: the gateway's logger, or (in the store's worker thread) a relay to it. */
export interface StoreLogger {
  error(obj: Record<string, unknown>): void
  info(obj: Record<string, unknown>): void
}

/*
 * Version 2 keeps each request's headers and body in a table of their own, delivery_payloads.
 * In version 1 they were columns of the deliveries row, and that row is rewritten by every
 * settle: SQLite writes the new row (overflow pages for the body included) before it frees the
 * old, so recording the outcome of a large request needed as much free space as the request,
 * and a full store could not record the outcomes that would have emptied it. Now a state change
 * rewrites a small row, and a delivered request's payload is deleted (its body and headers are
 * not needed again, and its credentials should not outlive it). The columns stay, empty, so
 * that files of both versions have one shape; version 1 files are migrated when opened.
 *
 * A payload's key is an INTEGER PRIMARY KEY (the rowid, which VACUUM keeps), held by its
 * record's payload_id: appending to a rowid table costs about what the old single INSERT did,
 * where a second random-UUID index measured 25-30% less enqueue throughput.
 *
 * Version 3 scopes idempotency keys to their caller (NewDelivery.caller): one key used by two
 * callers names two deliveries. Records from before have caller '' (no request has it now), so
 * their keys match nothing new: a request retried across the upgrade within the window may be
 * stored twice, which at-least-once delivery allows, and none is lost or given another's id.
 */
const SCHEMA_VERSION = 3

const IDEMPOTENCY_INDEX =
  'CREATE UNIQUE INDEX deliveries_idempotency ON deliveries (route, caller, idempotency_key) WHERE idempotency_key IS NOT NULL;'

const SCHEMA = `
CREATE TABLE deliveries (
  id TEXT PRIMARY KEY,
  route TEXT NOT NULL,
  method TEXT NOT NULL,
  target TEXT NOT NULL,
  headers TEXT NOT NULL,
  body BLOB NOT NULL,
  idempotency_key TEXT,
  fingerprint TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  state TEXT NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  next_attempt_at INTEGER NOT NULL,
  lease_until INTEGER NOT NULL DEFAULT 0,
  last_error TEXT,
  last_status INTEGER,
  updated_at INTEGER NOT NULL,
  payload_id INTEGER,
  caller TEXT NOT NULL DEFAULT ''
);
-- Claiming: the due pending messages of one route, in the order they are attempted.
CREATE INDEX deliveries_claim ON deliveries (route, state, next_attempt_at, created_at);
-- One live delivery per (route, caller, key); a key outside the window is cleared (set NULL).
${IDEMPOTENCY_INDEX}
-- Listing newest first (optionally by state), and retention (expire) by state and age.
CREATE INDEX deliveries_created ON deliveries (created_at);
CREATE INDEX deliveries_state ON deliveries (state, updated_at);
`

/** Version 2's additions (see SCHEMA_VERSION). */
const PAYLOADS = `
CREATE TABLE IF NOT EXISTS delivery_payloads (
  id INTEGER PRIMARY KEY,
  headers TEXT NOT NULL,
  body BLOB NOT NULL
);
-- Whatever deletes a record (purge, retention) or lets go of its payload (delivered) deletes
-- the payload: a rowid can be handed out again, so no record may keep pointing at one.
CREATE TRIGGER IF NOT EXISTS delivery_payloads_gone AFTER DELETE ON deliveries WHEN OLD.payload_id IS NOT NULL
BEGIN
  DELETE FROM delivery_payloads WHERE id = OLD.payload_id;
END;
CREATE TRIGGER IF NOT EXISTS delivery_payloads_released AFTER UPDATE OF payload_id ON deliveries
  WHEN OLD.payload_id IS NOT NULL AND OLD.payload_id IS NOT NEW.payload_id
BEGIN
  DELETE FROM delivery_payloads WHERE id = OLD.payload_id;
END;
`
/** A record with its payload; a delivered one has none (its columns in deliveries are empty). */
const RECORD =
  `SELECT d.id, d.route, d.method, d.target, COALESCE(p.headers, d.headers) AS headers, COALESCE(p.body, d.body) AS body,
  d.idempotency_key, d.caller, d.fingerprint, d.created_at, d.state, d.attempts, d.next_attempt_at, d.lease_until, d.last_error, d.last_status, d.updated_at
  FROM deliveries d LEFT JOIN delivery_payloads p ON p.id = d.payload_id`
/** Rows moved per transaction by the version 1 migration, and at most this many payload bytes. */
const MIGRATE_ROWS = 4096
const MIGRATE_BYTES = 16 * 1024 * 1024

/** Most operations written in one transaction; more wait for the next flush (a turn later). */
const MAX_BATCH = 1000
/** Rows deleted per statement by purge and expire, yielding between them. */
const DELETE_CHUNK = 5000
/** For a route that claims before openRoute. */
const DEFAULT_LEASE_MS = 30_000
/** Waiting for a lock held by another process blocks the event loop (better-sqlite3 is synchronous). */
const BUSY_TIMEOUT_MS = 2000
const RETRY_AFTER_S = '5'
/**
 * SQLite copies the WAL into the database file (and fsyncs it) inside the COMMIT that grows the
 * WAL past this many pages (measured when this ran on the gateway's event loop; in the store's
 * thread the stall delays that batch's acks the same way). The default, 1000 pages (4 MiB), stalls for
 * 10-20 ms at a time (measured with 1 KiB bodies on a VM disk: p99 ack latency 17-19 ms with 50
 * callers enqueueing flat out, 9-11 ms at 5,000/s). 200 pages means more, shorter stalls: p99
 * 8-9 ms and 4-5 ms, for ~10% less peak throughput. A checkpoint in a worker thread does not
 * block the loop, but its fsyncs compete with the commits' for the same disk: it measured no
 * better, with more moving parts.
 */
const WAL_CHECKPOINT_PAGES = 200
/**
 * Pages kept free for settles and replays once enqueues see the store as full (5%, at least 8):
 * a state change rewrites index entries and may need a page, and a store too full to record
 * deliveries would deliver the same messages again and again.
 */
const RESERVE_FRACTION = 0.05
const RESERVE_MIN_PAGES = 8
/**
 * Bytes each pending message is allowed to grow by before it leaves the pending state: a retry
 * or dead-letter writes last_error (at most ~200 characters, see service.ts), last_status and a
 * longer state into its row and index entries, and a page split can double that. Enqueues keep
 * this much room per pending message on top of the reserve, so that a store of many small
 * messages can record every outcome even when full.
 */
const GROWTH_BYTES = 512

/**
 * Per operation of a batch: an enqueue's answer, the route of a retry settle (null for other
 * settles), a GatewayError (idempotency conflict), or the SQLite error that failed this
 * operation alone.
 */
type Result = EnqueueResult | GatewayError | string | null | { sqlite: unknown }

type Op =
  {
    kind: 'enqueue'
    msg: NewDelivery
    windowMs: number
    resolve: (r: EnqueueResult) => void
    reject: (e: unknown) => void
  } |
  {
    kind: 'settle'
    id: string
    outcome: Settlement
    resolve: () => void
    reject: (e: unknown) => void
    retried?: true
  }

interface Statements {
  syncNormal: Statement
  syncFull: Statement
  insert: Statement
  insertPayload: Statement
  dropPayload: Statement
  pendingCount: Statement<{ n: number }>
  byKey: Statement<{ id: string, fingerprint: string, created_at: number }>
  clearKey: Statement
  settle: Statement<{ route: string }>
  get: Statement<Row>
  due: Statement<Row>
  lease: Statement
  nextDue: Statement<{ at: number | null }>
  replayId: Statement<{ route: string }>
  replayDead: Statement<{ route: string }>
  replayDeadRoute: Statement<{ route: string }>
  stats: Statement<{ route: string, pending: number, dead: number, oldest: number | null }>
  used: Statement<{ used: number }>
}

/**
 * The delivery log in one SQLite file (WAL, synchronous=FULL), for a single gateway machine.
 *
 * better-sqlite3 is synchronous, so every write blocks its thread for the fsync. Enqueues and
 * settles are therefore group-committed: those made in one turn of the event loop are written in
 * one transaction, with one fsync, and their promises settle after the COMMIT. At 50 concurrent
 * callers that is one fsync per ~50 acks instead of one per ack. The gateway runs this class in a
 * worker thread of its own (sqlite-thread.ts), so those fsyncs never stop its event loop.
 */
export class SqliteDeliveryStore implements DeliveryStore {
  readonly kind = 'sqlite' as const
  readonly #cfg: SqliteConfig
  readonly #logger: StoreLogger
  #db: Database | null = null
  #stmts: Statements | null = null
  #writeBatch: ((batch: Op[], results: Result[]) => number) | null = null
  #claimTx:
    ((route: string, max: number, now: number, leaseUntil: number) => DeliveryRecord[]) |
    null = null
  /** list, purge and expire statements, prepared on first use. */
  readonly #cached = new Map<string, Statement<Row>>()
  #closed = false
  #queue: Op[] = []
  #flushScheduled = false
  readonly #leases = new Map<string, number>()
  /** Claims waiting for work, by route: an enqueue or replay here wakes them. */
  readonly #waiters = new Map<string, Set<() => void>>()
  /** The last write error (cleared by a successful write), for status(). */
  #writeError: { code: string, message: string } | null = null
  #lastErrorLog = 0
  /** Pending messages, counted at start and kept up to date (for the growth reserve). */
  #pending = 0

  constructor (cfg: SqliteConfig, logger: StoreLogger) {
    this.#cfg = cfg
    this.#logger = logger
  }

  async start (): Promise<void> {
    if (this.#db !== null) return
    if (this.#closed) throw new Error('the sqlite delivery store is closed')
    // Loaded only when async delivery is configured: the CLI bundle and every other route never
    // pay for the native addon.
    const { default: Sqlite } = await importModule<{ default: DatabaseConstructor }>(SQLITE_MODULE)
    // close() may have run while the module loaded: it must not find a database opened after it.
    if (this.#closed) throw new Error('the sqlite delivery store is closed')
    const path = this.#cfg.path
    let db: Database | null = null
    try {
      if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true })
      db = new Sqlite(path, { timeout: BUSY_TIMEOUT_MS })
      db.pragma('journal_mode = WAL')
      // FULL: in WAL mode, NORMAL may lose the last commits on power loss, and a 202 is a promise.
      db.pragma('synchronous = FULL')
      db.pragma(`wal_autocheckpoint = ${WAL_CHECKPOINT_PAGES}`)
      // Without a limit the WAL keeps its high-water size (after a large purge, say) for good.
      db.pragma('journal_size_limit = 4194304')
      // max_size bounds the main database file: inserts past it fail with SQLITE_FULL (503) and
      // the space purge and expire free is reused. Not persistent: set on every open (SQLite
      // keeps it at the current page count if the file is already larger).
      const pageSize = Number(db.pragma('page_size', { simple: true }))
      const maxPages = Math.max(32, Math.floor(this.#cfg.max_size / pageSize))
      // Before the limit is set: a migration may need room for one chunk more than the file has.
      migrate(db, (obj) => this.#logger.info({ ...obj, path }))
      db.pragma(`max_page_count = ${maxPages}`)
      const enqueueLimit = maxPages -
        Math.max(RESERVE_MIN_PAGES, Math.ceil(maxPages * RESERVE_FRACTION))
      const s = prepare(db)
      this.#stmts = s
      this.#pending = s.pendingCount.get()?.n ?? 0
      const conn = db
      // Returns how many messages became pending (enqueues) less those that stopped being (settled).
      const writeBatch = db.transaction((batch: Op[], results: Result[]): number => {
        // Pages in use: read once, then estimated (generously) until near the limit.
        let used = -1
        let pendingDelta = 0
        for (let i = 0; i < batch.length; i++) {
          const op = batch[i]!
          // Refused before SQLite runs out of pages: an INSERT that hits max_page_count rolls
          // back the whole transaction, not just itself.
          if (op.kind === 'enqueue') {
            const need = pagesFor(op.msg, pageSize) +
              Math.ceil((this.#pending + pendingDelta + 1) * GROWTH_BYTES / pageSize)
            if (used < 0 || used + need > enqueueLimit) used = s.used.get()?.used ?? 0
            if (used + need > enqueueLimit) {
              results[i] = {
                sqlite: Object.assign(new Error('the database reached max_size'), {
                  code: 'SQLITE_FULL',
                }),
              }
              continue
            }
            used += pagesFor(op.msg, pageSize)
          }
          try {
            if (op.kind === 'enqueue') {
              const r = insertOne(s, op.msg, op.windowMs)
              if ('duplicate' in r && !r.duplicate) pendingDelta++
              results[i] = r
            } else {
              const r = settleOne(s, op.id, op.outcome)
              if (r.final) pendingDelta--
              results[i] = r.wake
            }
          } catch (err) {
            // SQLite undid just this statement and the transaction goes on: this operation
            // fails alone. If it rolled the whole transaction back, so does the batch.
            if (!conn.inTransaction || !isOwnFailure(err)) throw err
            results[i] = { sqlite: err }
          }
        }
        return pendingDelta
      })
      // IMMEDIATE: take the write lock up front rather than fail to upgrade a read lock (BUSY).
      this.#writeBatch = writeBatch.immediate
      this.#claimTx =
        db.transaction((route: string, max: number, now: number, leaseUntil: number) => {
          const rows = s.due.all(route, now, now, max)
          for (const r of rows) {
            s.lease.run(leaseUntil, r.id)
            r.lease_until = leaseUntil
          }
          return rows.map(toRecord)
        }).immediate
    } catch (err) {
      try {
        db?.close()
      } catch {}
      throw new Error(`cannot open the delivery store at ${path}: ${(err as Error).message}`, {
        cause: err,
      })
    }
    this.#db = db
  }

  status (): { status: 'ok' | 'unavailable', kind: string, [key: string]: unknown } {
    const ok = this.#db !== null &&
      (this.#writeError === null || this.#writeError.code === 'SQLITE_FULL')
    return {
      status: ok ? 'ok' : 'unavailable',
      kind: 'sqlite',
      path: this.#cfg.path,
      full: this.#writeError?.code === 'SQLITE_FULL',
      ...(this.#writeError === null ? {} : { error: this.#writeError.message }),
    }
  }

  enqueue (msg: NewDelivery, idempotencyWindowMs: number): Promise<EnqueueResult> {
    return new Promise((resolve, reject) => {
      if (this.#db === null) {
        return reject(
          unavailable(
            this.#closed ? 'the delivery store is closed' : 'the delivery store is not started',
          ),
        )
      }
      this.#queue.push({ kind: 'enqueue', msg, windowMs: idempotencyWindowMs, resolve, reject })
      this.#scheduleFlush()
    })
  }

  settle (id: string, outcome: Settlement): Promise<void> {
    return new Promise((resolve, reject) => {
      if (this.#db === null) {
        return reject(
          unavailable(
            this.#closed ? 'the delivery store is closed' : 'the delivery store is not started',
          ),
        )
      }
      this.#queue.push({ kind: 'settle', id, outcome, resolve, reject })
      this.#scheduleFlush()
    })
  }

  #scheduleFlush (): void {
    if (this.#flushScheduled) return
    this.#flushScheduled = true
    setImmediate(this.#flush)
  }

  /** Writes up to MAX_BATCH queued operations in one transaction, then answers each. */
  readonly #flush = (): void => {
    this.#flushScheduled = false
    const batch = this.#queue.length <= MAX_BATCH ? this.#queue : this.#queue.slice(0, MAX_BATCH)
    this.#queue = this.#queue.length <= MAX_BATCH ? [] : this.#queue.slice(MAX_BATCH)
    if (this.#queue.length > 0) this.#scheduleFlush()
    if (batch.length === 0) return
    const writeBatch = this.#writeBatch
    if (this.#db === null || writeBatch === null) {
      const err = unavailable('the delivery store is closed')
      for (const op of batch) op.reject(err)
      return
    }
    const results: Result[] = new Array(batch.length).fill(null)
    try {
      this.#pending += writeBatch(batch, results)
    } catch (err) {
      // Nothing of the batch was committed (SQLite rolled back, or better-sqlite3 did).
      const e = this.#writeFailed(err)
      // Out of pages despite the reserve: the enqueues are refused, but the settles are tried
      // once more without them, since recording outcomes is what lets the store drain.
      const settles = batch.filter((op) => op.kind === 'settle' && op.retried === undefined)
      if ((err as { code?: unknown }).code === 'SQLITE_FULL' && settles.length > 0) {
        for (const op of batch) if (op.kind === 'enqueue' || op.retried === true) op.reject(e)
        for (const op of settles) if (op.kind === 'settle') op.retried = true
        this.#queue.unshift(...settles)
        this.#scheduleFlush()
        return
      }
      for (const op of batch) op.reject(e)
      return
    }
    this.#writeError = null
    const woken = new Set<string>()
    for (let i = 0; i < batch.length; i++) {
      const op = batch[i]!
      const r = results[i]
      if (r !== null && typeof r === 'object' && 'sqlite' in r) {
        op.reject(this.#writeFailed(r.sqlite))
      } else if (op.kind === 'settle') {
        op.resolve()
        // A retry may now fall due before the time a waiting claim computed.
        if (typeof r === 'string') woken.add(r)
      } else if (r === null || r === undefined || typeof r === 'string' || r instanceof Error) {
        op.reject(r instanceof Error ? r : unavailable('the delivery was not written'))
      } else {
        op.resolve(r)
        if (!r.duplicate) woken.add(op.msg.route)
      }
    }
    for (const route of woken) this.#wake(route)
  }

  /** A failed write as the 503 clients see; logged (at most every 10 s) with the SQLite error. */
  #writeFailed (err: unknown): GatewayError {
    const code = typeof (err as { code?: unknown }).code === 'string'
      ? (err as { code: string }).code
      : 'UNKNOWN'
    const message = (err as Error).message ?? String(err)
    this.#writeError = { code, message }
    const full = code === 'SQLITE_FULL'
    const now = Date.now()
    if (now - this.#lastErrorLog >= 10_000) {
      this.#lastErrorLog = now
      this.#logger.error({
        msg: full ? 'delivery store full' : 'delivery store write failed',
        path: this.#cfg.path,
        code,
        err: message,
      })
    }
    return gatewayError(
      'GH_DELIVERY_STORE_UNAVAILABLE',
      full
        ? 'The delivery store is full; try again later'
        : 'The delivery store cannot accept requests right now; try again later',
      {
        reason: `sqlite ${code}: ${message}`,
        headers: { 'retry-after': RETRY_AFTER_S },
      },
    )
  }

  async openRoute (route: string, opts: { leaseMs: number, maxAttempts: number }): Promise<void> {
    this.#leases.set(route, opts.leaseMs)
  }

  async claim (
    route: string,
    max: number,
    waitMs: number,
    signal: AbortSignal,
  ): Promise<DeliveryRecord[]> {
    const deadline = Date.now() + waitMs
    for (;;) {
      if (signal.aborted) return []
      const { s } = this.#open()
      const now = Date.now()
      const rows = this.#claimNow(s, route, max, now)
      if (rows.length > 0) return rows
      if (now >= deadline) return []
      // Nothing claimable: sleep until the first of the next retry or lease falling due, the
      // deadline, an enqueue or replay here, or the abort. Another process's writes (a CLI
      // replay) are seen at the latest by the deadline.
      const next = s.nextDue.get(route)?.at ?? null
      const until = next === null ? deadline : Math.min(deadline, next)
      await this.#waitFor(route, Math.max(1, until - now), signal)
      // Woken by close(): as if aborted.
      if (this.#closed) return []
    }
  }

  #claimNow (s: Statements, route: string, max: number, now: number): DeliveryRecord[] {
    const leaseUntil = now + (this.#leases.get(route) ?? DEFAULT_LEASE_MS)
    // A lease need not survive a power loss (the process that held it is gone then too, and an
    // earlier claim is at-least-once anyway), so claims skip the fsync; the next FULL commit
    // syncs their WAL frames with its own.
    s.syncNormal.run()
    try {
      return this.#claimTx!(route, max, now, leaseUntil)
    } catch (err) {
      throw this.#writeFailed(err)
    } finally {
      s.syncFull.run()
    }
  }

  #waitFor (route: string, ms: number, signal: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      let set = this.#waiters.get(route)
      if (set === undefined) this.#waiters.set(route, set = new Set())
      const waiters = set
      const done = (): void => {
        clearTimeout(timer)
        signal.removeEventListener('abort', done)
        waiters.delete(done)
        if (waiters.size === 0 && this.#waiters.get(route) === waiters) this.#waiters.delete(route)
        resolve()
      }
      const timer = setTimeout(done, ms)
      signal.addEventListener('abort', done, { once: true })
      waiters.add(done)
    })
  }

  #wake (route: string): void {
    const set = this.#waiters.get(route)
    if (set === undefined) return
    for (const w of [...set]) w()
  }

  async get (id: string): Promise<DeliveryRecord | null> {
    const row = this.#open().s.get.get(id)
    return row === undefined ? null : toRecord(row)
  }

  async list (filter: DeliveryFilter): Promise<DeliveryRecord[]> {
    const { db } = this.#open()
    const where: string[] = []
    const params: unknown[] = []
    if (filter.state !== undefined) {
      where.push('d.state = ?')
      params.push(filter.state)
    }
    if (filter.route !== undefined) {
      where.push('d.route = ?')
      params.push(filter.route)
    }
    const sql = `${RECORD} ${
      where.length === 0 ? '' : `WHERE ${where.join(' AND ')}`
    } ORDER BY d.created_at DESC, d.rowid DESC LIMIT ?`
    let stmt = this.#cached.get(sql)
    if (stmt === undefined) this.#cached.set(sql, stmt = db.prepare<Row>(sql))
    return stmt.all(...params, Math.max(0, filter.limit)).map(toRecord)
  }

  async replay (
    which: { ids: readonly string[] } | { dead: true, route?: string },
    now: number,
  ): Promise<number> {
    const { db, s } = this.#open()
    let routes: Array<{ route: string }>
    try {
      routes = db.transaction(() => {
        if ('ids' in which) return which.ids.flatMap((id) => s.replayId.all({ now, id }))
        return which.route === undefined
          ? s.replayDead.all({ now })
          : s.replayDeadRoute.all({ now, route: which.route })
      }).immediate()
    } catch (err) {
      throw this.#writeFailed(err)
    }
    this.#pending += routes.length
    for (const route of new Set(routes.map((r) => r.route))) this.#wake(route)
    return routes.length
  }

  async purge (state: 'dead' | 'delivered', route: string | undefined): Promise<number> {
    return route === undefined
      ? await this.#deleteChunked('state = ?', [state])
      : await this.#deleteChunked('state = ? AND route = ?', [state, route])
  }

  async expire (before: number): Promise<number> {
    return await this.#deleteChunked('state IN (\'delivered\', \'dead\') AND updated_at < ?', [
      before,
    ])
  }

  /** Deletes in chunks, yielding between them: a large purge must not stall the gateway. */
  async #deleteChunked (where: string, params: unknown[]): Promise<number> {
    let total = 0
    for (;;) {
      const { db } = this.#open()
      let stmt = this.#cached.get(where)
      if (stmt === undefined) {
        this.#cached.set(
          where,
          stmt = db.prepare(
            `DELETE FROM deliveries WHERE rowid IN (SELECT rowid FROM deliveries WHERE ${where} LIMIT ${DELETE_CHUNK})`,
          ),
        )
      }
      let n: number
      try {
        n = stmt.run(...params).changes
      } catch (err) {
        throw this.#writeFailed(err)
      }
      total += n
      if (n < DELETE_CHUNK) return total
      await new Promise((resolve) => setImmediate(resolve))
    }
  }

  async stats (_now: number): Promise<Record<string, RouteStats>> {
    const out: Record<string, RouteStats> = {}
    for (const r of this.#open().s.stats.all()) {
      out[r.route] = { pending: r.pending, dead: r.dead, oldestPendingAt: r.oldest }
    }
    return out
  }

  async close (): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    // Write what was already accepted (its callers are waiting for the commit), then close.
    while (this.#queue.length > 0) this.#flush()
    const db = this.#db
    this.#db = null
    this.#stmts = null
    this.#writeBatch = null
    this.#claimTx = null
    this.#cached.clear()
    for (const route of [...this.#waiters.keys()]) this.#wake(route)
    db?.close()
  }

  #open (): { db: Database, s: Statements } {
    if (this.#db === null || this.#stmts === null) {
      throw unavailable(
        this.#closed ? 'the delivery store is closed' : 'the delivery store is not started',
      )
    }
    return { db: this.#db, s: this.#stmts }
  }
}

export function unavailable (reason: string): GatewayError {
  return gatewayError(
    'GH_DELIVERY_STORE_UNAVAILABLE',
    'The delivery store is not available; try again later',
    {
      reason,
      headers: { 'retry-after': RETRY_AFTER_S },
    },
  )
}

/**
 * Pages a new message may take: its row (overflow pages for a large body) and, generously, an
 * index page split for each index.
 */
function pagesFor (msg: NewDelivery, pageSize: number): number {
  let bytes = 256 + msg.body.length + msg.target.length + msg.method.length +
    msg.fingerprint.length + msg.caller.length + (msg.idempotencyKey?.length ?? 0)
  for (const h of msg.headers) bytes += h.length + 4
  return Math.ceil(bytes / (pageSize - 64)) + 5
}

/** Errors that concern one operation of a batch (no room for it, its id taken), not the file. */
function isOwnFailure (err: unknown): boolean {
  const code = (err as { code?: unknown }).code
  return typeof code === 'string' &&
    (code === 'SQLITE_FULL' || code.startsWith('SQLITE_CONSTRAINT'))
}

function migrate (db: Database, log: (obj: Record<string, unknown>) => void): void {
  const version = Number(db.pragma('user_version', { simple: true }))
  if (version > SCHEMA_VERSION) {
    throw new Error(
      `the database has schema version ${version}; this Gatehouse knows up to ${SCHEMA_VERSION} (written by a newer version?)`,
    )
  }
  if (version === SCHEMA_VERSION) return
  if (version === 0) {
    db.transaction(() => {
      db.exec(SCHEMA + PAYLOADS)
      db.pragma(`user_version = ${SCHEMA_VERSION}`)
    }).immediate()
    return
  }
  const t0 = performance.now()
  const rows = db.prepare<{ n: number }>('SELECT COUNT(*) AS n FROM deliveries').get()?.n ?? 0
  log({
    msg: `delivery store migrating to schema version ${SCHEMA_VERSION}`,
    from: version,
    records: rows,
  })
  if (version < 2) migratePayloads(db)
  migrateCallers(db)
  log({
    msg: `delivery store migrated to schema version ${SCHEMA_VERSION}`,
    from: version,
    records: rows,
    ms: Math.round(performance.now() - t0),
  })
}

/**
 * Version 2 → 3: the caller column (its default, '', on every existing record: SQLite adds a
 * column with a constant default without rewriting a row) and the idempotency index over
 * (route, caller, key). One transaction: a crash leaves version 2 as it was.
 */
function migrateCallers (db: Database): void {
  db.transaction(() => {
    const columns = db.prepare<{ name: string }>(
      'SELECT name FROM pragma_table_info(\'deliveries\')',
    )
      .all().map((c) => c.name)
    if (!columns.includes('caller')) {
      db.exec('ALTER TABLE deliveries ADD COLUMN caller TEXT NOT NULL DEFAULT \'\'')
    }
    db.exec('DROP INDEX IF EXISTS deliveries_idempotency')
    db.exec(IDEMPOTENCY_INDEX)
    db.pragma(`user_version = ${SCHEMA_VERSION}`)
  }).immediate()
}

/**
 * Version 1 → 2: each record's headers and body move to delivery_payloads, except a delivered
 * record's, which are dropped. In chunks, each its own transaction, so that neither the WAL nor
 * the file grows by more than a chunk; a migration cut short (a crash) resumes where it was: a
 * row already moved has its payload_id. Each lease_until of 0 becomes a time in the past (free),
 * so that later leases rewrite it in place (see prepare, `insert`). The chunks skip the fsync:
 * redoing one after a power loss is harmless.
 */
function migratePayloads (db: Database): void {
  const columns = db.prepare<{ name: string }>('SELECT name FROM pragma_table_info(\'deliveries\')')
    .all().map((c) => c.name)
  if (!columns.includes('payload_id')) {
    db.exec('ALTER TABLE deliveries ADD COLUMN payload_id INTEGER')
  }
  db.exec(PAYLOADS)
  const chunk = db.prepare<{ r: number, state: DeliveryState, moved: number, size: number }>(
    `SELECT rowid AS r, state, payload_id IS NOT NULL AS moved,
    length(headers) + length(body) AS size FROM deliveries WHERE rowid > ? ORDER BY rowid LIMIT ?`,
  )
  const move = db.prepare(
    'INSERT INTO delivery_payloads (headers, body) SELECT headers, body FROM deliveries WHERE rowid = ?',
  )
  const clear = db.prepare(`UPDATE deliveries SET headers = '[]', body = x'', payload_id = ?,
    lease_until = CASE WHEN lease_until = 0 THEN MIN(created_at, next_attempt_at) ELSE lease_until END WHERE rowid = ?`)
  const clearMoved = db.prepare(
    'UPDATE deliveries SET headers = \'[]\', body = x\'\' WHERE rowid = ?',
  )
  db.pragma('synchronous = NORMAL')
  // A checkpoint per chunk rather than several (each syncs the file).
  db.pragma(`wal_autocheckpoint = ${2 * MIGRATE_BYTES / 4096}`)
  let last = 0
  for (;;) {
    const rows = chunk.all(last, MIGRATE_ROWS)
    if (rows.length === 0) break
    db.transaction(() => {
      let bytes = 0
      for (const row of rows) {
        if (row.moved === 1) clearMoved.run(row.r)
        else clear.run(row.state === 'delivered' ? null : move.run(row.r).lastInsertRowid, row.r)
        last = row.r
        bytes += row.size
        if (bytes >= MIGRATE_BYTES) break
      }
    }).immediate()
  }
  db.pragma('user_version = 2')
  db.pragma('synchronous = FULL')
  db.pragma(`wal_autocheckpoint = ${WAL_CHECKPOINT_PAGES}`)
}

function prepare (db: Database): Statements {
  return {
    syncNormal: db.prepare('PRAGMA synchronous = NORMAL'),
    syncFull: db.prepare('PRAGMA synchronous = FULL'),
    // lease_until starts at a time (in the past: free), not 0, so that a lease overwrites it with
    // a number of the same size: the row keeps its size and SQLite rewrites it in place, so a
    // claim never needs a free page, however full the store is.
    insert: db.prepare(
      `INSERT INTO deliveries (id, route, method, target, headers, body, idempotency_key, caller, fingerprint, created_at, state, attempts, next_attempt_at, lease_until, updated_at, payload_id)
      VALUES (?, ?, ?, ?, '[]', x'', ?, ?, ?, ?, 'pending', 0, ?, ?, ?, ?)`,
    ),
    insertPayload: db.prepare('INSERT INTO delivery_payloads (headers, body) VALUES (?, ?)'),
    dropPayload: db.prepare('DELETE FROM delivery_payloads WHERE id = ?'),
    pendingCount: db.prepare('SELECT COUNT(*) AS n FROM deliveries WHERE state = \'pending\''),
    byKey: db.prepare(
      'SELECT id, fingerprint, created_at FROM deliveries WHERE route = ? AND caller = ? AND idempotency_key = ?',
    ),
    clearKey: db.prepare('UPDATE deliveries SET idempotency_key = NULL WHERE id = ?'),
    // Only a pending message is settled: a late settle from an attempt whose lease expired (and
    // which another worker already finished) must not turn a delivered message back to pending.
    // lease_until = the time of the outcome: free, and a number the size of a lease (see insert).
    // Delivered: payload_id goes NULL, and the trigger deletes the payload (body and headers).
    settle: db.prepare(
      `UPDATE deliveries SET state = @state, attempts = attempts + 1, next_attempt_at = @next, lease_until = @at,
      last_error = @error, last_status = @status, updated_at = @at, payload_id = CASE WHEN @state = 'delivered' THEN NULL ELSE payload_id END
      WHERE id = @id AND state = 'pending' RETURNING route`,
    ),
    get: db.prepare(`${RECORD} WHERE d.id = ?`),
    due: db.prepare(
      `${RECORD} WHERE d.route = ? AND d.state = 'pending' AND d.next_attempt_at <= ? AND d.lease_until <= ?
      ORDER BY d.next_attempt_at, d.created_at LIMIT ?`,
    ),
    lease: db.prepare('UPDATE deliveries SET lease_until = ? WHERE id = ?'),
    nextDue: db.prepare(
      'SELECT MIN(MAX(next_attempt_at, lease_until)) AS at FROM deliveries WHERE route = ? AND state = \'pending\'',
    ),
    replayId: db.prepare(
      `UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = @now, lease_until = @now, updated_at = @now
      WHERE id = @id AND state = 'dead' RETURNING route`,
    ),
    replayDead: db.prepare(
      `UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = @now, lease_until = @now, updated_at = @now
      WHERE state = 'dead' RETURNING route`,
    ),
    replayDeadRoute: db.prepare(
      `UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = @now, lease_until = @now, updated_at = @now
      WHERE state = 'dead' AND route = @route RETURNING route`,
    ),
    stats: db.prepare(`SELECT route, SUM(state = 'pending') AS pending, SUM(state = 'dead') AS dead,
      MIN(CASE WHEN state = 'pending' THEN created_at END) AS oldest
      FROM deliveries WHERE state IN ('pending', 'dead') GROUP BY route`),
    used: db.prepare(
      'SELECT (SELECT page_count FROM pragma_page_count()) - (SELECT freelist_count FROM pragma_freelist_count()) AS used',
    ),
  }
}

/** One enqueue inside the batch transaction: the idempotency check sees earlier rows of the same batch. */
function insertOne (
  s: Statements,
  msg: NewDelivery,
  windowMs: number,
): EnqueueResult | GatewayError {
  if (msg.idempotencyKey !== null) {
    const prev = s.byKey.get(msg.route, msg.caller, msg.idempotencyKey)
    if (prev !== undefined) {
      if (msg.createdAt - prev.created_at < windowMs) {
        if (prev.fingerprint === msg.fingerprint) return { id: prev.id, duplicate: true }
        return gatewayError(
          'GH_IDEMPOTENCY_CONFLICT',
          'This Idempotency-Key was already used with a different request',
          {
            reason: `key reused on route ${msg.route} (first delivery ${prev.id})`,
          },
        )
      }
      // Outside the window the old delivery keeps its record but no longer owns the key.
      s.clearKey.run(prev.id)
    }
  }
  // Due at once, ordered by createdAt among the due (one ahead of this clock must not hold it back).
  const now = Date.now()
  const due = Math.min(msg.createdAt, now)
  // The payload first (the record holds its key). Should the record's INSERT fail alone (the
  // batch goes on), its payload is taken back here; a savepoint would do the same at half the
  // batch's throughput (measured: 1 KiB bodies, 50 callers).
  const payload = s.insertPayload.run(JSON.stringify(msg.headers), msg.body).lastInsertRowid
  try {
    s.insert.run(
      msg.id,
      msg.route,
      msg.method,
      msg.target,
      msg.idempotencyKey,
      msg.caller,
      msg.fingerprint,
      msg.createdAt,
      due,
      due,
      msg.createdAt,
      payload,
    )
  } catch (err) {
    try {
      s.dropPayload.run(payload)
    } catch {}
    throw err
  }
  return { id: msg.id, duplicate: false }
}

/**
 * One settle inside the batch transaction. `wake`: for a retry, the route (its claims may wake
 * sooner); `final`: the message stopped being pending.
 */
function settleOne (
  s: Statements,
  id: string,
  o: Settlement,
): { wake: string | null, final: boolean } {
  switch (o.kind) {
    case 'delivered':
      // Neither the body nor the headers are needed again (the payload goes): the status keeps the rest.
      return s.settle.get({
          state: 'delivered',
          next: o.at,
          at: o.at,
          error: null,
          status: o.status,
          id,
        }) === undefined
        ? NOT_SETTLED
        : FINAL
    case 'retry':
      return {
        wake: s.settle.get({
          state: 'pending',
          next: o.nextAttemptAt,
          at: o.at,
          error: o.error,
          status: o.status,
          id,
        })?.route ?? null,
        final: false,
      }
    case 'dead':
      return s.settle.get({
          state: 'dead',
          next: o.at,
          at: o.at,
          error: o.error,
          status: o.status,
          id,
        }) === undefined
        ? NOT_SETTLED
        : FINAL
  }
}
const NOT_SETTLED = { wake: null, final: false }
const FINAL = { wake: null, final: true }

function toRecord (r: Row): DeliveryRecord {
  return {
    id: r.id,
    route: r.route,
    method: r.method,
    target: r.target,
    headers: JSON.parse(r.headers) as string[],
    body: r.body,
    idempotencyKey: r.idempotency_key,
    caller: r.caller,
    fingerprint: r.fingerprint,
    createdAt: r.created_at,
    state: r.state,
    attempts: r.attempts,
    nextAttemptAt: r.next_attempt_at,
    lastError: r.last_error,
    lastStatus: r.last_status,
    updatedAt: r.updated_at,
  }
}
