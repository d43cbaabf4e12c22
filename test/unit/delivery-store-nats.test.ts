import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { once } from 'node:events'
import { createHash, randomBytes, randomUUID } from 'node:crypto'
import net, { type AddressInfo } from 'node:net'
import { encodeToken, NatsDeliveryStore } from '../../src/delivery/nats.js'
import type { DeliveryStore, NewDelivery } from '../../src/delivery/store.js'
import { isGatewayError } from '../../src/errors/index.js'
import { createLogger } from '../../src/observability/logger.js'
import { message } from '../helpers/delivery.js'
import { serviceAvailable } from '../helpers/index.js'

const NATS_URL = 'nats://127.0.0.1:4222'
const SKIP = 'NATS is not answering on 127.0.0.1:4222'
const available = await serviceAvailable(4222)

/** Every stream made here, deleted after the run. */
const streams = new Set<string>()

function natsStore (
  stream: string,
  overrides: { url?: string, max_bytes?: number, timeout?: number } = {},
): NatsDeliveryStore {
  streams.add(stream)
  return new NatsDeliveryStore({
    kind: 'nats',
    url: NATS_URL,
    stream,
    max_bytes: 64 * 1024 * 1024,
    timeout: 2000,
    replicas: 1,
    ...overrides,
  }, createLogger('silent'))
}

function streamName (): string {
  return `GHTEST_${randomBytes(6).toString('hex')}`
}

after(async () => {
  if (streams.size === 0 || !available) return
  const { connect } = await import('@nats-io/transport-node')
  const { jetstreamManager } = await import('@nats-io/jetstream')
  const nc = await connect({ servers: NATS_URL })
  const jsm = await jetstreamManager(nc)
  for (const s of streams) {
    for (const name of [s, `${s}_DEAD`, `${s}_STATE`]) {
      await jsm.streams.delete(name).catch(() => {})
    }
  }
  await nc.close()
})

function never (): AbortSignal {
  return new AbortController().signal
}

async function rejectsUnavailable (p: Promise<unknown>): Promise<void> {
  await assert.rejects(p, (err) => {
    assert.ok(isGatewayError(err), `expected a GatewayError, got ${String(err)}`)
    assert.equal(err.code, 'GH_DELIVERY_STORE_UNAVAILABLE')
    assert.equal(err.status, 503)
    assert.ok(err.headers?.['retry-after'])
    return true
  })
}

/** A TCP hop between the store and NATS that can be cut and restored (an outage). */
async function startHop (
  port = 0,
): Promise<
  { port: number, cut(): Promise<void>, restore(): Promise<void>, close(): Promise<void> }
> {
  const sockets = new Set<net.Socket>()
  let server: net.Server
  const listen = async (p: number): Promise<number> => {
    server = net.createServer((client) => {
      const upstream = net.connect(4222, '127.0.0.1')
      sockets.add(client)
      sockets.add(upstream)
      client.pipe(upstream).pipe(client)
      const end = (): void => {
        client.destroy()
        upstream.destroy()
        sockets.delete(client)
        sockets.delete(upstream)
      }
      client.on('error', end).on('close', end)
      upstream.on('error', end).on('close', end)
    })
    server.listen(p, '127.0.0.1')
    await once(server, 'listening')
    return (server.address() as AddressInfo).port
  }
  const bound = await listen(port)
  const cut = async (): Promise<void> => {
    for (const s of sockets) s.destroy()
    await new Promise<void>((resolve) => server.close(() => resolve()))
  }
  return {
    port: bound,
    cut,
    restore: async () => {
      await listen(bound)
    },
    close: cut,
  }
}

/** A plain client, to do to the streams what a crash or another process would. */
async function raw (): Promise<
  {
    jsm: import('@nats-io/jetstream').JetStreamManager
    js: import('@nats-io/jetstream').JetStreamClient
    close(): Promise<void>
  }
> {
  const { connect } = await import('@nats-io/transport-node')
  const { jetstream, jetstreamManager } = await import('@nats-io/jetstream')
  const nc = await connect({ servers: NATS_URL })
  return { jsm: await jetstreamManager(nc), js: jetstream(nc), close: () => nc.close() }
}

