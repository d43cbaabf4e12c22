import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { ConfigError, validateConfig } from '../../src/index.js'
import type { ConfigInput } from '../../src/index.js'
import {
  call,
  request,
  startGateway,
  startUpstream,
  type TestGateway,
  type Upstream,
} from '../helpers/index.js'

/*
 * `cors` on a route: browsers' preflights are answered by the gateway (never the upstream, and
 * before credentials are asked for), and answers to an allowed origin are marked for exactly
 * that origin, whoever produced them (upstream, cache, or a refusal such as a 401).
 */
const APP = 'https://app.example.com'
const ADMIN = 'https://admin.example.com'
const KEY = 'gh_test_cors_key_0123456789'

describe('cors', () => {
  let up: Upstream & { calls: number }
  let gw: TestGateway

  before(async () => {
    let calls = 0
    const u = await startUpstream((req, res) => {
      calls++
      req.resume()
      req.on('end', () => {
        // An upstream with its own (too generous) CORS answer: the route's policy replaces it.
        const vary = req.url!.startsWith('/api') ? { vary: 'Accept-Encoding' } : {}
        res.writeHead(200, {
          'content-type': 'application/json',
          'access-control-allow-origin': '*',
          ...vary,
          'cache-control': 'max-age=60',
        })
        res.end(JSON.stringify({ path: req.url, method: req.method }))
      })
    })
    up = Object.assign(u, {
      get calls () {
        return calls
      },
    })
    gw = await startGateway({
      identity: {
        providers: {
          keys: {
            kind: 'api_key',
            header: 'x-api-key',
            keys: [{ id: 'app', sha256: createHash('sha256').update(KEY).digest('hex') }],
          },
        },
      },
      upstreams: { up: { targets: [{ url: up.url }] } },
      routes: [
        {
          name: 'api',
          match: { path_prefix: '/api' },
          upstream: 'up',
          auth: { any_of: ['keys'] },
          cors: {
            origins: [APP, ADMIN],
            headers: ['x-api-key', 'content-type'],
            credentials: true,
            max_age: '1h',
          },
        },
        {
          name: 'post-only',
          match: { path: '/post', methods: ['POST'] },
          upstream: 'up',
          cors: { origins: [APP] },
        },
        {
          name: 'public',
          match: { path_prefix: '/public' },
          upstream: 'up',
          cors: { origins: ['*'], headers: ['*'] },
        },
        {
          name: 'cached',
          match: { path_prefix: '/cached' },
          upstream: 'up',
          cache: { ttl: '1m' },
          cors: { origins: [APP, ADMIN] },
        },
      ],
    } as ConfigInput)
  })
  after(async () => {
    await gw.close()
    await up.close()
  })

  const preflight = (path: string, headers: Record<string, string | string[]>) =>
    request(`${gw.url}${path}`, { method: 'OPTIONS', headers })

  test('a preflight from an allowed origin → 204 with the exact origin, never reaching the upstream or auth', async () => {
    const calls = up.calls
    const res = await preflight('/api/predict', {
      origin: APP,
      'access-control-request-method': 'POST',
      'access-control-request-headers': 'X-Api-Key, Content-Type',
    })
    assert.equal(res.status, 204)
    assert.equal(res.headers['access-control-allow-origin'], APP)
    assert.equal(res.headers['access-control-allow-credentials'], 'true')
    assert.equal(res.headers['access-control-allow-methods'], 'GET, HEAD, POST, PUT, PATCH, DELETE')
    assert.equal(res.headers['access-control-allow-headers'], 'x-api-key, content-type')
    assert.equal(res.headers['access-control-max-age'], '3600')
    assert.match(String(res.headers.vary), /Origin/)
    assert.equal(res.body, '')
    assert.equal(up.calls, calls, 'the upstream must not see a preflight')
  })

  test('a preflight from an origin not listed → 403 GH_CORS_REJECTED, no CORS fields', async () => {
    for (
      const origin of ['https://evil.example.com', 'https://app.example.com.evil.net', 'null',
        'http://app.example.com']
    ) {
      const res = await preflight('/api/x', { origin, 'access-control-request-method': 'GET' })
      assert.equal(res.status, 403, origin)
      assert.equal(res.headers['content-type'], 'application/problem+json')
      assert.equal(JSON.parse(res.body).code, 'GH_CORS_REJECTED')
      assert.equal(res.headers['access-control-allow-origin'], undefined, origin)
    }
  })

  test('a preflight for a method or header not allowed → 403 naming it', async () => {
    const m = await preflight('/post', { origin: APP, 'access-control-request-method': 'DELETE' })
    assert.equal(m.status, 403)
    assert.match(
      JSON.parse(m.body).detail,
      /Method DELETE is not allowed cross-origin on this route \(allowed: POST\)/,
    )
    const h = await preflight('/api/x', {
      origin: APP,
      'access-control-request-method': 'GET',
      'access-control-request-headers': 'x-api-key, x-debug',
    })
    assert.equal(h.status, 403)
    assert.match(JSON.parse(h.body).detail, /Header x-debug is not allowed/)
  })

  test('two Origin headers → the preflight is refused', async () => {
    const res = await preflight('/api/x', {
      origin: [APP, ADMIN],
      'access-control-request-method': 'GET',
    })
    assert.equal(res.status, 403)
  })

  test('a request from an allowed origin gets that origin back (the upstream\'s own "*" replaced), Vary added to', async () => {
    const res = await call(gw, '/api/predict', { origin: ADMIN, 'x-api-key': KEY })
    assert.equal(res.status, 200)
    assert.equal(res.headers['access-control-allow-origin'], ADMIN)
    assert.equal(res.headers['access-control-allow-credentials'], 'true')
    assert.equal(
      res.headers['access-control-expose-headers'],
      'x-request-id, retry-after, ratelimit, ratelimit-policy',
    )
    assert.match(String(res.headers.vary), /Accept-Encoding/)
    assert.match(String(res.headers.vary), /Origin/)
  })

  test('a request from an origin not listed gets no CORS fields (the browser keeps the answer from the page)', async () => {
    const res = await call(gw, '/api/predict', {
      origin: 'https://evil.example.com',
      'x-api-key': KEY,
    })
    assert.equal(res.status, 200)
    assert.equal(res.headers['access-control-allow-origin'], undefined)
    assert.match(String(res.headers.vary), /Origin/)
  })

  test('a refusal after the cors step (401) is marked too, so the page can read why', async () => {
    const res = await call(gw, '/api/predict', { origin: APP })
    assert.equal(res.status, 401)
    assert.equal(res.problem.code, 'GH_AUTH_REQUIRED')
    assert.equal(res.headers['access-control-allow-origin'], APP)
  })

  test('a route with methods [POST] answers preflights; a plain OPTIONS is 405', async () => {
    const ok = await preflight('/post', { origin: APP, 'access-control-request-method': 'POST' })
    assert.equal(ok.status, 204)
    const plain = await request(`${gw.url}/post`, { method: 'OPTIONS' })
    assert.equal(plain.status, 405)
    assert.equal(JSON.parse(plain.body).code, 'GH_METHOD_NOT_ALLOWED')
    assert.equal(plain.headers.allow, 'POST')
  })

  test('origins: ["*"] answers "*" (never the origin sent), and "null" is not matched by it', async () => {
    const res = await call(gw, '/public/x', { origin: 'https://anyone.example' })
    assert.equal(res.headers['access-control-allow-origin'], '*')
    const pre = await preflight('/public/x', {
      origin: 'https://anyone.example',
      'access-control-request-method': 'PUT',
      'access-control-request-headers': 'x-anything',
    })
    assert.equal(pre.status, 204)
    assert.equal(pre.headers['access-control-allow-origin'], '*')
    assert.equal(pre.headers['access-control-allow-headers'], '*')
    const sandboxed = await call(gw, '/public/x', { origin: 'null' })
    assert.equal(sandboxed.headers['access-control-allow-origin'], undefined)
  })

  test('a cached answer is marked for each requester\'s own origin, never the first one\'s', async () => {
    const first = await call(gw, '/cached/a', { origin: APP })
    assert.equal(first.headers['x-cache'], 'MISS')
    assert.equal(first.headers['access-control-allow-origin'], APP)
    const second = await call(gw, '/cached/a', { origin: ADMIN })
    assert.equal(second.headers['x-cache'], 'HIT')
    assert.equal(second.headers['access-control-allow-origin'], ADMIN)
    const third = await call(gw, '/cached/a', { origin: 'https://evil.example.com' })
    assert.equal(third.headers['x-cache'], 'HIT')
    assert.equal(third.headers['access-control-allow-origin'], undefined)
  })
})

