import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import http from 'node:http'
import { once } from 'node:events'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { ConfigError, createGateway, validateConfig } from '../../src/index.js'
import type { ConfigInput } from '../../src/config/schema.js'
import { issueAt } from '../helpers/config.js'
import {
  LogCapture,
  request,
  startGateway,
  startUpstream,
  waitUntil,
  type TestGateway,
  type Upstream,
} from '../helpers/index.js'

/** What the upstream received, per request (the body as raw bytes). */
interface Seen {
  method: string
  url: string
  headers: http.IncomingHttpHeaders
  body: Buffer
}

/** Fixture plugins by file name, as absolute paths (startGateway resolves against the cwd). */
const fixture = (name: string): string =>
  fileURLToPath(new URL(`../fixtures/plugins/${name}`, import.meta.url))

const hangCount = (): number =>
  (globalThis as { __gatehouseHangAborted?: number }).__gatehouseHangAborted ?? 0

/** Bytes that are not valid UTF-8 (a lone continuation byte, an overlong lead, 0xff), plus CR LF and NUL. */
const BINARY_REQUEST = [Buffer.from([0xff, 0xfe, 0x00, 0xc3, 0x28]),
  Buffer.from('caf\u00e9 =%zz&\r\n', 'latin1'), Buffer.from([0x80, 0xbf, 0xf8, 0x0a])]
const BINARY_RESPONSE = [Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0xff, 0x00]),
  Buffer.from([0xc0, 0xaf, 0xed, 0xa0, 0x80, 0x0a])]

/** startGateway's defaults, for gateways whose listen() is expected to fail (startGateway would throw before returning them). */
function unstarted (
  config: ConfigInput,
): { gateway: ReturnType<typeof createGateway>, logs: LogCapture } {
  const logs = new LogCapture()
  const gateway = createGateway(
    {
      ...config,
      listen: { host: '127.0.0.1', port: 0 },
      admin: { host: '127.0.0.1', port: 0 },
      log: { level: 'debug' },
    },
    { logDestination: logs, processMetrics: false },
  )
  return { gateway, logs }
}

