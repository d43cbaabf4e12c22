import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { parseConfig } from '../../src/index.js'
import { configError, issueAt } from '../helpers/config.js'

const BASE = `upstreams:
  model: { targets: [{ url: "http://127.0.0.1:9000" }] }
stores:
  shared: { kind: redis, url: "redis://127.0.0.1:6379" }
`

describe('config: rate limits', () => {
  it('parses rates, quotas and defaults', () => {
    const c = parseConfig(
      BASE + `routes:
  - name: r
    upstream: model
    rate_limit:
      - { key: ip, rate: 10/s }
      - { key: "header:X-Tenant", quota: 100000/day, cost: response.usage.total_tokens, store: shared }
`,
      { env: {} },
    )
    const [a, b] = c.routes[0]!.rate_limit!
    assert.deepEqual(a!.rate, { count: 10, periodMs: 1000 })
    assert.equal(a!.store, 'default')
    assert.equal(a!.missing, 'deny')
    assert.deepEqual(b!.quota, { count: 100000, periodMs: 86_400_000 })
    assert.equal(c.routes[0]!.on_store_error, 'allow')
    assert.deepEqual(c.stores.shared, {
      kind: 'redis',
      url: 'redis://127.0.0.1:6379',
      prefix: 'gatehouse:',
      timeout: 250,
    })
  })

  it('names each problem with its path', () => {
    const err = configError(
      BASE + `routes:
  - name: r
    upstream: model
    rate_limit:
      - { key: ip, rate: 10/fortnight }
      - { key: ip, quota: 10/s }
      - { key: ip, rate: 1/s, quota: 5/min }
      - { key: ip, quota: 5/min, burst: 3 }
      - { key: subject, rate: 1/s, store: shraed }
      - { key: everyone, rate: 1/s }
      - { key: ip, rate: 1/s, cost: response.usage.total_tokens }
`,
    )
    assert.equal(
      issueAt(err, 'routes[0].rate_limit[0].rate').message,
      'invalid rate "10/fortnight" (use e.g. 10/s, 100/min, 5000/h)',
    )
    assert.equal(
      issueAt(err, 'routes[0].rate_limit[1].quota').message,
      'invalid quota "10/s" (use e.g. 100000/day, 5000/h, 600/min)',
    )
    assert.equal(
      issueAt(err, 'routes[0].rate_limit[2]').message,
      'give either rate (with an optional burst) or quota',
    )
    assert.equal(
      issueAt(err, 'routes[0].rate_limit[3].burst').message,
      'burst goes with rate, not quota',
    )
    assert.equal(
      issueAt(err, 'routes[0].rate_limit[4].store').message,
      'unknown store "shraed" (did you mean "shared"?)',
    )
    assert.equal(
      issueAt(err, 'routes[0].rate_limit[4].key').message,
      '"subject" needs an auth block on the route (there is no caller identity without one)',
    )
    assert.match(
      issueAt(err, 'routes[0].rate_limit[5].key').message,
      /use subject, client_id, api_key, ip, header:<name> or claim:<name>/,
    )
    assert.equal(
      issueAt(err, 'routes[0].rate_limit[6].cost').message,
      'a cost other than 1 goes with quota (rates count requests)',
    )
  })

  it('bounds a memory store\'s max_keys (its maps are allocated whole on first use)', () => {
    const err = configError(`upstreams:
  model: { targets: [{ url: "http://127.0.0.1:9000" }] }
stores:
  big: { kind: memory, max_keys: 5000000000 }
routes:
  - { name: r, upstream: model, rate_limit: [{ key: ip, rate: 1/s, store: big }] }
`)
    assert.match(issueAt(err, 'stores.big.max_keys').message, /10000000/)
  })

  it('a shared limit name is one bucket: defined once, the same everywhere, once per route', () => {
    const err = configError(
      BASE + `routes:
  - name: a
    upstream: model
    rate_limit:
      - { name: per-ip, key: ip, rate: 10/s }
      - { name: per-ip, key: ip, rate: 10/s }
  - name: b
    upstream: model
    rate_limit:
      - { name: per-ip, key: ip, rate: 20/s }
      - { key: ip, quota: 1.5/min }
`,
    )
    assert.equal(
      issueAt(err, 'routes[0].rate_limit[1].name').message,
      'limit "per-ip" is listed twice on this route (each request would count twice)',
    )
    assert.match(
      issueAt(err, 'routes[1].rate_limit[0].name').message,
      /^limit "per-ip" is defined differently at routes\[0\]\.rate_limit\[0\]/,
    )
    assert.equal(
      issueAt(err, 'routes[1].rate_limit[1].quota').message,
      'a quota counts whole requests or units: use a whole number',
    )
  })

  it('checks cache blocks', () => {
    const err = configError(
      BASE + `routes:
  - name: r
    upstream: model
    cache: { ttl: 1m, store: shraed, methods: [GET, DELETE] }
  - name: s
    upstream: model
    cache: { methods: [POST] }
`,
    )
    assert.equal(
      issueAt(err, 'routes[0].cache.store').message,
      'unknown store "shraed" (did you mean "shared"?)',
    )
    assert.match(
      issueAt(err, 'routes[0].cache.methods[1]').message,
      /must be one of "GET", "HEAD", "POST"/,
    )
    assert.equal(issueAt(err, 'routes[1].cache.ttl').message, 'is required')
  })

  it('checks store definitions', () => {
    const err = configError(`stores:
  a: { kind: redis, url: "http://x", timeout: 0 }
  b: { kind: memcached }
`)
    assert.equal(
      issueAt(err, 'stores.a.timeout').message,
      'must be at least 10ms (a limit check needs a bound)',
    )
    assert.equal(issueAt(err, 'stores.a.url').message, 'must be a redis:// or rediss:// URL')
    assert.equal(
      issueAt(err, 'stores.b.kind').message,
      'unknown "memcached": must be one of "memory", "redis"',
    )
  })
})
