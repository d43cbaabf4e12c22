import { describe, test } from 'node:test'
import assert from 'node:assert/strict'
import net from 'node:net'
import tls from 'node:tls'
import { once } from 'node:events'
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { WebSocket, WebSocketServer } from 'ws'
import { request, simpleConfig, startGateway, startUpstream } from '../helpers/index.js'
import { validateConfig } from '../../src/config/load.js'
import type { ConfigInput } from '../../src/config/schema.js'

const fixtures = fileURLToPath(new URL('../fixtures/', import.meta.url))
const ca = readFileSync(`${fixtures}tls/cert.pem`)

/** Resolves when the peer closes the socket (or it errors). */
function closed (s: net.Socket): Promise<void> {
  return s.destroyed
    ? Promise.resolve()
    : new Promise((resolve) => s.once('close', () => resolve()))
}

describe('TLS listener under abuse', () => {
  async function tlsGateway (timeouts: Record<string, string> = {}) {
    const up = await startUpstream((_req, res) => res.end('secure'))
    const gw = await startGateway({
      ...simpleConfig(up.url),
      listen: { tls: { cert: `${fixtures}tls/cert.pem`, key: `${fixtures}tls/key.pem` }, timeouts },
    } as ConfigInput)
    return { up, gw }
  }

  test('connections that never finish the TLS handshake are closed after listen.timeouts.headers', async () => {
    const { up, gw } = await tlsGateway({ headers: '300ms' })
    try {
      const sockets: net.Socket[] = []
      for (let i = 0; i < 30; i++) {
        const s = net.connect(gw.port, '127.0.0.1')
        s.on('error', () => {})
        await once(s, 'connect')
        // Half of them send the start of a ClientHello and stop.
        if (i % 2 === 0) s.write(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01]))
        sockets.push(s)
      }
      const started = performance.now()
      await Promise.all(sockets.map(closed))
      const took = performance.now() - started
      // Node's default would have held them for 120 s.
      assert.ok(took < 2000, `closed after ${took} ms`)
      // A real client still gets through.
      const body = await new Promise<string>((resolve, reject) => {
        const s = tls.connect(
          { port: gw.port, host: '127.0.0.1', servername: 'localhost', ca },
          () => {
            s.write('GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n')
          },
        )
        let out = ''
        s.on('data', (d) => {
          out += d
        })
        s.on('end', () => resolve(out))
        s.on('error', reject)
      })
      assert.match(body, /^HTTP\/1\.1 200 [^]*secure$/)
    } finally {
      await gw.close()
      await up.close()
    }
  })

  async function handshake (port: number, options: tls.ConnectionOptions): Promise<string> {
    return await new Promise((resolve) => {
      const s = tls.connect(
        { port, host: '127.0.0.1', servername: 'localhost', ca, ...options },
        () => {
          const result = `ok ${s.getProtocol() ?? ''} ${s.getCipher().name}`
          s.destroy()
          resolve(result)
        },
      )
      s.on(
        'error',
        (err: Error & { code?: string }) => resolve(`refused ${err.code ?? err.message}`),
      )
    })
  }

  test('TLS 1.0/1.1 and CBC or SHA-1 suites are refused; modern clients connect', async () => {
    const { up, gw } = await tlsGateway()
    try {
      assert.match(await handshake(gw.port, {}), /^ok TLSv1\.3 /)
      assert.match(
        await handshake(gw.port, { maxVersion: 'TLSv1.2' }),
        /^ok TLSv1\.2 ECDHE-ECDSA-AES(128|256)-GCM-SHA(256|384)$/,
      )
      assert.match(
        await handshake(gw.port, { maxVersion: 'TLSv1.1', minVersion: 'TLSv1' }),
        /^refused /,
      )
      for (
        const cipher of ['ECDHE-ECDSA-AES128-SHA', 'ECDHE-ECDSA-AES256-SHA',
          'ECDHE-ECDSA-AES128-SHA256']
      ) {
        assert.match(
          await handshake(gw.port, { maxVersion: 'TLSv1.2', ciphers: cipher }),
          /^refused /,
          cipher,
        )
      }
    } finally {
      await gw.close()
      await up.close()
    }
  })

  test('listen.tls.min_version and ciphers are settings, and a cipher list OpenSSL cannot use is a config error', async () => {
    const up = await startUpstream((_req, res) => res.end('secure'))
    const gw = await startGateway({
      ...simpleConfig(up.url),
      listen: {
        tls: {
          cert: `${fixtures}tls/cert.pem`,
          key: `${fixtures}tls/key.pem`,
          min_version: 'TLSv1.3',
        },
      },
    } as ConfigInput)
    try {
      assert.match(await handshake(gw.port, { maxVersion: 'TLSv1.2' }), /^refused /)
      assert.match(await handshake(gw.port, {}), /^ok TLSv1\.3 /)
    } finally {
      await gw.close()
      await up.close()
    }
    assert.throws(() => validateConfig({
      ...simpleConfig(up.url),
      listen: {
        tls: {
          cert: `${fixtures}tls/cert.pem`,
          key: `${fixtures}tls/key.pem`,
          ciphers: 'NOT-A-CIPHER',
        },
      },
    } as ConfigInput), /listen\.tls\.ciphers: OpenSSL accepts none of these ciphers/)
  })
})

