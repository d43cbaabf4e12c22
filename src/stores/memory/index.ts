import type { StoreConfig } from '../../config/schema.js'
import type { StoreBackend, StoreStatus } from '../backend.js'
import { MemoryCacheStore } from './cache.js'
import { MemoryCounterStore } from './counter.js'

/** A `kind: memory` store: counters bounded by `max_keys` per limit, responses by `max_bytes`. */
export class MemoryStore implements StoreBackend {
  readonly kind = 'memory' as const
  readonly fingerprint: string
  readonly counterStore: MemoryCounterStore
  readonly cacheStore: MemoryCacheStore

  constructor (cfg: Extract<StoreConfig, { kind: 'memory' }>) {
    this.fingerprint = JSON.stringify(cfg)
    this.counterStore = new MemoryCounterStore(cfg.max_keys)
    this.cacheStore = new MemoryCacheStore(cfg.max_bytes)
  }

  async start (): Promise<void> {}
  async close (): Promise<void> {}
  status (): StoreStatus {
    return { status: 'ok', kind: 'memory' }
  }
}
