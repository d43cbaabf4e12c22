import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { createHash, generateKeyPairSync } from 'node:crypto'
import type http from 'node:http'
import { once } from 'node:events'
import { createRemoteJWKSet, jwtVerify, SignJWT } from 'jose'
import WebSocket, { WebSocketServer } from 'ws'
import {
  call,
  metricsText,
  rawRequest,
  startEchoUpstream,
  startGateway,
  startUpstream,
  type TestGateway,
  type Upstream,
} from '../helpers/index.js'
import { startIdp, type TestIdp } from '../helpers/idp.js'
import type { ConfigInput } from '../../src/config/schema.js'

type Echo = Awaited<ReturnType<typeof startEchoUpstream>>

const sha256 = (s: string): string => createHash('sha256').update(s).digest('hex')
const ACME_KEY = 'gh_live_9fJ2kQ7vX1mN4pR8sT0uW3yZ6'
const GLOBEX_KEY = 'gh_live_Aa11Bb22Cc33Dd44Ee55Ff66Gg77'

function keysConfig (
  upstreamUrl: string,
  keys: Array<Record<string, unknown>>,
  extra: Partial<ConfigInput> = {},
): ConfigInput {
  return {
    trusted_proxies: ['127.0.0.1'],
    identity: { providers: { keys: { kind: 'api_key', header: 'x-api-key', keys } } },
    upstreams: { model: { targets: [{ url: upstreamUrl }] } },
    routes: [
      {
        name: 'predict',
        match: { path_prefix: '/v1/predict' },
        upstream: 'model',
        auth: { any_of: ['keys'], scopes: { any: ['predict', 'admin'] }, claims: { tier: 'gold' } },
        identity_headers: {
          subject: 'x-key-id',
          claims: { org: 'x-org', 'limits.rpm': 'x-rpm', 'https://example.com/team': 'x-team' },
        },
      },
      {
        name: 'strip',
        match: { path_prefix: '/v1/strip' },
        upstream: 'model',
        auth: { any_of: ['keys'], strip_credentials: true },
      },
      {
        name: 'internal',
        match: { path_prefix: '/internal' },
        upstream: 'model',
        ip: { allow: ['10.0.0.0/8', '2001:db8::/32'], deny: ['10.6.6.0/24'] },
      },
      { name: 'open', match: { path_prefix: '/' }, upstream: 'model' },
    ],
    ...extra,
  } as ConfigInput
}

const ACME = {
  id: 'acme-batch',
  sha256: sha256(ACME_KEY),
  scopes: ['predict'],
  metadata: { org: 'acme', tier: 'gold', limits: { rpm: 600 }, 'https://example.com/team': 'ml' },
}
const GLOBEX = {
  id: 'globex',
  sha256: sha256(GLOBEX_KEY),
  scopes: ['read'],
  metadata: { org: 'globex', tier: 'gold' },
}

