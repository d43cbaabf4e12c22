import { describe, test } from 'node:test'
import assert from 'node:assert/strict'
import http from 'node:http'
import https from 'node:https'
import net from 'node:net'
import { once } from 'node:events'
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { WebSocket, WebSocketServer } from 'ws'
import { ConfigError } from '../../src/index.js'
import {
  metricsText,
  request,
  simpleConfig,
  startGateway,
  startUpstream,
  text,
  waitUntil,
} from '../helpers/index.js'

const fixtures = fileURLToPath(new URL('../fixtures/', import.meta.url))

describe('hot reload', () => {
  test('a reload swaps the route table; requests in flight finish on the old one', async () => {
    const held: http.ServerResponse[] = []
    const a = await startUpstream((_req, res) => {
      held.push(res)
    })
    const b = await startUpstream((_req, res) => res.end('from b'))
    const gw = await startGateway(simpleConfig(a.url))
    try {
      const inFlight = request(`${gw.url}/slow`)
      await waitUntil(() => held.length > 0)
      await gw.gateway.reload({
        upstreams: { b: { targets: [{ url: b.url }] } },
        routes: [{ name: 'new', match: {}, upstream: 'b' }],
      })
      assert.equal((await request(`${gw.url}/x`)).body, 'from b')
      held[0]!.end('from a')
      const old = await inFlight
      assert.equal(old.status, 200)
      assert.equal(old.body, 'from a')
      assert.match(
        await metricsText(gw.adminPort!),
        /gatehouse_config_reloads_total\{result="success"\} 1/,
      )
    } finally {
      await gw.close()
      await a.close()
      await b.close()
    }
  })

  test('an invalid config is refused with the exact problem and the old table keeps serving', async () => {
    const upstream = await startUpstream((_req, res) => res.end('still here'))
    const gw = await startGateway(simpleConfig(upstream.url))
    try {
      await assert.rejects(
        gw.gateway.reload({
          upstreams: { ranker: { targets: [{ url: upstream.url }] } },
          routes: [{ name: 'r', match: {}, upstream: 'rankr' }],
        }),
        (err: unknown) =>
          err instanceof ConfigError &&
          /routes\[0\]\.upstream: unknown upstream "rankr" \(did you mean "ranker"\?\)/.test(
            err.message,
          ),
      )
      assert.equal((await request(`${gw.url}/`)).body, 'still here')
      await gw.logs.waitFor((l) => l.msg === 'config reload failed; keeping the running config')
    } finally {
      await gw.close()
      await upstream.close()
    }
  })
})

describe('graceful shutdown', () => {
  test('close() stops accepting, lets in-flight requests finish, then resolves', async () => {
    const held: http.ServerResponse[] = []
    const upstream = await startUpstream((_req, res) => {
      held.push(res)
    })
    const gw = await startGateway({ ...simpleConfig(upstream.url), shutdown: { grace: '10s' } })
    const inFlight = request(`${gw.url}/`)
    await waitUntil(() => held.length > 0)
    const closing = gw.gateway.close()
    await gw.logs.waitFor((l) => l.msg === 'shutting down')
    // New connections are refused while the old request is still being served.
    await assert.rejects(request(`${gw.url}/`), /ECONNREFUSED/)
    held[0]!.end('finished')
    const res = await inFlight
    assert.equal(res.status, 200)
    assert.equal(res.body, 'finished')
    assert.equal(res.headers.connection, 'close')
    await closing
    await upstream.close()
  })

  test('requests still running when the grace period ends are cut off', async () => {
    let arrived: () => void
    const reached = new Promise<void>((resolve) => {
      arrived = resolve
    })
    const upstream = await startUpstream(() => {
      arrived() /* and never answer */
    })
    const gw = await startGateway({ ...simpleConfig(upstream.url), shutdown: { grace: '100ms' } })
    const outcome = request(`${gw.url}/`).then(() => null, (err: Error) => err)
    await reached
    await gw.gateway.close()
    assert.ok((await outcome) instanceof Error, 'the held request must be cut off')
    await gw.logs.waitFor((l) => l.msg === 'grace period over; closing connections')
    await upstream.close()
  })
})

