import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { createLogger } from '../../src/observability/logger.js'
import type { StoreBackend } from '../../src/stores/backend.js'
import type { Counters } from '../../src/stores/counter.js'
import { MemoryStore } from '../../src/stores/memory/index.js'
import { RedisStore } from '../../src/stores/redis/index.js'
import { contractSuite, type ContractSubject } from '../helpers/contract.js'
import { serviceAvailable, waitUntilAsync } from '../helpers/index.js'

/** The counter store of a backend, as a limit holds it: one partition's counters. */
interface Subject extends ContractSubject, Counters {}

function subject (b: StoreBackend): Subject {
  const c = b.counterStore.counters('contract', () => {})
  return {
    start: () => b.start(),
    close: () => b.close(),
    gcra: c.gcra.bind(c),
    quota: c.quota.bind(c),
    charge: c.charge.bind(c),
  }
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
  contractSuite(`counter store contract: ${name}`, make, (it) => {
    it('GCRA lets `burst` requests through at once, then refuses with the time until the next fits', async (s) => {
      const key = `g:${randomUUID()}`
      const results = []
      for (let i = 0; i < 5; i++) results.push(await s.gcra(key, 1000, 3, 1))
      assert.deepEqual(results.map((r) => r.allowed), [true, true, true, false, false])
      assert.deepEqual(results.slice(0, 3).map((r) => r.remaining), [2, 1, 0])
      const refused = results[3]!
      assert.ok(refused.retryMs > 900 && refused.retryMs <= 1000, `retry ${refused.retryMs}`)
      assert.ok(refused.resetMs > 2900 && refused.resetMs <= 3000, `reset ${refused.resetMs}`)
    })

    it('GCRA refills at the sustained rate', async (s) => {
      const key = `g:${randomUUID()}`
      assert.equal((await s.gcra(key, 30, 1, 1)).allowed, true)
      assert.equal((await s.gcra(key, 30, 1, 1)).allowed, false)
      const t0 = Date.now()
      await waitUntilAsync(async () => (await s.gcra(key, 30, 1, 1)).allowed, 2000)
      assert.ok(Date.now() - t0 <= 200)
    })

    it('GCRA charges a cost greater than one, and refuses what does not fit', async (s) => {
      const key = `g:${randomUUID()}`
      assert.equal((await s.gcra(key, 100, 10, 7)).remaining, 3)
      assert.equal((await s.gcra(key, 100, 10, 4)).allowed, false)
      assert.equal((await s.gcra(key, 100, 10, 3)).allowed, true)
    })

    it('GCRA decisions are atomic under concurrency', async (s) => {
      const key = `g:${randomUUID()}`
      const all = await Promise.all(Array.from({ length: 60 }, () => s.gcra(key, 60_000, 10, 1)))
      assert.equal(all.filter((r) => r.allowed).length, 10)
    })

    it('quota: charges until the window is full, refuses until it ends', async (s) => {
      const key = `q:${randomUUID()}`
      const r = []
      for (let i = 0; i < 4; i++) r.push(await s.quota(key, 3, 3_600_000, 1))
      assert.deepEqual(r.map((x) => x.allowed), [true, true, true, false])
      assert.deepEqual(r.map((x) => x.remaining), [2, 1, 0, 0])
      assert.ok(r[3]!.retryMs > 0 && r[3]!.retryMs <= 3_600_000)
      assert.equal(r[3]!.retryMs, r[3]!.resetMs)
    })

    it('quota: cost 0 only looks; charge() adds after the fact and may overshoot', async (s) => {
      const key = `q:${randomUUID()}`
      assert.equal((await s.quota(key, 100, 60_000, 0)).remaining, 100)
      await s.charge(key, 60_000, 70)
      assert.equal((await s.quota(key, 100, 60_000, 0)).remaining, 30)
      await s.charge(key, 60_000, 45)
      const over = await s.quota(key, 100, 60_000, 0)
      assert.equal(over.allowed, false)
      assert.equal(over.remaining, 0)
    })

    it('quota decisions are atomic under concurrency, and keys are independent', async (s) => {
      const a = `q:${randomUUID()}`
      const b = `q:${randomUUID()}`
      const all = await Promise.all(
        Array.from({ length: 50 }, (_, i) => s.quota(i % 2 === 0 ? a : b, 7, 60_000, 1)),
      )
      assert.equal(all.filter((r) => r.allowed).length, 14)
    })
  })
}