describe('identity: API keys', () => {
  let up: Echo
  let gw: TestGateway
  before(async () => {
    up = await startEchoUpstream()
    gw = await startGateway(keysConfig(up.url, [ACME, GLOBEX]))
  })
  after(async () => {
    await gw.close()
    await up.close()
  })

  test('a configured key is admitted with its id, scopes and metadata as identity', async () => {
    const res = await call(gw, '/v1/predict', { 'x-api-key': ACME_KEY })
    assert.equal(res.status, 200)
    const seen = JSON.parse(res.body).headers
    assert.equal(seen['x-gatehouse-subject'], 'acme-batch')
    assert.equal(seen['x-gatehouse-provider'], 'keys')
    assert.equal(seen['x-gatehouse-scopes'], 'predict')
    assert.equal(seen['x-key-id'], 'acme-batch')
    assert.equal(seen['x-org'], 'acme')
    assert.equal(seen['x-rpm'], '600')
    // A namespaced claim with dots in its name is found by its whole name.
    assert.equal(seen['x-team'], 'ml')
    assert.equal(seen['x-api-key'], ACME_KEY)
  })

  test('missing, wrong and near-miss keys: 401 with an ApiKey challenge', async () => {
    const missing = await call(gw, '/v1/predict')
    assert.equal(missing.status, 401)
    assert.equal(
      missing.headers['www-authenticate'],
      'ApiKey realm="gatehouse", header="x-api-key"',
    )
    assert.equal(missing.problem.code, 'GH_AUTH_REQUIRED')
    const nearMiss = ACME_KEY.slice(0, -1) + (ACME_KEY.endsWith('6') ? '7' : '6')
    for (
      const key of ['wrong', nearMiss, ACME_KEY.slice(1), ACME_KEY.toUpperCase(), 'x'.repeat(2000)]
    ) {
      const res = await call(gw, '/v1/predict', { 'x-api-key': key })
      assert.equal(res.status, 401, key)
      assert.equal(res.headers['www-authenticate'], 'ApiKey realm="gatehouse", error="invalid_key"')
      assert.equal(res.problem.code, 'GH_INVALID_CREDENTIALS')
      assert.doesNotMatch(res.body, /acme|unknown/)
    }
  })

  test('a repeated key header is refused as ambiguous (400)', async () => {
    const res = await rawRequest(
      gw.port,
      `GET /v1/predict HTTP/1.1\r\nHost: x\r\nX-Api-Key: ${ACME_KEY}\r\nX-Api-Key: ${GLOBEX_KEY}\r\nConnection: close\r\n\r\n`,
    )
    assert.equal(res.status, 400)
    assert.equal(
      res.headers['www-authenticate'],
      'ApiKey realm="gatehouse", error="invalid_request"',
    )
  })

  test('scopes any-of and claim checks apply to keys', async () => {
    // globex has only "read": no predict/admin scope.
    const res = await call(gw, '/v1/predict', { 'x-api-key': GLOBEX_KEY })
    assert.equal(res.status, 403)
    assert.equal(
      res.headers['www-authenticate'],
      'ApiKey realm="gatehouse", error="insufficient_scope", scope="predict admin"',
    )
  })

  test('strip_credentials removes the key before forwarding', async () => {
    const res = await call(gw, '/v1/strip', { 'x-api-key': GLOBEX_KEY })
    assert.equal(res.status, 200)
    assert.equal(JSON.parse(res.body).headers['x-api-key'], undefined)
  })

  test('a reload that removes a key revokes it at once', async () => {
    assert.equal((await call(gw, '/v1/predict', { 'x-api-key': ACME_KEY })).status, 200)
    await gw.gateway.reload(
      {
        ...keysConfig(up.url, [GLOBEX]),
        listen: { host: '127.0.0.1', port: 0 },
        admin: { host: '127.0.0.1', port: 0 },
      } as ConfigInput,
    )
    assert.equal((await call(gw, '/v1/predict', { 'x-api-key': ACME_KEY })).status, 401)
    await gw.gateway.reload(
      {
        ...keysConfig(up.url, [ACME, GLOBEX]),
        listen: { host: '127.0.0.1', port: 0 },
        admin: { host: '127.0.0.1', port: 0 },
      } as ConfigInput,
    )
    assert.equal((await call(gw, '/v1/predict', { 'x-api-key': ACME_KEY })).status, 200)
  })

  test('keys as bearer tokens (header: authorization), next to JWTs on one route', async () => {
    const idp = await startIdp()
    const g2 = await startGateway({
      identity: {
        providers: {
          sso: { kind: 'jwt', issuer: idp.issuer, audiences: ['ml-api'] },
          keys: { kind: 'api_key', header: 'authorization', keys: [ACME] },
        },
      },
      upstreams: { model: { targets: [{ url: up.url }] } },
      routes: [{
        name: 'p',
        match: {},
        upstream: 'model',
        auth: { any_of: ['sso', 'keys'], scopes: { all: ['predict'] } },
      }],
    } as ConfigInput)
    try {
      const key = await call(g2, '/x', { authorization: `Bearer ${ACME_KEY}` })
      assert.equal(key.status, 200)
      assert.equal(JSON.parse(key.body).headers['x-gatehouse-subject'], 'acme-batch')
      const jwt = await call(g2, '/x', {
        authorization: `Bearer ${await idp.token({ scope: 'predict' })}`,
      })
      assert.equal(JSON.parse(jwt.body).headers['x-gatehouse-provider'], 'sso')
      const bad = await call(g2, '/x', { authorization: 'Bearer sk-wrong' })
      assert.equal(bad.status, 401)
      assert.equal(
        bad.headers['www-authenticate'],
        'Bearer realm="gatehouse", error="invalid_token"',
      )
      const missing = await call(g2, '/x')
      assert.equal(missing.headers['www-authenticate'], 'Bearer realm="gatehouse"')
    } finally {
      await g2.close()
      await idp.close()
    }
  })

  test('IP rules: deny wins, allow must match; X-Forwarded-For only through a trusted proxy', async () => {
    // The test client is 127.0.0.1: not in the allow list.
    const direct = await call(gw, '/internal')
    assert.equal(direct.status, 403)
    assert.equal(direct.problem.code, 'GH_IP_FORBIDDEN')
    assert.equal(direct.headers['www-authenticate'], undefined)
    // 127.0.0.1 is a trusted proxy in this config, so its X-Forwarded-For is believed...
    assert.equal((await call(gw, '/internal', { 'x-forwarded-for': '10.1.2.3' })).status, 200)
    assert.equal((await call(gw, '/internal', { 'x-forwarded-for': '2001:db8::7' })).status, 200)
    assert.equal((await call(gw, '/internal', { 'x-forwarded-for': '10.6.6.7' })).status, 403)
    // ...but only its right-most untrusted entry: what the client wrote to the left proves nothing.
    assert.equal(
      (await call(gw, '/internal', { 'x-forwarded-for': '10.1.1.1, 203.0.113.9' })).status,
      403,
    )
    assert.equal((await call(gw, '/internal', { 'x-forwarded-for': 'garbage' })).status, 403)
    const line = await gw.logs.waitFor((l) =>
      l.msg === 'request' && l.code === 'GH_IP_FORBIDDEN' && /203\.0\.113\.9/.test(l.reason)
    )
    assert.ok(line)
  })

  test('an untrusted peer\'s X-Forwarded-For is ignored', async () => {
    const g2 = await startGateway(
      { ...keysConfig(up.url, [ACME]), trusted_proxies: [] } as ConfigInput,
    )
    try {
      assert.equal((await call(g2, '/internal', { 'x-forwarded-for': '10.1.2.3' })).status, 403)
    } finally {
      await g2.close()
    }
  })
})

