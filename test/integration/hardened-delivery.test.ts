import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import http from 'node:http'
import net, { type AddressInfo } from 'node:net'
import { once } from 'node:events'
import { createHash, generateKeyPairSync, randomBytes } from 'node:crypto'
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createRemoteJWKSet, jwtVerify } from 'jose'
import {
  deleteNatsStreams,
  request,
  serviceAvailable,
  startGateway,
  startUpstream,
  waitUntil,
  waitUntilAsync,
  type TestGateway,
  type Upstream,
} from '../helpers/index.js'
import { configError, issueAt } from '../helpers/config.js'
import { publicError } from '../../src/delivery/service.js'

/*
 * The delivery store under abuse: what it keeps of callers' credentials, whether a full store
 * drains, and what the public status tells a caller about the inside.
 */

const NATS_SKIP = 'NATS is not answering on 127.0.0.1:4222'
const KEY = randomBytes(32).toString('base64')

type StoreKind = 'sqlite' | 'nats'

async function storeFor (
  kind: StoreKind,
  extra: Record<string, unknown> = {},
): Promise<{ store: Record<string, unknown>, dir: string | null, stream: string | null } | string> {
  if (kind === 'sqlite') {
    const dir = mkdtempSync(join(tmpdir(), 'gh-hd-'))
    return {
      store: { kind: 'sqlite', path: join(dir, 'delivery.db'), ...extra },
      dir,
      stream: null,
    }
  }
  if (!await serviceAvailable(4222)) return NATS_SKIP
  const stream = `GHHD_${randomBytes(4).toString('hex')}`
  return {
    store: { kind: 'nats', url: 'nats://127.0.0.1:4222', stream, ...extra },
    dir: null,
    stream,
  }
}

async function cleanup (s: { dir: string | null, stream: string | null }): Promise<void> {
  if (s.dir !== null) rmSync(s.dir, { recursive: true, force: true })
  if (s.stream !== null) await deleteNatsStreams([s.stream])
}

/** Every byte the store keeps: the SQLite file and its WAL, or every message of the three streams. */
async function storedBytes (s: { dir: string | null, stream: string | null }): Promise<Buffer> {
  if (s.dir !== null) {
    const db = join(s.dir, 'delivery.db')
    return Buffer.concat([db, db + '-wal'].filter((f) => existsSync(f)).map((f) => readFileSync(f)))
  }
  const { connect } = await import('@nats-io/transport-node')
  const { jetstreamManager } = await import('@nats-io/jetstream')
  const nc = await connect({ servers: '127.0.0.1:4222' })
  const parts: Buffer[] = []
  try {
    const jsm = await jetstreamManager(nc)
    for (const name of [s.stream!, `${s.stream}_DEAD`, `${s.stream}_STATE`]) {
      const info = await jsm.streams.info(name)
      for (let seq = 1; seq <= info.state.last_seq; seq++) {
        const m = await jsm.streams.getMessage(name, { seq }).catch(() => null)
        if (m !== null) parts.push(Buffer.from(m.subject), Buffer.from(m.data))
      }
    }
  } finally {
    await nc.close()
  }
  return Buffer.concat(parts)
}

const post = (
  gw: TestGateway,
  path: string,
  headers: Record<string, string> = {},
  body = '{"job":1}',
) =>
  request(gw.url + path, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body,
  })

const status = async (gw: TestGateway, id: string) =>
  JSON.parse((await request(`${gw.url}/_gatehouse/deliveries/${id}`)).body)
const adminRecord = async (gw: TestGateway, id: string) =>
  JSON.parse((await request(`http://127.0.0.1:${gw.adminPort}/deliveries/${id}`)).body)

