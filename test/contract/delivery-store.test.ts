import { after } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes, randomUUID } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { NatsDeliveryStore } from '../../src/delivery/nats.js'
import { SqliteDeliveryStore } from '../../src/delivery/sqlite.js'
import { ThreadedSqliteDeliveryStore } from '../../src/delivery/sqlite-thread.js'
import type { DeliveryRecord, DeliveryStore, NewDelivery } from '../../src/delivery/store.js'
import { isGatewayError } from '../../src/errors/index.js'
import { createLogger } from '../../src/observability/logger.js'
import { contractSuite } from '../helpers/contract.js'
import { message } from '../helpers/delivery.js'
import { deleteNatsStreams, serviceAvailable } from '../helpers/index.js'

/*
 * The behaviour every DeliveryStore backend promises (src/delivery/store.ts), run against each
 * backend. The tests share one store, so each works on routes of its own (random names) and
 * assumes nothing about what other tests left behind; none sleeps to synchronise. What only one
 * backend promises is tested beside it (test/unit/delivery-store-*.test.ts).
 */

const DAY = 86_400_000
/** Generous: a claim expected to find work answers at once, so this only bounds a failure. */
const WAIT = 3000

/**
 * Registers the contract for one backend. `make` returns a new store (each call its own, not
 * started, or started if its start() is idempotent), or a reason to skip every test.
 */
