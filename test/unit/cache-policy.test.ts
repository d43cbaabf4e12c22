import { describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { createHash, randomUUID } from 'node:crypto'
import { parseConfig } from '../../src/index.js'
import { CachePolicy, type CacheEntry } from '../../src/cache/policy.js'
import { MemoryLimitStore, RedisLimitStore, type LimitStore } from '../../src/limits/store.js'
import type { Identity } from '../../src/identity/types.js'
import { createLogger } from '../../src/observability/logger.js'
import { serviceAvailable } from '../helpers/index.js'

function cacheConfig (cache: Record<string, unknown>) {
  const config = parseConfig(JSON.stringify({
    upstreams: { m: { targets: [{ url: 'http://127.0.0.1:1' }] } },
    routes: [{ name: 'infer', match: {}, upstream: 'm', cache: { ttl: '60s', ...cache } }],
  }))
  return config.routes[0]!.cache!
}

const memory = (): MemoryLimitStore => new MemoryLimitStore({ kind: 'memory', max_keys: 1000, max_bytes: 1024 * 1024 })
const noHeader = (): string | null => null
const entry: CacheEntry = { status: 200, headers: ['content-type', 'application/json'], body: Buffer.from('{"a":1}'), storedAt: 1_700_000_000_000 }

describe('cache policy', () => {
  test('the key is SHA-256 over a fixed preimage: a fleet of mixed versions sharing Redis finds the same entries', () => {
    const anonymous = new CachePolicy('infer', cacheConfig({ key: { headers: ['x-model'] } }), memory(), 'default', true)
    const expected = (pre: string | Buffer[]): string => {
      const h = createHash('sha256')
      for (const part of Array.isArray(pre) ? pre : [pre]) h.update(part)
      return `c:${h.digest('base64url')}`
    }
    const header = (n: string): string | null => (n === 'x-model' ? 'v2' : null)
    assert.equal(anonymous.key('GET', '/v1/m', 'q=1', header, null, null), expected('gatehouse-cache-v1\0infer\0GET\0/v1/m\0q=1\0x-model:v2\0-\0'))
    // HEAD is keyed as GET; an empty body is no body.
    assert.equal(anonymous.key('HEAD', '/v1/m', 'q=1', header, null, Buffer.alloc(0)), anonymous.key('GET', '/v1/m', 'q=1', header, null, null))
    // A JSON body is hashed canonicalised (sorted keys) after the same head.
    assert.equal(anonymous.key('POST', '/v1/m', '', header, null, Buffer.from('{"b":2,"a":1}')),
      expected([Buffer.from('gatehouse-cache-v1\0infer\0POST\0/v1/m\0\0x-model:v2\0-\0'), Buffer.from('{"a":1,"b":2}')]))
    // On an authenticated route the caller is in the key.
    const authed = new CachePolicy('infer', cacheConfig({}), memory(), 'default', false)
    const who: Identity = { provider: 'sso', kind: 'jwt', subject: 'alice', clientId: 'app', scopes: new Set(), claims: {}, expiresAt: Infinity, phantom: null }
    assert.equal(authed.key('GET', '/v1/m', '', noHeader, who, null), expected('gatehouse-cache-v1\0infer\0GET\0/v1/m\0\0sso:alice:app\0'))
  })

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
    const store: LimitStore = new RedisLimitStore({ kind: 'redis', url: 'redis://127.0.0.1:6379', prefix: `gh-test-${randomUUID()}:`, timeout: 1000 }, createLogger('silent'))
    await store.start()
    try {
      const policy = new CachePolicy('infer', cacheConfig({}), store, 'shared', true)
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