for (const kind of ['sqlite', 'nats'] as const) {
  test(`hardened delivery on ${kind}: a full store takes requests again once what it holds is delivered`, async (t) => {
    // SQLite: the report's 1MiB with ~90 KiB requests. NATS: the queue stream's max_bytes, with
    // requests that fit the server's max_payload.
    const bodySize = kind === 'sqlite' ? 90 * 1024 : 20 * 1024
    const made = await storeFor(
      kind,
      kind === 'sqlite' ? { max_size: '1MiB' } : { max_bytes: '200KiB' },
    )
    if (typeof made === 'string') return t.skip(made)
    let open = false
    const delivered = new Set<string>()
    const up = await startUpstream((req, res) => {
      req.resume()
      req.on('end', () => {
        if (open) delivered.add(String(req.headers['x-gatehouse-delivery-id']))
        res.writeHead(open ? 200 : 503)
        res.end()
      })
    })
    const gw = await startGateway({
      delivery: { store: made.store as never },
      upstreams: { work: { targets: [{ url: up.url }] } },
      routes: [{
        name: 'jobs',
        match: {},
        upstream: 'work',
        delivery: {
          mode: 'async',
          max_attempts: 1000,
          backoff: { initial: '50ms', factor: 1, max: '50ms', jitter: '0%' },
        },
      }],
    } as never)
    try {
      const fill = async (): Promise<string[]> => {
        const ids: string[] = []
        for (let i = 0; i < 100; i++) {
          const res = await post(gw, '/jobs', {}, JSON.stringify({ pad: 'x'.repeat(bodySize), i }))
          if (res.status !== 202) {
            assert.equal(res.status, 503)
            const problem = JSON.parse(res.body)
            assert.equal(problem.code, 'GH_DELIVERY_STORE_UNAVAILABLE')
            assert.equal(problem.detail, 'The delivery store is full; try again later')
            assert.equal(res.headers['retry-after'], '5')
            return ids
          }
          ids.push(JSON.parse(res.body).delivery_id)
        }
        return assert.fail('the store never filled up')
      }
      const first = await fill()
      assert.ok(first.length >= 5, `accepted ${first.length}`)
      // Leased and retried while the store is full: every one of them is still deliverable.
      open = true
      await waitUntil(() => first.every((id) => delivered.has(id)), 15_000)
      await waitUntilAsync(
        async () =>
          (await Promise.all(first.map((id) => status(gw, id)))).every((s) =>
            s.state === 'delivered'
          ),
        10_000,
      )
      // No purge and no retention sweep: the delivered requests' space is free again.
      open = false
      const second = await fill()
      assert.ok(
        second.length >= first.length - 1,
        `accepted ${second.length} after ${first.length} were delivered`,
      )
      open = true
      await waitUntil(() => second.every((id) => delivered.has(id)), 15_000)
      const trouble = gw.logs.lines.filter((l) =>
        l.msg === 'claiming deliveries failed; retrying' ||
        l.msg === 'delivery attempt failed unexpectedly'
      )
      assert.deepEqual(trouble, [])
    } finally {
      await gw.close()
      await up.close()
      await cleanup(made)
    }
  })
}