describe('admin endpoints', () => {
  test('/healthz, /readyz, /routes and /metrics answer on the admin port', async () => {
    const upstream = await startUpstream((_req, res) => res.end('ok'))
    const gw = await startGateway(simpleConfig(upstream.url))
    const admin = `http://127.0.0.1:${gw.adminPort}`
    try {
      assert.deepEqual(JSON.parse((await request(`${admin}/healthz`)).body), { status: 'ok' })
      const ready = await request(`${admin}/readyz`)
      assert.equal(ready.status, 200)
      const routes = JSON.parse((await request(`${admin}/routes`)).body)
      assert.equal(routes.routes[0].name, 'all')
      await request(`${gw.url}/a`, { method: 'POST', body: 'hello' })
      await gw.logs.waitFor((l) => l.msg === 'request')
      const metrics = await metricsText(gw.adminPort!)
      assert.match(metrics, /gatehouse_requests_total\{route="all",method="POST",status="200"\} 1/)
      assert.match(metrics, /gatehouse_request_duration_seconds_count\{route="all"\} 1/)
      assert.match(
        metrics,
        /gatehouse_upstream_header_duration_seconds_count\{route="all",upstream="up"\} 1/,
      )
      assert.match(metrics, /gatehouse_request_body_bytes_total\{route="all"\} 5/)
      assert.match(metrics, /gatehouse_response_body_bytes_total\{route="all"\} 2/)
      assert.match(metrics, /gatehouse_in_flight_requests 0/)
      assert.equal((await request(`${admin}/nope`)).status, 404)
    } finally {
      await gw.close()
      await upstream.close()
    }
  })

  test('/readyz answers 503 once shutdown begins', async () => {
    const held: http.ServerResponse[] = []
    const upstream = await startUpstream((_req, res) => {
      held.push(res)
    })
    const gw = await startGateway({ ...simpleConfig(upstream.url), shutdown: { grace: '10s' } })
    const inFlight = request(`${gw.url}/`)
    await waitUntil(() => held.length > 0)
    const closing = gw.gateway.close()
    const ready = await request(`http://127.0.0.1:${gw.adminPort}/readyz`)
    assert.equal(ready.status, 503)
    held[0]!.end()
    await inFlight
    await closing
    await upstream.close()
  })
})

describe('WebSocket', () => {
  test('an upgrade is passed through and messages flow both ways', async () => {
    const upstream = await startUpstream((_req, res) => res.end('plain'))
    const wss = new WebSocketServer({ server: upstream.server })
    let upstreamPath = ''
    wss.on('connection', (ws, req) => {
      upstreamPath = req.url!
      ws.on('message', (m) => ws.send(`echo:${m.toString()}`))
    })
    const gw = await startGateway(simpleConfig(upstream.url, { strip_prefix: '/ws' }))
    try {
      const ws = new WebSocket(`ws://127.0.0.1:${gw.port}/ws/chat?room=1`)
      await once(ws, 'open')
      ws.send('hello')
      const [msg] = await once(ws, 'message')
      assert.equal(msg.toString(), 'echo:hello')
      assert.equal(upstreamPath, '/chat?room=1')
      ws.close()
      await once(ws, 'close')
    } finally {
      wss.close()
      await gw.close()
      await upstream.close()
    }
  })

  test('an upstream refusing the upgrade is relayed as an ordinary response', async () => {
    const upstream = await startUpstream((_req, res) => res.end('plain'))
    upstream.server.on('upgrade', (_req, socket: net.Socket) => {
      socket.end(
        'HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 6\r\nConnection: close\r\n\r\nno way',
      )
    })
    const gw = await startGateway(simpleConfig(upstream.url))
    try {
      const ws = new WebSocket(`ws://127.0.0.1:${gw.port}/`)
      const [, res] = await once(ws, 'unexpected-response') as [unknown, http.IncomingMessage]
      assert.equal(res.statusCode, 403)
      assert.equal(await text(res), 'no way')
    } finally {
      await gw.close()
      await upstream.close()
    }
  })

  test('a route with websocket: false answers an upgrade request as a plain request', async () => {
    let upgrade: string | undefined = 'unset'
    const upstream = await startUpstream((req, res) => {
      upgrade = req.headers.upgrade
      res.end('plain')
    })
    const gw = await startGateway(simpleConfig(upstream.url, { websocket: false }))
    try {
      const ws = new WebSocket(`ws://127.0.0.1:${gw.port}/`)
      ws.on('error', () => {})
      const [, res] = await once(ws, 'unexpected-response') as [unknown, http.IncomingMessage]
      assert.equal(res.statusCode, 200)
      assert.equal(await text(res), 'plain')
      assert.equal(upgrade, undefined, 'the upstream never sees the Upgrade')
    } finally {
      await gw.close()
      await upstream.close()
    }
  })
})

describe('TLS listener', () => {
  test('listen.tls serves HTTPS and tells the upstream the scheme was https', async () => {
    let proto: string | undefined
    const upstream = await startUpstream((req, res) => {
      proto = req.headers['x-forwarded-proto'] as string
      res.end('secure')
    })
    const gw = await startGateway({
      ...simpleConfig(upstream.url),
      listen: { tls: { cert: `${fixtures}tls/cert.pem`, key: `${fixtures}tls/key.pem` } } as never,
    })
    try {
      const ca = readFileSync(`${fixtures}tls/cert.pem`)
      const body = await new Promise<string>((resolve, reject) => {
        https.get(`https://localhost:${gw.port}/`, { ca, agent: false }, (res) => {
          text(res).then(resolve, reject)
        }).on('error', reject)
      })
      assert.equal(body, 'secure')
      assert.equal(proto, 'https')
    } finally {
      await gw.close()
      await upstream.close()
    }
  })
})