function deliveryStoreContract (name: string, make: () => Promise<DeliveryStore | string>): void {
  contractSuite(`delivery store contract: ${name}`, make, (it) => {
    it('enqueue keeps the request as given: get returns it pending, byte for byte', async (s) => {
      const route = await openRoute(s)
      const body = Buffer.from([0, 255, 10, 13, 0xc3, 0x28, 0, 1, 2, 0x80])
      const headers = ['content-type', 'application/octet-stream', 'x-dup', 'a', 'x-dup', 'b',
        'x-empty', '', 'x-utf8', 'é ✓']
      const msg = message(route, {
        body,
        headers,
        target: '/hooks/a%20b?x=1&y=%2F',
        method: 'PUT',
        idempotencyKey: `k-${randomUUID()}`,
      })
      assert.deepEqual(await s.enqueue(msg, DAY), { id: msg.id, duplicate: false })
      const got = await s.get(msg.id)
      assert.ok(got !== null)
      assert.ok(Buffer.isBuffer(got.body))
      assert.deepEqual(got.body, body)
      assert.deepEqual(got.headers, headers)
      assert.equal(got.method, 'PUT')
      assert.equal(got.target, msg.target)
      assert.equal(got.route, route)
      assert.equal(got.idempotencyKey, msg.idempotencyKey)
      assert.equal(got.fingerprint, msg.fingerprint)
      assert.equal(got.createdAt, msg.createdAt)
      assert.equal(got.state, 'pending')
      assert.equal(got.attempts, 0)
      assert.equal(got.lastError, null)
      assert.equal(got.lastStatus, null)
      assert.ok(got.nextAttemptAt <= Date.now(), 'a new message is due at once')

      const empty = message(route, { body: Buffer.alloc(0), headers: [] })
      await s.enqueue(empty, DAY)
      const e = await s.get(empty.id)
      assert.equal(e?.body.length, 0)
      assert.deepEqual(e?.headers, [])
      assert.equal(await s.get(randomUUID()), null)
    })

    it('claim returns due messages oldest first, at most `max`, and leased ones only once', async (s) => {
      const route = await openRoute(s)
      const base = Date.now() - 1000
      const msgs = [0, 1, 2].map((i) => message(route, { createdAt: base + i * 10 }))
      for (const m of msgs) await s.enqueue(m, DAY)
      const first = await s.claim(route, 2, WAIT, never())
      assert.deepEqual(first.map((r) => r.id), [msgs[0]!.id, msgs[1]!.id])
      assert.deepEqual(first[0]!.body, msgs[0]!.body)
      assert.equal(first[0]!.state, 'pending')
      const second = await s.claim(route, 10, WAIT, never())
      assert.deepEqual(second.map((r) => r.id), [msgs[2]!.id])
      // All three are leased (30 s): nothing more until the wait runs out.
      assert.deepEqual(await s.claim(route, 10, 50, never()), [])
    })

    it('an unsettled lease expires and the message is claimable again', async (s) => {
      const route = await openRoute(s, 300)
      const msg = message(route)
      await s.enqueue(msg, DAY)
      const t0 = Date.now()
      assert.deepEqual((await s.claim(route, 1, WAIT, never())).map((r) => r.id), [msg.id])
      assert.deepEqual(await s.claim(route, 1, 0, never()), [])
      const again = await s.claim(route, 1, WAIT, never())
      assert.deepEqual(again.map((r) => r.id), [msg.id])
      assert.ok(
        Date.now() - t0 >= 290,
        `claimed again after ${Date.now() - t0} ms, before the 300 ms lease ran out`,
      )
      assert.equal(again[0]!.state, 'pending')
    })

    it('settle records each outcome: delivered, retry and dead', async (s) => {
      const route = await openRoute(s)
      const [a, b, c] = [message(route), message(route), message(route)]
      for (const m of [a, b, c]) await s.enqueue(m, DAY)
      assert.equal((await claimN(s, route, 3)).length, 3)
      const at = Date.now()
      await s.settle(a.id, { kind: 'delivered', status: 204, at })
      const later = Date.now() + 60_000
      await s.settle(b.id, {
        kind: 'retry',
        at,
        nextAttemptAt: later,
        error: 'status 503',
        status: 503,
      })
      await s.settle(c.id, { kind: 'dead', at, error: 'connect ECONNREFUSED', status: null })

      const da = await s.get(a.id)
      assert.equal(da?.state, 'delivered')
      assert.equal(da?.attempts, 1)
      assert.equal(da?.lastStatus, 204)
      assert.equal(da?.lastError, null)
      assert.equal(da?.updatedAt, at)
      const db = await s.get(b.id)
      assert.equal(db?.state, 'pending')
      assert.equal(db?.attempts, 1)
      assert.equal(db?.lastStatus, 503)
      assert.equal(db?.lastError, 'status 503')
      assert.equal(db?.nextAttemptAt, later)
      const dc = await s.get(c.id)
      assert.equal(dc?.state, 'dead')
      assert.equal(dc?.attempts, 1)
      assert.equal(dc?.lastStatus, null)
      assert.equal(dc?.lastError, 'connect ECONNREFUSED')
      assert.deepEqual(dc?.body, c.body)
      // Delivered and dead are final, and the retry is not due for a minute.
      assert.deepEqual(await s.claim(route, 10, 50, never()), [])
    })

    it('a delivered record keeps its status and Idempotency-Key, not its headers or body; a dead one keeps both', async (s) => {
      const route = await openRoute(s)
      const headers = ['content-type', 'application/json', ':enc:cookie', 'k.iv.sealed',
        'x-request-id', 'r-1']
      const key = `k-${randomUUID()}`
      const done = message(route, {
        headers,
        idempotencyKey: key,
        body: Buffer.from('{"card":"4111 1111 1111 1111"}'),
      })
      const failed = message(route, { headers, body: randomBytes(100) })
      for (const m of [done, failed]) await s.enqueue(m, DAY)
      assert.equal((await claimN(s, route, 2)).length, 2)
      const at = Date.now()
      await s.settle(done.id, { kind: 'delivered', status: 202, at })
      await s.settle(failed.id, {
        kind: 'dead',
        at,
        error: 'status 400 (not retried)',
        status: 400,
      })

      const d = await s.get(done.id)
      assert.ok(d !== null)
      assert.equal(d.state, 'delivered')
      assert.equal(d.body.length, 0, 'the body is gone once delivered')
      assert.deepEqual(
        d.headers,
        [],
        'the headers (credentials among them) are gone once delivered',
      )
      assert.equal(d.method, done.method)
      assert.equal(d.target, done.target)
      assert.equal(d.fingerprint, done.fingerprint)
      assert.equal(d.idempotencyKey, key)
      assert.equal(d.createdAt, done.createdAt)
      assert.equal(d.updatedAt, at)
      assert.equal(d.lastStatus, 202)
      assert.equal(d.attempts, 1)
      const listed = (await s.list({ route, state: 'delivered', limit: 10 }))[0]
      assert.equal(listed?.id, done.id)
      assert.equal(listed?.body.length, 0)
      assert.deepEqual(listed?.headers, [])
      // The key still answers with the first delivery, and still tells another request apart.
      const repeat = message(route, { idempotencyKey: key, body: done.body, target: done.target })
      assert.deepEqual(await s.enqueue(repeat, DAY), { id: done.id, duplicate: true })
      await assert.rejects(
        s.enqueue(message(route, { idempotencyKey: key }), DAY),
        (err) => isGatewayError(err) && err.code === 'GH_IDEMPOTENCY_CONFLICT',
      )

      // A dead letter can be replayed: it keeps what it is sent with.
      const f = await s.get(failed.id)
      assert.deepEqual(f?.headers, headers)
      assert.deepEqual(f?.body, failed.body)
    })

    it('a retry is not claimable before nextAttemptAt; a waiting claim gets it once due', async (s) => {
      const route = await openRoute(s)
      const msg = message(route)
      await s.enqueue(msg, DAY)
      await claimN(s, route, 1)
      const next = Date.now() + 400
      await s.settle(msg.id, {
        kind: 'retry',
        at: Date.now(),
        nextAttemptAt: next,
        error: 'status 500',
        status: 500,
      })
      assert.deepEqual(await s.claim(route, 1, 0, never()), [])
      const again = await s.claim(route, 1, 5000, never())
      const at = Date.now()
      assert.deepEqual(again.map((r) => r.id), [msg.id])
      // 10 ms of slack for a backend whose timer runs elsewhere (a server) on a coarser clock.
      assert.ok(at >= next - 10, `came back ${next - at} ms early`)
      assert.ok(
        at < next + 2000,
        `came back ${at - next} ms after it fell due: the claim waited for its timeout`,
      )
      assert.equal(again[0]!.attempts, 1)
      assert.equal(again[0]!.lastError, 'status 500')
      assert.equal(again[0]!.lastStatus, 500)
      await s.settle(msg.id, { kind: 'dead', at: Date.now(), error: 'status 500', status: 500 })
      assert.equal((await s.get(msg.id))?.attempts, 2)
    })

    it('claim with nothing due resolves [] after waitMs, or at once on abort', async (s) => {
      const route = await openRoute(s)
      let t0 = Date.now()
      assert.deepEqual(await s.claim(route, 10, 200, never()), [])
      const waited = Date.now() - t0
      assert.ok(waited >= 190 && waited < 2000, `waited ${waited} ms for a 200 ms claim`)

      const ac = new AbortController()
      t0 = Date.now()
      const pending = s.claim(route, 10, 30_000, ac.signal)
      ac.abort()
      assert.deepEqual(await pending, [])
      assert.ok(Date.now() - t0 < 1000)

      t0 = Date.now()
      assert.deepEqual(await s.claim(route, 10, 30_000, AbortSignal.abort()), [])
      assert.ok(Date.now() - t0 < 1000)
    })

    it('a waiting claim is woken by an enqueue on its route', async (s) => {
      const route = await openRoute(s)
      const other = await openRoute(s)
      const t0 = Date.now()
      const waiting = s.claim(route, 10, 10_000, never())
      await s.enqueue(message(other), DAY)
      const msg = message(route)
      await s.enqueue(msg, DAY)
      assert.deepEqual((await waiting).map((r) => r.id), [msg.id])
      assert.ok(Date.now() - t0 < 2000, `woken after ${Date.now() - t0} ms`)
    })

    it('idempotency: a repeat within the window is the first delivery, another request a 422', async (s) => {
      const route = await openRoute(s)
      const key = `key ${randomUUID()}`
      const first = message(route, { idempotencyKey: key })
      assert.deepEqual(await s.enqueue(first, DAY), { id: first.id, duplicate: false })
      const repeat = message(route, { idempotencyKey: key, body: first.body, target: first.target })
      assert.equal(repeat.fingerprint, first.fingerprint)
      assert.deepEqual(await s.enqueue(repeat, DAY), { id: first.id, duplicate: true })
      assert.equal(await s.get(repeat.id), null)

      const changed = message(route, { idempotencyKey: key })
      await assert.rejects(s.enqueue(changed, DAY), (err) => {
        assert.ok(isGatewayError(err), `expected a GatewayError, got ${String(err)}`)
        assert.equal(err.code, 'GH_IDEMPOTENCY_CONFLICT')
        assert.equal(err.status, 422)
        return true
      })
      assert.equal(await s.get(changed.id), null)

      // Keys belong to a route.
      const elsewhere = message(await openRoute(s), { idempotencyKey: key })
      assert.deepEqual(await s.enqueue(elsewhere, DAY), { id: elsewhere.id, duplicate: false })
      // The first delivery is still the only one of its route, and still claimable once.
      assert.deepEqual((await claimN(s, route, 1)).map((r) => r.id), [first.id])
      assert.deepEqual(await s.claim(route, 10, 50, never()), [])
    })

    it('idempotency: keys belong to their caller; two callers with one key and one body get two deliveries', async (s) => {
      const route = await openRoute(s)
      const key = `shared ${randomUUID()}`
      const alice = message(route, { idempotencyKey: key, caller: 'alice' })
      const bob = message(route, {
        idempotencyKey: key,
        caller: 'bob',
        body: alice.body,
        target: alice.target,
      })
      assert.equal(bob.fingerprint, alice.fingerprint)
      assert.deepEqual(await s.enqueue(alice, DAY), { id: alice.id, duplicate: false })
      // Bob's request is his own: stored, with his id (not Alice's), and no 422 either.
      assert.deepEqual(await s.enqueue(bob, DAY), { id: bob.id, duplicate: false })
      const other = message(route, { idempotencyKey: key, caller: 'carol' })
      assert.deepEqual(await s.enqueue(other, DAY), { id: other.id, duplicate: false })
      // Each caller's repeat is its own first delivery.
      const bobAgain = message(route, {
        idempotencyKey: key,
        caller: 'bob',
        body: alice.body,
        target: alice.target,
      })
      assert.deepEqual(await s.enqueue(bobAgain, DAY), { id: bob.id, duplicate: true })
      assert.equal((await s.get(bob.id))?.caller, 'bob')
      const claimed = (await claimN(s, route, 3)).map((r) => r.id).sort()
      assert.deepEqual(claimed, [alice.id, bob.id, other.id].sort())
    })

    it('idempotency: the same key in one burst makes one delivery', async (s) => {
      const route = await openRoute(s)
      const key = `burst-${randomUUID()}`
      const same = { idempotencyKey: key, body: randomBytes(32), target: '/same' }
      const results = await Promise.all(
        Array.from({ length: 5 }, () => s.enqueue(message(route, same), DAY)),
      )
      const fresh = results.filter((r) => !r.duplicate)
      assert.equal(fresh.length, 1)
      assert.ok(results.every((r) => r.id === fresh[0]!.id))
      assert.equal((await s.list({ route, limit: 10 })).length, 1)
    })

    it('idempotency: outside the window (measured on createdAt) a key makes a new delivery', async (s) => {
      const route = await openRoute(s)
      const key = `old-${randomUUID()}`
      const window = 60_000
      const old = message(route, { idempotencyKey: key, createdAt: Date.now() - 2 * window })
      await s.enqueue(old, window)
      // Another request, so within the window this would be a conflict.
      const renewed = message(route, { idempotencyKey: key })
      assert.deepEqual(await s.enqueue(renewed, window), { id: renewed.id, duplicate: false })
      // The window starts again from the new delivery.
      const repeat = message(route, {
        idempotencyKey: key,
        body: renewed.body,
        target: renewed.target,
      })
      assert.deepEqual(await s.enqueue(repeat, window), { id: renewed.id, duplicate: true })
      assert.equal((await s.get(old.id))?.state, 'pending')
      assert.deepEqual((await claimN(s, route, 2)).map((r) => r.id), [old.id, renewed.id])
    })

    it('list: newest first, by route and state, up to limit', async (s) => {
      const route = await openRoute(s)
      const base = Date.now() - 1000
      const msgs = [0, 1, 2, 3].map((i) => message(route, { createdAt: base + i * 10 }))
      for (const m of msgs) await s.enqueue(m, DAY)
      const claimed = await claimN(s, route, 2)
      assert.deepEqual(claimed.map((r) => r.id), [msgs[0]!.id, msgs[1]!.id])
      await s.settle(msgs[0]!.id, {
        kind: 'dead',
        at: Date.now(),
        error: 'status 400',
        status: 400,
      })
      await s.settle(msgs[1]!.id, { kind: 'delivered', at: Date.now(), status: 200 })

      const ids = (rs: DeliveryRecord[]): string[] => rs.map((r) => r.id)
      assert.deepEqual(ids(await s.list({ route, limit: 10 })), [msgs[3]!.id, msgs[2]!.id,
        msgs[1]!.id, msgs[0]!.id])
      assert.deepEqual(ids(await s.list({ route, limit: 2 })), [msgs[3]!.id, msgs[2]!.id])
      assert.deepEqual(ids(await s.list({ route, state: 'pending', limit: 10 })), [msgs[3]!.id,
        msgs[2]!.id])
      assert.deepEqual(ids(await s.list({ route, state: 'dead', limit: 10 })), [msgs[0]!.id])
      assert.deepEqual(ids(await s.list({ route, state: 'delivered', limit: 10 })), [msgs[1]!.id])
      const listed = await s.list({ route, state: 'dead', limit: 10 })
      assert.deepEqual(listed[0]!.body, msgs[0]!.body)
      assert.equal(listed[0]!.lastError, 'status 400')
      // Without a route: this store's dead messages (of other tests too), all dead.
      const dead = await s.list({ state: 'dead', limit: 1000 })
      assert.ok(dead.every((r) => r.state === 'dead'))
      assert.ok(ids(dead).includes(msgs[0]!.id))
      assert.deepEqual(await s.list({ route: `none-${randomUUID()}`, limit: 10 }), [])
    })

    it('replay by ids: only dead ones, back to pending with attempts reset, claimable', async (s) => {
      const route = await openRoute(s)
      const [a, b, c] = [message(route), message(route), message(route)]
      for (const m of [a, b, c]) await s.enqueue(m, DAY)
      await claimN(s, route, 3)
      await s.settle(a.id, { kind: 'dead', at: Date.now(), error: 'status 500', status: 500 })
      await s.settle(b.id, { kind: 'dead', at: Date.now(), error: 'status 502', status: 502 })
      await s.settle(c.id, { kind: 'delivered', at: Date.now(), status: 200 })

      const now = Date.now()
      assert.equal(await s.replay({ ids: [a.id, c.id, randomUUID()] }, now), 1)
      const ra = await s.get(a.id)
      assert.equal(ra?.state, 'pending')
      assert.equal(ra?.attempts, 0)
      assert.ok((ra?.nextAttemptAt ?? Infinity) <= Date.now())
      assert.equal(ra?.lastError, 'status 500', 'the last error is kept for the record')
      assert.equal((await s.get(b.id))?.state, 'dead')
      assert.equal((await s.get(c.id))?.state, 'delivered')
      const again = await s.claim(route, 10, WAIT, never())
      assert.deepEqual(again.map((r) => r.id), [a.id])
      assert.equal(again[0]!.attempts, 0)
      assert.deepEqual(again[0]!.body, a.body)
      // Replaying what is not dead (now pending, leased) does nothing.
      assert.equal(await s.replay({ ids: [a.id] }, Date.now()), 0)
    })

    it('replay of every dead message, of a route or of all; a waiting claim is woken', async (s) => {
      const route = await openRoute(s)
      const other = await openRoute(s)
      const msgs = [message(route), message(route), message(other)]
      for (const m of msgs) await s.enqueue(m, DAY)
      for (const r of [route, other]) {
        for (const rec of await claimN(s, r, r === route ? 2 : 1)) {
          await s.settle(rec.id, { kind: 'dead', at: Date.now(), error: 'x', status: null })
        }
      }
      const t0 = Date.now()
      const waiting = s.claim(route, 10, 10_000, never())
      assert.equal(await s.replay({ dead: true, route }, Date.now()), 2)
      const woken = await waiting
      assert.ok(Date.now() - t0 < 2000, `woken after ${Date.now() - t0} ms`)
      const got = [...woken, ...(woken.length < 2 ? await claimN(s, route, 2 - woken.length) : [])]
      assert.deepEqual(got.map((r) => r.id).sort(), [msgs[0]!.id, msgs[1]!.id].sort())
      assert.ok(got.every((r) => r.attempts === 0))
      assert.equal((await s.get(msgs[2]!.id))?.state, 'dead', 'another route is left alone')

      // Without a route: every dead message of the store (other tests' too).
      assert.ok(await s.replay({ dead: true }, Date.now()) >= 1)
      assert.equal((await s.get(msgs[2]!.id))?.state, 'pending')
      assert.deepEqual((await claimN(s, other, 1)).map((r) => r.id), [msgs[2]!.id])
    })

    it('purge deletes dead or delivered records, of a route or of all', async (s) => {
      const route = await openRoute(s)
      const base = Date.now() - 1000
      const [a, b, c, d] = [0, 1, 2, 3].map((i) =>
        message(route, { createdAt: base + i * 10 })
      ) as [NewDelivery, NewDelivery, NewDelivery, NewDelivery]
      for (const m of [a, b, c, d]) await s.enqueue(m, DAY)
      assert.deepEqual((await claimN(s, route, 3)).map((r) => r.id), [a.id, b.id, c.id])
      await s.settle(a.id, { kind: 'dead', at: Date.now(), error: 'x', status: null })
      await s.settle(b.id, { kind: 'delivered', at: Date.now(), status: 200 })
      // c stays claimed and d waiting: pending is never purged.
      assert.equal(await s.purge('dead', route), 1)
      assert.equal(await s.get(a.id), null)
      assert.equal((await s.get(b.id))?.state, 'delivered')
      assert.equal(await s.purge('dead', route), 0)
      assert.ok(await s.purge('delivered', undefined) >= 1)
      assert.equal(await s.get(b.id), null)
      assert.equal((await s.get(c.id))?.state, 'pending')
      assert.equal((await s.get(d.id))?.state, 'pending')
    })

    it('expire deletes delivered and dead records last updated before the cutoff, nothing else', async (s) => {
      const route = await openRoute(s)
      const base = Date.now() - 1000
      const msgs = [0, 1, 2, 3, 4].map((i) => message(route, { createdAt: base + i * 10 }))
      for (const m of msgs) await s.enqueue(m, DAY)
      assert.deepEqual(
        (await claimN(s, route, 4)).map((r) => r.id),
        msgs.slice(0, 4).map((m) => m.id),
      )
      const now = Date.now()
      const old = now - 10 * DAY
      await s.settle(msgs[0]!.id, { kind: 'delivered', at: old, status: 200 })
      await s.settle(msgs[1]!.id, { kind: 'dead', at: old, error: 'x', status: null })
      await s.settle(msgs[2]!.id, { kind: 'delivered', at: now, status: 200 })
      await s.settle(msgs[3]!.id, {
        kind: 'retry',
        at: old,
        nextAttemptAt: now + DAY,
        error: 'x',
        status: null,
      })
      assert.ok(await s.expire(now - DAY) >= 2)
      assert.equal(await s.get(msgs[0]!.id), null)
      assert.equal(await s.get(msgs[1]!.id), null)
      assert.equal((await s.get(msgs[2]!.id))?.state, 'delivered')
      assert.equal((await s.get(msgs[3]!.id))?.state, 'pending', 'a pending message never expires')
      assert.equal((await s.get(msgs[4]!.id))?.state, 'pending')
    })

    it('stats: pending (claimed or not) and dead per route, with the oldest pending createdAt', async (s) => {
      const route = await openRoute(s)
      const base = Date.now() - 10_000
      const msgs = [0, 1, 2, 3].map((i) => message(route, { createdAt: base + i * 1000 }))
      for (const m of msgs) await s.enqueue(m, DAY)
      const [oldest, second] = await claimN(s, route, 2, 1)
      assert.equal(oldest!.id, msgs[0]!.id)
      assert.equal(second!.id, msgs[1]!.id)
      await s.settle(oldest!.id, { kind: 'dead', at: Date.now(), error: 'x', status: null })
      const stats = await s.stats(Date.now())
      assert.deepEqual(stats[route], { pending: 3, dead: 1, oldestPendingAt: msgs[1]!.createdAt })

      const done = await openRoute(s)
      const m = message(done)
      await s.enqueue(m, DAY)
      await claimN(s, done, 1)
      await s.settle(m.id, { kind: 'delivered', at: Date.now(), status: 200 })
      const after = (await s.stats(Date.now()))[done]
      assert.ok(
        after === undefined ||
          (after.pending === 0 && after.dead === 0 && after.oldestPendingAt === null),
        JSON.stringify(after),
      )
    })

    it('a burst of 200 concurrent enqueues: all kept, each claimed exactly once', async (s) => {
      const route = await openRoute(s)
      const msgs = Array.from({ length: 200 }, () => message(route, { body: randomBytes(1024) }))
      const results = await Promise.all(msgs.map((m) => s.enqueue(m, DAY)))
      assert.deepEqual(results, msgs.map((m) => ({ id: m.id, duplicate: false })))
      for (const m of msgs) assert.deepEqual((await s.get(m.id))?.body, m.body)
      const claimed = await claimN(s, route, 200, 50)
      assert.equal(new Set(claimed.map((r) => r.id)).size, 200)
      assert.deepEqual(claimed.map((r) => r.id).sort(), msgs.map((m) => m.id).sort())
      const byId = new Map(msgs.map((m) => [m.id, m]))
      for (const r of claimed) assert.deepEqual(r.body, byId.get(r.id)!.body)
      assert.deepEqual(await s.claim(route, 50, 100, never()), [])
      assert.equal((await s.stats(Date.now()))[route]?.pending, 200)
    })

    it('status is ok while open; after close, enqueue rejects with GH_DELIVERY_STORE_UNAVAILABLE', async () => {
      // A store of its own: the shared one stays open for the other tests.
      const made = await make()
      assert.ok(typeof made !== 'string', String(made))
      const s = made
      await s.start()
      const st = s.status()
      assert.equal(st.status, 'ok')
      assert.equal(st.kind, s.kind)
      const route = `r-${randomUUID()}`
      await s.openRoute(route, { leaseMs: 30_000, maxAttempts: 10 })
      const kept = message(route)
      await s.enqueue(kept, DAY)
      // One still in flight as the store closes: it is written or refused, never left hanging.
      const inFlight = s.enqueue(message(route), DAY)
      await s.close()
      const [outcome] = await Promise.allSettled([inFlight])
      if (outcome.status === 'rejected') assertUnavailable(outcome.reason)
      await assert.rejects(s.enqueue(message(route), DAY), (err) => {
        assertUnavailable(err)
        return true
      })
      assert.equal(s.status().status, 'unavailable')
    })
  })
}

