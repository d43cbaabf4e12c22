import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import net from 'node:net'
import { once } from 'node:events'
import {
  rawRequest,
  simpleConfig,
  startGateway,
  startUpstream,
  text,
  type TestGateway,
  type Upstream,
} from '../helpers/index.js'

/*
 * Ambiguous or malformed requests are refused with a problem+json answer and never reach the
 * upstream. Each case counts the upstream's requests before and after.
 */
describe('malformed and ambiguous requests', () => {
  let upstream: Upstream
  let gw: TestGateway
  let hits = 0

  before(async () => {
    upstream = await startUpstream(async (req, res) => {
      hits++
      await text(req)
      res.end('reached')
    })
    gw = await startGateway({
      ...simpleConfig(upstream.url, { limits: { max_body: '1KiB' } }),
      listen: { max_header_size: '4KiB', max_headers: 20 } as never,
    })
  })
  after(async () => {
    await gw.close()
    await upstream.close()
  })

  async function refused (raw: string, status: number, code: string): Promise<void> {
    const before = hits
    const res = await rawRequest(gw.port, raw, 500)
    assert.equal(
      res.status,
      status,
      `status for ${JSON.stringify(raw.slice(0, 60))}: ${res.raw.slice(0, 200)}`,
    )
    assert.equal(res.headers['content-type'], 'application/problem+json')
    assert.equal(JSON.parse(res.body).code, code)
    assert.equal(hits, before, 'the upstream must not see the request')
  }

  test('Content-Length together with Transfer-Encoding → 400', () =>
    refused(
      'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n',
      400,
      'GH_AMBIGUOUS_LENGTH',
    ))

  test('two differing Content-Length headers → 400', () =>
    refused(
      'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!',
      400,
      'GH_AMBIGUOUS_LENGTH',
    ))

  test('a Content-Length list → 400', () =>
    refused(
      'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello',
      400,
      'GH_AMBIGUOUS_LENGTH',
    ))

  test('a transfer coding other than chunked → 501', () =>
    refused(
      'POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n',
      501,
      'GH_TRANSFER_CODING_UNSUPPORTED',
    ))

  test('duplicate Host → 400', () =>
    refused('GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n', 400, 'GH_DUPLICATE_HOST'))

  test('a control character in a header value → 400', () =>
    refused('GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x01c\r\n\r\n', 400, 'GH_BAD_REQUEST'))

  test('whitespace before the colon → 400', () =>
    refused('GET / HTTP/1.1\r\nHost : a\r\n\r\n', 400, 'GH_BAD_REQUEST'))

  test('obsolete line folding → 400', () =>
    refused('GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n', 400, 'GH_BAD_REQUEST'))

  test('bare LF line endings → 400', () =>
    refused('GET / HTTP/1.1\nHost: a\n\n', 400, 'GH_BAD_REQUEST'))

  test('absolute-form request target → 400', () =>
    refused('GET http://evil.test/x HTTP/1.1\r\nHost: a\r\n\r\n', 400, 'GH_BAD_REQUEST'))

  test('dot segments, plain or percent-encoded → 400', async () => {
    await refused('GET /a/../admin HTTP/1.1\r\nHost: a\r\n\r\n', 400, 'GH_BAD_PATH')
    await refused('GET /a/%2e%2E/admin HTTP/1.1\r\nHost: a\r\n\r\n', 400, 'GH_BAD_PATH')
    await refused('GET /a/./b HTTP/1.1\r\nHost: a\r\n\r\n', 400, 'GH_BAD_PATH')
  })

  test('a request head over max_header_size → 431', () =>
    refused(
      `GET / HTTP/1.1\r\nHost: a\r\nX-Big: ${'x'.repeat(5000)}\r\n\r\n`,
      431,
      'GH_HEADERS_TOO_LARGE',
    ))

  test('more header fields than max_headers → 431', () => {
    const fields = Array.from({ length: 25 }, (_, i) => `X-H${i}: v\r\n`).join('')
    return refused(`GET / HTTP/1.1\r\nHost: a\r\n${fields}\r\n`, 431, 'GH_HEADERS_TOO_LARGE')
  })

  test('a declared Content-Length over the limit → 413 before the body is read', () =>
    refused('POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n', 413, 'GH_BODY_TOO_LARGE'))

  test('the limit is exact: max_body bytes pass', async () => {
    const res = await rawRequest(
      gw.port,
      `POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1024\r\nConnection: close\r\n\r\n${
        'x'.repeat(1024)
      }`,
      500,
    )
    assert.equal(res.status, 200)
    assert.equal(res.body, 'reached')
  })

  test('a chunked body is refused with 413 as soon as it passes the limit', async () => {
    const socket = net.connect(gw.port, '127.0.0.1')
    await once(socket, 'connect')
    socket.write('POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n')
    // 2 KiB in 512-byte chunks, then stop without the final chunk: the answer must not
    // wait for the end of the body.
    for (let i = 0; i < 4; i++) socket.write(`200\r\n${'y'.repeat(512)}\r\n`)
    let raw = ''
    socket.on('data', (d) => {
      raw += d.toString('latin1')
    })
    await once(socket, 'close')
    assert.match(raw, /^HTTP\/1\.1 413 /)
    assert.match(raw, /GH_BODY_TOO_LARGE/)
    assert.match(raw, /connection: close/i)
  })
})

describe('slow clients', () => {
  test('a client that never finishes its headers is answered 408 and disconnected (slowloris)', async () => {
    const upstream = await startUpstream((_req, res) => res.end('x'))
    const gw = await startGateway({
      ...simpleConfig(upstream.url),
      listen: { timeouts: { headers: '300ms' } } as never,
    })
    try {
      const socket = net.connect(gw.port, '127.0.0.1')
      await once(socket, 'connect')
      const started = Date.now()
      socket.write('GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ')
      let raw = ''
      socket.on('data', (d) => {
        raw += d.toString('latin1')
      })
      await once(socket, 'close')
      const elapsed = Date.now() - started
      assert.match(raw, /^HTTP\/1\.1 408 /)
      assert.match(raw, /GH_REQUEST_TIMEOUT/)
      // Node's default check interval is 30 s; ours must act within about a second.
      assert.ok(elapsed < 2000, `closed after ${elapsed} ms`)
    } finally {
      await gw.close()
      await upstream.close()
    }
  })

  test('an idle keep-alive connection is closed after keep_alive', async () => {
    const upstream = await startUpstream((_req, res) => res.end('x'))
    const gw = await startGateway({
      ...simpleConfig(upstream.url),
      listen: { timeouts: { keep_alive: '200ms' } } as never,
    })
    try {
      const socket = net.connect(gw.port, '127.0.0.1')
      await once(socket, 'connect')
      socket.write('GET / HTTP/1.1\r\nHost: a\r\n\r\n')
      let raw = ''
      socket.on('data', (d) => {
        raw += d.toString('latin1')
      })
      await once(socket, 'close')
      assert.match(raw, /^HTTP\/1\.1 200 /)
    } finally {
      await gw.close()
      await upstream.close()
    }
  })
})