describe('identity: token introspection (RFC 7662)', () => {
  let idp: TestIdp
  let up: Echo
  before(async () => {
    idp = await startIdp()
    up = await startEchoUpstream()
  })
  after(async () => {
    await up.close()
    await idp.close()
  })

  function config (endpoint: string, extra: Record<string, unknown> = {}): ConfigInput {
    return {
      identity: {
        providers: {
          partner: {
            kind: 'introspection',
            endpoint,
            client_id: 'gatehouse',
            client_secret: 'gatehouse-secret',
            timeout: '300ms',
            ...extra,
          },
        },
      },
      upstreams: { model: { targets: [{ url: up.url }] } },
      routes: [{
        name: 'predict',
        match: { path_prefix: '/v1' },
        upstream: 'model',
        auth: { any_of: ['partner'], scopes: { all: ['predict'] } },
      }],
    } as ConfigInput
  }

  test('an opaque token from the real authorization server is admitted, then served from cache', async () => {
    const gw = await startGateway(config(`${idp.issuer}/token/introspection`))
    try {
      const token = await idp.token({ scope: 'predict', resource: 'urn:opaque' })
      assert.equal(token.split('.').length, 1, 'an opaque token')
      const before = idp.counts['/token/introspection'] ?? 0
      const res = await call(gw, '/v1/x', { authorization: `Bearer ${token}` })
      assert.equal(res.status, 200)
      assert.equal(JSON.parse(res.body).headers['x-gatehouse-client-id'], 'batch')
      for (let i = 0; i < 3; i++) {
        assert.equal((await call(gw, '/v1/x', { authorization: `Bearer ${token}` })).status, 200)
      }
      assert.equal((idp.counts['/token/introspection'] ?? 0) - before, 1)
      const bogus = await call(gw, '/v1/x', {
        authorization: 'Bearer not-a-token-the-server-issued',
      })
      assert.equal(bogus.status, 401)
      assert.equal(
        bogus.headers['www-authenticate'],
        'Bearer realm="gatehouse", error="invalid_token"',
      )
    } finally {
      await gw.close()
    }
  })

  test('any_of [sso, partner]: JWTs are verified locally, opaque tokens introspected', async () => {
    const gw = await startGateway({
      identity: {
        providers: {
          sso: { kind: 'jwt', issuer: idp.issuer, audiences: ['ml-api'] },
          partner: {
            kind: 'introspection',
            endpoint: `${idp.issuer}/token/introspection`,
            client_id: 'gatehouse',
            client_secret: 'gatehouse-secret',
          },
        },
      },
      upstreams: { model: { targets: [{ url: up.url }] } },
      routes: [{
        name: 'predict',
        match: {},
        upstream: 'model',
        auth: { any_of: ['sso', 'partner'] },
      }],
    } as ConfigInput)
    try {
      const before = idp.counts['/token/introspection'] ?? 0
      const jwt = await idp.token({ scope: 'predict' })
      const a = await call(gw, '/x', { authorization: `Bearer ${jwt}` })
      assert.equal(JSON.parse(a.body).headers['x-gatehouse-provider'], 'sso')
      assert.equal((idp.counts['/token/introspection'] ?? 0) - before, 0)
      const opaque = await idp.token({ scope: 'predict', resource: 'urn:opaque' })
      const b = await call(gw, '/x', { authorization: `Bearer ${opaque}` })
      assert.equal(JSON.parse(b.body).headers['x-gatehouse-provider'], 'partner')
      assert.equal((idp.counts['/token/introspection'] ?? 0) - before, 1)
    } finally {
      await gw.close()
    }
  })

  /** A hand-written introspection endpoint whose answers each test chooses. */
  async function endpoint (
    answer: (form: URLSearchParams, req: http.IncomingMessage, res: http.ServerResponse) => void,
  ): Promise<Upstream & { calls: number }> {
    const state = { calls: 0 }
    const server = await startUpstream((req, res) => {
      state.calls++
      let body = ''
      req.setEncoding('utf8')
      req.on('data', (c: string) => {
        body += c
      })
      req.on('end', () => answer(new URLSearchParams(body), req, res))
    })
    return {
      ...server,
      get calls () {
        return state.calls
      },
    }
  }

  const json = (res: http.ServerResponse, v: unknown): void => {
    res.writeHead(200, { 'content-type': 'application/json' })
    res.end(JSON.stringify(v))
  }

  test('client authentication by Basic and by POST body; inactive tokens are 401 and cached briefly', async () => {
    const seen: string[] = []
    const ep = await endpoint((form, req, res) => {
      seen.push(
        req.headers.authorization !== undefined
          ? `basic:${Buffer.from(req.headers.authorization.slice(6), 'base64').toString()}`
          : `post:${form.get('client_id')}:${form.get('client_secret')}`,
      )
      json(
        res,
        form.get('token') === 'good'
          ? { active: true, sub: 'u1', scope: 'predict', exp: Math.floor(Date.now() / 1000) + 600 }
          : { active: false },
      )
    })
    for (const method of ['basic', 'post']) {
      const gw = await startGateway(config(ep.url, { auth_method: method }))
      try {
        assert.equal((await call(gw, '/v1/x', { authorization: 'Bearer good' })).status, 200)
        const calls = ep.calls
        const inactive = await call(gw, '/v1/x', { authorization: 'Bearer revoked' })
        assert.equal(inactive.status, 401)
        assert.equal(
          inactive.headers['www-authenticate'],
          'Bearer realm="gatehouse", error="invalid_token"',
        )
        assert.equal((await call(gw, '/v1/x', { authorization: 'Bearer revoked' })).status, 401)
        assert.equal(ep.calls - calls, 1, 'the inactive answer is cached')
      } finally {
        await gw.close()
      }
    }
    assert.deepEqual(seen.filter((s, i) => seen.indexOf(s) === i), [
      'basic:gatehouse:gatehouse-secret',
      'post:gatehouse:gatehouse-secret',
    ])
    await ep.close()
  })

  test('concurrent requests with one token make one introspection call', async () => {
    const pending: Array<() => void> = []
    const ep = await endpoint((_form, _req, res) => {
      pending.push(() => json(res, { active: true, sub: 'u1', scope: 'predict' }))
    })
    const gw = await startGateway(config(ep.url, { timeout: '5s' }))
    try {
      const all = Array.from(
        { length: 10 },
        () => call(gw, '/v1/x', { authorization: 'Bearer shared' }),
      )
      // Wait until the one call has arrived, then answer it.
      while (pending.length === 0) await new Promise((resolve) => setImmediate(resolve))
      pending.shift()!()
      const statuses = (await Promise.all(all)).map((r) => r.status)
      assert.deepEqual(statuses, Array(10).fill(200))
      assert.equal(ep.calls, 1)
    } finally {
      await gw.close()
      await ep.close()
    }
  })

  test('slow, unreachable or garbage answers: 503, never 401 and never access', async () => {
    const slow = await endpoint(() => {/* never answers */})
    const garbage = await endpoint((_f, _r, res) => {
      res.writeHead(200, { 'content-type': 'application/json' })
      res.end('<html>oops</html>')
    })
    const noActive = await endpoint((_f, _r, res) => json(res, { sub: 'u1', scope: 'predict' }))
    const stringActive = await endpoint((_f, _r, res) =>
      json(res, { active: 'true', sub: 'u1', scope: 'predict' })
    )
    const error500 = await endpoint((_f, _r, res) => {
      res.writeHead(500)
      res.end()
    })
    const closed = await startUpstream(() => {})
    const closedUrl = closed.url
    await closed.close()
    const calls = up.calls
    for (
      const [name, url] of [['slow', slow.url], ['garbage', garbage.url], ['no active',
        noActive.url], ['string active', stringActive.url], ['500', error500.url], ['unreachable',
        closedUrl]] as const
    ) {
      const gw = await startGateway(config(url))
      try {
        const res = await call(gw, '/v1/x', { authorization: 'Bearer whatever' })
        assert.equal(res.status, 503, name)
        assert.equal(res.problem.code, 'GH_AUTH_UNAVAILABLE', name)
        assert.equal(res.headers['retry-after'], '1')
        assert.equal(res.headers['www-authenticate'], undefined)
      } finally {
        await gw.close()
      }
    }
    assert.equal(up.calls, calls)
    for (const s of [slow, garbage, noActive, stringActive, error500]) await s.close()
  })

  test('an active answer with an expired exp or a foreign audience is refused', async () => {
    const ep = await endpoint((form, _r, res) =>
      json(
        res,
        form.get('token') === 'old'
          ? { active: true, sub: 'u', scope: 'predict', exp: Math.floor(Date.now() / 1000) - 10 }
          : { active: true, sub: 'u', scope: 'predict', aud: 'someone-else' },
      )
    )
    const gw = await startGateway(config(ep.url, { audiences: ['ml-api'] }))
    try {
      assert.equal((await call(gw, '/v1/x', { authorization: 'Bearer old' })).status, 401)
      assert.equal((await call(gw, '/v1/x', { authorization: 'Bearer foreign' })).status, 401)
    } finally {
      await gw.close()
      await ep.close()
    }
  })
})

