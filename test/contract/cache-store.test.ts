import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { createLogger } from '../../src/observability/logger.js'
import type { StoreBackend } from '../../src/stores/backend.js'
import type { CacheStore } from '../../src/stores/cache.js'
import { MemoryStore } from '../../src/stores/memory/index.js'
import { RedisStore } from '../../src/stores/redis/index.js'
import { contractSuite, type ContractSubject } from '../helpers/contract.js'
import { serviceAvailable, waitUntilAsync } from '../helpers/index.js'

/** The cache store of a backend, as the cache policy holds it. */
interface Subject extends ContractSubject, CacheStore {}

function subject (b: StoreBackend): Subject {
  const c = b.cacheStore
  return { start: () => b.start(), close: () => b.close(), get: c.get.bind(c), set: c.set.bind(c) }
}

/** One contract, every backend. */
const backends: Array<[string, () => Promise<Subject | string>]> = [
  ['memory',
    async () =>
      subject(new MemoryStore({ kind: 'memory', max_keys: 10_000, max_bytes: 1024 * 1024 }))],
  ['redis', async () => {
    if (!await serviceAvailable(6379)) return 'Redis is not answering on 127.0.0.1:6379'
    return subject(
      new RedisStore({
        kind: 'redis',
        url: 'redis://127.0.0.1:6379',
        prefix: `gh-test-${randomUUID()}:`,
        timeout: 1000,
      }, createLogger('silent')),
    )
  }],
]

for (const [name, make] of backends) {
  contractSuite(`cache store contract: ${name}`, make, (it) => {
    it('cache entries: stored bytes come back as they were, unknown keys are null', async (s) => {
      const key = `c:${randomUUID()}`
      assert.equal(await s.get(key), null)
      const value = Buffer.from([0, 1, 2, 255, 10, 13])
      await s.set(key, value, 60_000)
      assert.deepEqual(await s.get(key), value)
    })

    it('cache entries expire after their ttl', async (s) => {
      const key = `c:${randomUUID()}`
      await s.set(key, Buffer.from('x'), 30)
      await waitUntilAsync(async () => (await s.get(key)) === null, 2000)
    })
  })
}