function assertUnavailable (err: unknown): void {
  assert.ok(isGatewayError(err), `expected a GatewayError, got ${String(err)}`)
  assert.equal(err.code, 'GH_DELIVERY_STORE_UNAVAILABLE')
  assert.equal(err.status, 503)
  assert.ok(err.headers?.['retry-after'] !== undefined, 'a 503 says when to retry')
}

/** A route of the test's own, opened with a 30 s lease unless told otherwise. */
async function openRoute (s: DeliveryStore, leaseMs = 30_000): Promise<string> {
  const route = `r-${randomUUID()}`
  await s.openRoute(route, { leaseMs, maxAttempts: 10 })
  return route
}

function never (): AbortSignal {
  return new AbortController().signal
}

/**
 * Claims until `n` messages came back (a claim may return fewer than are due), each claim at
 * most `max`; fails rather than hangs.
 */
async function claimN (
  s: DeliveryStore,
  route: string,
  n: number,
  max = n,
): Promise<DeliveryRecord[]> {
  const got: DeliveryRecord[] = []
  const deadline = Date.now() + 10_000
  while (got.length < n) {
    if (Date.now() > deadline) throw new Error(`claimed ${got.length} of ${n} messages within 10 s`)
    const batch = await s.claim(route, Math.min(max, n - got.length), 1000, never())
    assert.ok(batch.length <= max, `claim returned ${batch.length}, more than max ${max}`)
    got.push(...batch)
  }
  return got
}

