import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import type { IncomingMessage } from 'node:http'
import {
  rawRequest,
  request,
  simpleConfig,
  startGateway,
  startUpstream,
  text,
  type TestGateway,
  type Upstream,
} from '../helpers/index.js'

/** What the upstream saw of the last request. */
interface Seen {
  method: string
  url: string
  headers: IncomingMessage['headers']
  rawHeaders: string[]
  body: string
}

describe('proxying requests and responses', () => {
  let upstream: Upstream
  let gw: TestGateway
  const seen: Seen[] = []

  before(async () => {
    upstream = await startUpstream(async (req, res) => {
      const body = await text(req)
      seen.push({
        method: req.method!,
        url: req.url!,
        headers: req.headers,
        rawHeaders: req.rawHeaders,
        body,
      })
      if (req.url === '/hop') {
        res.writeHead(200, {
          connection: 'keep-alive, x-secret-hop',
          'keep-alive': 'timeout=5',
          'x-secret-hop': 'must not reach the client',
          'proxy-authenticate': 'Basic',
          'x-kept': 'yes',
          via: '1.1 upstream-cache',
          'content-type': 'text/plain',
        })
        res.end('hop')
        return
      }
      res.setHeader('content-type', 'application/json')
      res.setHeader('x-upstream', 'yes')
      res.end(JSON.stringify({ method: req.method, url: req.url, body }))
    })
    gw = await startGateway({
      upstreams: {
        up: { targets: [{ url: upstream.url }] },
        based: { targets: [{ url: `${upstream.url}/base/` }] },
      },
      routes: [
        {
          name: 'strip',
          match: { path_prefix: '/v1/search' },
          upstream: 'up',
          strip_prefix: '/v1',
        },
        { name: 'based', match: { path_prefix: '/b' }, upstream: 'based', strip_prefix: '/b' },
        { name: 'rest', match: {}, upstream: 'up' },
      ],
    })
  })
  after(async () => {
    await gw.close()
    await upstream.close()
  })

  test('GET is proxied with status, headers and body', async () => {
    const res = await request(`${gw.url}/hello?x=1&y=2`)
    assert.equal(res.status, 200)
    assert.equal(res.headers['x-upstream'], 'yes')
    assert.deepEqual(JSON.parse(res.body), { method: 'GET', url: '/hello?x=1&y=2', body: '' })
  })

  test('POST body arrives intact and Content-Length is kept', async () => {
    const payload = JSON.stringify({ text: 'héllo wörld', n: [1, 2, 3] })
    const res = await request(`${gw.url}/predict`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) },
      body: payload,
    })
    assert.equal(res.status, 200)
    assert.equal(JSON.parse(res.body).body, payload)
    const last = seen.at(-1)!
    assert.equal(last.headers['content-length'], String(Buffer.byteLength(payload)))
    assert.equal(last.headers['transfer-encoding'], undefined)
  })

  test('strip_prefix removes the prefix and keeps the query', async () => {
    const res = await request(`${gw.url}/v1/search/items?q=cats`)
    assert.equal(JSON.parse(res.body).url, '/search/items?q=cats')
  })

  test('a target URL\'s path is prepended to the upstream path', async () => {
    const res = await request(`${gw.url}/b/x?y=1`)
    assert.equal(JSON.parse(res.body).url, '/base/x?y=1')
  })

  test('HEAD gets the headers and no body', async () => {
    const res = await request(`${gw.url}/head-test`, { method: 'HEAD' })
    assert.equal(res.status, 200)
    assert.equal(res.body, '')
    assert.equal(seen.at(-1)!.method, 'HEAD')
  })

  test('hop-by-hop request headers are removed, including those named by Connection', async () => {
    const res = await rawRequest(
      gw.port,
      'GET /hop-req HTTP/1.1\r\nHost: api.test\r\nConnection: keep-alive, X-Drop-Me\r\nX-Drop-Me: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nTrailer: x\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\nProxy-Connection: keep-alive\r\nUpgrade: h2c\r\nX-Keep: 1\r\n\r\n',
      300,
    )
    assert.equal(res.status, 200)
    const h = seen.at(-1)!.headers
    for (
      const name of ['x-drop-me', 'keep-alive', 'te', 'trailer', 'proxy-authorization',
        'proxy-connection', 'upgrade']
    ) {
      assert.equal(h[name], undefined, `${name} must not be forwarded`)
    }
    assert.equal(h['x-keep'], '1')
    assert.equal(h.host, 'api.test')
  })

  test('hop-by-hop response headers are removed and Via is appended', async () => {
    const res = await request(`${gw.url}/hop`)
    assert.equal(res.status, 200)
    assert.equal(res.headers['x-secret-hop'], undefined)
    assert.equal(res.headers['keep-alive'], undefined)
    assert.equal(res.headers['proxy-authenticate'], undefined)
    assert.equal(res.headers['x-kept'], 'yes')
    assert.equal(res.headers.via, '1.1 upstream-cache, 1.1 gatehouse')
  })

  test('X-Forwarded-* and Forwarded from an untrusted peer are replaced, not extended', async () => {
    await request(`${gw.url}/xff`, {
      headers: {
        'x-forwarded-for': '6.6.6.6',
        'x-forwarded-proto': 'https',
        'x-forwarded-host': 'evil.test',
        forwarded: 'for=6.6.6.6',
        host: 'api.test:8443',
      },
    })
    const h = seen.at(-1)!.headers
    assert.equal(h['x-forwarded-for'], '127.0.0.1')
    assert.equal(h['x-forwarded-proto'], 'http')
    assert.equal(h['x-forwarded-host'], 'api.test:8443')
    assert.equal(h.forwarded, undefined)
    assert.equal(h.via, '1.1 gatehouse')
  })

  test('X-Request-Id is propagated when valid and generated otherwise; traceparent passes', async () => {
    const traceparent = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'
    const a = await request(`${gw.url}/rid`, {
      headers: { 'x-request-id': 'abc-123', traceparent },
    })
    assert.equal(a.headers['x-request-id'], 'abc-123')
    assert.equal(seen.at(-1)!.headers['x-request-id'], 'abc-123')
    assert.equal(seen.at(-1)!.headers.traceparent, traceparent)
    const b = await request(`${gw.url}/rid`, { headers: { 'x-request-id': 'has space' } })
    assert.match(b.headers['x-request-id'] as string, /^[0-9a-f-]{36}$/)
    assert.equal(seen.at(-1)!.headers['x-request-id'], b.headers['x-request-id'])
  })

  test('an access-log line records the request', async () => {
    const res = await request(`${gw.url}/logged?secret=1`, {
      headers: { 'x-request-id': 'log-me' },
    })
    assert.equal(res.status, 200)
    const line = await gw.logs.waitFor((l) => l.msg === 'request' && l.id === 'log-me')
    assert.equal(line.route, 'rest')
    assert.equal(line.method, 'GET')
    assert.equal(line.path, '/logged', 'the query is not logged (it may carry secrets)')
    assert.equal(line.status, 200)
    assert.equal(line.target, upstream.url)
    assert.equal(typeof line.ms, 'number')
    assert.equal(typeof line.upstream_ms, 'number')
    assert.ok(line.bytes_out > 0)
  })
})

