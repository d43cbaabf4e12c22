import { LRUCache } from 'lru-cache'
import type { CacheStore } from '../cache.js'

/** Cached responses in this process, bounded by bytes (least recently used go first). */
export class MemoryCacheStore implements CacheStore {
  // No `max`: lru-cache then allocates nothing up front.
  readonly #responses: LRUCache<string, Buffer>

  constructor (maxBytes: number) {
    // 64 bytes on top of each value, a rough cost of the entry itself: many tiny entries are bounded too.
    this.#responses = new LRUCache({ maxSize: maxBytes, sizeCalculation: (v) => v.length + 64 })
  }

  get (key: string): Buffer | null {
    return this.#responses.get(key) ?? null
  }

  set (key: string, value: Buffer, ttlMs: number): void {
    if (value.length + 64 <= this.#responses.maxSize) {
      this.#responses.set(key, value, { ttl: ttlMs })
    }
  }
}
