import type { Config } from '../config/schema.js'
import type { Logger } from '../observability/logger.js'
import { createStore, type LimitStore } from './store.js'

export interface StoreSet {
  readonly stores: ReadonlyMap<string, LimitStore>
  readonly created: readonly LimitStore[]
}

/**
 * Keeps limit stores across reloads, like the identity registry: an unchanged store keeps its
 * counters (and its Redis connection); `default` is an in-process memory store unless the
 * config defines one of that name.
 */
export class StoreRegistry {
  readonly #logger: Logger
  #current: StoreSet | null = null

  constructor (logger: Logger) {
    this.#logger = logger
  }

  prepare (config: Config): StoreSet {
    const stores = new Map<string, LimitStore>()
    const created: LimitStore[] = []
    const defs = { default: { kind: 'memory' as const, max_keys: 100_000, max_bytes: 64 * 1024 * 1024 }, ...config.stores }
    for (const [name, cfg] of Object.entries(defs)) {
      const old = this.#current?.stores.get(name)
      if (old !== undefined && old.fingerprint === JSON.stringify(cfg)) {
        stores.set(name, old)
        continue
      }
      const s = createStore(cfg, this.#logger)
      stores.set(name, s)
      created.push(s)
    }
    return { stores, created }
  }

  async start (set: StoreSet): Promise<void> {
    await Promise.all(set.created.map((s) => s.start()))
  }

  commit (set: StoreSet): void {
    const prev = this.#current
    this.#current = set
    if (prev === null) return
    for (const [name, s] of prev.stores) {
      if (set.stores.get(name) !== s) s.close().catch(() => {})
    }
  }

  discard (set: StoreSet): void {
    for (const s of set.created) s.close().catch(() => {})
  }

  /** Stores in use by some route's limits, with their status. */
  status (): Record<string, { status: 'ok' | 'unavailable', kind: string }> {
    const out: Record<string, { status: 'ok' | 'unavailable', kind: string }> = {}
    for (const [name, s] of this.#current?.stores ?? []) if (name !== 'default' || s.kind !== 'memory') out[name] = s.status()
    return out
  }

  async close (): Promise<void> {
    if (this.#current !== null) await Promise.all([...this.#current.stores.values()].map((s) => s.close().catch(() => {})))
  }
}