describe('WebSocket tunnels under abuse', () => {
  async function wsUpstream () {
    const wss = new WebSocketServer({ port: 0, host: '127.0.0.1' })
    await once(wss, 'listening')
    wss.on('connection', (ws) => ws.on('message', (m) => ws.send(`echo:${m}`)))
    return { wss, url: `http://127.0.0.1:${(wss.address() as net.AddressInfo).port}` }
  }

  test('a tunnel with no traffic for the upstream\'s idle timeout is closed; one with traffic stays', async () => {
    const { wss, url } = await wsUpstream()
    // Bounds loose enough for a loaded 2-core machine: the point is "closed near its idle
    // timeout, while the busy tunnel (traffic every 100 ms) stays".
    const gw = await startGateway(simpleConfig(url, {}, { timeouts: { idle: '500ms' } }))
    try {
      const quiet = new WebSocket(`ws://127.0.0.1:${gw.port}/`)
      await once(quiet, 'open')
      const started = performance.now()
      const busy = new WebSocket(`ws://127.0.0.1:${gw.port}/`)
      await once(busy, 'open')
      const timer = setInterval(() => busy.send('ping'), 100)
      await once(quiet, 'close')
      const took = performance.now() - started
      assert.ok(took >= 450 && took < 3000, `closed after ${took} ms`)
      assert.equal(busy.readyState, WebSocket.OPEN)
      clearInterval(timer)
      busy.close()
      await gw.logs.waitFor((l) => l.msg === 'upgrade closed: idle')
    } finally {
      wss.close()
      await gw.close()
    }
  })

  test('an open tunnel holds a max_in_flight slot: more upgrades get 503, plain requests wait', async () => {
    const { wss, url } = await wsUpstream()
    const gw = await startGateway(
      simpleConfig(url, {}, { max_in_flight: 1, queue: { size: 10, timeout: '100ms' } }),
    )
    try {
      const first = new WebSocket(`ws://127.0.0.1:${gw.port}/`)
      await once(first, 'open')
      const second = new WebSocket(`ws://127.0.0.1:${gw.port}/`)
      second.on('error', () => {})
      const [, res] = await once(second, 'unexpected-response') as [
        unknown,
        import('node:http').IncomingMessage,
      ]
      assert.equal(res.statusCode, 503)
      const plain = await request(`${gw.url}/plain`)
      assert.equal(plain.status, 503)
      assert.equal(JSON.parse(plain.body).code, 'GH_UPSTREAM_BUSY')
      first.close()
      await once(first, 'close')
      // The slot is free again once the tunnel is gone.
      const third = new WebSocket(`ws://127.0.0.1:${gw.port}/`)
      await once(third, 'open')
      third.close()
      await once(third, 'close')
    } finally {
      wss.close()
      await gw.close()
    }
  })

  test('shutdown gives open tunnels the grace period, then closes them in order', async () => {
    const { wss, url } = await wsUpstream()
    const gw = await startGateway(
      { ...simpleConfig(url), shutdown: { grace: '300ms' } } as ConfigInput,
    )
    const ws = new WebSocket(`ws://127.0.0.1:${gw.port}/`)
    await once(ws, 'open')
    const started = performance.now()
    const closedWs = once(ws, 'close')
    await gw.close()
    const took = performance.now() - started
    await closedWs
    assert.ok(took >= 290, `close() returned after ${took} ms: the tunnel got its grace`)
    assert.ok(
      gw.logs.lines.some((l) =>
        l.msg === 'grace period over; closing connections' && l.upgraded === 1
      ),
    )
    wss.close()
  })
})
