import { describe, test } from 'node:test'
import assert from 'node:assert/strict'
import net from 'node:net'
import { once } from 'node:events'
import { createHash } from 'node:crypto'
import http from 'node:http'
import {
  metricsText,
  request,
  startGateway,
  startUpstream,
  type TestGateway,
} from '../helpers/index.js'
import type { ConfigInput } from '../../src/config/schema.js'

/**
 * An upstream that answers with what it was asked (credentials and body included), so that an
 * answer served to the wrong request shows. Paths choose Cache-Control: /public/…, /smaxage/…,
 * /revalidate/…; anything else sends none.
 */
async function echoServer () {
  const state = { calls: 0 }
  const up = await startUpstream((req, res) => {
    state.calls++
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      const headers: Record<string, string> = { 'content-type': 'application/json' }
      if (req.url!.startsWith('/public')) headers['cache-control'] = 'public, max-age=60'
      if (req.url!.startsWith('/smaxage')) headers['cache-control'] = 's-maxage=60'
      if (req.url!.startsWith('/revalidate')) {
        headers['cache-control'] = 'must-revalidate, max-age=60'
      }
      res.writeHead(200, headers)
      res.end(JSON.stringify({
        call: state.calls,
        host: req.headers.host,
        authorization: req.headers.authorization ?? null,
        cookie: req.headers.cookie ?? null,
        accept: req.headers.accept ?? null,
        body: Buffer.concat(chunks).toString('base64'),
      }))
    })
  })
  return {
    ...up,
    get calls () {
      return state.calls
    },
  }
}

function cached (
  url: string,
  cache: Record<string, unknown> = {},
  route: Record<string, unknown> = {},
  top: Record<string, unknown> = {},
): ConfigInput {
  return {
    upstreams: { model: { targets: [{ url }] } },
    routes: [{
      name: 'infer',
      match: {},
      upstream: 'model',
      cache: { ttl: '60s', ...cache },
      ...route,
    }],
    ...top,
  } as ConfigInput
}

async function get (gw: TestGateway, path: string, headers: Record<string, string> = {}) {
  const r = await request(`${gw.url}${path}`, { headers })
  return {
    status: r.status,
    cache: r.headers['x-cache'],
    body: JSON.parse(r.body) as Record<string, unknown>,
  }
}