describe('plugins', () => {
  let up: Upstream
  let gw: TestGateway
  const seen: Seen[] = []
  /** /stream: resolved when the upstream has the first request chunk; the test then sends the rest. */
  let firstRequestChunk: () => void = () => {}
  /** /stream: the upstream holds its second response chunk until this is opened. */
  let openGate: () => void = () => {}
  let gate: Promise<void> = Promise.resolve()

  before(async () => {
    up = await startUpstream((req, res) => {
      const chunks: Buffer[] = []
      const url = new URL(req.url!, 'http://x')
      if (url.pathname === '/stream') req.once('data', () => firstRequestChunk())
      req.on('data', (c: Buffer) => chunks.push(c))
      req.on('end', () => {
        const body = Buffer.concat(chunks)
        seen.push({ method: req.method!, url: req.url!, headers: req.headers, body })
        if (url.pathname === '/stream') {
          // No content-length: chunked, so the second chunk can wait for the client.
          res.writeHead(200, { 'content-type': 'application/octet-stream', 'x-upstream': 'yes' })
          res.write(BINARY_RESPONSE[0])
          gate.then(() => res.end(BINARY_RESPONSE[1]))
          return
        }
        res.writeHead(200, { 'content-type': 'application/json', 'x-upstream': 'yes' })
        res.end(JSON.stringify({ ok: true, url: req.url, got: body.length }))
      })
    })
    gw = await startGateway({
      upstreams: { up: { targets: [{ url: up.url }] } },
      routes: [
        {
          name: 'tag',
          match: { path_prefix: '/tag' },
          upstream: 'up',
          plugin: { path: fixture('tag.ts'), options: { tag: 'blue' } },
        },
        {
          name: 'throws',
          match: { path_prefix: '/throws' },
          upstream: 'up',
          plugin: { path: fixture('throws.ts') },
        },
        {
          name: 'hangs',
          match: { path_prefix: '/hangs' },
          upstream: 'up',
          plugin: { path: fixture('hangs.ts'), timeout: '200ms' },
        },
        {
          name: 'garbage',
          match: { path_prefix: '/garbage' },
          upstream: 'up',
          plugin: { path: fixture('garbage.ts') },
        },
        { name: 'plain', match: {}, upstream: 'up' },
      ],
    })
  })
  after(async () => {
    await gw.close()
    await up.close()
  })

  test('onRequest rewrites the JSON body, a header, the path and the query; onResponse the JSON and a header', async () => {
    seen.length = 0
    const res = await request(gw.url + '/tag/items?keep=1', {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-client': 'c1' },
      body: '{"q":"shoes","n":2}',
    })
    assert.equal(res.status, 200)
    assert.equal(seen.length, 1)
    const s = seen[0]!
    assert.equal(s.method, 'POST')
    const url = new URL(s.url, 'http://x')
    assert.equal(url.pathname, '/tag/items/tagged')
    assert.equal(url.searchParams.get('keep'), '1')
    assert.equal(url.searchParams.get('via'), 'plugin')
    assert.equal(s.headers['x-plugin'], 'blue')
    assert.equal(s.headers['x-client'], 'c1')
    assert.equal(s.headers['content-type'], 'application/json')
    assert.deepEqual(JSON.parse(s.body.toString('utf8')), { q: 'shoes', n: 2, tagged: 'blue' })
    assert.equal(s.headers['content-length'], String(s.body.length))
    // onResponse reads the answer whole, so the upstream is asked for it uncompressed.
    assert.equal(s.headers['accept-encoding'], 'identity')

    assert.equal(res.headers['content-type'], 'application/json')
    assert.equal(res.headers['x-upstream'], 'yes')
    assert.equal(res.headers['x-plugin-response'], 'yes')
    assert.equal(res.headers['content-length'], String(Buffer.byteLength(res.body)))
    assert.deepEqual(JSON.parse(res.body), {
      ok: true,
      url: s.url,
      got: s.body.length,
      seen: true,
      plugin: 'blue',
    })
  })

  test('onRequest can answer itself: the upstream is not called', async () => {
    seen.length = 0
    const res = await request(gw.url + '/tag/items', {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-short-circuit': 'yes' },
      body: '{}',
    })
    assert.equal(res.status, 418)
    assert.equal(res.headers['content-type'], 'application/json')
    assert.equal(res.headers['content-length'], String(Buffer.byteLength(res.body)))
    assert.ok(res.headers['x-request-id'])
    assert.deepEqual(JSON.parse(res.body), { teapot: true, subject: null })
    assert.equal(seen.length, 0)
  })

  test('a hook that throws is 502 GH_PLUGIN_FAILED, and the gateway keeps serving', async () => {
    seen.length = 0
    const res = await request(gw.url + '/throws/x', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: '{"a":1}',
    })
    assert.equal(res.status, 502)
    assert.equal(res.headers['content-type'], 'application/problem+json')
    const p = JSON.parse(res.body)
    assert.equal(p.code, 'GH_PLUGIN_FAILED')
    // The plugin's error (and stack) is for the log, not for the client.
    assert.doesNotMatch(res.body, /plugin bug/)
    const line = await gw.logs.waitFor((l) =>
      l.msg === 'request' && l.id === res.headers['x-request-id']
    )
    assert.equal(line.code, 'GH_PLUGIN_FAILED')
    assert.match(line.reason, /throws\.onRequest threw: Error: plugin bug/)
    assert.equal(seen.length, 0)

    const next = await request(gw.url + '/elsewhere')
    assert.equal(next.status, 200)
    assert.equal(JSON.parse(next.body).url, '/elsewhere')
    const again = await request(gw.url + '/throws/x')
    assert.equal(again.status, 502)
  })

  test('a hook past its timeout is 502 GH_PLUGIN_TIMEOUT and its signal is aborted', async () => {
    seen.length = 0
    const before = hangCount()
    const started = Date.now()
    const res = await request(gw.url + '/hangs/x')
    assert.equal(res.status, 502)
    assert.equal(JSON.parse(res.body).code, 'GH_PLUGIN_TIMEOUT')
    assert.ok(Date.now() - started >= 190, 'answered before the 200 ms limit')
    await waitUntil(() => hangCount() === before + 1)
    assert.equal(seen.length, 0)
    const line = await gw.logs.waitFor((l) =>
      l.msg === 'request' && l.id === res.headers['x-request-id']
    )
    assert.match(line.reason, /hangs\.onRequest ran past 200 ms/)
  })

  test('a hook returning something that is not a response is 502 GH_PLUGIN_INVALID_RESULT', async () => {
    seen.length = 0
    const res = await request(gw.url + '/garbage/x')
    assert.equal(res.status, 502)
    assert.equal(res.headers['content-type'], 'application/problem+json')
    assert.equal(JSON.parse(res.body).code, 'GH_PLUGIN_INVALID_RESULT')
    // onResponse runs after the upstream answered.
    assert.equal(seen.length, 1)
    const line = await gw.logs.waitFor((l) =>
      l.msg === 'request' && l.id === res.headers['x-request-id']
    )
    assert.match(line.reason, /garbage\.onResponse returned 42/)
  })

  test('a route without a plugin streams both bodies byte for byte, next to one that has a plugin', async () => {
    seen.length = 0
    const sent = Buffer.concat(BINARY_REQUEST)
    const upstreamHasFirst = new Promise<void>((resolve) => {
      firstRequestChunk = resolve
    })
    gate = new Promise<void>((resolve) => {
      openGate = resolve
    })
    const req = http.request(gw.url + '/stream', {
      method: 'POST',
      agent: false,
      headers: { 'content-type': 'application/octet-stream', 'transfer-encoding': 'chunked' },
    })
    req.write(BINARY_REQUEST[0])
    // The upstream has the first chunk before the client sent the rest: the body is not read whole.
    await upstreamHasFirst
    req.write(BINARY_REQUEST[1])
    req.end(BINARY_REQUEST[2])
    const [res] = await once(req, 'response') as [http.IncomingMessage]
    assert.equal(res.statusCode, 200)
    assert.equal(res.headers['content-length'], undefined)
    assert.equal(res.headers['x-upstream'], 'yes')
    const received: Buffer[] = []
    let bytes = 0
    await new Promise<void>((resolve) => {
      res.on('data', (c: Buffer) => {
        received.push(c)
        bytes += c.length
        if (bytes >= BINARY_RESPONSE[0]!.length) resolve()
      })
    })
    // The first chunk reached the client while the upstream still holds the second.
    assert.deepEqual(Buffer.concat(received), BINARY_RESPONSE[0])
    openGate()
    await once(res, 'end')
    assert.deepEqual(Buffer.concat(received), Buffer.concat(BINARY_RESPONSE))
    assert.equal(seen.length, 1)
    assert.deepEqual(seen[0]!.body, sent)
    assert.equal(seen[0]!.headers['content-type'], 'application/octet-stream')
    assert.equal(seen[0]!.headers['transfer-encoding'], 'chunked')

    // The same bytes on the plugin route: read whole (sent on with a length), not JSON, so unchanged.
    seen.length = 0
    const tagged = await request(gw.url + '/tag/bin', {
      method: 'POST',
      headers: { 'content-type': 'application/octet-stream' },
      body: sent,
    })
    assert.equal(tagged.status, 200)
    assert.deepEqual(seen[0]!.body, sent)
    assert.equal(seen[0]!.headers['content-length'], String(sent.length))
    assert.equal(seen[0]!.url, '/tag/bin/tagged?via=plugin')
  })

  test('a plugin that wants another gatehouse version fails listen(), naming the versions', async () => {
    const { gateway } = unstarted({
      upstreams: { up: { targets: [{ url: up.url }] } },
      routes: [{
        name: 'future',
        match: {},
        upstream: 'up',
        plugin: { path: fixture('future.ts') },
      }],
    })
    try {
      await assert.rejects(gateway.listen(), /wants gatehouse \^9\.0; this is 0\.1\.0/)
    } finally {
      await gateway.close()
    }
  })

  test('a plugin that does not compile fails listen() with "failed to load"', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'gh-plugin-'))
    try {
      const path = join(dir, 'broken.ts')
      writeFileSync(path, 'export default {\n  name: "broken",\n  onRequest () { return ( }\n}\n')
      const { gateway } = unstarted({
        upstreams: { up: { targets: [{ url: up.url }] } },
        routes: [{ name: 'broken', match: {}, upstream: 'up', plugin: { path } }],
      })
      try {
        await assert.rejects(gateway.listen(), (err: Error) => {
          assert.match(err.message, /broken\.ts failed to load/)
          return true
        })
      } finally {
        await gateway.close()
      }
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })

  test('a plugin path that does not exist is a config error at routes[0].plugin.path', () => {
    const dir = mkdtempSync(join(tmpdir(), 'gh-plugin-'))
    try {
      let err: unknown
      try {
        validateConfig(
          {
            upstreams: { up: { targets: [{ url: 'http://127.0.0.1:1' }] } },
            routes: [{ name: 'missing', match: {}, upstream: 'up', plugin: { path: './nope.ts' } }],
          },
          { baseDir: dir },
        )
      } catch (e) {
        err = e
      }
      assert.ok(err instanceof ConfigError, `expected a ConfigError, got ${String(err)}`)
      const issue = issueAt(err, 'routes[0].plugin.path')
      assert.match(issue.message, /no such file/)
      assert.ok(issue.message.includes(join(dir, 'nope.ts')), issue.message)
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })
})