const dir = mkdtempSync(join(tmpdir(), 'gh-dl-'))
after(() => rmSync(dir, { recursive: true, force: true }))
const logger = createLogger('silent')
const sqlite = { kind: 'sqlite' as const, max_size: 64 * 1024 * 1024 }
// One stream for the NATS stores (the contract makes more than one: they share it, as a fleet would).
const stream = `GHTEST_${randomBytes(6).toString('hex')}`
let natsUsed = false
after(async () => {
  if (natsUsed) await deleteNatsStreams([stream])
})

// sqlite on the caller's thread, and as the gateway runs it: in a worker thread, driven by
// messages (sqlite-thread.ts). All keep the same contract.
const backends: Array<[string, () => Promise<DeliveryStore | string>]> = [
  ['sqlite',
    async () =>
      new SqliteDeliveryStore({ ...sqlite, path: join(dir, `${randomUUID()}.db`) }, logger)],
  ['sqlite in a worker thread', async () =>
    new ThreadedSqliteDeliveryStore(
      { ...sqlite, path: join(dir, `${randomUUID()}.db`) },
      logger,
    )],
  ['nats', async () => {
    if (!await serviceAvailable(4222)) return 'NATS is not answering on 127.0.0.1:4222'
    natsUsed = true
    return new NatsDeliveryStore({
      kind: 'nats',
      url: 'nats://127.0.0.1:4222',
      stream,
      max_bytes: 64 * 1024 * 1024,
      timeout: 2000,
      replicas: 1,
    }, logger)
  }],
]

for (const [name, make] of backends) deliveryStoreContract(name, make)
