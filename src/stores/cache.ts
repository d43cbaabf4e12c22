/**
 * Stored responses, as opaque bytes (src/cache encodes them). Like undici's CacheStore it knows
 * nothing of HTTP; unlike it, it has no delete: nothing invalidates entries yet, they expire.
 * A memory store answers synchronously, and hands back the very Buffer it was given, so that
 * a hit costs no promise and the cache can keep a decoded form beside it. One contract suite
 * (test/contract/cache-store.test.ts) runs against every backend.
 */
export interface CacheStore {
  /** The value stored under `key`, or null (never stored, expired, or dropped for room). */
  get(key: string): Buffer | null | Promise<Buffer | null>
  /** Keep `value` for `ttlMs`. A value too big for the store may be dropped at once. */
  set(key: string, value: Buffer, ttlMs: number): void | Promise<void>
}