for (const kind of ['sqlite', 'nats'] as const) {
  describe(`hardened delivery on ${kind}: credentials`, () => {
    let skip: string | null = null
    let store: { store: Record<string, unknown>, dir: string | null, stream: string | null }
    let up: Upstream
    let gw: TestGateway
    const seen: Array<{ attempt: number, headers: http.IncomingHttpHeaders }> = []
    const apiKey = 'gh_live_' + randomBytes(12).toString('hex')
    const cookie = 'session=' + randomBytes(12).toString('hex')
    const upstreamToken = 'cfg-token-' + randomBytes(12).toString('hex')

    before(async () => {
      const made = await storeFor(kind)
      if (typeof made === 'string') {
        skip = made
        return
      }
      store = made
      up = await startUpstream((req, res) => {
        req.resume()
        req.on('end', () => {
          const attempt = Number(req.headers['x-gatehouse-delivery-attempt'])
          seen.push({ attempt, headers: req.headers })
          // The first attempt fails, so the request waits in the store for a while.
          res.writeHead(attempt === 1 ? 503 : 200)
          res.end()
        })
      })
      const key = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({
        type: 'pkcs8',
        format: 'pem',
      }) as string
      gw = await startGateway({
        identity: {
          providers: {
            keys: {
              kind: 'api_key',
              keys: [{
                id: 'acme',
                sha256: createHash('sha256').update(apiKey).digest('hex'),
                metadata: { org: 'acme' },
              }],
            },
          },
          phantom_token: { key, issuer: 'https://gatehouse.internal', audience: 'workers' },
        },
        delivery: {
          store: store.store as never,
          encryption_key: KEY,
          secret_headers: ['x-upstream-token'],
        },
        upstreams: { work: { targets: [{ url: up.url }] } },
        routes: [{
          name: 'jobs',
          match: { path_prefix: '/jobs' },
          upstream: 'work',
          auth: { any_of: ['keys'], phantom_token: true },
          transform: { request: { headers: { set: { 'x-upstream-token': upstreamToken } } } },
          delivery: {
            mode: 'async',
            backoff: { initial: '100ms', factor: 1, max: '100ms', jitter: '0%' },
          },
        }],
      } as never)
    })
    after(async () => {
      if (skip !== null) return
      await gw.close()
      await up.close()
      await cleanup(store)
    })

    test('the API key is not stored or forwarded, the cookie is stored encrypted, the phantom token unsigned; a delivered record keeps neither headers nor body', async (t) => {
      if (skip !== null) return t.skip(skip)
      const res = await post(
        gw,
        '/jobs/run',
        { 'x-api-key': apiKey, cookie, 'x-custom': 'kept' },
        '{"card":"4111111111111111"}',
      )
      assert.equal(res.status, 202)
      const id = JSON.parse(res.body).delivery_id as string
      await waitUntil(() => seen.length >= 2, 10_000)
      await waitUntilAsync(async () => (await status(gw, id)).state === 'delivered', 10_000)

      for (const { attempt, headers } of seen) {
        assert.equal(
          headers['x-api-key'],
          undefined,
          `attempt ${attempt}: the caller's API key is the gateway's business, not the upstream's`,
        )
        assert.equal(headers.cookie, cookie, `attempt ${attempt}: the cookie, decrypted`)
        assert.equal(
          headers['x-upstream-token'],
          upstreamToken,
          `attempt ${attempt}: the configured token`,
        )
        assert.equal(headers['x-custom'], 'kept')
      }
      // Each attempt's phantom token is signed for it and verifies, with the caller's claims.
      const jwks = createRemoteJWKSet(
        new URL(`http://127.0.0.1:${gw.adminPort}/.well-known/jwks.json`),
      )
      for (const { headers } of seen) {
        const token = String(headers.authorization).replace(/^Bearer /, '')
        const { payload } = await jwtVerify(token, jwks, {
          issuer: 'https://gatehouse.internal',
          audience: 'workers',
        })
        assert.equal(payload.sub, 'acme')
        assert.equal(payload.org, 'acme')
      }

      // Nothing a thief could use is in the store, in any form it was sent in.
      const bytes = await storedBytes(store)
      const tokens = seen.map(({ headers }) =>
        String(headers.authorization).replace(/^Bearer /, '')
      )
      for (
        const secret of [apiKey, cookie, cookie.slice(8), upstreamToken, ...tokens,
          ...tokens.map((tk) => tk.split('.')[2]!)]
      ) {
        assert.equal(
          bytes.includes(secret),
          false,
          `${secret.slice(0, 12)}… is stored in plaintext`,
        )
      }

      const rec = await adminRecord(gw, id)
      assert.equal(rec.state, 'delivered')
      assert.equal(rec.body_bytes, 0, 'the body went with the delivery')
      assert.equal(rec.attempts, 2)
    })
  })
}

describe('hardened delivery: no encryption key', () => {
  test('a credential the upstream would need is not stored, so not forwarded, and the operator is told once', async () => {
    const made = await storeFor('sqlite') as {
      store: Record<string, unknown>
      dir: string
      stream: null
    }
    const got: http.IncomingHttpHeaders[] = []
    const up = await startUpstream((req, res) => {
      req.resume()
      req.on('end', () => {
        got.push(req.headers)
        res.end()
      })
    })
    const gw = await startGateway({
      delivery: { store: made.store as never },
      upstreams: { work: { targets: [{ url: up.url }] } },
      routes: [{ name: 'open', match: {}, upstream: 'work', delivery: { mode: 'async' } }],
    } as never)
    try {
      const cookie = 'session=' + randomBytes(12).toString('hex')
      const basic = 'Basic ' +
        Buffer.from('svc:' + randomBytes(8).toString('hex')).toString('base64')
      for (let i = 0; i < 2; i++) {
        const res = await post(gw, '/hook', { cookie, authorization: basic, 'x-custom': 'kept' })
        assert.equal(res.status, 202)
      }
      await waitUntil(() => got.length === 2, 10_000)
      for (const h of got) {
        assert.equal(h.cookie, undefined)
        assert.equal(h.authorization, undefined)
        assert.equal(h['x-custom'], 'kept')
      }
      const warnings = gw.logs.lines.filter((l) =>
        l.msg ===
        'async request stored without a credential header: set delivery.encryption_key to forward it'
      )
      assert.deepEqual(warnings.map((l) => [l.level, l.route, l.header]).sort(), [['warn', 'open',
        'authorization'], ['warn', 'open', 'cookie']])
      const bytes = await storedBytes(made)
      assert.equal(bytes.includes(cookie), false)
      assert.equal(bytes.includes(basic), false)
    } finally {
      await gw.close()
      await up.close()
      await cleanup(made)
    }
  })

  test('encryption_key must be 32 bytes, and the error does not repeat it', () => {
    const err = configError('delivery: { encryption_key: "hunter2-is-not-a-key" }\n')
    const issue = issueAt(err, 'delivery.encryption_key')
    assert.match(
      issue.message,
      /must be 32 bytes as base64 \(openssl rand -base64 32\) or 64 hex digits/,
    )
    assert.doesNotMatch(err.message, /hunter2/)
  })
})

