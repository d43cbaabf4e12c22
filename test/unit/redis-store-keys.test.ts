import { test } from 'node:test'
import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { Redis } from 'ioredis'
import { createLogger } from '../../src/observability/logger.js'
import { RedisStore } from '../../src/stores/redis/index.js'
import { serviceAvailable } from '../helpers/index.js'

// Gateways of two versions share one Redis during a rolling upgrade: they must agree on where
// every counter and entry lives. The layout is the store's prefix and the caller's key, plus
// `:<window index>` for quota windows.
test('Redis keys: prefix + key for GCRA and cache entries, prefix + key + ":<window>" for quotas', async (t) => {
  // Without Redis this skips, with its reason; under GATEHOUSE_REQUIRE_SERVICES=1 (CI) it fails.
  if (!await serviceAvailable(6379)) return t.skip('Redis is not answering on 127.0.0.1:6379')
  const prefix = `gh-test-${randomUUID()}:`
  const store = new RedisStore({
    kind: 'redis',
    url: 'redis://127.0.0.1:6379',
    prefix,
    timeout: 1000,
  }, createLogger('silent'))
  const raw = new Redis('redis://127.0.0.1:6379')
  await store.start()
  try {
    const day = 86_400_000
    const before = Math.floor(Date.now() / day)
    const c = store.counterStore.counters('layout', () => {})
    await c.gcra('rl:g:ip:192.0.2.1', 1000, 3, 1)
    await c.quota('rl:q:subject:p:alice', 10, day, 2)
    await c.charge('rl:q:subject:p:alice', day, 3)
    await store.cacheStore.set('c:abc', Buffer.from([0, 255, 10]), 60_000)
    const after = Math.floor(Date.now() / day)
    const keys = (await raw.keys(`${prefix}*`)).map((k) => k.slice(prefix.length)).sort()
    const window = keys.find((k) => k.startsWith('rl:q:'))
    assert.ok(
      window === `rl:q:subject:p:alice:${before}` || window === `rl:q:subject:p:alice:${after}`,
      String(window),
    )
    assert.deepEqual(keys, ['c:abc', 'rl:g:ip:192.0.2.1', window])
    assert.equal(await raw.get(prefix + window), '5')
    assert.deepEqual(await raw.getBuffer(`${prefix}c:abc`), Buffer.from([0, 255, 10]))
    // A GCRA key holds the bucket's theoretical arrival time, in ms on Redis's clock.
    assert.ok(Number(await raw.get(`${prefix}rl:g:ip:192.0.2.1`)) > before * day)
    await raw.del(...keys.map((k) => prefix + k))
  } finally {
    await raw.quit()
    await store.close()
  }
})
