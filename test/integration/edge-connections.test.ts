import { describe, test } from 'node:test'
import assert from 'node:assert/strict'
import http from 'node:http'
import net, { type AddressInfo } from 'node:net'
import { once } from 'node:events'
import {
  metricsText,
  request,
  simpleConfig,
  startGateway,
  startUpstream,
  waitUntil,
  type Upstream,
} from '../helpers/index.js'
import type { ConfigInput } from '../../src/config/schema.js'

/*
 * What one connection can do to the gateway: end a body badly, pipeline without reading, hold
 * sockets open, trickle a body, never read an answer. The gateway stays up, bounds what each
 * connection holds, and every request it started is logged exactly once.
 */

async function connect (port: number): Promise<net.Socket> {
  const s = net.connect(port, '127.0.0.1')
  await once(s, 'connect')
  s.on('error', () => {})
  return s
}

/** Resolves when the peer closes the socket (or it errors). */
function closed (s: net.Socket): Promise<void> {
  return s.destroyed
    ? Promise.resolve()
    : new Promise((resolve) => s.once('close', () => resolve()))
}

/** Everything read from `s` until it closes. */
async function readAll (s: net.Socket): Promise<string> {
  const chunks: Buffer[] = []
  s.on('data', (c: Buffer) => chunks.push(c))
  await closed(s)
  return Buffer.concat(chunks).toString('latin1')
}

/** An introspection endpoint that answers only when told to (auth stays pending until then). */
async function slowIntrospection (): Promise<
  { url: string, release(): void, close(): Promise<void> }