describe('identity: phantom tokens and WebSockets', () => {
  let idp: TestIdp
  before(async () => {
    idp = await startIdp()
  })
  after(async () => {
    await idp.close()
  })

  test('the upstream receives the gateway\'s own JWT, verifiable against the admin JWKS', async () => {
    const up = await startEchoUpstream()
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' })
    const gw = await startGateway({
      identity: {
        providers: {
          sso: { kind: 'jwt', issuer: idp.issuer, audiences: ['ml-api'] },
          keys: { kind: 'api_key', keys: [ACME] },
        },
        phantom_token: {
          key: privateKey.export({ type: 'pkcs8', format: 'pem' }) as string,
          issuer: 'https://gatehouse.internal',
          audience: 'models',
          ttl: '2m',
        },
      },
      upstreams: { model: { targets: [{ url: up.url }] } },
      routes: [{
        name: 'p',
        match: {},
        upstream: 'model',
        auth: { any_of: ['sso', 'keys'], phantom_token: true },
      }],
    } as ConfigInput)
    try {
      const jwks = createRemoteJWKSet(
        new URL(`http://127.0.0.1:${gw.adminPort}/.well-known/jwks.json`),
      )
      const token = await idp.token({ scope: 'predict' })
      const a =
        JSON.parse((await call(gw, '/x', { authorization: `Bearer ${token}` })).body).headers
      assert.notEqual(a.authorization, `Bearer ${token}`)
      const { payload } = await jwtVerify(a.authorization.slice(7), jwks, {
        issuer: 'https://gatehouse.internal',
        audience: 'models',
      })
      assert.equal(payload.sub, 'batch')
      assert.equal(payload.client_id, 'batch')
      assert.equal(payload.scope, 'predict')
      assert.equal(payload.gh_provider, 'sso')
      assert.ok(payload.exp! - payload.iat! <= 120)
      // The same identity reuses its phantom token.
      const again =
        JSON.parse((await call(gw, '/x', { authorization: `Bearer ${token}` })).body).headers
      assert.equal(again.authorization, a.authorization)
      // An API-key caller gets one too, carrying the key's metadata.
      const k = JSON.parse((await call(gw, '/x', { 'x-api-key': ACME_KEY })).body).headers
      const { payload: kp } = await jwtVerify(k.authorization.slice(7), jwks, {
        issuer: 'https://gatehouse.internal',
        audience: 'models',
      })
      assert.equal(kp.sub, 'acme-batch')
      assert.equal(kp.org, 'acme')
      // A new key on reload: cached tokens from the old key are not reused.
      const next = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({
        type: 'pkcs8',
        format: 'pem',
      }) as string
      // A spread copy: its durations are milliseconds, which only the validated original's own parts may carry.
      const cfg = gw.gateway.table.config as any
      await gw.gateway.reload({
        ...cfg,
        identity: {
          ...cfg.identity,
          phantom_token: { ...cfg.identity.phantom_token, key: next, ttl: '2m', kid: undefined },
        },
      })
      const fresh = createRemoteJWKSet(
        new URL(`http://127.0.0.1:${gw.adminPort}/.well-known/jwks.json`),
      )
      const after =
        JSON.parse((await call(gw, '/x', { authorization: `Bearer ${token}` })).body).headers
      assert.notEqual(after.authorization, a.authorization)
      await jwtVerify(after.authorization.slice(7), fresh, {
        issuer: 'https://gatehouse.internal',
        audience: 'models',
      })
    } finally {
      await gw.close()
      await up.close()
    }
  })

  test('a WebSocket upgrade is authenticated like any request', async () => {
    const wss = new WebSocketServer({ port: 0, host: '127.0.0.1' })
    await once(wss, 'listening')
    wss.on('connection', (ws) => ws.on('message', (m) => ws.send(`echo:${m}`)))
    const port = (wss.address() as { port: number }).port
    const gw = await startGateway({
      identity: { providers: { sso: { kind: 'jwt', issuer: idp.issuer, audiences: ['ml-api'] } } },
      upstreams: { ws: { targets: [{ url: `http://127.0.0.1:${port}` }] } },
      routes: [{ name: 'ws', match: {}, upstream: 'ws', auth: { any_of: ['sso'] } }],
    } as ConfigInput)
    try {
      const refused = await rawRequest(
        gw.port,
        'GET /socket HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n',
      )
      assert.equal(refused.status, 401)
      assert.equal(refused.headers['www-authenticate'], 'Bearer realm="gatehouse"')
      // Only GET can open a WebSocket: another method is answered as the plain request it is,
      // through the same checks (here: no token, 401), never tunnelled.
      const options = await rawRequest(
        gw.port,
        'OPTIONS /socket HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n',
      )
      assert.equal(options.status, 401)
      assert.equal(JSON.parse(options.body).code, 'GH_AUTH_REQUIRED')
      assert.equal(options.headers.connection, 'close')
      const token = await idp.token({ scope: 'predict' })
      const ws = new WebSocket(`ws://127.0.0.1:${gw.port}/socket`, {
        headers: { authorization: `Bearer ${token}` },
      })
      await once(ws, 'open')
      ws.send('hi')
      const [msg] = await once(ws, 'message')
      assert.equal(String(msg), 'echo:hi')
      ws.close()
      await once(ws, 'close')
      // A socket lives no longer than the token that opened it.
      const now = Math.floor(Date.now() / 1000)
      const short = await new SignJWT({
        iss: idp.issuer,
        aud: 'ml-api',
        sub: 'batch',
        scope: 'predict',
        iat: now,
        exp: now + 1,
      })
        .setProtectedHeader({ alg: 'RS256', typ: 'at+jwt', kid: idp.signingKey.kid }).sign(
          idp.signingKey.privateKey,
        )
      const ws2 = new WebSocket(`ws://127.0.0.1:${gw.port}/socket`, {
        headers: { authorization: `Bearer ${short}` },
      })
      await once(ws2, 'open')
      const opened = Date.now()
      await once(ws2, 'close')
      assert.ok(Date.now() - opened < 3000)
      await gw.logs.waitFor((l) => l.msg === 'upgrade closed: credentials expired')
    } finally {
      await gw.close()
      wss.close()
    }
  })

  test('auth metrics count outcomes per provider', async () => {
    const up = await startEchoUpstream()
    const gw = await startGateway(keysConfig(up.url, [ACME]))
    try {
      await call(gw, '/v1/predict', { 'x-api-key': ACME_KEY })
      await call(gw, '/v1/predict', { 'x-api-key': 'nope' })
      const m = await metricsText(gw.adminPort!)
      assert.match(m, /gatehouse_auth_total\{provider="keys",result="verified"\} 1/)
      assert.match(m, /gatehouse_auth_total\{provider="keys",result="invalid"\} 1/)
      assert.match(m, /gatehouse_refused_requests_total\{code="GH_INVALID_CREDENTIALS"\} 1/)
    } finally {
      await gw.close()
      await up.close()
    }
  })
})
