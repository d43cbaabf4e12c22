import { describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { parseConfig } from '../../src/index.js'
import { CachePolicy, type CacheEntry, type CacheRequest } from '../../src/policies/cache/policy.js'
import { canonicalJson, MAX_DEPTH } from '../../src/policies/cache/canonical-json.js'
import { MemoryCacheStore } from '../../src/stores/memory/cache.js'
import type { Identity } from '../../src/identity/types.js'

function cacheConfig (cache: Record<string, unknown>) {
  const config = parseConfig(JSON.stringify({
    upstreams: { m: { targets: [{ url: 'http://127.0.0.1:1' }] } },
    routes: [{ name: 'infer', match: {}, upstream: 'm', cache: { ttl: '60s', ...cache } }],
  }))
  return config.routes[0]!.cache!
}

const memory = (): MemoryCacheStore => new MemoryCacheStore(1024 * 1024)

function policy (cache: Record<string, unknown> = {}, anonymous = true): CachePolicy {
  return new CachePolicy('infer', cacheConfig(cache), memory(), 'default', anonymous)
}

/** A request as the Exchange presents it to the cache: raw headers, and what readHead noted. */
function req (
  opts: {
    method?: string
    path?: string
    query?: string
    headers?: Array<[string, string]>
    identity?: Identity | null
  } = {},
): CacheRequest {
  const headers = opts.headers ?? [['Host', 'api.example.com']]
  const first = (n: string): string | null =>
    headers.find(([k]) => k.toLowerCase() === n)?.[1] ?? null
  const auths = headers.filter(([k]) => k.toLowerCase() === 'authorization')
  return {
    method: opts.method ?? 'GET',
    path: opts.path ?? '/v1/m',
    query: opts.query ?? '',
    hostHeader: first('host'),
    xForwardedHost: first('x-forwarded-host'),
    xForwardedProto: first('x-forwarded-proto'),
    forwarded: first('forwarded'),
    authorization: auths[0]?.[1] ?? null,
    authorizationCount: auths.length,
    credHeaders: null,
    identity: opts.identity ?? null,
    req: { rawHeaders: headers.flat() },
  }
}

const json = (s: string | Buffer): Buffer => (typeof s === 'string' ? Buffer.from(s) : s)
const jsonReq = (extra: Array<[string, string]> = []): CacheRequest =>
  req({
    method: 'POST',
    headers: [['Host', 'api.example.com'], ['Content-Type', 'application/json'], ...extra],
  })

function sha (parts: Array<string | Buffer>): string {
  const h = createHash('sha256')
  for (const p of parts) h.update(p)
  return `c:${h.digest('base64url')}`
}

describe('cache key (v2 layout)', () => {
  test('the preimage is pinned: a fleet sharing Redis must compute the same keys', () => {
    // Changing any of these expectations changes every key: bump KEY_VERSION and say so in the docs.
    const p = policy({ key: { headers: ['x-model'] } })
    const r = req({
      query: '?q=1',
      headers: [['Host', 'API.example.com'], ['X-Model', 'v2'], ['x-model', 'v3']],
    })
    assert.equal(
      p.key(r, null),
      sha([
        'cache2\0"infer"\0GET\0' + '15:api.example.com---' + '5:/v1/m' + '4:?q=1' + '2#2:v22:v3' +
        '--',
      ]),
    )
    // HEAD is keyed as GET; an empty body is no body.
    assert.equal(p.key({ ...r, method: 'HEAD' }, Buffer.alloc(0)), p.key(r, null))
    // A JSON body: Content-Type and Content-Encoding values, then `j` and the canonical text.
    const post = req({
      method: 'POST',
      headers: [['Host', 'a'], ['Content-Type', 'application/json']],
    })
    assert.equal(
      p.key(post, json('{"b":2, "a":1}')),
      sha(['cache2\0"infer"\0POST\0' + '1:a---5:/v1/m0:0#--' + '1#16:application/json0#j',
        '{"a":1,"b":2}']),
    )
    // Not canonicalisable: `r` and the bytes as sent.
    assert.equal(
      p.key(post, json('{"a":1,"a":2}')),
      sha(['cache2\0"infer"\0POST\0' + '1:a---5:/v1/m0:0#--' + '1#16:application/json0#r',
        '{"a":1,"a":2}']),
    )
    // With auth, the caller; without, the credentials the request carries.
    const authed = policy({}, false)
    const who: Identity = {
      provider: 'sso',
      kind: 'jwt',
      subject: 'alice',
      clientId: 'app',
      scopes: new Set(),
      claims: {},
      expiresAt: Infinity,
      phantom: null,
    }
    assert.equal(
      authed.key(req({ identity: who }), null),
      sha(['cache2\0"infer"\0GET\0' + '15:api.example.com---5:/v1/m0:' + 'i["sso","alice","app"]']),
    )
    const bearer = req({
      headers: [['Host', 'h'], ['Authorization', 'Bearer x'], ['Cookie', 'a=1']],
    })
    assert.equal(
      policy().key(bearer, null),
      sha(['cache2\0"infer"\0GET\0' + '1:h---5:/v1/m0:' + '-' + 'ca1#8:Bearer xk1#3:a=1']),
    )
  })

  test('JSON numbers are kept as written: no rounding past 2^53, 1 and 1.0 and 1e0 apart', () => {
    const p = policy({ methods: ['POST'] })
    const k = (s: string): string => p.key(jsonReq(), json(s))
    assert.notEqual(k('{"n":9007199254740993}'), k('{"n":9007199254740992}'))
    assert.notEqual(k('{"id":12345678901234567891}'), k('{"id":12345678901234567890}'))
    assert.equal(
      new Set([k('{"t":1}'), k('{"t":1.0}'), k('{"t":1e0}'), k('{"t":1E0}'), k('{"t":10e-1}')])
        .size,
      5,
    )
    assert.notEqual(k('{"t":0}'), k('{"t":-0}'))
    // Whitespace and member order are not the request's meaning: those still share an entry.
    assert.equal(k('{"t":1.0,"model":"m"}'), k(' { "model" : "m" ,\n"t": 1.0 } '))
  })

  test('duplicate member names, bad UTF-8 and deep nesting are keyed by their raw bytes', () => {
    const p = policy({ methods: ['POST'], key: { body: { ignore: ['user'] } } })
    const k = (s: string | Buffer): string => p.key(jsonReq(), json(s))
    assert.notEqual(k('{"a":1,"a":2}'), k('{"a":2}'))
    assert.notEqual(k('{"a":1,"a":2}'), k('{"a":1}'))
    assert.notEqual(k('{"a":2,"a":1}'), k('{"a":1,"a":2}'))
    // "\u0061" is "a": a repeat, however it is spelled.
    assert.equal(canonicalJson(json('{"a":1,"\\u0061":2}'), new Set()), null)
    assert.equal(canonicalJson(json('{"x":{"a":1,"a":2}}'), new Set()), null)
    // 0xff and 0xfe both decode to U+FFFD; their keys differ.
    const bad = (b: number): Buffer =>
      Buffer.concat([Buffer.from('{"p":"'), Buffer.from([b]), Buffer.from('"}')])
    assert.notEqual(k(bad(0xff)), k(bad(0xfe)))
    assert.equal(canonicalJson(bad(0xff), new Set()), null)
    // 60 KB of nesting: keyed by its bytes, no RangeError.
    const deep = '['.repeat(30_000) + ']'.repeat(30_000)
    assert.equal(canonicalJson(json(deep), new Set()), null)
    assert.notEqual(k(deep), k('[' + deep + ']'))
    const deepObj = '{"a":'.repeat(10_000) + '1' + '}'.repeat(10_000)
    assert.equal(canonicalJson(json(deepObj), new Set()), null)
    assert.doesNotThrow(() => k(deepObj))
    // Up to MAX_DEPTH levels are canonicalised.
    const ok = '['.repeat(MAX_DEPTH) + ']'.repeat(MAX_DEPTH)
    assert.equal(canonicalJson(json(ok), new Set()), ok)
    assert.equal(canonicalJson(json('[' + ok + ']'), new Set()), null)
  })

  test('canonical form: sorted members, one spelling per string, ignored top-level fields dropped', () => {
    const c = (s: string, ignore: string[] = []): string | null =>
      canonicalJson(json(s), new Set(ignore))
    assert.equal(
      c(' {"b": [1, {"d": true, "c": null}], "a": "x"} '),
      '{"a":"x","b":[1,{"c":null,"d":true}]}',
    )
    assert.equal(c('{"a":"\\u0041\\/\\n"}'), '{"a":"A/\\n"}')
    assert.equal(c('{"\\u0062":1,"a":2}'), '{"a":2,"b":1}')
    assert.equal(
      c('{"user":"u1","input":"hi","nested":{"user":"kept"}}', ['user']),
      '{"input":"hi","nested":{"user":"kept"}}',
    )
    assert.equal(c('"\\ud800"'), '"\\ud800"')
    assert.equal(c('"\\uD800"'), '"\\ud800"')
    assert.equal(c('["é\u2028", "\\u00e9\\u2028"]'), '["é\u2028","é\u2028"]')
    assert.equal(c('[]'), '[]')
    assert.equal(c('{}'), '{}')
    assert.equal(c('12'), '12')
    // Not JSON at all.
    for (
      const s of ['', '{', '{"a":1,}', '[1,]', '01', '1.', '.5', '-', '1e', '"a\tb"', '"\\x"',
        '"\\u12"', '"\\u12G4"', '"ab', 'tru', '{"a" 1}', '[1 2]', '\ufeff{}', 'NaN', '{"a":1}x']
    ) {
      assert.equal(c(s), null, JSON.stringify(s))
    }
  })

  test('a body that says it is not JSON, or is encoded, is keyed by its bytes', () => {
    const p = policy({ methods: ['POST'] })
    const typed = (type: string | null, coding?: string): CacheRequest => req({
      method: 'POST',
      headers: [['Host', 'h'],
        ...(type === null ? [] : [['Content-Type', type] as [string, string]]),
        ...(coding === undefined ? [] : [['Content-Encoding', coding] as [string, string]])],
    })
    const a = json('{"b":1, "a":2}')
    const b = json('{"a":2,"b":1}')
    assert.equal(
      p.key(typed('application/json; charset=utf-8'), a),
      p.key(typed('application/json; charset=utf-8'), b),
    )
    assert.equal(
      p.key(typed('application/vnd.api+json'), a),
      p.key(typed('application/vnd.api+json'), b),
    )
    assert.equal(p.key(typed(null), a), p.key(typed(null), b))
    assert.notEqual(p.key(typed('text/plain'), a), p.key(typed('text/plain'), b))
    assert.notEqual(
      p.key(typed('application/json', 'br'), a),
      p.key(typed('application/json', 'br'), b),
    )
    // The same bytes under another type or coding are another request.
    assert.notEqual(p.key(typed('application/json'), b), p.key(typed('text/plain'), b))
    assert.notEqual(
      p.key(typed('application/json'), b),
      p.key(typed('application/json', 'gzip'), b),
    )
  })

  test('every value of a keyed header, the authority, and unambiguous field boundaries', () => {
    const p = policy({ key: { headers: ['accept'] } })
    const k = (headers: Array<[string, string]>, path = '/v1/m', query = ''): string =>
      p.key(req({ headers, path, query }), null)
    const host: [string, string] = ['Host', 'api.example.com']
    assert.notEqual(k([host, ['Accept', 'a'], ['Accept', 'b']]), k([host, ['Accept', 'a']]))
    assert.notEqual(
      k([host, ['Accept', 'a'], ['Accept', 'b']]),
      k([host, ['Accept', 'b'], ['Accept', 'a']]),
    )
    assert.notEqual(k([host, ['Accept', '']]), k([host]))
    assert.notEqual(k([['Host', 'evil.example'], ['Accept', 'a']]), k([host, ['Accept', 'a']]))
    assert.equal(k([['Host', 'API.Example.com'], ['Accept', 'a']]), k([host, ['Accept', 'a']]))
    assert.notEqual(k([['Host', 'api.example.com:8443']]), k([host]))
    assert.notEqual(k([]), k([['Host', '']]))
    // What the upstream is told the authority is, from a trusted proxy.
    assert.notEqual(k([host, ['X-Forwarded-Host', 'evil.example']]), k([host]))
    assert.notEqual(
      k([host, ['X-Forwarded-Proto', 'http']]),
      k([host, ['X-Forwarded-Proto', 'https']]),
    )
    assert.notEqual(k([host, ['Forwarded', 'host=evil.example']]), k([host]))
    assert.notEqual(k([host], '/a', '?b'), k([host], '/a?b', ''))
    // A route name is JSON-quoted; identity fields too.
    const authed = policy({}, false)
    const who = (subject: string, clientId: string): Identity => ({
      provider: 'p',
      kind: 'jwt',
      subject,
      clientId,
      scopes: new Set(),
      claims: {},
      expiresAt: Infinity,
      phantom: null,
    })
    assert.notEqual(
      authed.key(req({ identity: who('a:b', 'c') }), null),
      authed.key(req({ identity: who('a', 'b:c') }), null),
    )
    assert.notEqual(
      authed.key(req({ identity: who('\ud800', '') }), null),
      authed.key(req({ identity: who('\ufffd', '') }), null),
    )
  })

  test('on a route without auth, credentials are keyed apart and answers to them stored only if shareable', () => {
    const p = policy()
    const k = (headers: Array<[string, string]>): string =>
      p.key(req({ headers: [['Host', 'h'], ...headers] }), null)
    const anon = k([])
    assert.notEqual(k([['Authorization', 'Bearer alice']]), anon)
    assert.notEqual(k([['Authorization', 'Bearer alice']]), k([['Authorization', 'Bearer bob']]))
    assert.notEqual(
      k([['Authorization', 'Bearer a'], ['Authorization', 'Bearer b']]),
      k([['Authorization', 'Bearer a']]),
    )
    assert.notEqual(k([['Cookie', 'session=1']]), anon)
    assert.notEqual(k([['Cookie', 'session=1']]), k([['Cookie', 'session=2']]))
    assert.notEqual(k([['Authorization', 'x']]), k([['Cookie', 'x']]))
    assert.equal(p.shared(req()), true)
    assert.equal(p.shared(req({ headers: [['Host', 'h'], ['Authorization', 'Bearer x']] })), false)
    assert.equal(p.shared(req({ headers: [['Host', 'h'], ['cookie', 'a=1']] })), false)
    assert.equal(p.shared({ ...req(), credHeaders: ['x-api-key', 'k1'] }), false)
    assert.notEqual(
      p.key({ ...req(), credHeaders: ['x-api-key', 'k1'] }, null),
      p.key({ ...req(), credHeaders: ['x-api-key', 'k2'] }, null),
    )
    // A route that keys on Cookie has it in the key already: such answers are stored as any other.
    const byCookie = policy({ key: { headers: ['cookie'] } })
    assert.equal(byCookie.shared(req({ headers: [['Host', 'h'], ['Cookie', 'a=1']] })), true)
    // With auth, the caller is the key: credentials change nothing.
    assert.equal(
      policy({}, false).shared(req({ headers: [['Host', 'h'], ['Authorization', 'Bearer x']] })),
      true,
    )

    // RFC 9111 §3.5: stored only with public, s-maxage or must-revalidate.
    const h = (
      cc?: string,
    ): string[] => ['content-type', 'application/json',
      ...(cc === undefined ? [] : ['cache-control', cc])]
    assert.equal(p.storable(200, h(), false), null)
    assert.equal(p.storable(200, h('max-age=30'), false), null)
    assert.equal(p.storable(200, h('public'), false), 60_000)
    assert.equal(p.storable(200, h('s-maxage=30'), false), 30_000)
    assert.equal(p.storable(200, h('must-revalidate, max-age=20'), false), 20_000)
    assert.equal(p.storable(200, h('public, private'), false), null)
    assert.equal(p.storable(200, h(), true), 60_000)
  })

  test('a declared Content-Length over max_entry is unstorable from the head', () => {
    const p = policy({ max_entry: '1KiB' })
    assert.equal(p.storable(200, ['content-length', '1025']), null)
    assert.equal(p.storable(200, ['Content-Length', '1024']), 60_000)
  })

  test('followers wait at most coalesce_timeout; the leader finishing later leaves a new leader alone', async () => {
    const p = policy({ coalesce_timeout: '20ms' })
    const done = p.lead('k')!
    assert.ok(done)
    assert.equal(p.lead('k'), null, 'one leader per key')
    const waiting = p.follower('k')!
    const started = performance.now()
    // The coalescing timer is unref'd (it never holds a process up): keep this one alive.
    const alive = setInterval(() => {}, 1000)
    try {
      assert.equal(await waiting, null)
    } finally {
      clearInterval(alive)
    }
    assert.ok(performance.now() - started >= 15)
    // Released: the key has no leader; a released follower may lead it.
    assert.equal(p.follower('k'), null)
    const second = p.lead('k')!
    assert.ok(second)
    const entry: CacheEntry = { status: 200, headers: [], body: Buffer.from('x'), storedAt: 0 }
    done(entry)
    const f = p.follower('k')
    assert.ok(f !== null, 'the first leader finishing did not remove the second')
    second(entry)
    assert.equal(await f, entry)
    assert.equal(p.follower('k'), null)

    const never = policy({ coalesce_timeout: '0' })
    const d = never.lead('k')!
    assert.equal(never.follower('k'), null, 'coalesce_timeout 0: misses never wait')
    assert.ok(never.lead('k') !== null)
    d(null)
  })
})
