import { describe, test } from 'node:test'
import assert from 'node:assert/strict'
import http from 'node:http'
import net from 'node:net'
import { once } from 'node:events'
import {
  rawRequest,
  request,
  simpleConfig,
  startGateway,
  startUpstream,
  text,
  waitUntil,
} from '../helpers/index.js'

/** A port with nothing listening on it (bound, then closed). */
async function deadPort (): Promise<number> {
  const s = net.createServer()
  s.listen(0, '127.0.0.1')
  await once(s, 'listening')
  const port = (s.address() as net.AddressInfo).port
  await new Promise<void>((resolve) => s.close(() => resolve()))
  return port
}

/** A raw TCP upstream that answers each connection with `onData(socket)`. */
async function tcpUpstream (
  onData: (socket: net.Socket) => void,
): Promise<{ url: string, close: () => void }> {
  const sockets = new Set<net.Socket>()
  const server = net.createServer((socket) => {
    sockets.add(socket)
    socket.on('error', () => {})
    socket.once('data', () => onData(socket))
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  return {
    url: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`,
    close: () => {
      for (const s of sockets) s.destroy()
      server.close()
    },
  }
}

function problem (body: string): { code: string, status: number } {
  return JSON.parse(body)
}

describe('upstream faults map to statuses in one place', () => {
  test('connection refused → 502, then the ejected target gives 503 with Retry-After', async () => {
    const port = await deadPort()
    const gw = await startGateway(
      simpleConfig(`http://127.0.0.1:${port}`, {}, { ejection: { failures: 1, duration: '30s' } }),
    )
    try {
      const first = await request(`${gw.url}/`)
      assert.equal(first.status, 502)
      assert.equal(first.headers['content-type'], 'application/problem+json')
      assert.equal(problem(first.body).code, 'GH_UPSTREAM_UNREACHABLE')
      const second = await request(`${gw.url}/`)
      assert.equal(second.status, 503)
      assert.equal(problem(second.body).code, 'GH_NO_HEALTHY_UPSTREAM')
      assert.equal(second.headers['retry-after'], '30')
      const line = await gw.logs.waitFor((l) => l.msg === 'request' && l.status === 502)
      assert.match(line.reason, /ECONNREFUSED/)
    } finally {
      await gw.close()
    }
  })

  test('a refused target is skipped: the request is retried on a healthy one and the bad one ejected', async () => {
    const port = await deadPort()
    let hits = 0
    const upstream = await startUpstream((_req, res) => {
      hits++
      res.end('healthy')
    })
    const gw = await startGateway(
      simpleConfig([`http://127.0.0.1:${port}`, upstream.url], {}, { balance: 'round_robin' }),
    )
    try {
      for (let i = 0; i < 6; i++) {
        const res = await request(`${gw.url}/`, { method: 'POST', body: 'payload' })
        assert.equal(res.status, 200)
        assert.equal(res.body, 'healthy')
      }
      assert.equal(hits, 6)
      const retried = gw.logs.requests().filter((l) => l.attempts === 2)
      assert.equal(
        retried.length,
        1,
        'only the first request tried the dead target; it was ejected after',
      )
    } finally {
      await gw.close()
      await upstream.close()
    }
  })

  test('no response head within first_byte → 504', async () => {
    const upstream = await startUpstream(() => {/* never answers */})
    const gw = await startGateway(
      simpleConfig(upstream.url, {}, { timeouts: { first_byte: '200ms' } }),
    )
    try {
      const res = await request(`${gw.url}/`)
      assert.equal(res.status, 504)
      assert.equal(problem(res.body).code, 'GH_UPSTREAM_TIMEOUT')
    } finally {
      await gw.close()
      await upstream.close()
    }
  })

  test('the upstream closing before answering → 502', async () => {
    const up = await tcpUpstream((s) => s.destroy())
    const gw = await startGateway(simpleConfig(up.url))
    try {
      const res = await request(`${gw.url}/`)
      assert.equal(res.status, 502)
      assert.equal(problem(res.body).code, 'GH_UPSTREAM_RESET')
    } finally {
      await gw.close()
      up.close()
    }
  })

  test('a garbage response → 502', async () => {
    const up = await tcpUpstream((s) => s.end('SMTP ready\r\n\r\n'))
    const gw = await startGateway(simpleConfig(up.url))
    try {
      const res = await request(`${gw.url}/`)
      assert.equal(res.status, 502)
      assert.equal(problem(res.body).code, 'GH_UPSTREAM_BAD_RESPONSE')
    } finally {
      await gw.close()
      up.close()
    }
  })

  test('a reset mid-body (Content-Length) aborts the client connection: fewer bytes, never a complete-looking response', async () => {
    const up = await tcpUpstream((s) => {
      s.write('HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n' + 'a'.repeat(300))
      setImmediate(() => s.destroy())
    })
    const gw = await startGateway(simpleConfig(up.url))
    try {
      const res = await rawRequest(gw.port, 'GET / HTTP/1.1\r\nHost: a\r\n\r\n', 1000)
      assert.equal(res.status, 200)
      assert.equal(res.headers['content-length'], '1000')
      assert.ok(res.body.length < 1000, `got ${res.body.length} bytes`)
    } finally {
      await gw.close()
      up.close()
    }
  })

  test('a reset mid-body (chunked) aborts the client connection without the final chunk', async () => {
    const up = await tcpUpstream((s) => {
      s.write('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n')
      setImmediate(() => s.destroy())
    })
    const gw = await startGateway(simpleConfig(up.url))
    try {
      const res = await rawRequest(gw.port, 'GET / HTTP/1.1\r\nHost: a\r\n\r\n', 1000)
      assert.equal(res.status, 200)
      assert.match(res.body, /hello/)
      assert.doesNotMatch(res.body, /\r\n0\r\n\r\n$/)
      // And a node client sees the truncation as an error.
      const err = await new Promise<Error | null>((resolve) => {
        http.get(`${gw.url}/`, { agent: false }, (r) => {
          r.on('error', resolve)
          r.on('end', () => resolve(null))
          r.resume()
        }).on('error', resolve)
      })
      assert.ok(err !== null, 'the client must see an aborted response')
    } finally {
      await gw.close()
      up.close()
    }
  })

  test('no body bytes for longer than idle → the client connection is aborted', async () => {
    const upstream = await startUpstream((_req, res) => {
      res.writeHead(200, { 'content-length': 10 })
      res.write('12345')
    })
    const gw = await startGateway(simpleConfig(upstream.url, {}, { timeouts: { idle: '200ms' } }))
    try {
      const res = await rawRequest(gw.port, 'GET / HTTP/1.1\r\nHost: a\r\n\r\n', 3000)
      assert.equal(res.status, 200)
      assert.equal(res.body, '12345')
      const line = await gw.logs.waitFor((l) =>
        l.msg === 'request' && l.code === 'GH_UPSTREAM_TIMEOUT'
      )
      assert.equal(line.status, 200)
    } finally {
      await gw.close()
      await upstream.close()
    }
  })

  test('a client that goes away cancels the upstream request at once', async () => {
    let upstreamClosed: () => void
    const closed = new Promise<void>((resolve) => {
      upstreamClosed = resolve
    })
    const upstream = await startUpstream((req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' })
      res.write('data: first\n\n')
      res.on('close', () => upstreamClosed())
    })
    const gw = await startGateway(simpleConfig(upstream.url))
    try {
      const socket = net.connect(gw.port, '127.0.0.1')
      await once(socket, 'connect')
      socket.write('GET /stream HTTP/1.1\r\nHost: a\r\n\r\n')
      await once(socket, 'data')
      socket.destroy()
      await closed
      const line = await gw.logs.waitFor((l) => l.msg === 'request' && l.path === '/stream')
      assert.equal(line.status, 499)
    } finally {
      await gw.close()
      await upstream.close()
    }
  })

  test('a client aborting mid-upload cancels the upstream request', async () => {
    let upstreamAborted: () => void
    const aborted = new Promise<void>((resolve) => {
      upstreamAborted = resolve
    })
    const upstream = await startUpstream((req) => {
      req.on('data', () => {})
      req.on('close', () => {
        if (!req.complete) upstreamAborted()
      })
    })
    const gw = await startGateway(simpleConfig(upstream.url))
    try {
      for (const framing of ['Content-Length: 100000', 'Transfer-Encoding: chunked']) {
        const socket = net.connect(gw.port, '127.0.0.1')
        await once(socket, 'connect')
        socket.write(`POST / HTTP/1.1\r\nHost: a\r\n${framing}\r\n\r\n`)
        socket.write(
          framing.startsWith('Content') ? 'x'.repeat(1000) : `3e8\r\n${'x'.repeat(1000)}\r\n`,
        )
        // Wait until the upstream has started receiving, then vanish.
        await gw.logs.waitFor(() => true)
        socket.destroy()
      }
      await aborted
    } finally {
      await gw.close()
      await upstream.close()
    }
  })
})

