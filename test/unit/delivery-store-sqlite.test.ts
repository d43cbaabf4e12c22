import { after, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { randomBytes, randomUUID } from 'node:crypto'
import type { Worker } from 'node:worker_threads'
import { SqliteDeliveryStore } from '../../src/delivery/sqlite.js'
import { ThreadedSqliteDeliveryStore } from '../../src/delivery/sqlite-thread.js'
import type { DeliveryStore } from '../../src/delivery/store.js'
import type { NewDelivery } from '../../src/delivery/store.js'
import { isGatewayError } from '../../src/errors/index.js'
import { createLogger } from '../../src/observability/logger.js'
import { deliveryStoreContract, message } from '../helpers/delivery-contract.js'

const dir = mkdtempSync(join(tmpdir(), 'gh-dl-'))
after(() => rmSync(dir, { recursive: true, force: true }))

const logger = createLogger('silent')
const DAY = 86_400_000

// The store on the caller's thread, and as the gateway runs it: in a worker thread, driven by
// messages (sqlite-thread.ts). Both keep the same contract.
const variants = {
  sqlite: (path: string, maxSize: number): DeliveryStore => new SqliteDeliveryStore({ kind: 'sqlite', path, max_size: maxSize }, logger),
  'sqlite in a worker thread': (path: string, maxSize: number): DeliveryStore => new ThreadedSqliteDeliveryStore({ kind: 'sqlite', path, max_size: maxSize }, logger),
}

function never (): AbortSignal {
  return new AbortController().signal
}

for (const [variant, make] of Object.entries(variants)) {
  const sqliteStore = (path = join(dir, `${randomUUID()}.db`), maxSize = 64 * 1024 * 1024): DeliveryStore => make(path, maxSize)

  deliveryStoreContract(variant, async () => sqliteStore())

  describe(`${variant} delivery store`, () => {
    test('what was acknowledged survives close and reopen; a lease held by the old instance runs out', async () => {
      const path = join(dir, 'nested', 'dirs', `${randomUUID()}.db`)
      const first = sqliteStore(path)
      await first.start()
      const route = `r-${randomUUID()}`
      await first.openRoute(route, { leaseMs: 6000, maxAttempts: 5 })
      const base = Date.now() - 1000
      const msgs = [0, 1, 2].map((i) => message(route, { createdAt: base + i, idempotencyKey: `k${i}` }))
      for (const m of msgs) await first.enqueue(m, DAY)
      // Claimed and never settled: the process "dies" with the lease held.
      const leased = await first.claim(route, 1, 0, never())
      const leasedAt = Date.now()
      assert.deepEqual(leased.map((r) => r.id), [msgs[0]!.id])
      await first.settle(msgs[1]!.id, { kind: 'dead', at: Date.now(), error: 'status 500', status: 500 })
      await first.close()

      const second = sqliteStore(path)
      await second.start()
      try {
        await second.openRoute(route, { leaseMs: 6000, maxAttempts: 5 })
        for (const m of msgs) assert.deepEqual((await second.get(m.id))?.body, m.body)
        assert.equal((await second.get(msgs[1]!.id))?.state, 'dead')
        // The idempotency keys were kept too.
        assert.deepEqual(await second.enqueue({ ...msgs[2]!, id: randomUUID() }, DAY), { id: msgs[2]!.id, duplicate: true })
        // msgs[2] is free now; msgs[0] only once its lease runs out. (On a loaded machine the
        // two starts can take longer than the lease: then both are free at once.)
        const free = await second.claim(route, 10, 0, never())
        const stillLeased = Date.now() - leasedAt < 5000
        if (stillLeased) {
          assert.deepEqual(free.map((r) => r.id), [msgs[2]!.id])
          // One at a time: msgs[2]'s lease (taken just above) runs out a few ms after msgs[0]'s,
          // so a claim that wakes late would find both free; the first to come free is msgs[0].
          const again = await second.claim(route, 1, 15_000, never())
          assert.deepEqual(again.map((r) => r.id), [msgs[0]!.id])
          assert.equal(again[0]!.attempts, 0)
        } else {
          assert.deepEqual(free.map((r) => r.id).sort(), [msgs[0]!.id, msgs[2]!.id].sort())
          assert.equal(free.find((r) => r.id === msgs[0]!.id)!.attempts, 0)
        }
      } finally {
        await second.close()
      }
    })

    test('a full database refuses new messages with a 503 and Retry-After; acknowledged ones stay, settles still work', async () => {
      const s = sqliteStore(join(dir, `${randomUUID()}.db`), 256 * 1024)
      await s.start()
      try {
        const route = `r-${randomUUID()}`
        await s.openRoute(route, { leaseMs: 30_000, maxAttempts: 5 })
        const accepted: NewDelivery[] = []
        let refused: unknown = null
        for (let i = 0; i < 400 && refused === null; i++) {
          const m = message(route, { body: randomBytes(1024) })
          try {
            await s.enqueue(m, DAY)
            accepted.push(m)
          } catch (err) {
            refused = err
          }
        }
        assert.ok(accepted.length > 20, `accepted ${accepted.length}`)
        assert.ok(isGatewayError(refused), `expected a refusal, got ${String(refused)}`)
        assert.equal(refused.code, 'GH_DELIVERY_STORE_UNAVAILABLE')
        assert.equal(refused.status, 503)
        assert.equal(refused.headers?.['retry-after'], '5')
        assert.match(refused.detail, /full/)
        assert.match(refused.reason ?? '', /SQLITE_FULL/)
        assert.equal(s.status().full, true)
        // A burst while full: every one refused, none acknowledged.
        const burst = await Promise.allSettled(Array.from({ length: 20 }, () => s.enqueue(message(route, { body: randomBytes(1024) }), DAY)))
        assert.ok(burst.every((r) => r.status === 'rejected'))
        for (const m of accepted) assert.deepEqual((await s.get(m.id))?.body, m.body)
        assert.equal((await s.stats(Date.now()))[route]?.pending, accepted.length)

        // The worker can still record outcomes, and deleting frees the space.
        const claimed = await s.claim(route, 1000, 0, never())
        assert.equal(claimed.length, accepted.length)
        await Promise.all(claimed.map((r) => s.settle(r.id, { kind: 'delivered', status: 200, at: Date.now() })))
        assert.equal((await s.get(claimed[0]!.id))?.state, 'delivered')
        assert.equal(await s.purge('delivered', route), accepted.length)
        await s.enqueue(message(route, { body: randomBytes(1024) }), DAY)
        assert.equal(s.status().full, false)
      } finally {
        await s.close()
      }
    })

    test('an unwritable path: start rejects and says where', async () => {
      const file = join(dir, `${randomUUID()}.txt`)
      writeFileSync(file, 'not a directory')
      const s = sqliteStore(join(file, 'delivery.db'))
      await assert.rejects(s.start(), (err: Error) => {
        assert.match(err.message, /cannot open the delivery store at .*delivery\.db/)
        assert.match(err.message, /EEXIST|ENOTDIR/)
        return true
      })
      assert.equal(s.status().status, 'unavailable')
      await assert.rejects(s.enqueue(message('r'), DAY), (err) => isGatewayError(err) && err.code === 'GH_DELIVERY_STORE_UNAVAILABLE')
      await s.close()
    })

    test('a database from a newer schema version is refused, not written', async () => {
      const path = join(dir, `${randomUUID()}.db`)
      const { default: Database } = await import('better-sqlite3' as string) as { default: new (p: string) => { pragma (s: string): unknown, close (): void } }
      const db = new Database(path)
      db.pragma('user_version = 99')
      db.close()
      await assert.rejects(sqliteStore(path).start(), /schema version 99/)
    })
  })
}

describe('sqlite store thread', () => {
  test('a thread that dies: calls in flight and after fail with 503, a new thread takes over the same file', async () => {
    const workers: Worker[] = []
    const lines: Array<Record<string, unknown>> = []
    let onLine: (() => void) | null = null
    const log = createLogger('info', {
      write (line: string) {
        lines.push(JSON.parse(line) as Record<string, unknown>)
        onLine?.()
      },
    })
    const logged = (msg: string): Promise<void> => new Promise((resolve) => {
      const check = (): void => { if (lines.some((l) => l.msg === msg)) resolve() }
      onLine = check
      check()
    })
    const s = new ThreadedSqliteDeliveryStore({ kind: 'sqlite', path: join(dir, `${randomUUID()}.db`), max_size: 64 * 1024 * 1024 }, log, { onWorker: (w) => workers.push(w) })
    await s.start()
    try {
      const route = `r-${randomUUID()}`
      await s.openRoute(route, { leaseMs: 60_000, maxAttempts: 5 })
      const kept = message(route)
      await s.enqueue(kept, DAY)
      // A claim waiting in the thread when it dies.
      const waiting = s.claim(`idle-${randomUUID()}`, 1, 30_000, never())
      await workers[0]!.terminate()
      await assert.rejects(waiting, (err) => isGatewayError(err) && err.code === 'GH_DELIVERY_STORE_UNAVAILABLE' && err.status === 503)
      assert.equal(s.status().status, 'unavailable')
      assert.match(String(s.status().error), /thread exited/)
      await assert.rejects(s.enqueue(message(route), DAY), (err) => isGatewayError(err) && err.code === 'GH_DELIVERY_STORE_UNAVAILABLE' && err.headers?.['retry-after'] === '5')
      assert.ok(lines.some((l) => l.msg === 'delivery store thread stopped' && l.level === 'error'))

      await logged('delivery store thread restarted')
      assert.equal(workers.length, 2)
      assert.equal(s.status().status, 'ok')
      assert.deepEqual((await s.get(kept.id))?.body, kept.body)
      const after = message(route)
      assert.deepEqual(await s.enqueue(after, DAY), { id: after.id, duplicate: false })
      assert.deepEqual((await s.claim(route, 10, 0, never())).map((r) => r.id).sort(), [kept.id, after.id].sort())
    } finally {
      await s.close()
    }
    assert.equal(s.status().status, 'unavailable')
  })
})