describe('NATS delivery store: recovery', { skip: available ? false : SKIP }, () => {
  const name = streamName()
  let store: DeliveryStore
  let nc: Awaited<ReturnType<typeof raw>>
  before(async () => {
    store = natsStore(name)
    await store.start()
    nc = await raw()
  })
  after(async () => {
    await store.close()
    await nc?.close()
  })

  test('a message whose status record was lost is still found, claimed and settled', async () => {
    const route = 'lost.status'
    await store.openRoute(route, { leaseMs: 5000, maxAttempts: 3 })
    const msg = message(route)
    await store.enqueue(msg, 1000)
    await nc.jsm.streams.purge(`${name}_STATE`, {
      filter: `${name}_STATE.s.${encodeToken(msg.id)}`,
    })
    const got = await store.get(msg.id)
    assert.equal(got?.state, 'pending')
    assert.deepEqual(got?.body, msg.body)
    assert.equal(
      (await store.list({ route, limit: 10 })).length,
      0,
      'list reads status records only',
    )
    const claimed = await store.claim(route, 10, 0, never())
    assert.deepEqual(claimed.map((r) => [r.id, r.attempts]), [[msg.id, 0]])
    await store.settle(msg.id, { kind: 'delivered', status: 200, at: Date.now() })
    assert.equal((await store.get(msg.id))?.state, 'delivered')
  })

  test('a message delivered too often without an outcome is dead-lettered, not dropped', async () => {
    const route = 'poison'
    await store.openRoute(route, { leaseMs: 5000, maxAttempts: 1 })
    const msg = message(route)
    await store.enqueue(msg, 1000)
    // Workers that crash mid-attempt: each delivery ends without ack (here: nak at once).
    const consumer = await nc.js.consumers.get(name, `gh-${encodeToken(route)}`)
    for (let i = 0; i < 12; i++) {
      const m = await consumer.next({ expires: 1000 })
      assert.ok(m)
      m.nak()
    }
    assert.deepEqual(await store.claim(route, 10, 0, never()), [])
    const dead = await store.get(msg.id)
    assert.equal(dead?.state, 'dead')
    assert.match(dead?.lastError ?? '', /claimed 12 times without an outcome/)
    assert.deepEqual(dead?.body, msg.body)
    assert.equal(await store.replay({ ids: [msg.id] }, Date.now()), 1)
    assert.equal((await store.claim(route, 10, 0, never()))[0]?.id, msg.id)
  })

  test('a replay interrupted after publishing is finished by the claim that receives the message', async () => {
    const route = 'half.replayed'
    await store.openRoute(route, { leaseMs: 5000, maxAttempts: 1 })
    const msg = message(route)
    await store.enqueue(msg, 1000)
    await store.claim(route, 1, 0, never())
    await store.settle(msg.id, { kind: 'dead', at: Date.now(), error: 'status 500', status: 500 })
    // What #replayOne publishes, without the status write that follows it.
    const st = await nc.jsm.streams.getMessage(`${name}_STATE`, {
      last_by_subj: `${name}_STATE.s.${encodeToken(msg.id)}`,
    })
    const letter = await nc.jsm.streams.getMessage(`${name}_DEAD`, {
      seq: st!.json<{ deadSeq: number }>().deadSeq,
    })
    const { headers } = await import('@nats-io/transport-node')
    const h = headers()
    h.set('Gh-Replay-Of', String(st!.seq))
    await nc.js.publish(
      `${name}.deliver.${encodeToken(route)}.${encodeToken(msg.id)}`,
      letter!.data,
      { headers: h },
    )
    const claimed = await store.claim(route, 10, 0, never())
    assert.deepEqual(claimed.map((r) => [r.id, r.state, r.attempts]), [[msg.id, 'pending', 0]])
    assert.equal((await store.stats(Date.now()))[route]?.dead ?? 0, 0)
    // A dead message published again without the mark is terminated instead.
    await store.settle(msg.id, { kind: 'dead', at: Date.now(), error: 'again', status: null })
    await nc.js.publish(
      `${name}.deliver.${encodeToken(route)}.${encodeToken(msg.id)}`,
      letter!.data,
    )
    assert.deepEqual(await store.claim(route, 10, 0, never()), [])
    assert.equal((await store.get(msg.id))?.state, 'dead')
  })

  test('a delivered status written with its headers (by an older Gatehouse) loses them at the next retention sweep, and nothing else', async () => {
    const route = `scrub-${randomUUID()}`
    await store.openRoute(route, { leaseMs: 5000, maxAttempts: 3 })
    const msg = message(route, {
      headers: ['cookie', 'session=old-secret', 'x-seq', '1'],
      idempotencyKey: `k-${randomUUID()}`,
    })
    await store.enqueue(msg, 86_400_000)
    await store.claim(route, 1, 0, never())
    await store.settle(msg.id, { kind: 'delivered', status: 200, at: Date.now() })
    // The status record as the previous version wrote it: the headers kept after delivery.
    const subject = `${name}_STATE.s.${encodeToken(msg.id)}`
    const st = await nc.jsm.streams.getMessage(`${name}_STATE`, { last_by_subj: subject })
    const rec = st!.json<Record<string, unknown>>()
    assert.deepEqual(rec.headers, [], 'delivered now drops them itself')
    await nc.js.publish(subject, JSON.stringify({ ...rec, headers: msg.headers }), {
      expect: { lastSubjectSequence: st!.seq },
    })
    assert.deepEqual((await store.get(msg.id))?.headers, msg.headers)

    assert.equal(await store.expire(Date.now() - 86_400_000), 0)
    const after = await store.get(msg.id)
    assert.deepEqual(after?.headers, [])
    assert.equal(after?.state, 'delivered')
    assert.equal(after?.idempotencyKey, msg.idempotencyKey)
    assert.equal(after?.fingerprint, msg.fingerprint)
    const repeat = message(route, {
      idempotencyKey: msg.idempotencyKey,
      body: msg.body,
      target: msg.target,
    })
    assert.deepEqual(await store.enqueue(repeat, 86_400_000), { id: msg.id, duplicate: true })
  })

  test('records written before keys were per caller are kept, claimed and purged; their keys match no new caller', async () => {
    const route = `legacy-${randomUUID()}`
    await store.openRoute(route, { leaseMs: 5000, maxAttempts: 3 })
    const key = `alice-key-${randomUUID()}`
    const old = message(route, { idempotencyKey: key })
    // The three records as the previous version wrote them: no caller anywhere, the key's
    // subject a digest of the key alone.
    const env = {
      id: old.id,
      route,
      method: old.method,
      target: old.target,
      headers: [...old.headers],
      idempotencyKey: key,
      fingerprint: old.fingerprint,
      createdAt: old.createdAt,
      t: Date.now(),
    }
    const keySubject = `${name}_STATE.k.${encodeToken(route)}.${
      createHash('sha256').update(key).digest('hex')
    }`
    await nc.js.publish(
      keySubject,
      JSON.stringify({ id: old.id, fingerprint: old.fingerprint, createdAt: old.createdAt }),
    )
    const json = Buffer.from(JSON.stringify({ v: 1, ...env }))
    const head = Buffer.alloc(4)
    head.writeUInt32BE(json.length)
    await nc.js.publish(
      `${name}.deliver.${encodeToken(route)}.${encodeToken(old.id)}`,
      Buffer.concat([head, json, old.body]),
      { msgID: old.id },
    )
    await nc.js.publish(
      `${name}_STATE.s.${encodeToken(old.id)}`,
      JSON.stringify({
        v: 1,
        ...env,
        state: 'pending',
        attempts: 0,
        nextAttemptAt: old.createdAt,
        lastError: null,
        lastStatus: null,
        updatedAt: old.createdAt,
      }),
    )
    const got = await store.get(old.id)
    assert.equal(got?.caller, '')
    assert.deepEqual(got?.body, old.body)
    // Bob, with the key and body of that request: his own delivery, not its id, not a 422.
    const bob = message(route, {
      idempotencyKey: key,
      caller: 'bob',
      body: old.body,
      target: old.target,
    })
    assert.deepEqual(await store.enqueue(bob, 86_400_000), { id: bob.id, duplicate: false })
    const claimed = await store.claim(route, 10, 0, never())
    assert.deepEqual(claimed.map((r) => r.id).sort(), [old.id, bob.id].sort())
    assert.deepEqual(claimed.find((r) => r.id === old.id)?.body, old.body)
    for (const r of claimed) {
      await store.settle(r.id, { kind: 'delivered', status: 200, at: 1000 })
    }
    // Retention takes the old record and its (unscoped) key with it.
    assert.ok(await store.expire(2000) >= 2)
    assert.equal(await store.get(old.id), null)
    const left = await nc.jsm.streams.getMessage(`${name}_STATE`, { last_by_subj: keySubject })
      .catch((err: { code?: unknown }) => err.code === 10037 ? null : Promise.reject(err))
    assert.equal(left, null, 'the unscoped key record is gone')
  })

  test('route names with ".", "_" and more are kept apart in subjects and come back intact in stats', async () => {
    const routes = ['orders.v1', 'orders_2Ev1', 'orders-v1', 'ünï.cødé']
    assert.equal(new Set(routes.map(encodeToken)).size, routes.length)
    for (const route of routes) {
      await store.openRoute(route, { leaseMs: 5000, maxAttempts: 3 })
      await store.enqueue(message(route), 1000)
    }
    const stats = await store.stats(Date.now())
    for (const route of routes) assert.equal(stats[route]?.pending, 1, route)
    for (const route of routes) {
      assert.equal((await store.claim(route, 10, 0, never())).length, 1, route)
    }
  })

  test('expire takes the idempotency key of an expired delivery with it', async () => {
    const route = `expire-${randomUUID()}`
    await store.openRoute(route, { leaseMs: 5000, maxAttempts: 1 })
    const key = `k-${randomUUID()}`
    const first = message(route, { idempotencyKey: key })
    await store.enqueue(first, 86_400_000)
    await store.claim(route, 1, 0, never())
    await store.settle(first.id, { kind: 'delivered', status: 200, at: 1000 })
    assert.ok(await store.expire(2000) >= 1)
    assert.equal(await store.get(first.id), null)
    const again = message(route, { idempotencyKey: key, body: first.body, target: first.target })
    assert.deepEqual(await store.enqueue(again, 86_400_000), { id: again.id, duplicate: false })
  })

  test('another gateway settles a message this one claimed; the lease then ends with an ack', async () => {
    const route = 'two.gateways'
    await store.openRoute(route, { leaseMs: 1000, maxAttempts: 3 })
    const other = natsStore(name)
    await other.start()
    try {
      const msg = message(route)
      await store.enqueue(msg, 1000)
      assert.equal((await store.claim(route, 1, 0, never())).length, 1)
      await other.settle(msg.id, { kind: 'delivered', status: 201, at: Date.now() })
      assert.equal((await store.get(msg.id))?.state, 'delivered')
      // Redelivered after the lease, recognised as delivered, acked, not handed out.
      assert.deepEqual(await store.claim(route, 1, 2500, never()), [])
      assert.equal((await store.stats(Date.now()))[route], undefined)
      // A late settle of the first claim changes nothing.
      await store.settle(msg.id, {
        kind: 'retry',
        at: Date.now(),
        nextAttemptAt: Date.now() + 1000,
        error: 'late',
        status: null,
      })
      const rec = await store.get(msg.id)
      assert.equal(rec?.state, 'delivered')
      assert.equal(rec?.attempts, 1)
    } finally {
      await other.close()
    }
  })
})