describe('cors config', () => {
  const base = (
    cors: unknown,
  ): ConfigInput => ({
    upstreams: { up: { targets: [{ url: 'http://127.0.0.1:9' }] } },
    routes: [{ name: 'r', upstream: 'up', cors }],
  } as ConfigInput)
  const issues = (cors: unknown): string[] => {
    try {
      validateConfig(base(cors))
    } catch (err) {
      assert.ok(err instanceof ConfigError)
      return err.issues.map((i) => `${i.path}: ${i.message}`)
    }
    return []
  }

  test('credentials with "*" is refused, naming the path', () => {
    assert.deepEqual(issues({ origins: ['*'], credentials: true }), [
      'routes[0].cors.origins: credentials: true needs explicit origins: browsers refuse "*" with credentials (Fetch §3.2.5)',
    ])
  })

  test('an origin with a path, a trailing slash or no scheme is refused', () => {
    for (const o of ['https://app.example.com/', 'https://app.example.com/x', 'app.example.com']) {
      const found = issues({ origins: [o] })
      assert.equal(found.length, 1, o)
      assert.match(
        found[0]!,
        /^routes\[0\]\.cors\.origins\[0\]: use an origin such as https:\/\/app\.example\.com/,
      )
    }
  })

  test('an empty origin list is refused', () => {
    assert.equal(issues({ origins: [] }).length, 1)
  })
})
