import type { CacheStore } from './cache.js'
import type { CounterStore } from './counter.js'

/** For /readyz: a store that cannot answer leaves routes to their on_store_error. */
export interface StoreStatus {
  status: 'ok' | 'unavailable'
  kind: string
}

/**
 * One configured `stores:` entry: one backend (for Redis, one connection) that serves every
 * role. Policies never see this: the registry hands each the role it uses.
 */
export interface StoreBackend {
  readonly kind: 'memory' | 'redis'
  /** The entry's config as JSON: a reload keeps a backend whose entry did not change. */
  readonly fingerprint: string
  readonly counterStore: CounterStore
  readonly cacheStore: CacheStore
  start(): Promise<void>
  close(): Promise<void>
  status(): StoreStatus
}
