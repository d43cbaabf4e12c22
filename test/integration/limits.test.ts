import { describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { createHash, randomUUID } from 'node:crypto'
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import net from 'node:net'
import { once } from 'node:events'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import {
  call,
  metricsText,
  request,
  serviceAvailable,
  startEchoUpstream,
  startGateway,
  startUpstream,
  waitUntilAsync,
} from '../helpers/index.js'
import type { ConfigInput } from '../../src/config/schema.js'

const root = join(import.meta.dirname, '..', '..')

/** Scripts Redis has run so far (INFO commandstats: EVALSHA calls), over a raw connection. */
async function redisCommandCount (): Promise<number> {
  const s = net.connect(6379, '127.0.0.1')
  await once(s, 'connect')
  s.write('INFO commandstats\r\n')
  let text = ''
  for await (const c of s) {
    text += String(c)
    if (/\r\n\r\n$/.test(text) || /cmdstat_latency|errorstat_/.test(text)) break
  }
  s.destroy()
  return Number(/cmdstat_evalsha:calls=(\d+)/.exec(text)?.[1] ?? 0)
}

function limited (
  upstreamUrl: string,
  route: Record<string, unknown>,
  extra: Record<string, unknown> = {},
): ConfigInput {
  return {
    upstreams: { model: { targets: [{ url: upstreamUrl }] } },
    routes: [{ name: 'r', match: {}, upstream: 'model', ...route }],
    ...extra,
  } as ConfigInput
}

describe('rate limits (memory store)', () => {
  test('GCRA: burst requests pass with RateLimit headers, then 429 with Retry-After', async () => {
    const up = await startEchoUpstream()
    const gw = await startGateway(
      limited(up.url, { rate_limit: [{ key: 'ip', rate: '1/min', burst: 3 }] }),
    )
    try {
      const ok = []
      for (let i = 0; i < 3; i++) ok.push(await call(gw, '/x'))
      assert.deepEqual(ok.map((r) => r.status), [200, 200, 200])
      assert.equal(ok[0]!.headers['ratelimit-policy'], '"r.ip";q=3;w=180')
      assert.match(String(ok[0]!.headers.ratelimit), /^"r\.ip";r=2;t=(59|60)$/)
      assert.match(String(ok[2]!.headers.ratelimit), /^"r\.ip";r=0;t=(179|180)$/)
      const refused = await call(gw, '/x')
      assert.equal(refused.status, 429)
      assert.equal(refused.problem.code, 'GH_RATE_LIMITED')
      assert.ok(
        Number(refused.headers['retry-after']) >= 59 &&
          Number(refused.headers['retry-after']) <= 60,
      )
      assert.equal(refused.headers['ratelimit-policy'], '"r.ip";q=3;w=180')
      // A rate refills within seconds: a client may retry by itself.
      assert.equal(refused.headers['x-should-retry'], undefined)
      assert.equal(up.calls, 3)
      assert.match(
        await metricsText(gw.adminPort!),
        /gatehouse_rate_limited_total\{route="r",limit="r.ip"\} 1/,
      )
    } finally {
      await gw.close()
      await up.close()
    }
  })

  test('keys: each API key has its own bucket; a request without the header a limit counts by is refused (403)', async () => {
    const up = await startEchoUpstream()
    const sha = (s: string): string => createHash('sha256').update(s).digest('hex')
    const gw = await startGateway(
      limited(
        up.url,
        {
          auth: { any_of: ['keys'] },
          rate_limit: [{ key: 'api_key', rate: '1/h', burst: 1 }, {
            name: 'tenant',
            key: 'header:x-tenant',
            rate: '1/h',
            burst: 5,
          }],
        },
        {
          identity: {
            providers: {
              keys: {
                kind: 'api_key',
                keys: [{ id: 'a', sha256: sha('key-a') }, { id: 'b', sha256: sha('key-b') }],
              },
            },
          },
        },
      ),
    )
    try {
      assert.equal((await call(gw, '/x', { 'x-api-key': 'key-a', 'x-tenant': 't1' })).status, 200)
      assert.equal((await call(gw, '/x', { 'x-api-key': 'key-a', 'x-tenant': 't1' })).status, 429)
      const b = await call(gw, '/x', { 'x-api-key': 'key-b', 'x-tenant': 't1' })
      assert.equal(b.status, 200)
      assert.equal(b.headers.ratelimit, '"r.api_key";r=0;t=3600, "tenant";r=3;t=7200')
      const missing = await call(gw, '/x', { 'x-api-key': 'key-b' })
      assert.equal(missing.status, 429) // key-b's own bucket is empty first
      await gw.gateway.reload({
        ...limited(
          up.url,
          {
            auth: { any_of: ['keys'] },
            rate_limit: [{ name: 'tenant2', key: 'header:x-tenant', rate: '1/h', burst: 5 }],
          },
          {
            identity: {
              providers: { keys: { kind: 'api_key', keys: [{ id: 'a', sha256: sha('key-a') }] } },
            },
          },
        ),
        listen: { host: '127.0.0.1', port: 0 },
        admin: { host: '127.0.0.1', port: 0 },
      } as ConfigInput)
      const noTenant = await call(gw, '/x', { 'x-api-key': 'key-a' })
      assert.equal(noTenant.status, 403)
      assert.equal(noTenant.problem.code, 'GH_LIMIT_KEY_MISSING')
    } finally {
      await gw.close()
      await up.close()
    }
  })

  test('garbage X-Forwarded-For from a trusted proxy counts against the proxy, not a fresh bucket per spelling', async () => {
    const up = await startEchoUpstream()
    const gw = await startGateway(
      limited(
        up.url,
        { rate_limit: [{ key: 'ip', rate: '1/h', burst: 2 }] },
        { trusted_proxies: ['127.0.0.1'] },
      ),
    )
    try {
      const statuses = []
      for (const xff of ['garbage', 'x y z', '', 'unknown']) {
        statuses.push((await call(gw, '/x', xff === '' ? {} : { 'x-forwarded-for': xff })).status)
      }
      assert.deepEqual(statuses, [200, 200, 429, 429])
      // A real address behind the proxy has its own bucket.
      assert.equal((await call(gw, '/x', { 'x-forwarded-for': '203.0.113.7' })).status, 200)
    } finally {
      await gw.close()
      await up.close()
    }
    // Without trusted proxies the header is ignored altogether.
    const up2 = await startEchoUpstream()
    const gw2 = await startGateway(
      limited(up2.url, { rate_limit: [{ key: 'ip', rate: '1/h', burst: 1 }] }),
    )
    try {
      assert.equal((await call(gw2, '/x', { 'x-forwarded-for': '203.0.113.1' })).status, 200)
      assert.equal((await call(gw2, '/x', { 'x-forwarded-for': '203.0.113.2' })).status, 429)
    } finally {
      await gw2.close()
      await up2.close()
    }
  })

  test('token quota charged from the response: JSON usage and the final SSE event', async () => {
    const TOKENS = {
      name: 'tokens',
      key: 'ip',
      quota: '100/day',
      cost: 'response.usage.total_tokens',
    }
    const up = await startUpstream((req, res) => {
      req.resume()
      if (req.url === '/stream') {
        res.writeHead(200, { 'content-type': 'text/event-stream' })
        res.write('data: {"choices":[{"delta":"hi"}]}\n\n')
        res.write('data: {"choices":[],"usage":{"total_tokens":70}}\n\n')
        res.end('data: [DONE]\n\n')
        return
      }
      // The upstream's own RateLimit fields are replaced by the gateway's.
      res.writeHead(200, {
        'content-type': 'application/json',
        ratelimit: '"upstream";r=9;t=1',
        'RateLimit-Policy': '"upstream";q=10;w=1',
      })
      res.end(JSON.stringify({ output: 'x', usage: { total_tokens: 60 } }))
    })
    const gw = await startGateway(
      limited(up.url, {
        rate_limit: [TOKENS],
      }),
    )
    const done = (id: unknown) => gw.logs.waitFor((l) => l.msg === 'request' && l.id === id)
    try {
      const first = await call(gw, '/json')
      assert.equal(first.status, 200)
      assert.match(String(first.headers.ratelimit), /^"tokens";r=100;t=\d+$/)
      assert.equal(first.headers['ratelimit-policy'], '"tokens";q=100;w=86400')
      await done(first.headers['x-request-id'])
      const second = await call(gw, '/json')
      assert.match(String(second.headers.ratelimit), /^"tokens";r=40;t=\d+$/)
      await done(second.headers['x-request-id'])
      // 120 of 100 used: over budget, refused before the next call.
      const third = await call(gw, '/json')
      assert.equal(third.status, 429)
      // A spent quota: SDKs that retry on their own are told not to (Retry-After stays true).
      assert.equal(third.headers['x-should-retry'], 'false')
      assert.ok(Number(third.headers['retry-after']) >= 1)
      // What was charged, as the responses said (60 + 60; the refused call costs nothing).
      assert.match(
        await metricsText(gw.adminPort!),
        /gatehouse_quota_cost_total\{route="r",limit="tokens"\} 120\n/,
      )
      assert.equal(String(third.headers.ratelimit).startsWith('"tokens";r=0;'), true)
    } finally {
      await gw.close()
    }
    const gw2 = await startGateway(
      limited(up.url, {
        rate_limit: [TOKENS],
      }),
    )
    try {
      const s1 = await call(gw2, '/stream')
      assert.match(s1.body, /\[DONE\]/)
      await gw2.logs.waitFor((l) => l.msg === 'request' && l.id === s1.headers['x-request-id'])
      assert.match(String((await call(gw2, '/stream')).headers.ratelimit), /^"tokens";r=30;/)
    } finally {
      await gw2.close()
    }
    // The client's events are transformed (usage left out of what it sees): the cost is still
    // read from what the upstream sent, not from the transformed stream.
    const gw3 = await startGateway(
      limited(up.url, {
        transform: { response: { events: '{ "text": choices[0].delta }' } },
        rate_limit: [TOKENS],
      }),
    )
    try {
      const s1 = await call(gw3, '/stream')
      assert.match(s1.body, /"text":"hi"/)
      assert.doesNotMatch(s1.body, /total_tokens/)
      await gw3.logs.waitFor((l) => l.msg === 'request' && l.id === s1.headers['x-request-id'])
      assert.match(String((await call(gw3, '/stream')).headers.ratelimit), /^"tokens";r=30;/)
    } finally {
      await gw3.close()
      await up.close()
    }
  })
})

describe('rate limits (Redis store)', () => {
  test('two Gatehouse processes sharing one Redis enforce one global limit', async (t) => {
    if (!await serviceAvailable(6379)) return t.skip('Redis is not answering on 127.0.0.1:6379')
    const up = await startEchoUpstream()
    const prefix = `gh-test-${randomUUID()}:`
    const stores = { shared: { kind: 'redis', url: 'redis://127.0.0.1:6379', prefix } }
    const route = {
      rate_limit: [{ name: 'global', key: 'header:x-tenant', quota: '200/h', store: 'shared' }, {
        name: 'burst',
        key: 'header:x-tenant',
        rate: '1/h',
        burst: 150,
        store: 'shared',
      }],
    }
    const a = await startGateway(limited(up.url, route, { stores }))
    const dir = mkdtempSync(join(tmpdir(), 'gh-limits-'))
    const cfg = join(dir, 'gatehouse.yaml')
    writeFileSync(
      cfg,
      JSON.stringify({
        ...limited(up.url, route, { stores }),
        listen: { host: '127.0.0.1', port: 0 },
        admin: { enabled: false },
        log: { level: 'info', access: false },
      }),
    )
    const child = spawn(process.execPath, [join(root, 'bin', 'gatehouse.cjs'), 'start', '--config',
      cfg], { stdio: ['ignore', 'pipe', 'inherit'] })
    try {
      let out = ''
      child.stdout.setEncoding('utf8')
      const port = await new Promise<number>((resolve, reject) => {
        child.stdout.on('data', (c: string) => {
          out += c
          const m = /"msg":"listening".*?"port":(\d+)/.exec(out)
          if (m !== null) resolve(Number(m[1]))
        })
        child.once('exit', (code) => reject(new Error(`gatehouse exited ${code}: ${out}`)))
      })
      const b = `http://127.0.0.1:${port}`
      // 400 requests, half to each process, 20 at a time; the burst limit allows 150, then the
      // quota's 200 would apply: exactly 150 pass.
      let passed = 0
      let refused = 0
      for (let i = 0; i < 400; i += 20) {
        const batch = await Promise.all(
          Array.from(
            { length: 20 },
            (_, k) => call((i + k) % 2 === 0 ? a : b, '/x', { 'x-tenant': 'acme' }),
          ),
        )
        for (const r of batch) {
          if (r.status === 200) passed++
          else if (r.status === 429) refused++
        }
      }
      assert.equal(passed + refused, 400)
      assert.ok(Math.abs(passed - 150) <= 1.5, `passed ${passed}`)
    } finally {
      child.kill('SIGTERM')
      await once(child, 'exit')
      rmSync(dir, { recursive: true, force: true })
      await a.close()
      await up.close()
    }
  })

  test('big buckets are leased in small batches: far fewer round trips, never over the limit, at most 1 % under', async (t) => {
    if (!await serviceAvailable(6379)) return t.skip('Redis is not answering on 127.0.0.1:6379')
    const up = await startEchoUpstream()
    const prefix = `gh-test-${randomUUID()}:`
    const stores = { shared: { kind: 'redis', url: 'redis://127.0.0.1:6379', prefix } }
    // burst 2000: each gateway leases 10 tokens at a time (0.5 %).
    const route = {
      rate_limit: [{
        name: 'big',
        key: 'header:x-tenant',
        rate: '1/h',
        burst: 2000,
        store: 'shared',
      }],
    }
    const a = await startGateway(limited(up.url, route, { stores }))
    const b = await startGateway(limited(up.url, route, { stores }))
    const commands = await redisCommandCount()
    try {
      let passed = 0
      for (let i = 0; i < 2100; i += 50) {
        const batch = await Promise.all(
          Array.from(
            { length: 50 },
            (_, k) => call((i + k) % 2 === 0 ? a : b, '/x', { 'x-tenant': 'acme' }),
          ),
        )
        passed += batch.filter((r) => r.status === 200).length
      }
      assert.ok(passed <= 2000 && passed >= 1980, `passed ${passed}`)
      // One lease per 10 requests, plus single-token calls near the end: far fewer than one
      // script per request (other test files may use this Redis meanwhile: the bound is loose).
      const used = (await redisCommandCount()) - commands
      assert.ok(used < 1000, `${used} EVALSHA calls for 2100 requests`)
    } finally {
      await a.close()
      await b.close()
      await up.close()
    }
  })

  test('Redis dropping mid-run: on_store_error allow lets requests through (counted), deny answers 503; recovery', async (t) => {
    if (!await serviceAvailable(6379)) return t.skip('Redis is not answering on 127.0.0.1:6379')
    // A TCP relay in front of Redis that the test can cut.
    const sockets = new Set<net.Socket>()
    let open = true
    const relay = net.createServer((c) => {
      if (!open) return c.destroy()
      const r = net.connect(6379, '127.0.0.1')
      sockets.add(c).add(r)
      c.pipe(r).pipe(c)
      const drop = (): void => {
        c.destroy()
        r.destroy()
      }
      c.on('error', drop).on('close', drop)
      r.on('error', drop).on('close', drop)
    })
    relay.listen(0, '127.0.0.1')
    await once(relay, 'listening')
    const port = (relay.address() as net.AddressInfo).port
    const up = await startEchoUpstream()
    const stores = {
      shared: {
        kind: 'redis',
        url: `redis://127.0.0.1:${port}`,
        prefix: `gh-test-${randomUUID()}:`,
        timeout: '200ms',
      },
    }
    const allow = await startGateway(
      limited(
        up.url,
        { rate_limit: [{ key: 'ip', rate: '100/s', store: 'shared' }], on_store_error: 'allow' },
        { stores },
      ),
    )
    const deny = await startGateway(
      limited(
        up.url,
        { rate_limit: [{ key: 'ip', rate: '100/s', store: 'shared' }], on_store_error: 'deny' },
        { stores },
      ),
    )
    try {
      assert.equal((await call(allow, '/x')).status, 200)
      assert.equal((await call(deny, '/x')).status, 200)
      open = false
      for (const s of sockets) s.destroy()
      await waitUntilAsync(async () =>
        JSON.parse((await request(`http://127.0.0.1:${allow.adminPort}/readyz`)).body).status ===
        'degraded'
      )
      const ready = await request(`http://127.0.0.1:${allow.adminPort}/readyz`)
      assert.equal(ready.status, 200)
      assert.deepEqual(JSON.parse(ready.body).stores, {
        shared: { status: 'unavailable', kind: 'redis' },
      })
      const a = await call(allow, '/x')
      assert.equal(a.status, 200)
      assert.equal(a.headers.ratelimit, undefined)
      const d = await call(deny, '/x')
      assert.equal(d.status, 503)
      assert.equal(d.problem.code, 'GH_LIMIT_STORE_UNAVAILABLE')
      assert.equal(d.headers['retry-after'], '1')
      assert.match(
        await metricsText(allow.adminPort!),
        /gatehouse_limit_store_errors_total\{store="shared",action="allow"\} [1-9]/,
      )
      open = true
      await waitUntilAsync(async () => (await call(deny, '/x')).status === 200, 8000)
    } finally {
      await allow.close()
      await deny.close()
      await up.close()
      for (const s of sockets) s.destroy()
      relay.close()
    }
  })
})