describe('NATS delivery store: failures', { skip: available ? false : SKIP }, () => {
  test('no server: start rejects with GH_DELIVERY_STORE_UNAVAILABLE quickly, and enqueue too', async () => {
    const hole = net.createServer()
    hole.listen(0, '127.0.0.1')
    await once(hole, 'listening')
    const port = (hole.address() as AddressInfo).port
    await new Promise<void>((resolve) => hole.close(() => resolve()))
    const s = natsStore(streamName(), { url: `nats://127.0.0.1:${port}` })
    const t0 = Date.now()
    await rejectsUnavailable(s.start())
    await assert.rejects(s.start(), /cannot connect to NATS at nats:\/\/127\.0\.0\.1/)
    await rejectsUnavailable(s.enqueue(message('r'), 1000))
    assert.ok(Date.now() - t0 < 3000)
    assert.equal(s.status().status, 'unavailable')
    await s.close()
  })

  test('an outage after start: 503 at once and status unavailable, then back after reconnecting', async () => {
    const hop = await startHop()
    const s = natsStore(streamName(), { url: `nats://127.0.0.1:${hop.port}`, timeout: 1000 })
    try {
      await s.start()
      const kept = message('outage')
      await s.enqueue(kept, 1000)
      assert.equal(s.status().status, 'ok')
      await hop.cut()
      const t0 = Date.now()
      // The client notices the cut socket at once; a silent network would take the timeout.
      await rejectsUnavailable(s.enqueue(message('outage'), 1000))
      assert.ok(Date.now() - t0 < 1500)
      assert.equal(s.status().status, 'unavailable')
      await hop.restore()
      const deadline = Date.now() + 10_000
      while (s.status().status !== 'ok' && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 50))
      }
      assert.equal(s.status().status, 'ok')
      await s.enqueue(message('outage'), 1000)
      assert.deepEqual((await s.get(kept.id))?.body, kept.body)
    } finally {
      await s.close()
      await hop.close().catch(() => {})
    }
  })

  test('a full stream refuses with 503, and what was acknowledged before is still there', async () => {
    const s = natsStore(streamName(), { max_bytes: 16 * 1024 })
    await s.start()
    try {
      const accepted: NewDelivery[] = []
      let refused: unknown = null
      for (let i = 0; i < 40 && refused === null; i++) {
        const m = message('full', { body: randomBytes(1024) })
        try {
          await s.enqueue(m, 1000)
          accepted.push(m)
        } catch (err) {
          refused = err
        }
      }
      assert.ok(accepted.length > 3, `accepted ${accepted.length}`)
      assert.ok(refused !== null, `all ${accepted.length} accepted`)
      await rejectsUnavailable(Promise.reject(refused))
      assert.equal(s.status().full, true)
      for (const m of accepted) assert.deepEqual((await s.get(m.id))?.body, m.body)
      const claimed = await s.claim('full', 100, 0, never())
      assert.deepEqual(claimed.map((r) => r.id), accepted.map((m) => m.id))
      // Delivering frees the space.
      for (const r of claimed) {
        await s.settle(r.id, { kind: 'delivered', status: 200, at: Date.now() })
      }
      await s.enqueue(message('full', { body: randomBytes(1024) }), 1000)
      // A burst into the full store: every acknowledged message is kept, the rest refused.
      const burst = Array.from({ length: 50 }, () => message('full', { body: randomBytes(1024) }))
      const outcomes = await Promise.allSettled(burst.map((m) => s.enqueue(m, 1000)))
      const kept = burst.filter((_, i) => outcomes[i]!.status === 'fulfilled')
      assert.ok(kept.length > 0 && kept.length < burst.length, `kept ${kept.length}`)
      for (const o of outcomes) {
        if (o.status === 'rejected') await rejectsUnavailable(Promise.reject(o.reason))
      }
      for (const m of kept) assert.deepEqual((await s.get(m.id))?.body, m.body)
    } finally {
      await s.close()
    }
  })

  test('a request larger than the server\'s max_payload gets a 503 saying so; the store stays ok', async () => {
    const s = natsStore(streamName())
    await s.start()
    try {
      const max = Number(s.status().max_payload)
      await assert.rejects(s.enqueue(message('big', { body: randomBytes(max) }), 1000), (err) => {
        assert.ok(isGatewayError(err))
        assert.equal(err.code, 'GH_DELIVERY_STORE_UNAVAILABLE')
        assert.equal(err.detail, 'The request is too large for the delivery store')
        return true
      })
      assert.equal(s.status().status, 'ok')
      assert.equal(s.status().full, false)
    } finally {
      await s.close()
    }
  })

  test('pending messages survive closing the store: a new instance claims them', async () => {
    const name = streamName()
    const first = natsStore(name)
    await first.start()
    await first.openRoute('survive', { leaseMs: 5000, maxAttempts: 3 })
    const msgs = [message('survive'), message('survive', { body: Buffer.alloc(0) })]
    for (const m of msgs) await first.enqueue(m, 1000)
    await first.close()
    await rejectsUnavailable(first.enqueue(message('survive'), 1000))
    const second = natsStore(name)
    await second.start()
    try {
      const claimed = await second.claim('survive', 10, 0, never())
      assert.deepEqual(claimed.map((r) => r.id), msgs.map((m) => m.id))
      assert.deepEqual(claimed.map((r) => r.body), msgs.map((m) => m.body))
    } finally {
      await second.close()
    }
  })
})

describe('nats delivery store: credentials in its URL', () => {
  test('a password holding "@" never reaches the status or the log, in any part', async () => {
    const lines: string[] = []
    const logger = createLogger('warn', {
      write (line: string) {
        lines.push(line)
      },
    } as never)
    // Nothing listens there: the store reports itself unavailable, naming its URL.
    const store = new NatsDeliveryStore({
      kind: 'nats',
      url: 'nats://gatehouse:s3cr3t@pa$$@127.0.0.1:1',
      stream: streamName(),
      max_bytes: 1024 * 1024,
      timeout: 200,
      replicas: 1,
    }, logger)
    await store.start().catch(() => {})
    const status = JSON.stringify(store.status())
    assert.match(status, /nats:\/\/\*\*\*@127\.0\.0\.1:1/)
    for (const text of [status, ...lines]) {
      assert.doesNotMatch(text, /s3cr3t|pa\$\$/)
    }
    await store.close().catch(() => {})
  })
})
