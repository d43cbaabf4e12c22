import { extname, join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { Worker } from 'node:worker_threads'
import { gatewayError, type ErrorCode, type GatewayError } from '../errors/index.js'
import type { Logger } from '../observability/logger.js'
import { unavailable, type SqliteConfig } from './sqlite.js'
import type {
  DeliveryFilter,
  DeliveryRecord,
  DeliveryStore,
  EnqueueResult,
  NewDelivery,
  RouteStats,
  Settlement,
} from './store.js'

/*
 * The sqlite delivery store as the gateway runs it: SqliteDeliveryStore inside a worker thread
 * (sqlite-worker.ts), driven by messages.
 *
 * Why: better-sqlite3 is synchronous, so on the gateway's own thread every group commit's fsync
 * (1-5 ms on a VM disk, more when a WAL checkpoint rides along) stopped the event loop: no
 * request was parsed and no 202 written meanwhile, and at c=50 the ack p99 was twice its p50.
 * In a worker the fsync blocks only the worker; requests keep arriving and the next batch
 * gathers while the current one syncs (pipelined group commit).
 *
 * Calls made in one turn of the event loop go to the worker in one message, and its replies
 * come back batched the same way, so a burst of 50 enqueues costs two messages, not 100.
 */

export type Op =
  'start' |
  'enqueue' |
  'settle' |
  'openRoute' |
  'claim' |
  'get' |
  'list' |
  'replay' |
  'purge' |
  'expire' |
  'stats' |
  'close'
export interface Call {
  id: number
  op: Op
  args: unknown[]
}
export type SerializedError =
  {
    gateway: {
      code: ErrorCode
      detail: string
      reason: string | null
      headers: Record<string, string> | null
    }
  } |
  { message: string, code: string | null }
export type Reply = { id: number, ok: true, value: unknown } | {
  id: number
  ok: false
  error: SerializedError
}
/** Cancels come after the calls of the same message: a claim aborted in the turn it was made is still cancelled. */
export interface ToWorker {
  calls: Call[]
  cancels: number[]
}
export type StoreStatus = { status: 'ok' | 'unavailable', kind: string, [key: string]: unknown }
export type ToMain = { replies: Reply[], status?: StoreStatus } | {
  log: Record<string, unknown>
  level?: 'info'
}

interface Pending {
  resolve: (v: unknown) => void
  reject: (e: unknown) => void
}

const RESPAWN_MIN_MS = 1000
const RESPAWN_MAX_MS = 30_000

export class ThreadedSqliteDeliveryStore implements DeliveryStore {
  readonly kind = 'sqlite' as const
  readonly #cfg: SqliteConfig
  readonly #logger: Logger
  #worker: Worker | null = null
  #starting: Promise<void> | null = null
  #nextId = 1
  readonly #pending = new Map<number, Pending>()
  #outbox: Call[] = []
  #cancels: number[] = []
  #flushScheduled = false
  #status: StoreStatus
  /**
   * Why the store cannot take calls (its thread died), until a new thread has opened the file
   * and been given the routes' settings; calls meanwhile fail at once with a 503.
   */
  #dead: string | null = null
  /** Threads that exited or failed (their late events are ignored). */
  readonly #goneWorkers = new WeakSet<Worker>()
  #closed = false
  #closing: Promise<void> | null = null
  /** Routes' settings, given again to a thread started after one died. */
  readonly #routes = new Map<string, { leaseMs: number, maxAttempts: number }>()
  #respawnTimer: NodeJS.Timeout | null = null
  #respawnDelay = RESPAWN_MIN_MS
  /** The first start succeeded: a thread that dies after it is replaced (not before: start fails). */
  #up = false

  readonly #onWorker: ((worker: Worker) => void) | undefined

  /** `onWorker` sees each thread started (a test stops one to check what a crash does). */
  constructor (
    cfg: SqliteConfig,
    logger: Logger,
    options: { onWorker?: (worker: Worker) => void } = {},
  ) {
    this.#cfg = cfg
    this.#logger = logger
    this.#onWorker = options.onWorker
    this.#status = { status: 'unavailable', kind: 'sqlite', path: cfg.path, full: false }
  }

  start (): Promise<void> {
    if (this.#closed || this.#closing !== null) {
      return Promise.reject(new Error('the sqlite delivery store is closed'))
    }
    this.#starting ??= this.#spawn().then(() => {
      this.#up = true
    }, async (err: unknown) => {
      await this.close()
      throw err
    })
    return this.#starting
  }

  async #spawn (): Promise<void> {
    const worker = spawnWorker({ cfg: this.#cfg })
    this.#worker = worker
    this.#onWorker?.(worker)
    // Kept referenced only while a call is outstanding: an idle store does not hold the process open.
    worker.unref()
    // A thread that was replaced may still say something on its way out: only the current one counts.
    worker.on('message', (msg: ToMain) => {
      if (this.#worker === worker) this.#onMessage(msg)
    })
    worker.on(
      'error',
      (err) => this.#gone(worker, `the delivery store's thread failed: ${err.message}`),
    )
    worker.on(
      'exit',
      (code) => this.#gone(worker, `the delivery store's thread exited (code ${code})`),
    )
    // These go to the new thread even while the store refuses other calls (#dead).
    await this.#call('start', [], true)
    for (const [route, opts] of this.#routes) await this.#call('openRoute', [route, opts], true)
    this.#dead = null
  }

  status (): StoreStatus {
    if (this.#dead !== null && !this.#closed) {
      return { ...this.#status, status: 'unavailable', error: this.#dead }
    }
    return this.#status
  }

  enqueue (msg: NewDelivery, idempotencyWindowMs: number): Promise<EnqueueResult> {
    return this.#call('enqueue', [msg, idempotencyWindowMs]) as Promise<EnqueueResult>
  }

  settle (id: string, outcome: Settlement): Promise<void> {
    return this.#call('settle', [id, outcome]) as Promise<void>
  }

  openRoute (route: string, opts: { leaseMs: number, maxAttempts: number }): Promise<void> {
    this.#routes.set(route, opts)
    return this.#call('openRoute', [route, opts]) as Promise<void>
  }

  async claim (
    route: string,
    max: number,
    waitMs: number,
    signal: AbortSignal,
  ): Promise<DeliveryRecord[]> {
    if (signal.aborted) return []
    // The id #call is about to give this claim (it is assigned synchronously below).
    const id = this.#nextId
    const onAbort = (): void => {
      this.#cancels.push(id)
      this.#schedule()
    }
    signal.addEventListener('abort', onAbort, { once: true })
    try {
      return (await this.#call('claim', [route, max, waitMs]) as DeliveryRecord[]).map(record)
    } finally {
      signal.removeEventListener('abort', onAbort)
    }
  }

  async get (id: string): Promise<DeliveryRecord | null> {
    const r = await this.#call('get', [id]) as DeliveryRecord | null
    return r === null ? null : record(r)
  }

  async list (filter: DeliveryFilter): Promise<DeliveryRecord[]> {
    return (await this.#call('list', [filter]) as DeliveryRecord[]).map(record)
  }

  replay (
    which: { ids: readonly string[] } | { dead: true, route?: string },
    now: number,
  ): Promise<number> {
    return this.#call('replay', [which, now]) as Promise<number>
  }

  purge (state: 'dead' | 'delivered', route: string | undefined): Promise<number> {
    return this.#call('purge', [state, route]) as Promise<number>
  }

  expire (before: number): Promise<number> {
    return this.#call('expire', [before]) as Promise<number>
  }

  stats (now: number): Promise<Record<string, RouteStats>> {
    return this.#call('stats', [now]) as Promise<Record<string, RouteStats>>
  }

  close (): Promise<void> {
    this.#closing ??= this.#close()
    return this.#closing
  }

  async #close (): Promise<void> {
    if (this.#respawnTimer !== null) clearTimeout(this.#respawnTimer)
    this.#respawnTimer = null
    const worker = this.#worker
    // Calls already made are sent first: the store writes what was accepted before it closes.
    if (worker !== null && !this.#goneWorkers.has(worker)) {
      try {
        await this.#call('close', [], true)
      } catch {}
    }
    this.#closed = true
    this.#status = { status: 'unavailable', kind: 'sqlite', path: this.#cfg.path, full: false }
    if (worker !== null) await worker.terminate()
    this.#fail(unavailable('the delivery store is closed'))
  }

  #call (op: Op, args: unknown[], internal = false): Promise<unknown> {
    return new Promise((resolve, reject) => {
      if (this.#closed || this.#worker === null) {
        return reject(
          unavailable(
            this.#closed ? 'the delivery store is closed' : 'the delivery store is not started',
          ),
        )
      }
      if (this.#dead !== null && !internal) return reject(unavailable(this.#dead))
      if (this.#goneWorkers.has(this.#worker)) {
        return reject(unavailable(this.#dead ?? 'the delivery store\'s thread stopped'))
      }
      const id = this.#nextId++
      this.#pending.set(id, { resolve, reject })
      if (this.#pending.size === 1) this.#worker.ref()
      this.#outbox.push({ id, op, args })
      this.#schedule()
    })
  }

  #schedule (): void {
    if (this.#flushScheduled) return
    this.#flushScheduled = true
    // After this turn's I/O callbacks: every request parsed in it joins the one message.
    setImmediate(() => {
      this.#flushScheduled = false
      this.#flush()
    })
  }

  readonly #flush = (): void => {
    const calls = this.#outbox
    const cancels = this.#cancels
    this.#outbox = []
    this.#cancels = []
    if (
      (calls.length === 0 && cancels.length === 0) || this.#worker === null ||
      this.#goneWorkers.has(this.#worker)
    ) return
    try {
      this.#worker.postMessage({ calls, cancels } satisfies ToWorker)
    } catch (err) {
      // A value structured cloning refuses (a caller's bug): these calls fail, not the process.
      for (const c of calls) {
        const p = this.#pending.get(c.id)
        this.#pending.delete(c.id)
        p?.reject(
          unavailable(
            `the delivery store's thread could not be given the call: ${(err as Error).message}`,
          ),
        )
      }
      if (this.#pending.size === 0) this.#worker.unref()
    }
  }

  #onMessage (msg: ToMain): void {
    if ('log' in msg) {
      if (msg.level === 'info') this.#logger.info(msg.log)
      else this.#logger.error(msg.log)
      return
    }
    if (msg.status !== undefined) this.#status = msg.status
    for (const r of msg.replies) {
      const p = this.#pending.get(r.id)
      if (p === undefined) continue
      this.#pending.delete(r.id)
      if (r.ok) p.resolve(r.value)
      else p.reject(deserialize(r.error))
    }
    if (this.#pending.size === 0) this.#worker?.unref()
  }

  /**
   * The thread died: every outstanding call fails (none was acknowledged), and so does every
   * call until a new thread has opened the file, tried after 1 s, then after up to 30 s. That is
   * safe: the file is intact (SQLite recovers from a commit cut short), and the process keeps
   * serving its other routes meanwhile instead of answering 503 for good.
   */
  #gone (worker: Worker, why: string): void {
    if (this.#worker !== worker || this.#goneWorkers.has(worker)) return
    this.#goneWorkers.add(worker)
    this.#dead = why
    this.#fail(unavailable(why))
    if (this.#closed || this.#closing !== null || !this.#up) return
    this.#logger.error({
      msg: 'delivery store thread stopped',
      path: this.#cfg.path,
      err: why,
      restart_in_ms: this.#respawnDelay,
    })
    this.#respawnTimer = setTimeout(() => {
      this.#respawn().catch(() => {})
    }, this.#respawnDelay)
    this.#respawnDelay = Math.min(this.#respawnDelay * 2, RESPAWN_MAX_MS)
  }

  async #respawn (): Promise<void> {
    this.#respawnTimer = null
    if (this.#closed || this.#closing !== null) return
    try {
      await this.#spawn()
    } catch (err) {
      // The thread is up but could not open the file (or died again): count it as gone.
      const worker = this.#worker!
      this.#gone(
        worker,
        `the delivery store's thread could not start again: ${(err as Error).message}`,
      )
      await worker.terminate()
      return
    }
    this.#respawnDelay = RESPAWN_MIN_MS
    this.#logger.warn({ msg: 'delivery store thread restarted', path: this.#cfg.path })
  }

  #fail (err: GatewayError): void {
    const pending = [...this.#pending.values()]
    this.#pending.clear()
    this.#outbox = []
    this.#cancels = []
    for (const p of pending) p.reject(err)
  }
}

/**
 * The worker's module. From the library (dist, ESM) it sits beside this file. In the CLI bundle
 * (CommonJS, dist/gatehouse.cjs) import.meta is empty; the worker is then the unbundled module
 * tsc wrote to dist/delivery/. From the TypeScript sources (the tests), a worker does not inherit
 * the tsx loader on Node 20 (`--import` does not reach worker threads there), so it starts with
 * a bootstrap that loads the module through tsx.
 */
function spawnWorker (workerData: unknown): Worker {
  const options = { workerData, name: 'gatehouse-delivery-store' }
  const here = import.meta.url as string | undefined
  if (typeof here !== 'string' || here === '') {
    return new Worker(pathToFileURL(join(__dirname, 'delivery', 'sqlite-worker.js')), options)
  }
  if (extname(fileURLToPath(here)) !== '.ts') {
    return new Worker(new URL('./sqlite-worker.js', here), options)
  }
  const file = JSON.stringify(new URL('./sqlite-worker.ts', here).href)
  const tsx = JSON.stringify(import.meta.resolve('tsx/esm/api'))
  return new Worker(`import(${tsx}).then((tsx) => tsx.tsImport(${file}, ${file}))`, {
    ...options,
    eval: true,
  })
}

/** Structured cloning turns a Buffer into a plain Uint8Array: a Buffer view again, no copy. */
function record (r: DeliveryRecord): DeliveryRecord {
  const u8 = r.body as Uint8Array
  return { ...r, body: Buffer.from(u8.buffer, u8.byteOffset, u8.byteLength) }
}

function deserialize (e: SerializedError): Error {
  if ('gateway' in e) {
    const g = e.gateway
    return gatewayError(g.code, g.detail, {
      ...(g.reason === null ? {} : { reason: g.reason }),
      ...(g.headers === null ? {} : { headers: g.headers }),
    })
  }
  return Object.assign(new Error(e.message), e.code === null ? {} : { code: e.code })
}
