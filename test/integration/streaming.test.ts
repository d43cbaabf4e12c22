import { describe, test } from 'node:test'
import assert from 'node:assert/strict'
import http from 'node:http'
import net from 'node:net'
import { once } from 'node:events'
import {
  parseRaw,
  rawRequest,
  request,
  simpleConfig,
  startGateway,
  startUpstream,
  text,
} from '../helpers/index.js'

/** Poll `read` until it returns the same value `times` polls in a row (a stalled transfer). */
async function settled (
  read: () => number,
  { every = 50, times = 4, deadline = 10_000 } = {},
): Promise<number> {
  const end = Date.now() + deadline
  let last = -1
  let same = 0
  while (Date.now() < end) {
    const v = read()
    same = v === last ? same + 1 : 0
    last = v
    if (same >= times) return v
    await new Promise((resolve) => setTimeout(resolve, every))
  }
  throw new Error(`value did not settle (last ${last})`)
}

describe('streaming', () => {
  test('a chunked request body arrives whole; a chunked response stays chunked', async () => {
    let framing: string | undefined
    const upstream = await startUpstream(async (req, res) => {
      // undici may send a body it already holds entirely with an exact Content-Length.
      framing = req.headers['transfer-encoding'] ?? `length ${req.headers['content-length']}`
      const body = await text(req)
      res.write('part1-')
      res.end(body.toUpperCase())
    })
    const gw = await startGateway(simpleConfig(upstream.url))
    try {
      const res = await rawRequest(
        gw.port,
        'POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n',
        1000,
      )
      assert.equal(res.status, 200)
      assert.ok(framing === 'chunked' || framing === 'length 11', `framing: ${framing}`)
      assert.equal(res.headers['transfer-encoding'], 'chunked')
      assert.match(res.body, /part1-/)
      assert.match(res.body, /HELLO WORLD/)
    } finally {
      await gw.close()
      await upstream.close()
    }
  })

  test('a close-delimited upstream response reaches the client whole', async () => {
    // An HTTP/1.0-style response: no Content-Length, no chunking, the end is the close.
    const server = net.createServer((socket) => {
      socket.once('data', () => {
        socket.end(
          'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n' +
            'z'.repeat(100_000),
        )
      })
    })
    server.listen(0, '127.0.0.1')
    await once(server, 'listening')
    const url = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`
    const gw = await startGateway(simpleConfig(url))
    try {
      const res = await request(`${gw.url}/`)
      assert.equal(res.status, 200)
      assert.equal(res.body.length, 100_000)
    } finally {
      await gw.close()
      server.close()
    }
  })

  test('response trailers are forwarded', async () => {
    const upstream = await startUpstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain', trailer: 'x-checksum' })
      res.write('data')
      res.addTrailers({ 'x-checksum': 'abc123' })
      res.end()
    })
    const gw = await startGateway(simpleConfig(upstream.url))
    try {
      const res = await request(`${gw.url}/`, { headers: { te: 'trailers' } })
      assert.equal(res.body, 'data')
      assert.equal(res.trailers['x-checksum'], 'abc123')
    } finally {
      await gw.close()
      await upstream.close()
    }
  })

  test('server-sent events are relayed event by event, not buffered', async () => {
    // The upstream sends the next event only after the client has received the previous one.
    const signal: { next: (() => void) | null } = { next: null }
    const upstream = await startUpstream(async (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' })
      for (let i = 1; i <= 3; i++) {
        res.write(`data: {"token":${i}}\n\n`)
        await new Promise<void>((resolve) => {
          signal.next = resolve
        })
      }
      res.end('data: [DONE]\n\n')
    })
    const gw = await startGateway(simpleConfig(upstream.url))
    try {
      const res = await new Promise<http.IncomingMessage>((resolve, reject) => {
        http.get(`${gw.url}/stream`, { agent: false }, resolve).on('error', reject)
      })
      assert.equal(res.statusCode, 200)
      assert.equal(res.headers['content-type'], 'text/event-stream')
      const events: string[] = []
      let buffer = ''
      for await (const chunk of res) {
        buffer += chunk.toString()
        let i
        while ((i = buffer.indexOf('\n\n')) !== -1) {
          events.push(buffer.slice(0, i))
          buffer = buffer.slice(i + 2)
          signal.next?.()
        }
      }
      assert.deepEqual(events, ['data: {"token":1}', 'data: {"token":2}', 'data: {"token":3}',
        'data: [DONE]'])
    } finally {
      await gw.close()
      await upstream.close()
    }
  })

  test('Expect: 100-continue is answered only after the route is chosen', async () => {
    const upstream = await startUpstream(async (req, res) =>
      res.end(`got ${(await text(req)).length}`)
    )
    const gw = await startGateway({
      upstreams: { up: { targets: [{ url: upstream.url }] } },
      routes: [{
        name: 'upload',
        match: { path: '/upload' },
        upstream: 'up',
        limits: { max_body: '1KiB' },
      }],
    })
    try {
      // No route: a final 404, never a 100.
      const miss = await rawRequest(
        gw.port,
        'POST /nope HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n',
        300,
      )
      assert.equal(miss.status, 404)
      assert.doesNotMatch(miss.raw, /100 Continue/)
      // Over the limit: a final 413, never a 100.
      const big = await rawRequest(
        gw.port,
        'POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 4096\r\nExpect: 100-continue\r\n\r\n',
        300,
      )
      assert.equal(big.status, 413)
      assert.doesNotMatch(big.raw, /100 Continue/)
      // Routed: 100 Continue first, then the body, then the upstream's answer.
      const socket = net.connect(gw.port, '127.0.0.1')
      await once(socket, 'connect')
      socket.write(
        'POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n',
      )
      let raw = ''
      socket.on('data', (d) => {
        raw += d.toString('latin1')
        if (
          raw.startsWith('HTTP/1.1 100 Continue\r\n\r\n') &&
          raw.length === 'HTTP/1.1 100 Continue\r\n\r\n'.length
        ) socket.write('hello')
      })
      await once(socket, 'close')
      assert.match(raw, /^HTTP\/1\.1 100 Continue\r\n\r\nHTTP\/1\.1 200 OK/)
      assert.equal(parseRaw(raw.slice(raw.indexOf('HTTP/1.1 200'))).body, 'got 5')
    } finally {
      await gw.close()
      await upstream.close()
    }
  })

  test('a slow client reading a large response applies backpressure to the upstream', async () => {
    const total = 256 * 1024 * 1024
    const chunk = Buffer.alloc(64 * 1024, 0x61)
    let written = 0
    const upstream = await startUpstream((_req, res) => {
      res.writeHead(200, { 'content-length': total })
      const pump = (): void => {
        while (written < total) {
          written += chunk.length
          if (!res.write(chunk)) {
            res.once('drain', pump)
            return
          }
        }
        res.end()
      }
      pump()
    })
    const gw = await startGateway(simpleConfig(upstream.url))
    try {
      const res = await new Promise<http.IncomingMessage>((resolve, reject) => {
        http.get(`${gw.url}/big`, { agent: false }, resolve).on('error', reject)
      })
      res.pause()
      // While the client reads nothing, the upstream must stall after socket buffers fill.
      const stalledAt = await settled(() => written)
      assert.ok(
        stalledAt < 32 * 1024 * 1024,
        `upstream wrote ${stalledAt} bytes into a paused client`,
      )
      let received = 0
      res.on('data', (c: Buffer) => {
        received += c.length
      })
      res.resume()
      await once(res, 'end')
      assert.equal(received, total)
    } finally {
      await gw.close()
      await upstream.close()
    }
  })

  test('an upstream that reads slowly applies backpressure to the uploading client', async () => {
    let upstreamReq: http.IncomingMessage | null = null
    let received = 0
    const upstream = await startUpstream((req, res) => {
      upstreamReq = req
      req.pause()
      req.on('data', (c: Buffer) => {
        received += c.length
      })
      req.on('end', () => res.end(`got ${received}`))
    })
    const gw = await startGateway(simpleConfig(upstream.url))
    try {
      const total = 256 * 1024 * 1024
      const chunk = Buffer.alloc(64 * 1024, 0x62)
      let sent = 0
      const req = http.request(`${gw.url}/upload`, {
        method: 'POST',
        agent: false,
        headers: { 'content-length': total },
      })
      const response = new Promise<http.IncomingMessage>((resolve, reject) => {
        req.on('response', resolve)
        req.on('error', reject)
      })
      const pump = (): void => {
        while (sent < total) {
          sent += chunk.length
          if (!req.write(chunk)) {
            req.once('drain', pump)
            return
          }
        }
        req.end()
      }
      pump()
      const stalledAt = await settled(() => sent)
      assert.ok(
        stalledAt < 32 * 1024 * 1024,
        `client pushed ${stalledAt} bytes into a paused upstream`,
      )
      upstreamReq!.resume()
      const res = await response
      assert.equal(await text(res), `got ${total}`)
    } finally {
      await gw.close()
      await upstream.close()
    }
  })
})
