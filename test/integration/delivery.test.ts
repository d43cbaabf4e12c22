import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import http from 'node:http'
import net from 'node:net'
import { createHash, generateKeyPairSync, randomBytes } from 'node:crypto'
import { createRemoteJWKSet, jwtVerify, type JWTPayload } from 'jose'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import {
  deleteNatsStreams,
  request,
  serviceAvailable,
  startGateway,
  startUpstream,
  waitUntil,
  waitUntilAsync,
  metricsText,
  type TestGateway,
  type Upstream,
} from '../helpers/index.js'

const ALICE_KEY = 'gh_alice_0123456789abcdef'
const BOB_KEY = 'gh_bob_fedcba9876543210'

function sha256hex (v: string): string {
  return createHash('sha256').update(v).digest('hex')
}

/** Write raw bytes, read until the server closes or answers a whole head with its body. */
function rawExchange (port: number, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1', () => socket.write(text))
    let out = ''
    const timer = setTimeout(() => {
      socket.destroy()
      reject(new Error(`no answer within 5 s; got ${JSON.stringify(out)}`))
    }, 5000)
    socket.on('data', (d: Buffer) => {
      out += d.toString('latin1')
      const end = out.indexOf('\r\n\r\n')
      const length = /content-length: (\d+)/i.exec(out)
      if (end !== -1 && length !== null && out.length >= end + 4 + Number(length[1])) {
        clearTimeout(timer)
        socket.destroy()
        resolve(out)
      }
    })
    socket.on('error', (err) => {
      clearTimeout(timer)
      reject(err)
    })
    socket.on('close', () => {
      clearTimeout(timer)
      resolve(out)
    })
  })
}

/** What the upstream saw: one entry per attempt. */
interface Hit {
  at: number
  method: string
  url: string
  id: string
  attempt: number
  body: string
  headers: http.IncomingHttpHeaders
}

const backends: Array<[string, () => Promise<Record<string, unknown> | string>]> = [
  ['sqlite', async () => ({
    kind: 'sqlite',
    path: join(mkdtempSync(join(tmpdir(), 'gh-dl-')), 'delivery.db'),
  })],
  ['nats', async () => {
    if (!await serviceAvailable(4222)) return 'NATS is not answering on 127.0.0.1:4222'
    return {
      kind: 'nats',
      url: 'nats://127.0.0.1:4222',
      stream: `GHIT_${randomBytes(4).toString('hex')}`,
    }
  }],
]