describe('hardened delivery: key rotation', () => {
  test('records under a previous key are still sent; without that key they go dead saying why, and a replay sends them once it is back', async () => {
    const made = await storeFor('sqlite') as {
      store: Record<string, unknown>
      dir: string
      stream: null
    }
    const [keyA, keyB] = [randomBytes(32).toString('base64'), randomBytes(32).toString('hex')]
    let failing = true
    const got: Array<{ id: string, cookie: string | undefined, status: number }> = []
    const up = await startUpstream((req, res) => {
      req.resume()
      req.on('end', () => {
        const status = failing ? 503 : 200
        got.push({
          id: String(req.headers['x-gatehouse-delivery-id']),
          cookie: req.headers.cookie,
          status,
        })
        res.writeHead(status)
        res.end()
      })
    })
    const config = (encryption: Record<string, unknown>) =>
      ({
        listen: { host: '127.0.0.1', port: 0 },
        admin: { host: '127.0.0.1', port: 0 },
        delivery: { store: made.store, ...encryption },
        upstreams: { work: { targets: [{ url: up.url }] } },
        routes: [{
          name: 'jobs',
          match: {},
          upstream: 'work',
          delivery: {
            mode: 'async',
            max_attempts: 1000,
            backoff: { initial: '200ms', factor: 1, max: '200ms', jitter: '0%' },
          },
        }],
      }) as never
    const gw = await startGateway(config({ encryption_key: keyA }))
    const attempts = (id: string) => got.filter((g) => g.id === id)
    try {
      const c1 = 'session=' + randomBytes(8).toString('hex')
      const id1 = JSON.parse((await post(gw, '/a', { cookie: c1 })).body).delivery_id as string
      await waitUntil(() => attempts(id1).length >= 1)
      // Rotated: B encrypts from now on, A still opens what it sealed.
      await gw.gateway.reload(config({ encryption_key: keyB, previous_encryption_keys: [keyA] }))
      failing = false
      await waitUntilAsync(async () => (await status(gw, id1)).state === 'delivered', 10_000)
      assert.ok(attempts(id1).every((a) => a.cookie === c1))

      failing = true
      const c2 = 'session=' + randomBytes(8).toString('hex')
      const id2 = JSON.parse((await post(gw, '/b', { cookie: c2 })).body).delivery_id as string
      await waitUntil(() => attempts(id2).length >= 1)
      // B is dropped too early: what it sealed cannot be sent as accepted.
      await gw.gateway.reload(config({ encryption_key: keyA }))
      await waitUntilAsync(async () => (await status(gw, id2)).state === 'dead', 10_000)
      const sent = attempts(id2).length
      const kidB = createHash('sha256').update(Buffer.from(keyB, 'hex')).digest('hex').slice(0, 8)
      assert.equal(
        (await adminRecord(gw, id2)).last_error,
        `the stored cookie header cannot be decrypted: it was encrypted under key ${kidB}, which is not in delivery.encryption_key or previous_encryption_keys (not retried)`,
      )
      assert.equal((await status(gw, id2)).last_error, 'the delivery failed (not retried)')

      await gw.gateway.reload(config({ encryption_key: keyA, previous_encryption_keys: [keyB] }))
      failing = false
      const replay = await request(`http://127.0.0.1:${gw.adminPort}/deliveries/${id2}/replay`, {
        method: 'POST',
      })
      assert.equal(replay.status, 200)
      await waitUntilAsync(async () => (await status(gw, id2)).state === 'delivered', 10_000)
      assert.equal(attempts(id2).length, sent + 1, 'no attempt was made while the key was missing')
      assert.equal(attempts(id2).at(-1)!.cookie, c2)
    } finally {
      await gw.close()
      await up.close()
      await cleanup(made)
    }
  })
})
describe('hardened delivery: the public status', () => {
  test('last_error says what kind of failure it was, not where the upstream is; the admin API keeps the detail', async () => {
    const made = await storeFor('sqlite') as {
      store: Record<string, unknown>
      dir: string
      stream: null
    }
    // A port with nothing listening: connections are refused.
    const hole = net.createServer()
    hole.listen(0, '127.0.0.1')
    await once(hole, 'listening')
    const closedPort = (hole.address() as AddressInfo).port
    await new Promise<void>((resolve) => hole.close(() => resolve()))
    // An upstream that never answers.
    const silent = await startUpstream(() => {})
    const gw = await startGateway({
      delivery: { store: made.store as never },
      upstreams: {
        'billing-internal': { targets: [{ url: `http://127.0.0.1:${closedPort}` }] },
        'ledger-internal': { targets: [{ url: silent.url }] },
      },
      routes: [
        {
          name: 'refused',
          match: { path: '/refused' },
          upstream: 'billing-internal',
          delivery: {
            mode: 'async',
            max_attempts: 3,
            backoff: { initial: '10ms', factor: 1, max: '10ms', jitter: '0%' },
          },
        },
        {
          name: 'slow',
          match: { path: '/slow' },
          upstream: 'ledger-internal',
          delivery: { mode: 'async', timeout: '200ms', retry_on: [503] },
        },
      ],
    } as never)
    try {
      const refused = JSON.parse((await post(gw, '/refused')).body).delivery_id as string
      const slow = JSON.parse((await post(gw, '/slow')).body).delivery_id as string
      await waitUntilAsync(
        async () =>
          (await status(gw, refused)).state === 'dead' && (await status(gw, slow)).state === 'dead',
        10_000,
      )

      const r = await request(`${gw.url}/_gatehouse/deliveries/${refused}`)
      assert.equal(r.status, 200)
      assert.equal(JSON.parse(r.body).last_error, 'connect_error (after 3 attempts)')
      const s = await request(`${gw.url}/_gatehouse/deliveries/${slow}`)
      assert.equal(JSON.parse(s.body).last_error, 'timeout (not retried)')
      for (const body of [r.body, s.body]) {
        for (
          const inside of ['127.0.0.1', String(closedPort), String(silent.port), 'billing-internal',
            'ledger-internal', 'ECONNREFUSED', 'UND_ERR']
        ) {
          assert.equal(body.includes(inside), false, `the public status shows ${inside}: ${body}`)
        }
      }
      // The operator's view keeps what happened.
      assert.match(
        (await adminRecord(gw, refused)).last_error,
        /^connect_error: .*(ECONNREFUSED .*127\.0\.0\.1:\d+|no target of upstream "billing-internal").* \(after 3 attempts\)$/,
      )
      assert.match((await adminRecord(gw, slow)).last_error, /^timeout: .* \(not retried\)$/)
    } finally {
      await gw.close()
      await silent.close()
      await cleanup(made)
    }
  })
})