> {
  const waiting: http.ServerResponse[] = []
  let released = false
  const server = http.createServer((req, res) => {
    req.resume()
    const answer = (): void => {
      res.writeHead(200, { 'content-type': 'application/json' }).end(
        JSON.stringify({
          active: true,
          sub: 'svc',
          scope: 'predict',
          exp: Math.floor(Date.now() / 1000) + 60,
        }),
      )
    }
    if (released) answer()
    else waiting.push(Object.assign(res, { answer }))
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/introspect`,
    release () {
      released = true
      for (const r of waiting.splice(0)) (r as unknown as { answer(): void }).answer()
    },
    async close () {
      server.closeAllConnections()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    },
  }
}

describe('a request body that ends badly while credentials are being checked', () => {
  test('a malformed chunk → 400, a client gone mid-body → logged 499, and the gateway stays up', async () => {
    const intro = await slowIntrospection()
    const up = await startUpstream((req, res) => {
      req.resume()
      req.on('end', () => res.end('ok'))
    })
    const gw = await startGateway({
      identity: {
        providers: {
          p: { kind: 'introspection', endpoint: intro.url, client_id: 'gw', client_secret: 's' },
        },
      },
      upstreams: { up: { targets: [{ url: up.url }] } },
      routes: [{ name: 'r', match: {}, upstream: 'up', auth: { any_of: ['p'] } }],
    } as ConfigInput)
    try {
      const bad = await connect(gw.port)
      bad.write(
        'POST /a HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer opaque-1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n',
      )
      const answer = await readAll(bad)
      assert.match(answer, /^HTTP\/1\.1 400 /)
      assert.match(answer, /"code":"GH_BAD_REQUEST"/)

      const gone = await connect(gw.port)
      gone.write(
        'POST /b HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer opaque-2\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n',
      )
      gone.destroy()
      const line = await gw.logs.waitFor((l) => l.msg === 'request' && l.path === '/b')
      assert.equal(line.status, 499)
      const lineA = await gw.logs.waitFor((l) => l.msg === 'request' && l.path === '/a')
      assert.equal(lineA.status, 400)

      // A request with a Content-Length body, cut off while the token is being checked.
      const cut = await connect(gw.port)
      cut.write(
        'POST /c HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer opaque-3\r\nContent-Length: 100\r\n\r\nhalf',
      )
      await new Promise((resolve) => setImmediate(resolve))
      cut.destroy()
      assert.equal(
        (await gw.logs.waitFor((l) => l.msg === 'request' && l.path === '/c')).status,
        499,
      )

      intro.release()
      const ok = await request(`${gw.url}/d`, {
        method: 'POST',
        headers: { authorization: 'Bearer opaque-4' },
        body: 'x',
      })
      assert.equal(ok.status, 200)
      assert.equal(ok.body, 'ok')
    } finally {
      await gw.close()
      await up.close()
      await intro.close()
    }
  })
})

describe('pipelining', () => {
  async function bigUpstream (): Promise<Upstream & { seen: () => number }> {
    let seen = 0
    const big = Buffer.alloc(1024 * 1024, 'x')
    const up = await startUpstream((_req, res) => {
      seen++
      res.end(big)
    })
    return Object.assign(up, { seen: () => seen })
  }

  test('10,000 pipelined GETs on a connection that never reads: bounded, closed, nothing left in flight', async () => {
    const up = await bigUpstream()
    const gw = await startGateway(simpleConfig(up.url))
    try {
      const s = await connect(gw.port)
      s.pause()
      s.write('GET / HTTP/1.1\r\nHost: a\r\n\r\n'.repeat(10_000))
      await closed(s)
      // The first read held more parsed requests than a connection may keep waiting: a flood.
      // The 16 (max_pipelined) started before it was closed are each logged once, as 499.
      assert.ok(up.seen() <= 16, `the upstream saw ${up.seen()} requests`)
      await waitUntil(() => gw.logs.requests().length === 16)
      assert.ok(gw.logs.requests().every((l) => l.status === 499))
      const metrics = await metricsText(gw.adminPort!)
      assert.match(metrics, /gatehouse_connections_refused_total\{reason="pipelining_flood"\} 1/)
      assert.match(metrics, /gatehouse_in_flight_requests 0/)
      assert.equal((await request(`${gw.url}/after`)).status, 200)
    } finally {
      await gw.close()
      await up.close()
    }
  })

  test('a non-reading pipeliner holds at most max_pipelined requests, and each ends exactly once', async () => {
    const up = await bigUpstream()
    const gw = await startGateway(
      {
        ...simpleConfig(up.url),
        listen: { limits: { max_pipelined: 4 }, timeouts: { send_idle: '300ms' } },
      } as ConfigInput,
    )
    try {
      const s = await connect(gw.port)
      s.pause()
      let raw = ''
      for (let i = 0; i < 50; i++) raw += `GET /p${i} HTTP/1.1\r\nHost: a\r\n\r\n`
      s.write(raw)
      const started = performance.now()
      // (A paused client socket notices nothing: the gateway's log says when it cut it.)
      await gw.logs.waitFor((l) =>
        l.msg === 'client stopped reading its response; connection closed'
      )
      const took = performance.now() - started
      // Nobody read: the responses that fit in the socket buffers went out, then nothing moved
      // for send_idle and the connection was cut.
      assert.ok(took >= 300, `cut after ${took} ms`)
      assert.ok(up.seen() < 50, `the upstream saw ${up.seen()} of 50`)
      await waitUntil(() => gw.logs.requests().length === up.seen())
      const lines = gw.logs.requests()
      assert.equal(new Set(lines.map((l) => l.id)).size, lines.length, 'each request logged once')
      assert.ok(lines.some((l) => l.status === 499))
      const metrics = await metricsText(gw.adminPort!)
      assert.match(metrics, /gatehouse_in_flight_requests 0/)
      assert.match(metrics, /gatehouse_client_timeouts_total\{timeout="send_idle"\} 1/)
    } finally {
      await gw.close()
      await up.close()
    }
  })

  test('pipelined requests past max_pipelined are answered in order once earlier ones end', async () => {
    const up = await startUpstream((req, res) => res.end(req.url))
    const gw = await startGateway(
      { ...simpleConfig(up.url), listen: { limits: { max_pipelined: 2 } } } as ConfigInput,
    )
    try {
      const s = await connect(gw.port)
      let raw = ''
      for (let i = 0; i < 20; i++) {
        raw += `GET /q${i} HTTP/1.1\r\nHost: a\r\n${i === 19 ? 'Connection: close\r\n' : ''}\r\n`
      }
      s.write(raw)
      const answer = await readAll(s)
      const bodies = [...answer.matchAll(/\r\n\r\n(\/q\d+)/g)].map((m) => m[1])
      assert.deepEqual(bodies, Array.from({ length: 20 }, (_, i) => `/q${i}`))
    } finally {
      await gw.close()
      await up.close()
    }
  })
})

describe('connection caps', () => {
  test('max_connections_per_ip and max_connections close new connections at once, counted', async () => {
    const up = await startUpstream((_req, res) => res.end('ok'))
    const gw = await startGateway(
      {
        ...simpleConfig(up.url),
        listen: { limits: { max_connections_per_ip: 2, max_connections: 3 } },
      } as ConfigInput,
    )
    try {
      const a = await connect(gw.port)
      const b = await connect(gw.port)
      const c = await connect(gw.port)
      // The third from this address is closed without a byte.
      assert.equal(await readAll(c), '')
      // The first two still work.
      a.write('GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n')
      assert.match(await readAll(a), /^HTTP\/1\.1 200 /)
      const metrics = await metricsText(gw.adminPort!)
      assert.match(
        metrics,
        /gatehouse_connections_refused_total\{reason="max_connections_per_ip"\} 1/,
      )
      b.destroy()
      await waitUntil(() => gw.gateway.metrics.openConnections() === 0)
    } finally {
      await gw.close()
      await up.close()
    }
  })

  test('max_connections caps the whole listener', async () => {
    const up = await startUpstream((_req, res) => res.end('ok'))
    const gw = await startGateway(
      {
        ...simpleConfig(up.url),
        listen: { limits: { max_connections: 2, max_connections_per_ip: 0 } },
      } as ConfigInput,
    )
    try {
      const held = [await connect(gw.port), await connect(gw.port)]
      const third = await connect(gw.port)
      assert.equal(await readAll(third), '')
      assert.match(
        await metricsText(gw.adminPort!),
        /gatehouse_connections_refused_total\{reason="max_connections"\} 1/,
      )
      for (const s of held) s.destroy()
      await Promise.all(held.map(closed))
      await waitUntil(() => gw.gateway.metrics.openConnections() === 0)
      assert.equal((await request(gw.url)).status, 200)
    } finally {
      await gw.close()
      await up.close()
    }
  })

  test('max_requests_per_connection closes the connection after its last request', async () => {
    const up = await startUpstream((_req, res) => res.end('ok'))
    const gw = await startGateway(
      {
        ...simpleConfig(up.url),
        listen: { limits: { max_requests_per_connection: 3 } },
      } as ConfigInput,
    )
    try {
      const s = await connect(gw.port)
      s.write('GET / HTTP/1.1\r\nHost: a\r\n\r\n'.repeat(3))
      const answer = await readAll(s)
      const heads = answer.split(/(?=HTTP\/1\.1 )/)
      assert.equal(heads.length, 3)
      assert.doesNotMatch(heads[1]!, /connection: close/i)
      assert.match(heads[2]!, /connection: close/i)
    } finally {
      await gw.close()
      await up.close()
    }
  })
})

describe('slow clients are cut off', () => {
  /** An upstream that reads the whole body before answering, and notes whether its request was cancelled. */
  async function bodyUpstream (): Promise<Upstream & { aborted: () => number }> {
    let aborted = 0
    const up = await startUpstream((req, res) => {
      req.on('aborted', () => {
        aborted++
      })
      res.on('close', () => {
        if (!res.writableFinished) aborted++
      })
      req.resume()
      req.on('end', () => res.end('got it'))
    })
    return Object.assign(up, { aborted: () => aborted })
  }

  test('no byte of the body for body_idle → 408 and close, on time, and the upstream request is cancelled', async () => {
    const up = await bodyUpstream()
    const gw = await startGateway(
      { ...simpleConfig(up.url), listen: { timeouts: { body_idle: '300ms' } } } as ConfigInput,
    )
    try {
      // Warm: the clock starts when the gateway starts reading the body, and a cold first
      // request spends a few tens of ms getting there.
      assert.equal((await request(gw.url, { method: 'POST', body: 'warm' })).status, 200)
      for (const framing of ['Content-Length: 100\r\n', 'Transfer-Encoding: chunked\r\n']) {
        const times: number[] = []
        for (let round = 0; round < 3; round++) {
          const s = await connect(gw.port)
          s.write(
            `POST / HTTP/1.1\r\nHost: a\r\n${framing}\r\n${
              framing.startsWith('Content') ? 'abc' : '3\r\nabc\r\n'
            }`,
          )
          const started = performance.now()
          let took = 0
          s.once('data', () => {
            took = performance.now() - started
          })
          const answer = await readAll(s)
          assert.match(answer, /^HTTP\/1\.1 408 /, answer)
          assert.match(answer, /"code":"GH_REQUEST_TIMEOUT"/)
          assert.match(answer, /connection: close/i)
          times.push(took)
        }
        // Never before the value; within max(10 %, 20 ms) of it (the best of three rounds, so
        // that a busy test machine's scheduling is not taken for the clock's).
        assert.ok(
          Math.min(...times) >= 300 && Math.min(...times) <= 330,
          `408 after ${times.join(', ')} ms`,
        )
      }
      await waitUntil(() => up.aborted() >= 6)
      assert.match(
        await metricsText(gw.adminPort!),
        /gatehouse_client_timeouts_total\{timeout="body_idle"\} 6/,
      )
    } finally {
      await gw.close()
      await up.close()
    }
  })

  test('an incomplete head is answered 408 when listen.timeouts.headers runs out, on time', async () => {
    const up = await startUpstream((_req, res) => res.end('ok'))
    const gw = await startGateway(
      { ...simpleConfig(up.url), listen: { timeouts: { headers: '200ms' } } } as ConfigInput,
    )
    try {
      const times: number[] = []
      for (let round = 0; round < 3; round++) {
        const s = await connect(gw.port)
        const started = performance.now()
        s.write('GET / HTTP/1.1\r\nHost: a\r\n')
        let took = 0
        s.once('data', () => {
          took = performance.now() - started
        })
        assert.match(await readAll(s), /^HTTP\/1\.1 408 [^]*"code":"GH_REQUEST_TIMEOUT"/)
        times.push(took)
      }
      assert.ok(
        Math.min(...times) >= 200 && Math.min(...times) <= 220,
        `408 after ${times.join(', ')} ms`,
      )
    } finally {
      await gw.close()
      await up.close()
    }
  })

  test('a body trickling at 1 byte per 100 ms is cut by body_min_rate', async () => {
    const up = await bodyUpstream()
    const gw = await startGateway(
      {
        ...simpleConfig(up.url),
        listen: { timeouts: { body_idle: '500ms', body_min_rate: '100B' } },
      } as ConfigInput,
    )
    try {
      const s = await connect(gw.port)
      s.write('POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n')
      const timer = setInterval(() => {
        if (!s.destroyed) s.write('x')
      }, 100)
      const started = performance.now()
      const answer = await readAll(s)
      clearInterval(timer)
      const took = performance.now() - started
      assert.match(answer, /^HTTP\/1\.1 408 /)
      // 10 B/s against 100 B/s: cut shortly after the first body_idle, never by body_idle itself.
      assert.ok(took >= 500 && took < 1500, `cut after ${took} ms`)
      assert.match(
        await metricsText(gw.adminPort!),
        /gatehouse_client_timeouts_total\{timeout="body_min_rate"\} 1/,
      )
    } finally {
      await gw.close()
      await up.close()
    }
  })

  test('a slow upstream reading the body is not the client\'s fault', async () => {
    // The upstream reads nothing for 600 ms; the client has sent its whole 4 MiB body at once.
    const up = await startUpstream((req, res) => {
      req.pause()
      setTimeout(() => {
        req.resume()
        req.on('end', () => res.end('late but fine'))
      }, 600)
    })
    const gw = await startGateway(
      { ...simpleConfig(up.url), listen: { timeouts: { body_idle: '200ms' } } } as ConfigInput,
    )
    try {
      const res = await request(gw.url, { method: 'POST', body: Buffer.alloc(4 * 1024 * 1024) })
      assert.equal(res.status, 200)
      assert.equal(res.body, 'late but fine')
    } finally {
      await gw.close()
      await up.close()
    }
  })

  test('a client that reads nothing of its answer for send_idle is cut, and the upstream stream cancelled', async () => {
    let upstreamClosed = false
    const up = await startUpstream((_req, res) => {
      res.on('close', () => {
        upstreamClosed = true
      })
      const chunk = Buffer.alloc(64 * 1024, 'y')
      const pump = (): void => {
        while (res.write(chunk)) { /* fill */ }
      }
      res.on('drain', pump)
      pump()
    })
    const gw = await startGateway(
      { ...simpleConfig(up.url), listen: { timeouts: { send_idle: '400ms' } } } as ConfigInput,
    )
    try {
      const s = await connect(gw.port)
      s.pause()
      s.write('GET /stream HTTP/1.1\r\nHost: a\r\n\r\n')
      const started = performance.now()
      await gw.logs.waitFor((l) =>
        l.msg === 'client stopped reading its response; connection closed'
      )
      const took = performance.now() - started
      // The clock starts once the socket buffers are full, some ms after the request (how long
      // depends on the machine's load, so the upper bound here is loose; the clocks' own
      // accuracy is shown by the body_idle and headers cases).
      assert.ok(took >= 400 && took < 1000, `cut after ${took} ms`)
      await waitUntil(() => upstreamClosed)
      const line = await gw.logs.waitFor((l) => l.msg === 'request' && l.path === '/stream')
      assert.equal(line.status, 499)
    } finally {
      await gw.close()
      await up.close()
    }
  })
})

describe('early answers reach a client that is still uploading', () => {
  /**
   * A client that writes its whole body before it reads anything (as simple clients do): if the
   * gateway closes with the body unread, the client's kernel gets a reset and throws the answer
   * away unread.
   */
  async function uploadThenRead (
    port: number,
    head: string,
    bytes: number,
    chunked: boolean,
  ): Promise<string> {
    const s = await connect(port)
    s.pause()
    const chunks: Buffer[] = []
    s.on('data', (c: Buffer) => chunks.push(c))
    const state = { failed: false }
    s.on('error', () => {
      state.failed = true
    })
    s.write(head)
    const chunk = Buffer.alloc(256 * 1024, 'u')
    const framed = chunked
      ? Buffer.concat([Buffer.from(`${chunk.length.toString(16)}\r\n`), chunk, Buffer.from('\r\n')])
      : chunk
    for (let sent = 0; sent < bytes && !state.failed && !s.destroyed; sent += chunk.length) {
      if (!s.write(framed)) {
        await new Promise((resolve) => {
          s.once('drain', resolve)
          s.once('close', resolve)
        })
      }
    }
    if (chunked && !state.failed && !s.destroyed) s.write('0\r\n\r\n')
    s.resume()
    await closed(s)
    return Buffer.concat(chunks).toString('latin1')
  }

  test('a 413 for a 20 MiB upload to a 1 MiB route is read by the client, every time', async () => {
    const up = await startUpstream((req, res) => {
      req.resume()
      req.on('end', () => res.end('ok'))
    })
    const gw = await startGateway(simpleConfig(up.url, { limits: { max_body: '1MiB' } }))
    try {
      for (let i = 0; i < 8; i++) {
        const answer = await uploadThenRead(
          gw.port,
          `POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: ${20 * 1024 * 1024}\r\n\r\n`,
          20 * 1024 * 1024,
          false,
        )
        assert.match(answer, /^HTTP\/1\.1 413 /, `run ${i}: ${JSON.stringify(answer.slice(0, 80))}`)
      }
      // Chunked: the limit is passed mid-stream.
      const answer = await uploadThenRead(
        gw.port,
        'POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n',
        8 * 1024 * 1024,
        true,
      )
      assert.match(answer, /^HTTP\/1\.1 413 /)
    } finally {
      await gw.close()
      await up.close()
    }
  })
})