async function post (
  gw: TestGateway,
  path: string,
  body: string | Buffer,
  headers: Record<string, string> = {},
) {
  const r = await request(`${gw.url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body,
  })
  return { status: r.status, cache: r.headers['x-cache'], body: r.body }
}

describe('cache: credentials on a route without auth (RFC 9111 §3.5)', () => {
  test('a bearer token\'s answer is neither stored nor served to a caller without it', async () => {
    const up = await echoServer()
    const gw = await startGateway(cached(up.url))
    try {
      const alice = await get(gw, '/v1/me', { authorization: 'Bearer alice-token' })
      assert.equal(alice.cache, 'MISS')
      assert.equal(alice.body.authorization, 'Bearer alice-token')
      // The attack: the next caller without credentials got Alice's answer (X-Cache: HIT).
      const anon = await get(gw, '/v1/me')
      assert.equal(anon.status, 200)
      assert.equal(anon.cache, 'MISS')
      assert.equal(anon.body.authorization, null)
      // Not stored either: Alice's second request goes upstream too.
      assert.equal((await get(gw, '/v1/me', { authorization: 'Bearer alice-token' })).cache, 'MISS')
      // Answers to requests without credentials are cached as before, and only for them.
      assert.equal((await get(gw, '/v1/me')).cache, 'HIT')
      const bob = await get(gw, '/v1/me', { authorization: 'Bearer bob-token' })
      assert.equal(bob.cache, 'MISS')
      assert.equal(bob.body.authorization, 'Bearer bob-token')
      assert.equal(up.calls, 4)
    } finally {
      await gw.close()
      await up.close()
    }
  })

  test('public, s-maxage and must-revalidate answers are stored, but served only to the same credentials', async () => {
    const up = await echoServer()
    const gw = await startGateway(cached(up.url))
    try {
      for (const path of ['/public/doc', '/smaxage/doc', '/revalidate/doc']) {
        const first = await get(gw, path, { authorization: 'Bearer alice-token' })
        assert.equal(first.cache, 'MISS', path)
        const again = await get(gw, path, { authorization: 'Bearer alice-token' })
        assert.equal(again.cache, 'HIT', path)
        assert.deepEqual(again.body, first.body, path)
        const bob = await get(gw, path, { authorization: 'Bearer bob-token' })
        assert.equal(bob.cache, 'MISS', path)
        assert.equal(bob.body.authorization, 'Bearer bob-token', path)
        const anon = await get(gw, path)
        assert.equal(anon.cache, 'MISS', path)
        assert.equal(anon.body.authorization, null, path)
      }
    } finally {
      await gw.close()
      await up.close()
    }
  })

  test('a Cookie is a credential unless the route keys on it', async () => {
    const up = await echoServer()
    const gw = await startGateway(cached(up.url))
    try {
      assert.equal((await get(gw, '/v1/cart', { cookie: 'session=alice' })).cache, 'MISS')
      const anon = await get(gw, '/v1/cart')
      assert.equal(anon.cache, 'MISS')
      assert.equal(anon.body.cookie, null)
      assert.equal(
        (await get(gw, '/v1/cart', { cookie: 'session=alice' })).cache,
        'MISS',
        'not stored',
      )
      assert.equal((await get(gw, '/public/cart', { cookie: 'session=alice' })).cache, 'MISS')
      assert.equal((await get(gw, '/public/cart', { cookie: 'session=alice' })).cache, 'HIT')
      const other = await get(gw, '/public/cart', { cookie: 'session=mallory' })
      assert.equal(other.cache, 'MISS')
      assert.equal(other.body.cookie, 'session=mallory')
    } finally {
      await gw.close()
      await up.close()
    }

    // key.headers: [cookie]: the cookie is the key, and answers are stored per cookie.
    const up2 = await echoServer()
    const keyed = await startGateway(cached(up2.url, { key: { headers: ['cookie'] } }))
    try {
      assert.equal((await get(keyed, '/v1/prefs', { cookie: 'theme=dark' })).cache, 'MISS')
      assert.equal((await get(keyed, '/v1/prefs', { cookie: 'theme=dark' })).cache, 'HIT')
      const light = await get(keyed, '/v1/prefs', { cookie: 'theme=light' })
      assert.equal(light.cache, 'MISS')
      assert.equal(light.body.cookie, 'theme=light')
      assert.equal((await get(keyed, '/v1/prefs')).cache, 'MISS')
    } finally {
      await keyed.close()
      await up2.close()
    }
  })

  test('an api_key provider\'s header is a credential on routes that do not check it', async () => {
    const up = await echoServer()
    const sha = (s: string): string => createHash('sha256').update(s).digest('hex')
    const gw = await startGateway({
      identity: {
        providers: {
          keys: {
            kind: 'api_key',
            header: 'x-api-key',
            keys: [{ id: 'acme', sha256: sha('key-acme') }],
          },
        },
      },
      upstreams: { model: { targets: [{ url: up.url }] } },
      routes: [
        {
          name: 'checked',
          match: { path_prefix: '/checked' },
          upstream: 'model',
          auth: { any_of: ['keys'] },
        },
        { name: 'open', match: {}, upstream: 'model', cache: { ttl: '60s' } },
      ],
    } as ConfigInput)
    try {
      assert.equal((await get(gw, '/v1/models', { 'x-api-key': 'key-acme' })).cache, 'MISS')
      assert.equal((await get(gw, '/v1/models')).cache, 'MISS')
      assert.equal((await get(gw, '/v1/models', { 'x-api-key': 'key-acme' })).cache, 'MISS')
    } finally {
      await gw.close()
      await up.close()
    }
  })
})

describe('cache: keys are unambiguous', () => {
  test('JSON bodies that differ in meaning never share an entry; equal ones still do', async () => {
    const up = await echoServer()
    const gw = await startGateway(
      cached(up.url, { methods: ['POST'], key: { body: { ignore: ['user'] } } }),
    )
    try {
      const pairs: Array<[string | Buffer, string | Buffer]> = [
        ['{"seed":9007199254740993}', '{"seed":9007199254740992}'],
        ['{"t":1}', '{"t":1.0}'],
        ['{"t":1.0}', '{"t":1e0}'],
        ['{"a":1,"a":2}', '{"a":2}'],
        [Buffer.from('{"p":"\xff"}', 'latin1'), Buffer.from('{"p":"\xfe"}', 'latin1')],
      ]
      let n = 0
      for (const [a, b] of pairs) {
        const first = await post(gw, `/v1/embed/${n}`, a)
        assert.equal(first.cache, 'MISS')
        // The attack: `b` was a HIT carrying the answer to `a`.
        const second = await post(gw, `/v1/embed/${n}`, b)
        assert.equal(second.cache, 'MISS', `${String(a)} / ${String(b)}`)
        assert.equal(JSON.parse(second.body).body, Buffer.from(b).toString('base64'))
        assert.equal((await post(gw, `/v1/embed/${n}`, a)).cache, 'HIT')
        n++
      }
      assert.equal((await post(gw, '/v1/same', '{"input":"hi","t":1.0,"user":"u1"}')).cache, 'MISS')
      assert.equal(
        (await post(gw, '/v1/same', '{ "user": "u2", "t": 1.0, "input": "\\u0068i" }')).cache,
        'HIT',
      )
    } finally {
      await gw.close()
      await up.close()
    }
  })

  test('a 60 KB deeply nested body is keyed by its bytes, not a 500', async () => {
    const up = await echoServer()
    const gw = await startGateway(cached(up.url, { methods: ['POST'] }))
    try {
      const deep = '['.repeat(30_000) + ']'.repeat(30_000)
      const first = await post(gw, '/v1/deep', deep)
      assert.equal(first.status, 200)
      assert.equal(first.cache, 'MISS')
      assert.equal((await post(gw, '/v1/deep', deep)).cache, 'HIT')
      const other = '{"a":'.repeat(10_000) + '1' + '}'.repeat(10_000)
      const o = await post(gw, '/v1/deep', other)
      assert.equal(o.status, 200)
      assert.equal(o.cache, 'MISS')
    } finally {
      await gw.close()
      await up.close()
    }
  })

  test('the Host is in the key; so is every value of a repeated keyed header', async () => {
    const up = await echoServer()
    const gw = await startGateway(cached(up.url, { key: { headers: ['accept'] } }))
    try {
      // The attack: an answer fetched with Host: evil.example was served to api.example.com.
      const evil = await get(gw, '/v1/links', { host: 'evil.example' })
      assert.equal(evil.body.host, 'evil.example')
      const real = await get(gw, '/v1/links', { host: 'api.example.com' })
      assert.equal(real.cache, 'MISS')
      assert.equal(real.body.host, 'api.example.com')
      assert.equal((await get(gw, '/v1/links', { host: 'API.example.com' })).cache, 'HIT')

      // Node's req.headers keeps Accept values joined; raw repeats are keyed one by one.
      const twice = await rawGet(gw.port, '/v1/fmt', ['Accept: text/csv',
        'Accept: application/json'])
      assert.equal(twice.cache, 'MISS')
      const once = await rawGet(gw.port, '/v1/fmt', ['Accept: text/csv'])
      assert.equal(once.cache, 'MISS')
      assert.equal(
        (await rawGet(gw.port, '/v1/fmt', ['Accept: text/csv', 'Accept: application/json'])).cache,
        'HIT',
      )
    } finally {
      await gw.close()
      await up.close()
    }
  })
})

/** A GET with the header lines as written (repeats kept), read to the end. */
async function rawGet (
  port: number,
  path: string,
  lines: string[],
): Promise<{ status: number, cache: string | null }> {
  const socket = net.connect(port, '127.0.0.1')
  await once(socket, 'connect')
  socket.write(
    `GET ${path} HTTP/1.1\r\nHost: api.example.com\r\n${
      lines.map((l) => l + '\r\n').join('')
    }Connection: close\r\n\r\n`,
  )
  let text = ''
  socket.setEncoding('latin1')
  for await (const chunk of socket) text += chunk as string
  const status = Number(text.slice(9, 12))
  const m = /\r\nx-cache: ([A-Z]+)\r\n/i.exec(text)
  return { status, cache: m === null ? null : m[1]! }
}

describe('cache: a leader that never reads', () => {
  /** Streams `size` bytes, chunked unless `length`; respects backpressure; counts calls. */
  async function bigServer (size: number, length: boolean) {
    const state = { calls: 0, open: new Set<http.ServerResponse>() }
    const up = await startUpstream((_req, res) => {
      state.calls++
      state.open.add(res)
      res.on('close', () => state.open.delete(res))
      res.writeHead(200, {
        'content-type': 'application/octet-stream',
        ...(length ? { 'content-length': String(size) } : {}),
      })
      const chunk = Buffer.alloc(64 * 1024, 'x')
      let left = size
      const pump = (): void => {
        while (left > 0) {
          const n = Math.min(left, chunk.length)
          left -= n
          if (!res.write(n === chunk.length ? chunk : chunk.subarray(0, n))) {
            res.once('drain', pump)
            return
          }
        }
        res.end()
      }
      pump()
    })
    return {
      ...up,
      get calls () {
        return state.calls
      },
    }
  }

  /** Sends a GET, reads the response head, then stops reading for good. */
  async function stalledLeader (port: number, path: string): Promise<net.Socket> {
    const socket = net.connect(port, '127.0.0.1')
    await once(socket, 'connect')
    socket.write(`GET ${path} HTTP/1.1\r\nHost: api.example.com\r\n\r\n`)
    let head = ''
    await new Promise<void>((resolve) => {
      const onData = (c: Buffer): void => {
        head += c.toString('latin1')
        if (head.includes('\r\n\r\n')) {
          socket.off('data', onData)
          socket.pause()
          resolve()
        }
      }
      socket.on('data', onData)
    })
    assert.match(head, /^HTTP\/1\.1 200 /)
    assert.match(head, /\r\nx-cache: MISS\r\n/i)
    return socket
  }

  test('a chunked answer: followers wait coalesce_timeout, then go upstream themselves', {
    timeout: 20_000,
  }, async () => {
    const size = 16 * 1024 * 1024
    const up = await bigServer(size, false)
    // max_entry above the size: only the bound on waiting can release the followers.
    const gw = await startGateway(cached(up.url, { max_entry: '64MiB', coalesce_timeout: '300ms' }))
    const leader = await stalledLeader(gw.port, '/v1/weights')
    try {
      const started = performance.now()
      // The attack: this request had no head after 20 s.
      const follower = await request(`${gw.url}/v1/weights`)
      const waited = performance.now() - started
      assert.equal(follower.status, 200)
      assert.equal(follower.headers['x-cache'], 'MISS')
      assert.equal(follower.body.length, size)
      assert.ok(waited >= 250, `waited ${waited} ms`)
      assert.equal(up.calls, 2)
      // The follower's own complete answer was stored: the next caller is a hit.
      const hit = await request(`${gw.url}/v1/weights`)
      assert.equal(hit.headers['x-cache'], 'HIT')
      assert.equal(hit.body.length, size)
      assert.match(
        await metricsText(gw.adminPort!),
        /gatehouse_cache_requests_total\{route="infer",result="miss"\} 2/,
      )
    } finally {
      leader.destroy()
      await gw.close()
      await up.close()
    }
  })

  test(
    'a leader refused before it reaches the upstream (no slot in time) releases its followers at once',
    {
      // The bound that matters: far below coalesce_timeout (60 s).
      timeout: 10_000,
    },
    async () => {
      let holding: (() => void) | null = null
      let held: () => void = () => {}
      const arrived = new Promise<void>((resolve) => {
        held = resolve
      })
      const up = await startUpstream((req, res) => {
        req.resume()
        if (req.url === '/hold') {
          holding = () => res.end('held')
          held()
          return
        }
        res.writeHead(200, { 'cache-control': 'max-age=60' })
        res.end('fresh')
      })
      const config = cached(up.url, { coalesce_timeout: '60s' })
      const upstream = (config.upstreams as Record<string, Record<string, unknown>>).model!
      upstream.max_in_flight = 1
      upstream.queue = { size: 1, timeout: '300ms' }
      const gw = await startGateway(config)
      try {
        // The one slot is taken.
        const hold = request(gw.url + '/hold')
        await arrived
        // The leader waits in the queue (its cache copy started); the follower waits for it.
        const t0 = performance.now()
        const [leader, follower] = await Promise.all([
          request(gw.url + '/v1/x'),
          request(gw.url + '/v1/x'),
        ])
        assert.equal(leader.status, 503)
        assert.equal(JSON.parse(leader.body).code, 'GH_UPSTREAM_BUSY')
        // Released when the leader was refused, the follower tried itself (and found no slot).
        assert.equal(follower.status, 503)
        assert.ok(performance.now() - t0 < 5_000, `answered after ${performance.now() - t0} ms`)
        holding!()
        assert.equal((await hold).status, 200)
      } finally {
        await gw.close()
        await up.close()
      }
    },
  )

  test('a declared length over max_entry releases followers with the head, without waiting', {
    timeout: 20_000,
  }, async () => {
    const size = 64 * 1024 * 1024
    const up = await bigServer(size, true)
    // A long bound: the follower must not need it.
    const gw = await startGateway(cached(up.url, { coalesce_timeout: '60s' }))
    const leader = await stalledLeader(gw.port, '/v1/weights')
    try {
      const follower = await new Promise<{ status: number, cache: unknown }>((resolve, reject) => {
        // Only the head is needed: the body is not read to the end.
        const req = http.get(`${gw.url}/v1/weights`, { agent: false }, (res) => {
          resolve({ status: res.statusCode!, cache: res.headers['x-cache'] })
          res.destroy()
        })
        req.on('error', reject)
      })
      assert.deepEqual(follower, { status: 200, cache: 'MISS' })
      assert.equal(up.calls, 2)
    } finally {
      leader.destroy()
      await gw.close()
      await up.close()
    }
  })
})
