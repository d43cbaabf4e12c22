import { redactUrl } from '../../config/refs.js'
import type { StoreConfig } from '../../config/schema.js'
import type { Logger } from '../../observability/logger.js'
import type { StoreStatus } from '../backend.js'

/** The commands the stores send, besides the scripts each defines. */
export interface RedisClient {
  getBuffer(key: string): Promise<Buffer | null>
  set(key: string, value: Buffer, px: 'PX', ms: number): Promise<unknown>
  quit(): Promise<unknown>
  disconnect(): void
  readonly status: string
}

/**
 * One configured Redis store's connection, shared by its counter and cache stores. Commands
 * fail fast while the connection is down (no offline queue) and time out after `timeout`, so an
 * outage costs each request at most that long before the route's on_store_error applies.
 */
export class RedisConnection {
  /** Prepended to every key, so several deployments can share one Redis. */
  readonly prefix: string
  readonly #cfg: Extract<StoreConfig, { kind: 'redis' }>
  readonly #logger: Logger
  readonly #scripts = new Map<string, string>()
  #client: RedisClient | null = null
  #lastErrorLog = 0

  constructor (cfg: Extract<StoreConfig, { kind: 'redis' }>, logger: Logger) {
    this.#cfg = cfg
    this.#logger = logger
    this.prefix = cfg.prefix
  }

  /**
   * A Lua script of one key, sent as the command `name` (EVALSHA, loaded again after a
   * NOSCRIPT). Defined before start().
   */
  defineScript (name: string, lua: string): void {
    this.#scripts.set(name, lua)
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
    // The message predates the cache's use of the store; it is documented (docs/configuration.md)
    // and alerts match it, so it stays.
    client.on('error', (err: Error) => {
      const now = Date.now()
      if (now - this.#lastErrorLog < 10_000) return
      this.#lastErrorLog = now
      this.#logger.warn({
        msg: 'limit store unreachable',
        store: redactUrl(this.#cfg.url),
        err: err.message,
      })
    })
    for (const [name, lua] of this.#scripts) client.defineCommand(name, { numberOfKeys: 1, lua })
    this.#client = client as unknown as RedisClient
    // Wait for the connection, briefly: a gateway must start (and apply on_store_error) even
    // when Redis is down; ioredis keeps reconnecting in the background.
    if (client.status !== 'ready') {
      let timer: NodeJS.Timeout | undefined
      await Promise.race([
        new Promise<void>((resolve) => client.once('ready', () => resolve())),
        new Promise<void>((resolve) => {
          timer = setTimeout(resolve, Math.max(1000, this.#cfg.timeout * 4))
        }),
      ])
      clearTimeout(timer)
    }
  }

  /** The client, with the scripts the caller defined as methods (`T`); throws before start(). */
  client<T extends object = object> (): RedisClient & T {
    if (this.#client === null) throw new Error('the Redis store is not started')
    return this.#client as RedisClient & T
  }

  status (): StoreStatus {
    return { status: this.#client?.status === 'ready' ? 'ok' : 'unavailable', kind: 'redis' }
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