describe('load balancing', () => {
  test('round robin follows the weights (smooth weighted order)', async () => {
    const hits: string[] = []
    const a = await startUpstream((_req, res) => {
      hits.push('a')
      res.end()
    })
    const b = await startUpstream((_req, res) => {
      hits.push('b')
      res.end()
    })
    const gw = await startGateway({
      upstreams: {
        up: {
          balance: 'round_robin',
          targets: [{ url: a.url, weight: 1 }, { url: b.url, weight: 3 }],
        },
      },
      routes: [{ name: 'all', match: {}, upstream: 'up' }],
    })
    try {
      for (let i = 0; i < 8; i++) await request(`${gw.url}/`)
      assert.equal(hits.filter((h) => h === 'a').length, 2)
      assert.equal(hits.filter((h) => h === 'b').length, 6)
      assert.deepEqual(hits.slice(0, 4).sort(), ['a', 'b', 'b', 'b'])
    } finally {
      await gw.close()
      await a.close()
      await b.close()
    }
  })

  test('least_request sends new requests to the target with fewer in flight', async () => {
    const held: http.ServerResponse[] = []
    const slow = await startUpstream((_req, res) => {
      held.push(res)
    })
    let fastHits = 0
    const fast = await startUpstream((_req, res) => {
      fastHits++
      res.end('fast')
    })
    const gw = await startGateway({
      upstreams: {
        up: { balance: 'least_request', targets: [{ url: slow.url }, { url: fast.url }] },
      },
      routes: [{ name: 'all', match: {}, upstream: 'up' }],
    })
    try {
      // Occupy the slow target with 3 requests that it holds open.
      const pending = [0, 1, 2].map(() => request(`${gw.url}/`))
      await waitUntil(() => held.length + fastHits >= 3)
      const before = fastHits
      for (let i = 0; i < 5; i++) assert.equal((await request(`${gw.url}/`)).body, 'fast')
      assert.equal(fastHits - before, 5)
      for (const res of held) res.end('slow')
      await Promise.all(pending)
    } finally {
      await gw.close()
      await slow.close()
      await fast.close()
    }
  })

  test('an upstream can be reached over keep-alive: one connection serves many requests', async () => {
    const sockets = new Set<unknown>()
    const upstream = await startUpstream(async (req, res) => {
      sockets.add(req.socket)
      await text(req)
      res.end('ok')
    })
    const gw = await startGateway(simpleConfig(upstream.url))
    try {
      for (let i = 0; i < 20; i++) assert.equal((await request(`${gw.url}/`)).body, 'ok')
      assert.equal(sockets.size, 1)
    } finally {
      await gw.close()
      await upstream.close()
    }
  })
})