describe('trusted proxies', () => {
  test('X-Forwarded-For is appended to and X-Forwarded-Proto/Host kept when the peer is trusted', async () => {
    let headers: IncomingMessage['headers'] = {}
    const upstream = await startUpstream((req, res) => {
      headers = req.headers
      res.end('ok')
    })
    const gw = await startGateway({
      ...simpleConfig(upstream.url),
      trusted_proxies: ['127.0.0.0/8', '::1'],
    })
    try {
      await request(`${gw.url}/`, {
        headers: {
          'x-forwarded-for': '203.0.113.7',
          'x-forwarded-proto': 'https',
          'x-forwarded-host': 'public.example',
          forwarded: 'for=203.0.113.7;proto=https',
        },
      })
      assert.equal(headers['x-forwarded-for'], '203.0.113.7, 127.0.0.1')
      assert.equal(headers['x-forwarded-proto'], 'https')
      assert.equal(headers['x-forwarded-host'], 'public.example')
      assert.equal(headers.forwarded, 'for=203.0.113.7;proto=https')
    } finally {
      await gw.close()
      await upstream.close()
    }
  })
})

describe('route matching', () => {
  let upstream: Upstream
  let gw: TestGateway
  before(async () => {
    upstream = await startUpstream((req, res) => res.end(req.url))
    gw = await startGateway({
      upstreams: { up: { targets: [{ url: upstream.url }] } },
      routes: [
        { name: 'exact', match: { path: '/exact' }, upstream: 'up' },
        {
          name: 'v2-header',
          match: { path_prefix: '/models', headers: { 'x-model': 'v2' } },
          upstream: 'up',
        },
        { name: 'post-only', match: { path_prefix: '/models', methods: ['POST'] }, upstream: 'up' },
        { name: 'get-models', match: { path_prefix: '/models', methods: ['GET'] }, upstream: 'up' },
        { name: 'host', match: { path_prefix: '/h', host: 'api.example.com' }, upstream: 'up' },
        { name: 'wildcard', match: { path_prefix: '/h', host: '*.example.org' }, upstream: 'up' },
        { name: 'regex', match: { path_regex: '^/items/[0-9]+$' }, upstream: 'up' },
      ],
    })
  })
  after(async () => {
    await gw.close()
    await upstream.close()
  })

  async function routeOf (
    path: string,
    options: Parameters<typeof request>[1] = {},
  ): Promise<string | number> {
    const res = await request(`${gw.url}${path}`, options)
    if (res.status !== 200) return res.status
    const line = await gw.logs.waitFor((l) =>
      l.msg === 'request' && l.id === res.headers['x-request-id']
    )
    return line.route
  }

  test('exact path matches only itself', async () => {
    assert.equal(await routeOf('/exact'), 'exact')
    assert.equal(await routeOf('/exact/more'), 404)
  })

  test('first matching route in config order wins', async () => {
    assert.equal(
      await routeOf('/models/a', { method: 'POST', headers: { 'x-model': 'v2' } }),
      'v2-header',
    )
    assert.equal(await routeOf('/models/a', { method: 'POST' }), 'post-only')
  })

  test('a prefix matches whole segments only', async () => {
    assert.equal(await routeOf('/models'), 'get-models')
    assert.equal(await routeOf('/models/x/y'), 'get-models')
    assert.equal(await routeOf('/modelsx'), 404)
  })

  test('GET routes also answer HEAD; other methods do not match', async () => {
    assert.equal(await routeOf('/models/a', { method: 'HEAD' }), 'get-models')
    assert.equal(await routeOf('/models/a', { method: 'DELETE' }), 404)
  })

  test('host matching ignores the port and case; wildcards need a subdomain', async () => {
    assert.equal(await routeOf('/h', { headers: { host: 'API.example.com:8443' } }), 'host')
    assert.equal(await routeOf('/h', { headers: { host: 'a.b.example.org' } }), 'wildcard')
    assert.equal(await routeOf('/h', { headers: { host: 'example.org' } }), 404)
  })

  test('path_regex matches the path without the query', async () => {
    assert.equal(await routeOf('/items/42?x=1'), 'regex')
    assert.equal(await routeOf('/items/abc'), 404)
  })

  test('no match answers 404 problem+json with a stable code', async () => {
    const res = await request(`${gw.url}/nothing-here`)
    assert.equal(res.status, 404)
    assert.equal(res.headers['content-type'], 'application/problem+json')
    const problem = JSON.parse(res.body)
    assert.equal(problem.code, 'GH_ROUTE_NOT_FOUND')
    assert.equal(problem.status, 404)
    assert.equal(problem.instance, `urn:request:${res.headers['x-request-id']}`)
  })
})