for (const [name, makeStore] of backends) {
  describe(`async delivery on ${name}`, () => {
    let skip: string | null = null
    let up: Upstream
    let gw: TestGateway
    const hits: Hit[] = []
    /** Per body: how the upstream answers (default 200). */
    const behaviour = new Map<string, () => [number, Record<string, string>]>()

    before(async () => {
      const store = await makeStore()
      if (typeof store === 'string') {
        skip = store
        return
      }
      up = await startUpstream((req, res) => {
        const chunks: Buffer[] = []
        req.on('data', (c: Buffer) => chunks.push(c))
        req.on('end', () => {
          const body = Buffer.concat(chunks).toString('utf8')
          hits.push({
            at: Date.now(),
            method: req.method!,
            url: req.url!,
            id: String(req.headers['x-gatehouse-delivery-id']),
            attempt: Number(req.headers['x-gatehouse-delivery-attempt']),
            body,
            headers: req.headers,
          })
          const [status, headers] = behaviour.get(body)?.() ?? [200, {}]
          res.writeHead(status, headers)
          res.end()
        })
      })
      gw = await startGateway({
        delivery: { store: store as never },
        identity: {
          providers: {
            keys: {
              kind: 'api_key',
              header: 'x-api-key',
              keys: [
                { id: 'alice', sha256: sha256hex(ALICE_KEY), scopes: ['jobs'] },
                { id: 'bob', sha256: sha256hex(BOB_KEY), scopes: ['jobs'] },
              ],
            },
          },
        },
        upstreams: { work: { targets: [{ url: up.url }] } },
        routes: [{
          // Keys are required here, and each caller's own.
          name: 'keyed',
          match: { path_prefix: '/keyed', methods: ['POST'] },
          upstream: 'work',
          auth: { any_of: ['keys'] },
          delivery: {
            mode: 'async',
            idempotency: 'required',
            backoff: { initial: '50ms', jitter: '0%' },
          },
        }, {
          name: 'jobs',
          match: { path_prefix: '/jobs', methods: ['POST'] },
          upstream: 'work',
          delivery: {
            mode: 'async',
            max_attempts: 3,
            backoff: { initial: '50ms', factor: 2, max: '200ms', jitter: '0%' },
            concurrency: 4,
            max_body: '4KiB',
          },
        }],
      })
    })
    after(async () => {
      if (skip !== null) return
      await gw.close()
      await up.close()
      const s = gw.gateway.table.config.delivery.store
      if (s.kind === 'sqlite') rmSync(join(s.path, '..'), { recursive: true, force: true })
      else await deleteNatsStreams([s.stream])
    })

    const it = (title: string, fn: () => Promise<void>): void => {
      test(title, async (t) => {
        if (skip !== null) return t.skip(skip)
        await fn()
      })
    }
    const post = (body: string, headers: Record<string, string> = {}) =>
      request(gw.url + '/jobs/run?x=1', {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...headers },
        body,
      })
    const admin = (path: string, method = 'GET') =>
      request(`http://127.0.0.1:${gw.adminPort}${path}`, { method })

    it('answers 202 with the delivery id and Location, then delivers with the id and attempt headers', async () => {
      const body = JSON.stringify({ job: 'one' })
      const res = await post(body, { 'x-custom': 'kept' })
      assert.equal(res.status, 202)
      const { delivery_id: id, status_url: statusUrl } = JSON.parse(res.body)
      assert.match(id, /^[0-9a-f-]{36}$/)
      assert.equal(res.headers.location, `/_gatehouse/deliveries/${id}`)
      assert.equal(statusUrl, res.headers.location)
      await waitUntil(() => hits.some((h) => h.id === id))
      const hit = hits.find((h) => h.id === id)!
      assert.equal(hit.method, 'POST')
      assert.equal(hit.url, '/jobs/run?x=1')
      assert.equal(hit.body, body)
      assert.equal(hit.attempt, 1)
      assert.equal(hit.headers['x-custom'], 'kept')
      assert.equal(hit.headers['content-type'], 'application/json')
      await waitUntilAsync(async () =>
        JSON.parse((await request(gw.url + res.headers.location)).body).state === 'delivered'
      )
      const status = JSON.parse((await request(gw.url + res.headers.location)).body)
      assert.equal(status.attempts, 1)
      assert.equal(status.last_status, 200)
      assert.equal(status.body_bytes, undefined, 'the public status shows no request details')
    })

    it('an unknown delivery id is 404 problem+json', async () => {
      const res = await request(
        gw.url + '/_gatehouse/deliveries/00000000-0000-0000-0000-000000000000',
      )
      assert.equal(res.status, 404)
      assert.equal(JSON.parse(res.body).code, 'GH_DELIVERY_NOT_FOUND')
    })

    it('retries on 500 on the schedule, honours Retry-After on 429, and delivers', async () => {
      const body = JSON.stringify({ job: 'flaky', n: Math.random() })
      let calls = 0
      behaviour.set(body, () => {
        calls++
        if (calls === 1) return [500, {}]
        if (calls === 2) return [429, { 'retry-after': '1' }]
        return [200, {}]
      })
      const res = await post(body)
      assert.equal(res.status, 202)
      const id = JSON.parse(res.body).delivery_id
      await waitUntil(() => hits.filter((h) => h.id === id).length === 3, 10_000)
      const mine = hits.filter((h) => h.id === id)
      assert.deepEqual(mine.map((h) => h.attempt), [1, 2, 3])
      assert.ok(
        mine[1]!.at - mine[0]!.at >= 45,
        `second attempt after the 50 ms backoff (${mine[1]!.at - mine[0]!.at} ms)`,
      )
      assert.ok(
        mine[2]!.at - mine[1]!.at >= 950,
        `third attempt waited for Retry-After: 1 (${mine[2]!.at - mine[1]!.at} ms)`,
      )
      await waitUntilAsync(async () =>
        JSON.parse((await admin(`/deliveries/${id}`)).body).state === 'delivered'
      )
    })

    it('a poison message is dead-lettered after max_attempts while others flow, and replay delivers it once fixed', async () => {
      const poison = JSON.stringify({ job: 'poison', n: Math.random() })
      let fixed = false
      behaviour.set(poison, () => [fixed ? 200 : 500, {}])
      const p = JSON.parse((await post(poison)).body).delivery_id
      const others = await Promise.all(
        [1, 2, 3, 4, 5].map(async (i) =>
          JSON.parse((await post(JSON.stringify({ job: 'ok', i, n: Math.random() }))).body)
            .delivery_id
        ),
      )
      await waitUntil(() => others.every((id) => hits.some((h) => h.id === id)), 10_000)
      await waitUntilAsync(
        async () => JSON.parse((await admin(`/deliveries/${p}`)).body).state === 'dead',
        10_000,
      )
      assert.equal(hits.filter((h) => h.id === p).length, 3)
      const dead = JSON.parse((await admin('/deliveries?state=dead&route=jobs')).body).deliveries
      assert.ok(
        dead.some((d: { id: string, last_error: string }) =>
          d.id === p && /status 500/.test(d.last_error)
        ),
      )
      fixed = true
      const replay = await admin(`/deliveries/${p}/replay`, 'POST')
      assert.equal(replay.status, 200)
      assert.equal(JSON.parse(replay.body).replayed, 1)
      await waitUntilAsync(
        async () => JSON.parse((await admin(`/deliveries/${p}`)).body).state === 'delivered',
        10_000,
      )
      assert.equal(hits.filter((h) => h.id === p).length, 4)
      const again = await admin(`/deliveries/${p}/replay`, 'POST')
      assert.equal(again.status, 409)
    })

    it('a final 4xx is dead at once, not retried', async () => {
      const body = JSON.stringify({ job: 'bad', n: Math.random() })
      behaviour.set(body, () => [400, {}])
      const id = JSON.parse((await post(body)).body).delivery_id
      await waitUntilAsync(async () =>
        JSON.parse((await admin(`/deliveries/${id}`)).body).state === 'dead'
      )
      assert.equal(hits.filter((h) => h.id === id).length, 1)
    })

    it('Idempotency-Key: a repeat returns the first id; another body with the same key is 422', async () => {
      const key = `k-${Math.random()}`
      const body = JSON.stringify({ job: 'idem', n: Math.random() })
      const a = await post(body, { 'idempotency-key': key })
      const b = await post(body, { 'idempotency-key': key })
      assert.equal(a.status, 202)
      assert.equal(b.status, 202)
      assert.equal(JSON.parse(b.body).delivery_id, JSON.parse(a.body).delivery_id)
      assert.equal(b.headers['idempotent-replayed'], 'true')
      const c = await post(JSON.stringify({ job: 'other' }), { 'idempotency-key': key })
      assert.equal(c.status, 422)
      assert.equal(JSON.parse(c.body).code, 'GH_IDEMPOTENCY_CONFLICT')
      const id = JSON.parse(a.body).delivery_id
      await waitUntil(() => hits.some((h) => h.id === id))
      assert.equal(hits.filter((h) => h.body === body).length, 1)
    })

    it('Idempotency-Key belongs to its caller: Alice and Bob with one key and one body each get their own delivery', async () => {
      const key = `shared-${Math.random()}`
      const body = JSON.stringify({ job: 'mine', n: Math.random() })
      const send = (apiKey: string, extra: Record<string, string> = {}) =>
        request(gw.url + '/keyed/run', {
          method: 'POST',
          headers: {
            'content-type': 'application/json',
            'x-api-key': apiKey,
            'idempotency-key': key,
            ...extra,
          },
          body,
        })
      const alice = await send(ALICE_KEY)
      const bob = await send(BOB_KEY)
      assert.equal(alice.status, 202, alice.body)
      assert.equal(bob.status, 202, bob.body)
      const aliceId = JSON.parse(alice.body).delivery_id
      const bobId = JSON.parse(bob.body).delivery_id
      assert.notEqual(bobId, aliceId, 'Bob got Alice\'s delivery')
      assert.equal(bob.headers['idempotent-replayed'], undefined)
      // Each one's retry is still their own first delivery.
      const aliceAgain = await send(ALICE_KEY)
      assert.equal(JSON.parse(aliceAgain.body).delivery_id, aliceId)
      assert.equal(aliceAgain.headers['idempotent-replayed'], 'true')
      const bobAgain = await send(BOB_KEY)
      assert.equal(JSON.parse(bobAgain.body).delivery_id, bobId)
      // Both requests reach the upstream, once each.
      await waitUntil(() => hits.some((h) => h.id === aliceId) && hits.some((h) => h.id === bobId))
      assert.equal(hits.filter((h) => h.body === body).length, 2)
    })

    it('delivery.idempotency: required refuses a request without Idempotency-Key before reading its body (400)', async () => {
      // Headers only: a body that never comes. The answer does not wait for it.
      const res = await rawExchange(
        gw.port,
        `POST /keyed/run HTTP/1.1\r\nHost: a\r\nx-api-key: ${ALICE_KEY}\r\n` +
          'content-type: application/json\r\ncontent-length: 1000\r\n\r\n',
      )
      assert.match(res, /^HTTP\/1\.1 400 /)
      assert.match(res, /content-type: application\/problem\+json/i)
      assert.match(res, /"code":"GH_IDEMPOTENCY_KEY_REQUIRED"/)
      assert.match(res, /requires an Idempotency-Key header/)
      // A malformed key is refused as early, its body unread too.
      const long = await rawExchange(
        gw.port,
        `POST /keyed/run HTTP/1.1\r\nHost: a\r\nx-api-key: ${ALICE_KEY}\r\n` +
          `idempotency-key: ${'k'.repeat(300)}\r\ncontent-length: 1000\r\n\r\n`,
      )
      assert.match(long, /^HTTP\/1\.1 400 /)
      assert.match(long, /"code":"GH_BAD_REQUEST"/)
      assert.match(long, /1 to 255 printable characters/)
      // Credentials come first: without them it is 401, whatever the key.
      const anon = await request(gw.url + '/keyed/run', { method: 'POST', body: '{}' })
      assert.equal(anon.status, 401)
    })

    it('an Idempotency-Key sent twice is 400, and nothing is stored', async () => {
      const count = async (): Promise<number> =>
        JSON.parse((await admin('/deliveries?route=keyed&limit=1000')).body).deliveries.length
      const before = await count()
      const res = await request(gw.url + '/keyed/run', {
        method: 'POST',
        headers: { 'x-api-key': ALICE_KEY, 'idempotency-key': ['a', 'b'] as unknown as string },
        body: '{"twice":true}',
      })
      assert.equal(res.status, 400)
      assert.equal(JSON.parse(res.body).code, 'GH_BAD_REQUEST')
      assert.match(JSON.parse(res.body).detail, /sent once/)
      assert.equal(await count(), before)
    })

    it('a body over delivery.max_body is 413 and nothing is stored', async () => {
      const res = await post('x'.repeat(5000))
      assert.equal(res.status, 413)
      assert.equal(JSON.parse(res.body).code, 'GH_BODY_TOO_LARGE')
    })

    it('counts deliveries in metrics', async () => {
      const text = await metricsText(gw.adminPort!)
      assert.match(text, /gatehouse_delivery_enqueued_total\{route="jobs"\} \d+/)
      assert.match(text, /gatehouse_delivery_delivered_total\{route="jobs"\} \d+/)
      assert.match(text, /gatehouse_delivery_dead_total\{route="jobs"\} \d+/)
      assert.match(text, /gatehouse_delivery_pending\{route="jobs"\} \d+/)
      assert.match(text, /gatehouse_delivery_latency_seconds_count\{route="jobs"\} \d+/)
    })
  })
}