describe('hardened delivery: last_error for callers', () => {
  test('records written before errors carried their kind are shown by kind too', () => {
    const cases: Array<[string | null, string | null]> = [
      [null, null],
      ['status 503', 'status 503'],
      ['status 422 (not retried)', 'status 422 (not retried)'],
      ['older than max_age (86400000 ms) before delivery',
        'older than max_age (86400000 ms) before delivery'],
      ['ECONNREFUSED connect ECONNREFUSED 10.0.3.7:8000 (after 8 attempts)',
        'connect_error (after 8 attempts)'],
      ['no target of upstream "ranker" is available (next attempt would pass max_age)',
        'connect_error (next attempt would pass max_age)'],
      ['UND_ERR_HEADERS_TIMEOUT Headers Timeout Error (not retried)', 'timeout (not retried)'],
      ['connect_error: ENOTFOUND getaddrinfo ENOTFOUND ranker.internal', 'connect_error'],
      ['timeout: UND_ERR_SOCKET other side closed (after 3 attempts)',
        'timeout (after 3 attempts)'],
      [
        'the stored cookie header cannot be decrypted: it was encrypted under key 1a2b3c4d, which is not in delivery.encryption_key or previous_encryption_keys (not retried)',
        'the delivery failed (not retried)',
      ],
    ]
    for (const [stored, shown] of cases) assert.equal(publicError(stored), shown, String(stored))
  })
})
