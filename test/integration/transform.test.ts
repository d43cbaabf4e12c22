import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import http from 'node:http'
import { once } from 'node:events'
import {
  startGateway,
  startUpstream,
  request,
  type TestGateway,
  type Upstream,
} from '../helpers/index.js'

/** What the upstream received, per request. */
interface Seen {
  method: string
  url: string
  headers: http.IncomingHttpHeaders
  body: string
}

describe('transforms', () => {
  let up: Upstream
  let gw: TestGateway
  const seen: Seen[] = []
  let gate: (() => void) | null = null
  let gateOpen: Promise<void> = Promise.resolve()

  before(async () => {
    up = await startUpstream((req, res) => {
      const chunks: Buffer[] = []
      req.on('data', (c: Buffer) => chunks.push(c))
      req.on('end', () => {
        const body = Buffer.concat(chunks).toString('utf8')
        seen.push({ method: req.method!, url: req.url!, headers: req.headers, body })
        const url = new URL(req.url!, 'http://x')
        switch (url.pathname) {
          case '/text':
            res.writeHead(200, { 'content-type': 'text/html' })
            return res.end('<html>not json</html>')
          case '/badjson':
            res.writeHead(200, { 'content-type': 'application/json' })
            return res.end('{"hits": [')
          case '/missing':
            res.writeHead(404, { 'content-type': 'application/json' })
            return res.end('{"error":"nope"}')
          case '/big':
            res.writeHead(200, { 'content-type': 'application/json' })
            return res.end(JSON.stringify({ pad: 'x'.repeat(4096) }))
          case '/events': {
            res.writeHead(200, { 'content-type': 'text/event-stream' })
            res.write('event: token\r\ndata: {"choices":[{"delta":{"content":"Hel"}}]}\r\n\r\n')
            // The second event waits until the client saw the first: proof it was not held back.
            gateOpen.then(() => {
              res.write(': keep-alive\n\ndata: {"choices":[{"delta":{"content":"lo"}}]}\n\nda')
              res.end('ta: [DONE]\n\n')
            })
            return
          }
        }
        res.writeHead(200, {
          'content-type': 'application/json',
          'x-upstream': 'yes',
          'x-internal': 'secret',
        })
        res.end(
          JSON.stringify({
            took: 3,
            hits: { hits: [{ _id: 'a', _score: 1.5 }, { _id: 'b', _score: 0.5 }] },
            echo: body,
          }),
        )
      })
    })
    gw = await startGateway({
      upstreams: { up: { targets: [{ url: up.url }] } },
      routes: [
        {
          name: 'form',
          match: { path: '/slack' },
          upstream: 'up',
          transform: { request: { form_to_json: true } },
        },
        {
          name: 'map',
          match: { path_prefix: '/map' },
          upstream: 'up',
          strip_prefix: '/map',
          limits: { max_buffered_body: '1KiB' },
          transform: {
            request: {
              body: '{ "query": q, "team": $headers."x-team", "size": $number($query.n) }',
              headers: {
                remove: ['x-drop'],
                rename: { 'x-old': 'x-new' },
                set: { 'x-set': 'one' },
                add: { 'x-add': 'two' },
              },
              path: { pattern: '^/v1/(.*)$', replace: '/api/$1' },
              query: { set: { added: 'yes' }, remove: ['secret'] },
            },
          },
        },
        {
          name: 'shape',
          match: { path_prefix: '/shape' },
          upstream: 'up',
          strip_prefix: '/shape',
          transform: {
            response: {
              body: '{ "ids": hits.hits._id, "took_ms": took, "status": $status }',
              headers: { remove: ['x-internal'], set: { 'x-shaped': 'yes' } },
              status: { 404: 200 },
              max_body: '1KiB',
            },
          },
        },
        {
          name: 'events',
          match: { path: '/events' },
          upstream: 'up',
          transform: { response: { events: '{ "text": choices[0].delta.content }' } },
        },
        { name: 'plain', match: {}, upstream: 'up' },
      ],
    })
  })
  after(async () => {
    await gw.close()
    await up.close()
  })

  const post = (path: string, body: string | Buffer, headers: Record<string, string> = {}) =>
    request(gw.url + path, { method: 'POST', headers, body })

  test('form_to_json turns a Slack-style form into JSON (repeated names become arrays)', async () => {
    seen.length = 0
    const res = await post('/slack', 'command=%2Fask&text=hello+world&tag=a&tag=b&empty=', {
      'content-type': 'application/x-www-form-urlencoded',
    })
    assert.equal(res.status, 200)
    assert.equal(seen.length, 1)
    assert.equal(seen[0]!.headers['content-type'], 'application/json')
    assert.equal(seen[0]!.headers['content-length'], String(Buffer.byteLength(seen[0]!.body)))
    assert.deepEqual(JSON.parse(seen[0]!.body), {
      command: '/ask',
      text: 'hello world',
      tag: ['a', 'b'],
      empty: '',
    })
  })

  test('a malformed form body is 400 and nothing is forwarded', async () => {
    seen.length = 0
    for (const body of ['text=%zz', 'text=%E2%82', 'text=caf\u00e9']) {
      const res = await post('/slack', Buffer.from(body, 'latin1'), {
        'content-type': 'application/x-www-form-urlencoded',
      })
      assert.equal(res.status, 400, body)
      assert.equal(res.headers['content-type'], 'application/problem+json')
      assert.equal(JSON.parse(res.body).code, 'GH_INVALID_BODY')
    }
    assert.equal(seen.length, 0)
  })

  test('form_to_json leaves JSON bodies as they are', async () => {
    seen.length = 0
    const res = await post('/slack', '{"a":1}', { 'content-type': 'application/json' })
    assert.equal(res.status, 200)
    assert.equal(seen[0]!.body, '{"a":1}')
  })

  test('a JSONata request mapping, header edits, path and query rewrite', async () => {
    seen.length = 0
    const res = await post('/map/v1/search?n=5&secret=s&keep=1', '{"q":"shoes","other":true}', {
      'content-type': 'application/json',
      'x-team': 'blue',
      'x-drop': 'gone',
      'x-old': 'moved',
    })
    assert.equal(res.status, 200)
    const s = seen[0]!
    assert.deepEqual(JSON.parse(s.body), { query: 'shoes', team: 'blue', size: 5 })
    const url = new URL(s.url, 'http://x')
    assert.equal(url.pathname, '/api/search')
    assert.equal(url.searchParams.get('n'), '5')
    assert.equal(url.searchParams.get('keep'), '1')
    assert.equal(url.searchParams.get('added'), 'yes')
    assert.equal(url.searchParams.has('secret'), false)
    assert.equal(s.headers['x-drop'], undefined)
    assert.equal(s.headers['x-old'], undefined)
    assert.equal(s.headers['x-new'], 'moved')
    assert.equal(s.headers['x-set'], 'one')
    assert.equal(s.headers['x-add'], 'two')
  })

  test('invalid JSON into a JSON transform is 400 and nothing is forwarded', async () => {
    seen.length = 0
    const bad = await post('/map/v1/search', '{"q": ', { 'content-type': 'application/json' })
    assert.equal(bad.status, 400)
    const p = JSON.parse(bad.body)
    assert.equal(p.code, 'GH_INVALID_BODY')
    assert.match(p.detail, /not valid JSON/)
    const notJson = await post('/map/v1/search', 'q=1', { 'content-type': 'text/plain' })
    assert.equal(notJson.status, 400)
    assert.match(JSON.parse(notJson.body).detail, /text\/plain/)
    assert.equal(seen.length, 0)
  })

  test('a body over the buffering cap is 413, declared or chunked', async () => {
    seen.length = 0
    const big = JSON.stringify({ q: 'x'.repeat(2048) })
    const declared = await post('/map/v1/search', big, { 'content-type': 'application/json' })
    assert.equal(declared.status, 413)
    assert.equal(JSON.parse(declared.body).code, 'GH_BODY_TOO_LARGE')
    const chunked = await new Promise<number>((resolve, reject) => {
      const req = http.request(gw.url + '/map/v1/search', {
        method: 'POST',
        agent: false,
        headers: { 'content-type': 'application/json', 'transfer-encoding': 'chunked' },
      }, (res) => {
        res.resume()
        resolve(res.statusCode!)
      })
      req.on('error', reject)
      req.write(big.slice(0, 700))
      req.end(big.slice(700))
    })
    assert.equal(chunked, 413)
    assert.equal(seen.length, 0)
  })

  test('a JSONata response mapping with header edits', async () => {
    const res = await request(gw.url + '/shape/search')
    assert.equal(res.status, 200)
    assert.deepEqual(JSON.parse(res.body), { ids: ['a', 'b'], took_ms: 3, status: 200 })
    assert.equal(res.headers['content-length'], String(Buffer.byteLength(res.body)))
    assert.equal(res.headers['x-shaped'], 'yes')
    assert.equal(res.headers['x-internal'], undefined)
    assert.equal(res.headers['x-upstream'], 'yes')
  })

  test('the response transform asks the upstream for an uncompressed body', async () => {
    seen.length = 0
    await request(gw.url + '/shape/search', { headers: { 'accept-encoding': 'gzip, br' } })
    assert.equal(seen[0]!.headers['accept-encoding'], 'identity')
  })

  test('an upstream answering non-JSON or invalid JSON to a response transform is 502', async () => {
    const text = await request(gw.url + '/shape/text')
    assert.equal(text.status, 502)
    assert.equal(JSON.parse(text.body).code, 'GH_TRANSFORM_FAILED')
    const bad = await request(gw.url + '/shape/badjson')
    assert.equal(bad.status, 502)
    assert.equal(JSON.parse(bad.body).code, 'GH_TRANSFORM_FAILED')
    assert.ok(
      gw.logs.lines.some((l) =>
        l.msg === 'response interception failed' && /content-type text\/html/.test(l.reason)
      ),
    )
  })

  test('error statuses pass untransformed, with the status mapping applied', async () => {
    const res = await request(gw.url + '/shape/missing')
    assert.equal(res.status, 200)
    assert.deepEqual(JSON.parse(res.body), { error: 'nope' })
  })

  test('a response over the transform cap is 502 GH_RESPONSE_TOO_LARGE', async () => {
    const res = await request(gw.url + '/shape/big')
    assert.equal(res.status, 502)
    assert.equal(JSON.parse(res.body).code, 'GH_RESPONSE_TOO_LARGE')
  })

  test('SSE: each data event is transformed as it passes; others pass unchanged', async () => {
    gateOpen = new Promise<void>((resolve) => {
      gate = resolve
    })
    const req = http.request(gw.url + '/events', { agent: false })
    req.end()
    const [res] = await once(req, 'response') as [http.IncomingMessage]
    assert.equal(res.statusCode, 200)
    assert.equal(res.headers['content-length'], undefined)
    let received = ''
    const first = new Promise<void>((resolve) => {
      res.on('data', (c: Buffer) => {
        received += c.toString('utf8')
        if (received.includes('\n\n')) resolve()
      })
    })
    await first
    // The first event arrived while the upstream still holds the rest.
    assert.equal(received, 'event: token\ndata: {"text":"Hel"}\n\n')
    gate!()
    await once(res, 'end')
    assert.equal(
      received,
      'event: token\ndata: {"text":"Hel"}\n\n: keep-alive\n\ndata: {"text":"lo"}\n\ndata: [DONE]\n\n',
    )
  })

  test('a route without transforms passes bodies byte for byte', async () => {
    seen.length = 0
    const body = 'text=%zz&raw=\u00e9'
    const res = await post('/other', Buffer.from(body, 'latin1'), {
      'content-type': 'application/x-www-form-urlencoded',
    })
    assert.equal(res.status, 200)
    assert.equal(Buffer.from(seen[0]!.body, 'utf8').length > 0, true)
    assert.equal(seen[0]!.headers['content-type'], 'application/x-www-form-urlencoded')
    assert.equal(JSON.parse(res.body).took, 3)
  })
})
