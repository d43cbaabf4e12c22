import type { Config, StoreConfig } from '../config/schema.js'
import type { Logger } from '../observability/logger.js'
import type { StoreBackend, StoreStatus } from './backend.js'
import type { CacheStore } from './cache.js'
import type { CounterStore } from './counter.js'
import { MemoryStore } from './memory/index.js'
import { RedisStore } from './redis/index.js'

/**
 * The stores of one config. Each configured name is one backend, handed out by role: limits
 * take `counterStores`, the cache `cacheStores`, so neither sees the other's interface.
 */
export interface StoreSet {
  readonly counterStores: ReadonlyMap<string, CounterStore>
  readonly cacheStores: ReadonlyMap<string, CacheStore>
  readonly backends: ReadonlyMap<string, StoreBackend>
  /** Backends made for this set (not kept from the one before): started, or discarded, with it. */
  readonly created: readonly StoreBackend[]
}

export function createBackend (cfg: StoreConfig, logger: Logger): StoreBackend {
  return cfg.kind === 'memory' ? new MemoryStore(cfg) : new RedisStore(cfg, logger)
}

/**
 * Keeps stores across reloads, like the identity registry: an unchanged store keeps its
 * counters and entries (and its Redis connection); `default` is an in-process memory store
 * unless the config defines one of that name.
 */
export class StoreRegistry {
  readonly #logger: Logger
  #current: StoreSet | null = null

  constructor (logger: Logger) {
    this.#logger = logger
  }

  prepare (config: Config): StoreSet {
    const backends = new Map<string, StoreBackend>()
    const counterStores = new Map<string, CounterStore>()
    const cacheStores = new Map<string, CacheStore>()
    const created: StoreBackend[] = []
    const defs = {
      default: { kind: 'memory' as const, max_keys: 100_000, max_bytes: 64 * 1024 * 1024 },
      ...config.stores,
    }
    for (const [name, cfg] of Object.entries(defs)) {
      let b = this.#current?.backends.get(name)
      if (b === undefined || b.fingerprint !== JSON.stringify(cfg)) {
        b = createBackend(cfg, this.#logger)
        created.push(b)
      }
      backends.set(name, b)
      counterStores.set(name, b.counterStore)
      cacheStores.set(name, b.cacheStore)
    }
    return { counterStores, cacheStores, backends, created }
  }

  async start (set: StoreSet): Promise<void> {
    await Promise.all(set.created.map((s) => s.start()))
  }

  commit (set: StoreSet): void {
    const prev = this.#current
    this.#current = set
    if (prev === null) return
    for (const [name, s] of prev.backends) {
      if (set.backends.get(name) !== s) s.close().catch(() => {})
    }
  }

  discard (set: StoreSet): void {
    for (const s of set.created) s.close().catch(() => {})
  }

  /** Configured stores with their status; an in-memory `default` cannot be unavailable, and is left out. */
  status (): Record<string, StoreStatus> {
    const out: Record<string, StoreStatus> = {}
    for (const [name, s] of this.#current?.backends ?? []) {
      if (name !== 'default' || s.kind !== 'memory') out[name] = s.status()
    }
    return out
  }

  async close (): Promise<void> {
    if (this.#current !== null) {
      await Promise.all([...this.#current.backends.values()].map((s) => s.close().catch(() => {})))
    }
  }
}
