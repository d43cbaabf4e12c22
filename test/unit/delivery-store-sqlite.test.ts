import { after, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { randomBytes, randomUUID } from 'node:crypto'
import type { Worker } from 'node:worker_threads'
import { SqliteDeliveryStore } from '../../src/delivery/sqlite.js'
import { ThreadedSqliteDeliveryStore } from '../../src/delivery/sqlite-thread.js'
import type { DeliveryRecord, DeliveryStore, NewDelivery } from '../../src/delivery/store.js'
import { isGatewayError } from '../../src/errors/index.js'
import { createLogger } from '../../src/observability/logger.js'
import { message } from '../helpers/delivery.js'

const dir = mkdtempSync(join(tmpdir(), 'gh-dl-'))
after(() => rmSync(dir, { recursive: true, force: true }))

const logger = createLogger('silent')
const DAY = 86_400_000

// The store on the caller's thread, and as the gateway runs it: in a worker thread, driven by
// messages (sqlite-thread.ts). Both keep the same contract (test/contract/delivery-store.test.ts).
const variants = {
  sqlite: (path: string, maxSize: number): DeliveryStore =>
    new SqliteDeliveryStore({ kind: 'sqlite', path, max_size: maxSize }, logger),
  'sqlite in a worker thread': (path: string, maxSize: number): DeliveryStore =>
    new ThreadedSqliteDeliveryStore({ kind: 'sqlite', path, max_size: maxSize }, logger),
}

function never (): AbortSignal {
  return new AbortController().signal
}

for (const [variant, make] of Object.entries(variants)) {
  const sqliteStore = (
    path = join(dir, `${randomUUID()}.db`),
    maxSize = 64 * 1024 * 1024,
  ): DeliveryStore => make(path, maxSize)

  describe(`${variant} delivery store`, () => {
    test('what was acknowledged survives close and reopen; a lease held by the old instance runs out', async () => {
      const path = join(dir, 'nested', 'dirs', `${randomUUID()}.db`)
      const first = sqliteStore(path)
      await first.start()
      const route = `r-${randomUUID()}`
      await first.openRoute(route, { leaseMs: 6000, maxAttempts: 5 })
      const base = Date.now() - 1000
      const msgs = [0, 1, 2].map((i) =>
        message(route, { createdAt: base + i, idempotencyKey: `k${i}` })
      )
      for (const m of msgs) await first.enqueue(m, DAY)
      // Claimed and never settled: the process "dies" with the lease held.
      const leased = await first.claim(route, 1, 0, never())
      const leasedAt = Date.now()
      assert.deepEqual(leased.map((r) => r.id), [msgs[0]!.id])
      await first.settle(msgs[1]!.id, {
        kind: 'dead',
        at: Date.now(),
        error: 'status 500',
        status: 500,
      })
      await first.close()

      const second = sqliteStore(path)
      await second.start()
      try {
        await second.openRoute(route, { leaseMs: 6000, maxAttempts: 5 })
        for (const m of msgs) assert.deepEqual((await second.get(m.id))?.body, m.body)
        assert.equal((await second.get(msgs[1]!.id))?.state, 'dead')
        // The idempotency keys were kept too.
        assert.deepEqual(await second.enqueue({ ...msgs[2]!, id: randomUUID() }, DAY), {
          id: msgs[2]!.id,
          duplicate: true,
        })
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
        const burst = await Promise.allSettled(
          Array.from(
            { length: 20 },
            () => s.enqueue(message(route, { body: randomBytes(1024) }), DAY),
          ),
        )
        assert.ok(burst.every((r) => r.status === 'rejected'))
        for (const m of accepted) assert.deepEqual((await s.get(m.id))?.body, m.body)
        assert.equal((await s.stats(Date.now()))[route]?.pending, accepted.length)

        // The worker can still record outcomes, and deleting frees the space.
        const claimed = await s.claim(route, 1000, 0, never())
        assert.equal(claimed.length, accepted.length)
        await Promise.all(
          claimed.map((r) => s.settle(r.id, { kind: 'delivered', status: 200, at: Date.now() })),
        )
        assert.equal((await s.get(claimed[0]!.id))?.state, 'delivered')
        assert.equal(await s.purge('delivered', route), accepted.length)
        await s.enqueue(message(route, { body: randomBytes(1024) }), DAY)
        assert.equal(s.status().full, false)
      } finally {
        await s.close()
      }
    })

    test('a full store stays deliverable: claims and settles of large messages need no free page, and delivering frees the space', async () => {
      // The report: max_size 1MiB, ten 90 KiB requests accepted, then a 503 for every request even
      // after all were delivered, and one accepted request stuck pending, its lease update failing
      // with "store is full" every second.
      const s = sqliteStore(join(dir, `${randomUUID()}.db`), 1024 * 1024)
      await s.start()
      try {
        const route = `r-${randomUUID()}`
        await s.openRoute(route, { leaseMs: 30_000, maxAttempts: 5 })
        const accepted = await fill(s, route, 90 * 1024)
        assert.ok(accepted.length >= 5, `accepted ${accepted.length}`)
        assert.equal(s.status().full, true)

        // Every accepted message can be leased, retried, leased again and delivered.
        const claimed = await s.claim(route, 100, 0, never())
        assert.deepEqual(claimed.map((r) => r.id).sort(), accepted.map((m) => m.id).sort())
        for (const r of claimed) assert.deepEqual(r.body, accepted.find((m) => m.id === r.id)!.body)
        const now = Date.now()
        for (const r of claimed) {
          await s.settle(r.id, {
            kind: 'retry',
            at: now,
            nextAttemptAt: now,
            error: 'x'.repeat(200),
            status: 503,
          })
        }
        const again = await s.claim(route, 100, 0, never())
        assert.equal(again.length, accepted.length)
        for (const r of again) {
          await s.settle(r.id, { kind: 'delivered', status: 200, at: Date.now() })
        }

        // No purge: delivering freed the bodies, so the store takes as much again.
        const second = await fill(s, route, 90 * 1024)
        assert.ok(
          second.length >= accepted.length - 1,
          `accepted ${second.length} after delivering ${accepted.length}`,
        )
        for (const m of accepted) {
          const rec = await s.get(m.id)
          assert.equal(rec?.state, 'delivered')
          assert.equal(rec?.body.length, 0)
        }
      } finally {
        await s.close()
      }
    })

    test('a store full of small messages can record a long error for each of them, retried and then dead', async () => {
      const s = sqliteStore(join(dir, `${randomUUID()}.db`), 256 * 1024)
      await s.start()
      try {
        const route = `r-${randomUUID()}`
        await s.openRoute(route, { leaseMs: 30_000, maxAttempts: 5 })
        const accepted = await fill(s, route, 16)
        assert.ok(accepted.length > 50, `accepted ${accepted.length}`)
        const error = 'connect_error: ' + 'e'.repeat(185)
        let now = Date.now()
        const first = await claimAll(s, route, accepted.length)
        await Promise.all(
          first.map((r) =>
            s.settle(r.id, { kind: 'retry', at: now, nextAttemptAt: now, error, status: null })
          ),
        )
        const second = await claimAll(s, route, accepted.length)
        now = Date.now()
        await Promise.all(
          second.map((r) =>
            s.settle(r.id, {
              kind: 'dead',
              at: now,
              error: error + ' (after 2 attempts)',
              status: null,
            })
          ),
        )
        const dead = await s.list({ route, state: 'dead', limit: 10_000 })
        assert.equal(dead.length, accepted.length)
        assert.ok(
          dead.every((r) => r.attempts === 2 && r.lastError === error + ' (after 2 attempts)'),
        )
        // And replayed, every one of them.
        assert.equal(await s.replay({ dead: true, route }, Date.now()), accepted.length)
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
      await assert.rejects(
        s.enqueue(message('r'), DAY),
        (err) => isGatewayError(err) && err.code === 'GH_DELIVERY_STORE_UNAVAILABLE',
      )
      await s.close()
    })

    test('a version 1 file (request in the record row) is migrated when opened: pending and dead keep their requests, delivered ones lose theirs', async () => {
      const path = join(dir, `${randomUUID()}.db`)
      const route = `r-${randomUUID()}`
      const now = Date.now()
      const rows = {
        pending: v1Row(route, 'pending', now - 5000),
        leased: { ...v1Row(route, 'pending', now - 4000), lease_until: now + 60_000 },
        delivered: {
          ...v1Row(route, 'delivered', now - 3000),
          idempotency_key: 'k-delivered',
          attempts: 1,
          last_status: 200,
        },
        dead: {
          ...v1Row(route, 'dead', now - 2000),
          attempts: 3,
          last_error: 'status 500 (after 3 attempts)',
          last_status: 500,
        },
      }
      await writeV1(path, Object.values(rows))

      const s = sqliteStore(path)
      await s.start()
      try {
        await s.openRoute(route, { leaseMs: 30_000, maxAttempts: 5 })
        for (const key of ['pending', 'leased', 'dead'] as const) {
          const rec = await s.get(rows[key].id)
          assert.deepEqual(rec?.body, rows[key].body, key)
          assert.deepEqual(rec?.headers, JSON.parse(rows[key].headers), key)
          assert.equal(rec?.state, rows[key].state, key)
        }
        const delivered = await s.get(rows.delivered.id)
        assert.equal(delivered?.state, 'delivered')
        assert.equal(delivered?.lastStatus, 200)
        assert.equal(delivered?.body.length, 0)
        assert.deepEqual(delivered?.headers, [])
        // Its key was stored before keys were per caller (version 3): it names no caller's
        // request now, so the same key and body from a caller is that caller's own delivery.
        const repeat = message(route, {
          idempotencyKey: 'k-delivered',
          body: rows.delivered.body,
          target: rows.delivered.target,
          fingerprint: rows.delivered.fingerprint,
        })
        assert.deepEqual(await s.enqueue(repeat, DAY), { id: repeat.id, duplicate: false })
        // The free one is claimed (the leased one's lease is still running) with the new
        // request, delivered, and its payload goes.
        const claimed = await s.claim(route, 10, 0, never())
        assert.deepEqual(claimed.map((r) => r.id).sort(), [rows.pending.id, repeat.id].sort())
        assert.deepEqual(claimed.find((r) => r.id === rows.pending.id)!.body, rows.pending.body)
        await s.settle(repeat.id, { kind: 'delivered', status: 200, at: Date.now() })
        await s.settle(rows.pending.id, { kind: 'delivered', status: 204, at: Date.now() })
        assert.equal((await s.get(rows.pending.id))?.body.length, 0)
        // The dead one is replayed with its request.
        assert.equal(await s.replay({ ids: [rows.dead.id] }, Date.now()), 1)
        const replayed = await s.claim(route, 10, 0, never())
        assert.deepEqual(replayed.map((r) => [r.id, r.body]), [[rows.dead.id, rows.dead.body]])
      } finally {
        await s.close()
      }
      const db = await openRaw(path)
      try {
        assert.equal(db.pragma('user_version', { simple: true }), 3)
        assert.deepEqual(
          db.prepare(
            'SELECT COUNT(*) AS n FROM deliveries WHERE headers != \'[]\' OR length(body) > 0',
          ).get(),
          { n: 0 },
        )
        assert.deepEqual(
          db.prepare('SELECT COUNT(*) AS n FROM deliveries WHERE lease_until = 0').get(),
          { n: 0 },
        )
        const holders = (db.prepare(
          'SELECT d.id FROM deliveries d JOIN delivery_payloads p ON p.id = d.payload_id',
        ).all() as Array<{ id: string }>).map((r) => r.id).sort()
        assert.deepEqual(holders, [rows.leased.id, rows.dead.id].sort())
        assert.deepEqual(
          db.prepare('SELECT COUNT(*) AS n FROM delivery_payloads').get(),
          { n: 2 },
          'no payload is left without its record',
        )
      } finally {
        db.close()
      }
    })

    test('a version 2 file (keys per route) is migrated to keys per caller: every record kept, deliverable, replayable; old keys match no new caller', async () => {
      const path = join(dir, `${randomUUID()}.db`)
      const route = `r-${randomUUID()}`
      const now = Date.now()
      const rows = {
        pending: { ...v1Row(route, 'pending', now - 5000), idempotency_key: 'alice-key' },
        delivered: {
          ...v1Row(route, 'delivered', now - 3000),
          idempotency_key: 'k-delivered',
          attempts: 1,
          last_status: 200,
        },
        dead: {
          ...v1Row(route, 'dead', now - 2000),
          attempts: 3,
          last_error: 'status 500 (after 3 attempts)',
          last_status: 500,
        },
      }
      await writeV2(path, Object.values(rows))

      const s = sqliteStore(path)
      await s.start()
      try {
        await s.openRoute(route, { leaseMs: 30_000, maxAttempts: 5 })
        for (const key of ['pending', 'dead'] as const) {
          const rec = await s.get(rows[key].id)
          assert.deepEqual(rec?.body, rows[key].body, key)
          assert.deepEqual(rec?.headers, JSON.parse(rows[key].headers), key)
          assert.equal(rec?.state, rows[key].state, key)
          assert.equal(rec?.caller, '', key)
          assert.equal(rec?.idempotencyKey, rows[key].idempotency_key, key)
        }
        assert.equal((await s.get(rows.delivered.id))?.lastStatus, 200)
        // Bob sends the key an earlier (unscoped) request used, with the same body: his own
        // delivery, not that one's id, and not a 422.
        const bob = message(route, {
          idempotencyKey: 'alice-key',
          caller: 'bob',
          body: rows.pending.body,
          target: rows.pending.target,
          fingerprint: rows.pending.fingerprint,
        })
        assert.deepEqual(await s.enqueue(bob, DAY), { id: bob.id, duplicate: false })
        assert.deepEqual(await s.enqueue({ ...bob, id: randomUUID() }, DAY), {
          id: bob.id,
          duplicate: true,
        })
        const claimed = await s.claim(route, 10, 0, never())
        assert.deepEqual(claimed.map((r) => r.id).sort(), [rows.pending.id, bob.id].sort())
        assert.deepEqual(claimed.find((r) => r.id === rows.pending.id)?.body, rows.pending.body)
        assert.equal(await s.replay({ ids: [rows.dead.id] }, Date.now()), 1)
        const replayed = await s.claim(route, 10, 0, never())
        assert.deepEqual(replayed.map((r) => [r.id, r.body]), [[rows.dead.id, rows.dead.body]])
      } finally {
        await s.close()
      }
      const db = await openRaw(path)
      try {
        assert.equal(db.pragma('user_version', { simple: true }), 3)
        assert.deepEqual(db.prepare('SELECT COUNT(*) AS n FROM deliveries').get(), { n: 4 })
        const index = db.prepare(
          'SELECT sql FROM sqlite_master WHERE type = \'index\' AND name = \'deliveries_idempotency\'',
        ).get() as { sql: string }
        assert.match(index.sql, /\(route, caller, idempotency_key\)/)
      } finally {
        db.close()
      }
    })

    test('a version 1 migration cut short resumes where it stopped', async () => {
      const path = join(dir, `${randomUUID()}.db`)
      const route = `r-${randomUUID()}`
      const [moved, left] = [v1Row(route, 'pending', Date.now() - 2000),
        v1Row(route, 'pending', Date.now() - 1000)]
      await writeV1(path, [moved, left])
      // As the migration leaves a file after its first chunk: one row moved, user_version still 1.
      const db = await openRaw(path)
      db.exec('ALTER TABLE deliveries ADD COLUMN payload_id INTEGER')
      db.exec(
        'CREATE TABLE delivery_payloads (id INTEGER PRIMARY KEY, headers TEXT NOT NULL, body BLOB NOT NULL)',
      )
      db.prepare(
        'INSERT INTO delivery_payloads (headers, body) SELECT headers, body FROM deliveries WHERE id = ?',
      ).run(moved.id)
      db.prepare(
        'UPDATE deliveries SET headers = \'[]\', body = x\'\', payload_id = last_insert_rowid() WHERE id = ?',
      ).run(moved.id)
      db.close()
      const s = sqliteStore(path)
      await s.start()
      try {
        await s.openRoute(route, { leaseMs: 30_000, maxAttempts: 5 })
        const claimed = await s.claim(route, 10, 0, never())
        assert.deepEqual(
          claimed.map((r) => [r.id, r.body, r.headers]),
          [moved, left].map((r) => [r.id, r.body, JSON.parse(r.headers)]),
        )
      } finally {
        await s.close()
      }
    })

    test('a database from a newer schema version is refused, not written', async () => {
      const path = join(dir, `${randomUUID()}.db`)
      const { default: Database } = await import('better-sqlite3' as string) as {
        default: new(p: string) => { pragma(s: string): unknown, close(): void }
      }
      const db = new Database(path)
      db.pragma('user_version = 99')
      db.close()
      await assert.rejects(sqliteStore(path).start(), /schema version 99/)
    })
  })
}

interface RawDb {
  pragma(s: string, o?: { simple: boolean }): unknown
  exec(sql: string): void
  prepare(
    sql: string,
  ): {
    run(...a: unknown[]): unknown
    get(...a: unknown[]): unknown
    all(...a: unknown[]): unknown[]
  }
  close(): void
}

async function openRaw (path: string): Promise<RawDb> {
  const { default: Database } = await import('better-sqlite3' as string) as {
    default: new(p: string) => RawDb
  }
  return new Database(path)
}

/** The schema Gatehouse wrote before version 2 (user_version 1), as it was. */
const V1_SCHEMA = `
CREATE TABLE deliveries (
  id TEXT PRIMARY KEY,
  route TEXT NOT NULL,
  method TEXT NOT NULL,
  target TEXT NOT NULL,
  headers TEXT NOT NULL,
  body BLOB NOT NULL,
  idempotency_key TEXT,
  fingerprint TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  state TEXT NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  next_attempt_at INTEGER NOT NULL,
  lease_until INTEGER NOT NULL DEFAULT 0,
  last_error TEXT,
  last_status INTEGER,
  updated_at INTEGER NOT NULL
);
CREATE INDEX deliveries_claim ON deliveries (route, state, next_attempt_at, created_at);
CREATE UNIQUE INDEX deliveries_idempotency ON deliveries (route, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX deliveries_created ON deliveries (created_at);
CREATE INDEX deliveries_state ON deliveries (state, updated_at);
`

/** A row as version 1 wrote it: headers (a credential among them) and body in the row, lease_until 0. */
function v1Row (route: string, state: 'pending' | 'delivered' | 'dead', at: number) {
  const m = message(route, { createdAt: at, body: randomBytes(6000) })
  const headers = JSON.stringify(['cookie', `session=${randomUUID()}`, 'x-seq', '1'])
  const row = {
    id: m.id,
    route,
    method: m.method,
    target: m.target,
    headers,
    body: m.body,
    fingerprint: m.fingerprint,
    state,
  }
  const times = { created_at: at, next_attempt_at: at, updated_at: at, lease_until: 0 }
  return {
    ...row,
    ...times,
    idempotency_key: null as string | null,
    attempts: 0,
    last_error: null as string | null,
    last_status: null as number | null,
  }
}

async function writeV1 (path: string, rows: Array<ReturnType<typeof v1Row>>): Promise<void> {
  const db = await openRaw(path)
  db.pragma('journal_mode = WAL')
  db.exec(V1_SCHEMA)
  db.pragma('user_version = 1')
  const insert = db.prepare(
    `INSERT INTO deliveries VALUES (@id, @route, @method, @target, @headers, @body, @idempotency_key, @fingerprint,
    @created_at, @state, @attempts, @next_attempt_at, @lease_until, @last_error, @last_status, @updated_at)`,
  )
  for (const r of rows) insert.run(r)
  db.close()
}

/** Version 2's additions, as they were: payloads in a table of their own. */
const V2_PAYLOADS = `
ALTER TABLE deliveries ADD COLUMN payload_id INTEGER;
CREATE TABLE delivery_payloads (id INTEGER PRIMARY KEY, headers TEXT NOT NULL, body BLOB NOT NULL);
CREATE TRIGGER delivery_payloads_gone AFTER DELETE ON deliveries WHEN OLD.payload_id IS NOT NULL
BEGIN
  DELETE FROM delivery_payloads WHERE id = OLD.payload_id;
END;
CREATE TRIGGER delivery_payloads_released AFTER UPDATE OF payload_id ON deliveries
  WHEN OLD.payload_id IS NOT NULL AND OLD.payload_id IS NOT NEW.payload_id
BEGIN
  DELETE FROM delivery_payloads WHERE id = OLD.payload_id;
END;
`

/** A file as version 2 wrote it: a delivered record without its payload, the others with theirs. */
async function writeV2 (path: string, rows: Array<ReturnType<typeof v1Row>>): Promise<void> {
  const db = await openRaw(path)
  db.pragma('journal_mode = WAL')
  db.exec(V1_SCHEMA + V2_PAYLOADS)
  db.pragma('user_version = 2')
  const payload = db.prepare('INSERT INTO delivery_payloads (headers, body) VALUES (?, ?)')
  const insert = db.prepare(
    `INSERT INTO deliveries VALUES (@id, @route, @method, @target, '[]', x'', @idempotency_key, @fingerprint,
    @created_at, @state, @attempts, @next_attempt_at, @lease_until, @last_error, @last_status, @updated_at, @payload_id)`,
  )
  for (const r of rows) {
    const id = r.state === 'delivered'
      ? null
      : (payload.run(r.headers, r.body) as { lastInsertRowid: number }).lastInsertRowid
    insert.run({ ...r, lease_until: r.created_at, payload_id: id })
  }
  db.close()
}

/** Enqueues `size`-byte messages until the store refuses one (with the full store's 503). */
async function fill (s: DeliveryStore, route: string, size: number): Promise<NewDelivery[]> {
  const accepted: NewDelivery[] = []
  for (let i = 0; i < 100_000; i++) {
    const m = message(route, { body: randomBytes(size) })
    try {
      await s.enqueue(m, DAY)
      accepted.push(m)
    } catch (err) {
      assert.ok(isGatewayError(err), String(err))
      assert.equal(err.code, 'GH_DELIVERY_STORE_UNAVAILABLE')
      assert.equal(err.detail, 'The delivery store is full; try again later')
      return accepted
    }
  }
  return assert.fail('the store never filled up')
}

async function claimAll (s: DeliveryStore, route: string, n: number): Promise<DeliveryRecord[]> {
  const got: DeliveryRecord[] = []
  while (got.length < n) {
    const batch = await s.claim(route, n - got.length, 1000, never())
    assert.ok(batch.length > 0, `claimed ${got.length} of ${n}`)
    got.push(...batch)
  }
  return got
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
      const check = (): void => {
        if (lines.some((l) => l.msg === msg)) resolve()
      }
      onLine = check
      check()
    })
    const s = new ThreadedSqliteDeliveryStore(
      { kind: 'sqlite', path: join(dir, `${randomUUID()}.db`), max_size: 64 * 1024 * 1024 },
      log,
      { onWorker: (w) => workers.push(w) },
    )
    await s.start()
    try {
      const route = `r-${randomUUID()}`
      await s.openRoute(route, { leaseMs: 60_000, maxAttempts: 5 })
      const kept = message(route)
      await s.enqueue(kept, DAY)
      // A claim waiting in the thread when it dies.
      const waiting = s.claim(`idle-${randomUUID()}`, 1, 30_000, never())
      await workers[0]!.terminate()
      await assert.rejects(
        waiting,
        (err) =>
          isGatewayError(err) && err.code === 'GH_DELIVERY_STORE_UNAVAILABLE' && err.status === 503,
      )
      assert.equal(s.status().status, 'unavailable')
      assert.match(String(s.status().error), /thread exited/)
      await assert.rejects(
        s.enqueue(message(route), DAY),
        (err) =>
          isGatewayError(err) && err.code === 'GH_DELIVERY_STORE_UNAVAILABLE' &&
          err.headers?.['retry-after'] === '5',
      )
      assert.ok(lines.some((l) => l.msg === 'delivery store thread stopped' && l.level === 'error'))

      await logged('delivery store thread restarted')
      assert.equal(workers.length, 2)
      assert.equal(s.status().status, 'ok')
      assert.deepEqual((await s.get(kept.id))?.body, kept.body)
      const after = message(route)
      assert.deepEqual(await s.enqueue(after, DAY), { id: after.id, duplicate: false })
      assert.deepEqual(
        (await s.claim(route, 10, 0, never())).map((r) => r.id).sort(),
        [kept.id, after.id].sort(),
      )
    } finally {
      await s.close()
    }
    assert.equal(s.status().status, 'unavailable')
  })
})