describe('async delivery: backpressure', () => {
  test('a full store answers 503 with Retry-After, never a false 202', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'gh-dl-'))
    const up = await startUpstream((req, res) => {
      req.resume()
      req.on('end', () => {
        res.writeHead(503)
        res.end()
      })
    })
    const gw = await startGateway({
      delivery: { store: { kind: 'sqlite', path: join(dir, 'd.db'), max_size: '256KiB' } },
      upstreams: { work: { targets: [{ url: up.url }] } },
      routes: [{
        name: 'jobs',
        match: {},
        upstream: 'work',
        delivery: { mode: 'async', backoff: { initial: '1h', max: '1h' } },
      }],
    })
    try {
      const accepted: string[] = []
      let refused: Awaited<ReturnType<typeof request>> | null = null
      for (let i = 0; i < 200 && refused === null; i++) {
        const res = await request(gw.url + '/x', { method: 'POST', body: 'y'.repeat(8000) })
        if (res.status === 202) accepted.push(JSON.parse(res.body).delivery_id)
        else refused = res
      }
      assert.ok(refused !== null, 'the store filled up')
      assert.equal(refused.status, 503)
      assert.equal(JSON.parse(refused.body).code, 'GH_DELIVERY_STORE_UNAVAILABLE')
      assert.ok(Number(refused.headers['retry-after']) > 0)
      assert.ok(accepted.length > 0)
      for (const id of accepted) {
        const s = await request(`${gw.url}/_gatehouse/deliveries/${id}`)
        assert.equal(s.status, 200, `accepted ${id} is kept`)
      }
    } finally {
      await gw.close()
      await up.close()
      rmSync(dir, { recursive: true, force: true })
    }
  })
})

