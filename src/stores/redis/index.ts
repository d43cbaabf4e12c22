import type { StoreConfig } from '../../config/schema.js'
import type { Logger } from '../../observability/logger.js'
import type { StoreBackend, StoreStatus } from '../backend.js'
import { RedisCacheStore } from './cache.js'
import { RedisConnection } from './connection.js'
import { RedisCounterStore } from './counter.js'

/** A `kind: redis` store: one connection, both roles, keys under the store's `prefix`. */
export class RedisStore implements StoreBackend {
  readonly kind = 'redis' as const
  readonly fingerprint: string
  readonly counterStore: RedisCounterStore
  readonly cacheStore: RedisCacheStore
  readonly #conn: RedisConnection

  constructor (cfg: Extract<StoreConfig, { kind: 'redis' }>, logger: Logger) {
    this.fingerprint = JSON.stringify(cfg)
    this.#conn = new RedisConnection(cfg, logger)
    this.counterStore = new RedisCounterStore(this.#conn)
    this.cacheStore = new RedisCacheStore(this.#conn)
  }

  start (): Promise<void> {
    return this.#conn.start()
  }

  close (): Promise<void> {
    return this.#conn.close()
  }

  status (): StoreStatus {
    return this.#conn.status()
  }
}
