import { describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { parseConfig } from '../../src/index.js'
import { CachePolicy, type CacheEntry } from '../../src/policies/cache/policy.js'
import { MemoryCacheStore } from '../../src/stores/memory/cache.js'
import { RedisStore } from '../../src/stores/redis/index.js'
import { createLogger } from '../../src/observability/logger.js'
import { serviceAvailable } from '../helpers/index.js'

function cacheConfig (cache: Record<string, unknown>) {
  const config = parseConfig(JSON.stringify({
    upstreams: { m: { targets: [{ url: 'http://127.0.0.1:1' }] } },
    routes: [{ name: 'infer', match: {}, upstream: 'm', cache: { ttl: '60s', ...cache } }],
  }))
  return config.routes[0]!.cache!
}

const memory = (): MemoryCacheStore => new MemoryCacheStore(1024 * 1024)
const entry: CacheEntry = {
  status: 200,
  headers: ['content-type', 'application/json'],
  body: Buffer.from('{"a":1}'),
  storedAt: 1_700_000_000_000,
}

describe('cache policy', () => {
  test('a memory store is answered without a promise, decoded once per stored entry', async () => {
    const store = memory()
    const policy = new CachePolicy('infer', cacheConfig({}), store, 'default', true)
    assert.equal(policy.lookup('c:none'), null)
    await policy.save('c:k', entry, 60_000)
    const a = policy.lookup('c:k')
    assert.ok(!(a instanceof Promise))
    assert.deepEqual(a, entry)
    assert.equal(policy.lookup('c:k'), a)
    // A new value under the key is decoded afresh.
    await policy.save('c:k', { ...entry, status: 203 }, 60_000)
    assert.equal((policy.lookup('c:k') as CacheEntry).status, 203)
  })

  test('a Redis store is answered with a promise of a fresh entry', async (t) => {
    // Without Redis this skips, with its reason; under GATEHOUSE_REQUIRE_SERVICES=1 (CI) it fails.
    if (!await serviceAvailable(6379)) return t.skip('Redis is not answering on 127.0.0.1:6379')
    const store = new RedisStore({
      kind: 'redis',
      url: 'redis://127.0.0.1:6379',
      prefix: `gh-test-${randomUUID()}:`,
      timeout: 1000,
    }, createLogger('silent'))
    await store.start()
    try {
      const policy = new CachePolicy('infer', cacheConfig({}), store.cacheStore, 'shared', true)
      await policy.save('c:k', entry, 60_000)
      const r = policy.lookup('c:k')
      assert.ok(r instanceof Promise)
      assert.deepEqual(await r, entry)
      assert.equal(await policy.lookup('c:missing'), null)
    } finally {
      await store.close()
    }
  })
})