describe('async delivery: phantom tokens', () => {
  test('a retry after the stored token expired carries a fresh one with the same claims', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'gh-dl-'))
    const seen: Array<{ attempt: number, authorization: string, at: number }> = []
    let verify: ((token: string) => Promise<JWTPayload>) | null = null
    const checked: Array<Promise<JWTPayload>> = []
    const up = await startUpstream((req, res) => {
      req.resume()
      req.on('end', () => {
        const attempt = Number(req.headers['x-gatehouse-delivery-attempt'])
        const authorization = String(req.headers.authorization)
        seen.push({ attempt, authorization, at: Date.now() })
        // Verified the moment it arrives, as an upstream would.
        checked.push(verify!(authorization.slice(7)))
        res.writeHead(attempt === 1 ? 503 : 200)
        res.end()
      })
    })
    const key = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({
      type: 'pkcs8',
      format: 'pem',
    }) as string
    const apiKey = 'gh_test_' + randomBytes(12).toString('hex')
    const gw = await startGateway({
      identity: {
        providers: {
          keys: {
            kind: 'api_key',
            keys: [{
              id: 'acme-batch',
              sha256: createHash('sha256').update(apiKey).digest('hex'),
              scopes: ['jobs'],
              metadata: { org: 'acme' },
            }],
          },
        },
        phantom_token: {
          key,
          issuer: 'https://gatehouse.internal',
          audience: 'workers',
          ttl: '2s',
        },
      },
      delivery: { store: { kind: 'sqlite', path: join(dir, 'd.db') } },
      upstreams: { work: { targets: [{ url: up.url }] } },
      routes: [{
        name: 'jobs',
        match: {},
        upstream: 'work',
        auth: { any_of: ['keys'], phantom_token: true },
        // The second attempt comes after the first token's 2 s lifetime.
        delivery: {
          mode: 'async',
          backoff: { initial: '2500ms', factor: 1, max: '2500ms', jitter: '0%' },
        },
      }],
    } as never)
    try {
      const jwks = createRemoteJWKSet(
        new URL(`http://127.0.0.1:${gw.adminPort}/.well-known/jwks.json`),
      )
      verify = async (token) =>
        (await jwtVerify(token, jwks, {
          issuer: 'https://gatehouse.internal',
          audience: 'workers',
        })).payload
      const res = await request(gw.url + '/run', {
        method: 'POST',
        headers: { 'x-api-key': apiKey },
        body: '{}',
      })
      assert.equal(res.status, 202)
      const id = JSON.parse(res.body).delivery_id as string
      await waitUntilAsync(
        async () =>
          JSON.parse((await request(`${gw.url}/_gatehouse/deliveries/${id}`)).body).state ===
          'delivered',
        15_000,
      )
      assert.deepEqual(seen.map((s) => s.attempt), [1, 2])
      assert.notEqual(
        seen[1]!.authorization,
        seen[0]!.authorization,
        'the second attempt has a new token',
      )
      const [first, second] = await Promise.all(checked)
      assert.ok(
        seen[1]!.at / 1000 > first!.exp!,
        'the stored token had expired by the second attempt',
      )
      for (const claim of ['sub', 'client_id', 'scope', 'org', 'gh_provider']) {
        assert.deepEqual(second![claim], first![claim], claim)
      }
      assert.equal(second!.sub, 'acme-batch')
      assert.ok(second!.exp! - second!.iat! <= 2)
    } finally {
      await gw.close()
      await up.close()
      rmSync(dir, { recursive: true, force: true })
    }
  })
})
