import type { CacheStore } from '../cache.js'
import type { RedisConnection } from './connection.js'

/** Cached responses in Redis, shared by every gateway that points at it; Redis expires them. */
export class RedisCacheStore implements CacheStore {
  readonly #conn: RedisConnection

  constructor (conn: RedisConnection) {
    this.#conn = conn
  }

  async get (key: string): Promise<Buffer | null> {
    return await this.#conn.client().getBuffer(this.#conn.prefix + key)
  }

  async set (key: string, value: Buffer, ttlMs: number): Promise<void> {
    // PX takes a positive integer: a ttl under 1 ms still keeps the entry for one.
    await this.#conn.client().set(
      this.#conn.prefix + key,
      value,
      'PX',
      Math.max(1, Math.ceil(ttlMs)),
    )
  }
}
