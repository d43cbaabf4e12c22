import { describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { createHash, randomUUID } from 'node:crypto'
import type http from 'node:http'
import {
  metricsText,
  request,
  serviceAvailable,
  startGateway,
  startUpstream,
  waitUntilAsync,
  type TestGateway,
} from '../helpers/index.js'
import type { ConfigInput } from '../../src/config/schema.js'

/** An upstream whose answers the test chooses by path; counts calls and keeps the bodies it got. */
async function modelServer (
  answer: (req: http.IncomingMessage, body: string, res: http.ServerResponse) => void =
    defaultAnswer,
) {
  const state = { calls: 0, bodies: [] as string[] }
  const up = await startUpstream((req, res) => {
    state.calls++
    let body = ''
    req.setEncoding('utf8')
    req.on('data', (c: string) => {
      body += c
    })
    req.on('end', () => {
      state.bodies.push(body)
      answer(req, body, res)
    })
  })
  return {
    ...up,
    get calls () {
      return state.calls
    },
    bodies: state.bodies,
  }
}

function defaultAnswer (req: http.IncomingMessage, body: string, res: http.ServerResponse): void {
  const extra: Record<string, string> = {}
  if (req.url!.startsWith('/cookie')) extra['set-cookie'] = 'session=abc'
  if (req.url!.startsWith('/nostore')) extra['cache-control'] = 'no-store'
  if (req.url!.startsWith('/private')) extra['cache-control'] = 'private, max-age=60'
  if (req.url!.startsWith('/zero')) extra['cache-control'] = 'max-age=0'
  if (req.url!.startsWith('/big')) {
    res.writeHead(200, { 'content-type': 'application/octet-stream' })
    res.end(Buffer.alloc(64 * 1024, 'x'))
    return
  }
  if (req.url!.startsWith('/error')) {
    res.writeHead(500, { 'content-type': 'application/json' })
    res.end('{"error":"boom"}')
    return
  }
  res.writeHead(200, { 'content-type': 'application/json', ...extra })
  res.end(JSON.stringify({ path: req.url, body, at: randomUUID() }))
}

function cached (
  url: string,
  cache: Record<string, unknown>,
  extra: Record<string, unknown> = {},
): ConfigInput {
  const { route, ...top } = extra
  return {
    upstreams: { model: { targets: [{ url }] } },
    routes: [{
      name: 'infer',
      match: {},
      upstream: 'model',
      cache: { ttl: '60s', ...cache },
      ...route as object,
    }],
    ...top,
  } as ConfigInput
}

async function get (
  gw: TestGateway,
  path: string,
  headers: Record<string, string> = {},
  method = 'GET',
  body?: string,
) {
  return request(`${gw.url}${path}`, {
    method,
    headers: body === undefined ? headers : { 'content-type': 'application/json', ...headers },
    body,
  })
}

describe('response cache (memory store)', () => {
  test('a miss is stored while it streams; the next request is a hit with Age and the same body', async () => {
    const up = await modelServer()
    const gw = await startGateway(cached(up.url, {}))
    try {
      const a = await get(gw, '/v1/models?x=1')
      assert.equal(a.headers['x-cache'], 'MISS')
      const b = await get(gw, '/v1/models?x=1')
      assert.equal(b.headers['x-cache'], 'HIT')
      assert.equal(b.body, a.body)
      assert.equal(b.headers.age, '0')
      assert.notEqual(b.headers['x-request-id'], a.headers['x-request-id'])
      assert.equal(up.calls, 1)
      // Another query is another entry; HEAD is served from the GET entry.
      assert.equal((await get(gw, '/v1/models?x=2')).headers['x-cache'], 'MISS')
      const head = await get(gw, '/v1/models?x=1', {}, 'HEAD')
      assert.equal(head.headers['x-cache'], 'HIT')
      assert.equal(head.body, '')
      assert.equal(up.calls, 2)
      // Cache-Control: no-cache from the client goes upstream (and refreshes the entry).
      const fresh = await get(gw, '/v1/models?x=1', { 'cache-control': 'no-cache' })
      assert.equal(fresh.headers['x-cache'], 'MISS')
      assert.equal(up.calls, 3)
      assert.equal((await get(gw, '/v1/models?x=1')).body, fresh.body)
    } finally {
      await gw.close()
      await up.close()
    }
  })

  test('never stored: Set-Cookie, no-store, private, max-age=0, errors, bodies over max_entry', async () => {
    const up = await modelServer()
    const gw = await startGateway(cached(up.url, { max_entry: '16KiB' }))
    try {
      for (const path of ['/cookie', '/nostore', '/private', '/zero', '/error', '/big']) {
        const first = await get(gw, path)
        assert.equal(first.headers['x-cache'], 'MISS', path)
        const second = await get(gw, path)
        assert.equal(second.headers['x-cache'], 'MISS', path)
        if (path === '/big') assert.equal(second.body.length, 64 * 1024)
      }
      assert.equal(up.calls, 12)
    } finally {
      await gw.close()
      await up.close()
    }
  })

  test('two consumers with identical requests never share an entry', async () => {
    const up = await modelServer()
    const sha = (s: string): string => createHash('sha256').update(s).digest('hex')
    const gw = await startGateway(
      cached(
        up.url,
        {},
        {
          identity: {
            providers: {
              keys: {
                kind: 'api_key',
                keys: [{ id: 'acme', sha256: sha('key-acme') }, {
                  id: 'globex',
                  sha256: sha('key-globex'),
                }],
              },
            },
          },
          route: { auth: { any_of: ['keys'] } },
        },
      ),
    )
    try {
      const a1 = await get(gw, '/v1/predict', { 'x-api-key': 'key-acme' })
      const g1 = await get(gw, '/v1/predict', { 'x-api-key': 'key-globex' })
      assert.equal(g1.headers['x-cache'], 'MISS')
      assert.notEqual(g1.body, a1.body)
      const a2 = await get(gw, '/v1/predict', { 'x-api-key': 'key-acme' })
      assert.equal(a2.headers['x-cache'], 'HIT')
      assert.equal(a2.body, a1.body)
      assert.equal(up.calls, 2)
    } finally {
      await gw.close()
      await up.close()
    }
  })

  test('POST keyed by the canonical JSON body (key order, ignored fields); other bodies by their bytes; big ones bypass', async () => {
    const up = await modelServer()
    const gw = await startGateway(
      cached(up.url, {
        methods: ['POST'],
        key: { body: { ignore: ['user', 'stream'], max_size: '1KiB' } },
      }),
    )
    try {
      const a = await get(gw, '/v1/embed', {}, 'POST', '{"input":"hi","model":"m","user":"u1"}')
      assert.equal(a.headers['x-cache'], 'MISS')
      const b = await get(gw, '/v1/embed', {}, 'POST', '{"model":"m","user":"u2","input":"hi"}')
      assert.equal(b.headers['x-cache'], 'HIT')
      const c = await get(gw, '/v1/embed', {}, 'POST', '{"model":"m","input":"bye"}')
      assert.equal(c.headers['x-cache'], 'MISS')
      assert.equal(
        up.bodies[0],
        '{"input":"hi","model":"m","user":"u1"}',
        'the body is forwarded as sent',
      )
      const n1 = await get(gw, '/v1/embed', {}, 'POST', 'not json {')
      const n2 = await get(gw, '/v1/embed', {}, 'POST', 'not json {')
      assert.deepEqual([n1.headers['x-cache'], n2.headers['x-cache']], ['MISS', 'HIT'])
      const huge = 'x'.repeat(4096)
      const h = await get(gw, '/v1/embed', {}, 'POST', huge)
      assert.equal(h.headers['x-cache'], 'BYPASS')
      assert.equal(up.bodies.at(-1), huge)
      assert.equal(up.calls, 4)
    } finally {
      await gw.close()
      await up.close()
    }
  })

  test('concurrent misses for one key make one upstream call', async () => {
    let release: (() => void) | null = null
    const up = await modelServer((req, body, res) => {
      release = () => defaultAnswer(req, body, res)
    })
    const gw = await startGateway(cached(up.url, {}))
    try {
      const all = Array.from({ length: 8 }, () => get(gw, '/v1/slow'))
      await waitUntilAsync(async () =>
        /gatehouse_in_flight_requests 8/.test(await metricsText(gw.adminPort!))
      )
      assert.equal(up.calls, 1)
      release!()
      const res = await Promise.all(all)
      assert.equal(res.filter((r) => r.headers['x-cache'] === 'MISS').length, 1)
      assert.equal(res.filter((r) => r.headers['x-cache'] === 'HIT').length, 7)
      assert.equal(new Set(res.map((r) => r.body)).size, 1)
      assert.equal(up.calls, 1)
      assert.match(
        await metricsText(gw.adminPort!),
        /gatehouse_cache_requests_total\{route="infer",result="coalesced"\} 7/,
      )
    } finally {
      await gw.close()
      await up.close()
    }
  })
})

describe('response cache (Redis store)', () => {
  test('two gateways share entries through Redis', async (t) => {
    if (!await serviceAvailable(6379)) return t.skip('Redis is not answering on 127.0.0.1:6379')
    const up = await modelServer()
    const stores = {
      shared: { kind: 'redis', url: 'redis://127.0.0.1:6379', prefix: `gh-test-${randomUUID()}:` },
    }
    const a = await startGateway(cached(up.url, { store: 'shared' }, { stores }))
    const b = await startGateway(cached(up.url, { store: 'shared' }, { stores }))
    // The Host is in the key: both gateways are reached by one name, as behind a load balancer.
    const host = { host: 'api.example.com' }
    try {
      const first = await get(a, '/v1/models', host)
      assert.equal(first.headers['x-cache'], 'MISS')
      await waitUntilAsync(async () =>
        (await get(b, '/v1/models', host)).headers['x-cache'] === 'HIT'
      )
      assert.equal((await get(b, '/v1/models', host)).body, first.body)
      assert.equal(up.calls, 1)
    } finally {
      await a.close()
      await b.close()
      await up.close()
    }
  })
})
