import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { createPublicKey, KeyObject, sign as cryptoSign } from 'node:crypto'
import {
  exportJWK,
  generateKeyPair,
  SignJWT,
  type CryptoKey,
  type JWTPayload,
  type JWTHeaderParameters,
} from 'jose'
import {
  call,
  metricsText,
  rawRequest,
  request,
  startEchoUpstream,
  startGateway,
  startUpstream,
  waitUntilAsync,
  type TestGateway,
} from '../helpers/index.js'
import { startIdp, type TestIdp } from '../helpers/idp.js'
import type { ConfigInput } from '../../src/config/schema.js'

type Echo = Awaited<ReturnType<typeof startEchoUpstream>>

function jwtConfig (
  issuer: string,
  upstreamUrl: string,
  sso: Record<string, unknown> = {},
): ConfigInput {
  return {
    identity: {
      providers: {
        sso: { kind: 'jwt', issuer, audiences: ['ml-api'], ...sso },
      },
    },
    upstreams: { model: { targets: [{ url: upstreamUrl }] } },
    routes: [
      {
        name: 'predict',
        match: { path_prefix: '/v1/predict' },
        upstream: 'model',
        auth: { any_of: ['sso'], scopes: { all: ['predict'] } },
        identity_headers: { subject: 'x-user-id', claims: { client_id: 'x-client' } },
      },
      {
        name: 'batch-only',
        match: { path_prefix: '/v1/batch' },
        upstream: 'model',
        auth: {
          any_of: ['sso'],
          claims: { client_id: ['batch'], sub: { pattern: '^b' } },
          strip_credentials: true,
        },
      },
      { name: 'open', match: { path_prefix: '/open' }, upstream: 'model' },
    ],
  } as ConfigInput
}

const CHALLENGE = 'Bearer realm="gatehouse"'
const INVALID = 'Bearer realm="gatehouse", error="invalid_token"'

describe('identity: JWT bearer tokens from a real OpenID Provider', () => {
  let idp: TestIdp
  let up: Echo
  let gw: TestGateway

  before(async () => {
    idp = await startIdp()
    up = await startEchoUpstream()
    gw = await startGateway(jwtConfig(idp.issuer, up.url))
  })
  after(async () => {
    await gw.close()
    await up.close()
    await idp.close()
  })

  /** A token signed with the IdP's real key, with claims and header chosen by the test. */
  async function forge (
    claims: JWTPayload = {},
    header: Partial<JWTHeaderParameters> = {},
    key: CryptoKey = idp.signingKey.privateKey,
  ): Promise<string> {
    const now = Math.floor(Date.now() / 1000)
    return new SignJWT({
      iss: idp.issuer,
      aud: 'ml-api',
      sub: 'batch',
      client_id: 'batch',
      scope: 'predict',
      iat: now,
      exp: now + 300,
      ...claims,
    })
      .setProtectedHeader({ alg: 'RS256', typ: 'at+jwt', kid: idp.signingKey.kid, ...header })
      .sign(key)
  }

  test('a client-credentials token reaches the upstream, with identity headers set by the gateway', async () => {
    const token = await idp.token({ scope: 'predict' })
    const res = await call(gw, '/v1/predict/x', { authorization: `Bearer ${token}` })
    assert.equal(res.status, 200)
    const seen = JSON.parse(res.body).headers
    assert.equal(seen['x-gatehouse-subject'], 'batch')
    assert.equal(seen['x-gatehouse-client-id'], 'batch')
    assert.equal(seen['x-gatehouse-provider'], 'sso')
    assert.equal(seen['x-gatehouse-scopes'], 'predict')
    assert.equal(seen['x-user-id'], 'batch')
    assert.equal(seen['x-client'], 'batch')
    // Not stripped unless the route says so.
    assert.equal(seen.authorization, `Bearer ${token}`)
    const line = await gw.logs.waitFor((l) =>
      l.msg === 'request' && l.id === res.headers['x-request-id']
    )
    assert.equal(line.auth, 'sso')
    assert.equal(line.sub, 'batch')
  })

  test('a repeated token is served from the verified-token cache', async () => {
    const token = await idp.token({ scope: 'predict' })
    const before = await metricsText(gw.adminPort!)
    const verified0 = counter(before, 'verified')
    const cached0 = counter(before, 'cached')
    for (let i = 0; i < 3; i++) {
      assert.equal(
        (await call(gw, '/v1/predict', { authorization: `Bearer ${token}` })).status,
        200,
      )
    }
    const after = await metricsText(gw.adminPort!)
    assert.equal(counter(after, 'verified') - verified0, 1)
    assert.equal(counter(after, 'cached') - cached0, 2)
  })

  test('identity headers sent by the client are stripped in any spelling, on every route', async () => {
    const token = await idp.token({ scope: 'predict' })
    const spoof = {
      'x-gatehouse-subject': 'admin',
      X_Gatehouse_Scopes: 'everything',
      'x-user-id': 'admin',
      x_user_id: 'admin',
      'X-CLIENT': 'admin',
    }
    const authed = JSON.parse(
      (await call(gw, '/v1/predict', { authorization: `Bearer ${token}`, ...spoof })).body,
    ).headers
    assert.equal(authed['x-gatehouse-subject'], 'batch')
    assert.equal(authed['x-user-id'], 'batch')
    assert.equal(authed['x-client'], 'batch')
    assert.equal(authed.x_gatehouse_scopes, undefined)
    assert.equal(authed.x_user_id, undefined)
    const open = JSON.parse((await call(gw, '/open', spoof)).body).headers
    for (const name of Object.keys(spoof)) assert.equal(open[name.toLowerCase()], undefined, name)
  })

  test('no credentials: 401 with a bare Bearer challenge; the upstream is not called', async () => {
    const calls = up.calls
    const res = await call(gw, '/v1/predict')
    assert.equal(res.status, 401)
    assert.equal(res.headers['www-authenticate'], CHALLENGE)
    assert.equal(res.problem.code, 'GH_AUTH_REQUIRED')
    // Another scheme is not a bearer credential.
    const basic = await call(gw, '/v1/predict', { authorization: 'Basic YTpi' })
    assert.equal(basic.status, 401)
    assert.equal(basic.headers['www-authenticate'], CHALLENGE)
    assert.equal(
      (await call(gw, '/v1/predict', { authorization: 'Bearerish abc' }))
        .headers['www-authenticate'],
      CHALLENGE,
    )
    assert.equal(up.calls, calls)
  })

  test('Expect: 100-continue without credentials: 401 at once, no 100, the body is never asked for', async () => {
    const calls = up.calls
    const res = await rawRequest(
      gw.port,
      'POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\nExpect: 100-continue\r\n\r\n',
      500,
    )
    assert.equal(res.status, 401)
    assert.doesNotMatch(res.raw, /100 Continue/)
    assert.equal(res.headers.connection, 'close')
    assert.equal(up.calls, calls)
  })

  test('another spelling of a protected path is the same path: /v1/%70redict, //v1/predict', async () => {
    const calls = up.calls
    for (const path of ['/v1/%70redict', '//v1//predict', '/%76%31/predict/x']) {
      const res = await call(gw, path)
      assert.equal(res.status, 401, path)
    }
    assert.equal((await call(gw, '/v1/predict%zz')).problem.code, 'GH_BAD_PATH')
    assert.equal(up.calls, calls)
    // The normalised path is the one forwarded.
    const token = await idp.token({ scope: 'predict' })
    const ok = await call(gw, '/v1/%70redict/%7Ea%2fb', { authorization: `Bearer ${token}` })
    assert.equal(JSON.parse(ok.body).path, '/v1/predict/~a%2Fb')
  })

  test('malformed or repeated Authorization: 400 invalid_request', async () => {
    const token = await idp.token({ scope: 'predict' })
    for (
      const value of ['Bearer', 'Bearer ', 'Bearer a b', 'Bearer tok"en', 'bearer  two-spaces\\']
    ) {
      const res = await call(gw, '/v1/predict', { authorization: value })
      assert.equal(res.status, 400, value)
      assert.equal(
        res.headers['www-authenticate'],
        'Bearer realm="gatehouse", error="invalid_request"',
        value,
      )
      assert.equal(res.problem.code, 'GH_INVALID_AUTH_REQUEST')
    }
    const dup = await rawRequest(
      gw.port,
      `GET /v1/predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\nAuthorization: Bearer ${token}\r\nConnection: close\r\n\r\n`,
    )
    assert.equal(dup.status, 400)
    assert.equal(
      dup.headers['www-authenticate'],
      'Bearer realm="gatehouse", error="invalid_request"',
    )
  })

  test('a token without the route\'s scope: 403 insufficient_scope naming the scope', async () => {
    const token = await idp.token({ client: 'reader', scope: 'read' })
    const res = await call(gw, '/v1/predict', { authorization: `Bearer ${token}` })
    assert.equal(res.status, 403)
    assert.equal(
      res.headers['www-authenticate'],
      'Bearer realm="gatehouse", error="insufficient_scope", scope="predict"',
    )
    assert.equal(res.problem.code, 'GH_INSUFFICIENT_SCOPE')
  })

  test('claim matchers (list and pattern) and strip_credentials', async () => {
    const batch = await idp.token({ scope: 'predict' })
    const ok = await call(gw, '/v1/batch', { authorization: `Bearer ${batch}` })
    assert.equal(ok.status, 200)
    assert.equal(JSON.parse(ok.body).headers.authorization, undefined)
    const reader = await idp.token({ client: 'reader', scope: 'read' })
    const no = await call(gw, '/v1/batch', { authorization: `Bearer ${reader}` })
    assert.equal(no.status, 403)
    assert.equal(no.problem.code, 'GH_FORBIDDEN')
    assert.equal(
      no.headers['www-authenticate'],
      'Bearer realm="gatehouse", error="insufficient_scope"',
    )
    // The body names no check; the log line does.
    assert.doesNotMatch(no.body, /client_id/)
    const line = await gw.logs.waitFor((l) =>
      l.msg === 'request' && l.id === no.headers['x-request-id']
    )
    assert.match(line.reason, /claim "client_id"/)
  })

  describe('bad tokens: 401 invalid_token, and the exact reason in the log', () => {
    const cases: Array<[string, () => Promise<string>, RegExp]> = [
      ['alg none', async () => {
        const now = Math.floor(Date.now() / 1000)
        const enc = (o: object): string => Buffer.from(JSON.stringify(o)).toString('base64url')
        return `${enc({ alg: 'none', typ: 'at+jwt' })}.${
          enc({ iss: idp.issuer, aud: 'ml-api', sub: 'batch', scope: 'predict', exp: now + 60 })
        }.`
      }, /alg|Unsecured|JWS/i],
      ['HS256 signed with the RSA public key (key confusion)', async () => {
        const pem = createPublicKey({ key: idp.signingKey.jwk as any, format: 'jwk' }).export({
          type: 'spki',
          format: 'pem',
        })
        const now = Math.floor(Date.now() / 1000)
        return new SignJWT({
          iss: idp.issuer,
          aud: 'ml-api',
          sub: 'batch',
          scope: 'predict',
          exp: now + 60,
        })
          .setProtectedHeader({ alg: 'HS256', kid: idp.signingKey.kid }).sign(Buffer.from(pem))
      }, /ERR_JOSE_ALG_NOT_ALLOWED/],
      ['unknown kid', async () => {
        const { privateKey } = await generateKeyPair('RS256')
        return forge({}, { kid: 'not-a-real-kid' }, privateKey)
      }, /ERR_JWKS_NO_MATCHING_KEY/],
      ['expired', () => forge({ exp: Math.floor(Date.now() / 1000) - 3600 }), /expired|"exp"/],
      ['nbf in the future', () => forge({ nbf: Math.floor(Date.now() / 1000) + 3600 }), /"nbf"/],
      ['iat in the future', () => forge({ iat: Math.floor(Date.now() / 1000) + 3600 }),
        /iat is in the future/],
      ['no exp', async () => {
        return new SignJWT({ iss: idp.issuer, aud: 'ml-api', sub: 'batch', scope: 'predict' })
          .setProtectedHeader({ alg: 'RS256', typ: 'at+jwt', kid: idp.signingKey.kid }).sign(
            idp.signingKey.privateKey,
          )
      }, /"exp"/],
      ['wrong iss', () => forge({ iss: 'https://evil.example.com/' }),
        /no provider on this route takes/],
      ['wrong aud', () => forge({ aud: 'other-api' }), /"aud"/],
      ['typ not allowed', () => forge({}, { typ: 'dpop+jwt' }), /typ "dpop\+jwt" is not allowed/],
      ['unknown crit', async () => {
        // jose refuses to sign with an unknown crit, so this one is signed by hand (RS256).
        const enc = (o: object): string => Buffer.from(JSON.stringify(o)).toString('base64url')
        const now = Math.floor(Date.now() / 1000)
        const input = `${
          enc({
            alg: 'RS256',
            typ: 'at+jwt',
            kid: idp.signingKey.kid,
            crit: ['x-must-understand'],
            'x-must-understand': true,
          })
        }.${enc({ iss: idp.issuer, aud: 'ml-api', sub: 'batch', scope: 'predict', exp: now + 60 })}`
        const sig = cryptoSign(
          'sha256',
          Buffer.from(input),
          KeyObject.from(idp.signingKey.privateKey as any),
        )
        return `${input}.${sig.toString('base64url')}`
      }, /Extension Header Parameter "x-must-understand" is not recognized/],
      ['jwk header carrying the attacker\'s key', async () => {
        const { privateKey, publicKey } = await generateKeyPair('RS256', { extractable: true })
        return forge({}, { kid: 'attacker', jwk: await exportJWK(publicKey) }, privateKey)
      }, /ERR_JWKS_NO_MATCHING_KEY/],
      // '+' and '/' are legal in RFC 6750's b64token but not in base64url.
      ['broken base64 in the signature', async () => (await forge()).replace(/\.[^.]+$/, '.++//'),
        /ERR_JWS_INVALID|ERR_JWS_SIGNATURE/],
      ['broken base64 in the header', async () => '+/' + (await forge()).slice(2),
        /ERR_JWS_INVALID/],
      ['a token over 8 KiB', () => forge({ pad: 'x'.repeat(9000) }), /over the 8192-byte limit/],
    ]
    for (const [name, make, reason] of cases) {
      test(name, async () => {
        const token = await make()
        const calls = up.calls
        const res = await call(gw, '/v1/predict', { authorization: `Bearer ${token}` })
        assert.equal(res.status, 401)
        assert.equal(res.headers['www-authenticate'], INVALID)
        assert.equal(res.problem.code, 'GH_INVALID_CREDENTIALS')
        const line = await gw.logs.waitFor((l) =>
          l.msg === 'request' && l.id === res.headers['x-request-id']
        )
        assert.match(line.reason, reason)
        assert.equal(up.calls, calls)
      })
    }

    test('too old or too long-lived (max_age, max_lifetime, 1 d by default): 401 invalid_token saying which', async () => {
      const now = Math.floor(Date.now() / 1000)
      const cases: Array<[string, JWTPayload, RegExp, string]> = [
        ['issued 25 h ago, valid one more hour', { iat: now - 25 * 3600, exp: now + 3600 },
          /issued 25 h ago, over max_age 1d/,
          'The token was issued more than 1d ago; get a new one'],
        ['exp in the year 33658', { iat: now, exp: 1e12 }, /over max_lifetime 1d/,
          'The token is valid for longer than 1d, which this API does not accept'],
        ['no iat, exp in ten days', { iat: undefined, exp: now + 10 * 86_400 },
          /\(exp - now\), over max_lifetime 1d/,
          'The token is valid for longer than 1d, which this API does not accept'],
      ]
      for (const [name, claims, reason, description] of cases) {
        const calls = up.calls
        const res = await call(gw, '/v1/predict', {
          authorization: `Bearer ${await forge(claims)}`,
        })
        assert.equal(res.status, 401, name)
        assert.equal(
          res.headers['www-authenticate'],
          `${INVALID}, error_description="${description}"`,
          name,
        )
        assert.equal(res.problem.code, 'GH_INVALID_CREDENTIALS', name)
        assert.equal(res.problem.detail, description, name)
        const line = await gw.logs.waitFor((l) =>
          l.msg === 'request' && l.id === res.headers['x-request-id']
        )
        assert.match(line.reason, reason, name)
        assert.equal(up.calls, calls, name)
      }
      // Just inside both bounds: admitted.
      const fine = await call(gw, '/v1/predict', {
        authorization: `Bearer ${await forge({ iat: now - 23 * 3600, exp: now + 3600 })}`,
      })
      assert.equal(fine.status, 200)
    })

    test('a jku header is never fetched', async () => {
      const attacker = await startUpstream((_req, res) => res.end('{"keys":[]}'))
      try {
        const { privateKey } = await generateKeyPair('RS256')
        const token = await forge(
          {},
          { kid: 'attacker-2', jku: `${attacker.url}/jwks`, x5u: `${attacker.url}/x5u` } as any,
          privateKey,
        )
        let hits = 0
        attacker.server.on('request', () => {
          hits++
        })
        const res = await call(gw, '/v1/predict', { authorization: `Bearer ${token}` })
        assert.equal(res.status, 401)
        assert.equal(hits, 0)
      } finally {
        await attacker.close()
      }
    })
  })
})

describe('identity: JWKS refetch, rotation and outages', () => {
  test('reloads apply in order: one waiting for a slow IdP does not override a later one', async () => {
    const up = await startEchoUpstream()
    const silent = await startUpstream(() => {/* never answers: discovery times out */})
    const base = {
      upstreams: { model: { targets: [{ url: up.url }] } },
      listen: { host: '127.0.0.1', port: 0 },
      admin: { host: '127.0.0.1', port: 0 },
    }
    const gw = await startGateway(
      { ...base, routes: [{ name: 'first', match: {}, upstream: 'model' }] } as ConfigInput,
    )
    try {
      const slow = gw.gateway.reload({
        ...base,
        identity: {
          providers: {
            sso: { kind: 'jwt', issuer: silent.url, audiences: ['a'], timeout: '300ms' },
          },
        },
        routes: [{ name: 'older', match: {}, upstream: 'model', auth: { any_of: ['sso'] } }],
      } as ConfigInput)
      const fast = gw.gateway.reload(
        { ...base, routes: [{ name: 'newer', match: {}, upstream: 'model' }] } as ConfigInput,
      )
      await Promise.all([slow, fast])
      assert.equal(gw.gateway.table.routes[0]!.name, 'newer')
      assert.equal((await call(gw, '/x')).status, 200)
    } finally {
      await gw.close()
      await silent.close()
      await up.close()
    }
  })

  test('a flood of unknown kids causes at most one JWKS fetch per cooldown', async () => {
    const idp = await startIdp()
    const up = await startEchoUpstream()
    const gw = await startGateway(jwtConfig(idp.issuer, up.url, { refetch_cooldown: '60s' }))
    try {
      const fetches = idp.counts['/jwks'] ?? 0
      const { privateKey } = await generateKeyPair('RS256')
      const now = Math.floor(Date.now() / 1000)
      const tokens = await Promise.all(
        Array.from(
          { length: 40 },
          (_, i) =>
            new SignJWT({
              iss: idp.issuer,
              aud: 'ml-api',
              sub: 'x',
              scope: 'predict',
              exp: now + 60,
            })
              .setProtectedHeader({ alg: 'RS256', kid: `forged-${i}` }).sign(privateKey),
        ),
      )
      const statuses = await Promise.all(
        tokens.map(async (t) =>
          (await call(gw, '/v1/predict', { authorization: `Bearer ${t}` })).status
        ),
      )
      assert.deepEqual(new Set(statuses), new Set([401]))
      assert.ok(
        (idp.counts['/jwks'] ?? 0) - fetches <= 1,
        `JWKS fetched ${(idp.counts['/jwks'] ?? 0) - fetches} times`,
      )
    } finally {
      await gw.close()
      await up.close()
      await idp.close()
    }
  })

  test('key rotation: a new kid is fetched on first sight; a retired key stops working, cached tokens too', async () => {
    const idp = await startIdp()
    const up = await startEchoUpstream()
    // Background refresh every second, so retirement is seen without a new kid.
    const gw = await startGateway(
      jwtConfig(idp.issuer, up.url, { key_max_age: '1s', refetch_cooldown: '60s' }),
    )
    try {
      const oldToken = await idp.token({ scope: 'predict' })
      assert.equal(
        (await call(gw, '/v1/predict', { authorization: `Bearer ${oldToken}` })).status,
        200,
      )
      const next = await idp.rotate()
      const newToken = await idp.token({ scope: 'predict' })
      assert.match(
        Buffer.from(newToken.split('.')[0]!, 'base64url').toString(),
        new RegExp(next.kid),
      )
      assert.equal(
        (await call(gw, '/v1/predict', { authorization: `Bearer ${newToken}` })).status,
        200,
      )
      // The old key is still published: its tokens still work.
      assert.equal(
        (await call(gw, '/v1/predict', { authorization: `Bearer ${oldToken}` })).status,
        200,
      )
      idp.retireOld()
      await waitUntilAsync(async () =>
        (await call(gw, '/v1/predict', { authorization: `Bearer ${oldToken}` })).status === 401
      )
      assert.equal(
        (await call(gw, '/v1/predict', { authorization: `Bearer ${newToken}` })).status,
        200,
      )
    } finally {
      await gw.close()
      await up.close()
      await idp.close()
    }
  })

  test('IdP down: the last good keys keep serving and /readyz says degraded', async () => {
    const idp = await startIdp()
    const up = await startEchoUpstream()
    const gw = await startGateway(jwtConfig(idp.issuer, up.url, { key_max_age: '1s' }))
    try {
      const token = await idp.token({ scope: 'predict' })
      idp.down = true
      await waitUntilAsync(async () =>
        JSON.parse((await request(`http://127.0.0.1:${gw.adminPort}/readyz`)).body).status ===
        'degraded'
      )
      const ready = await request(`http://127.0.0.1:${gw.adminPort}/readyz`)
      assert.equal(ready.status, 200)
      const body = JSON.parse(ready.body)
      assert.equal(body.identity.sso.status, 'stale')
      assert.match(body.identity.sso.last_error, /503/)
      assert.equal(
        (await call(gw, '/v1/predict', { authorization: `Bearer ${token}` })).status,
        200,
      )
      assert.match(
        await metricsText(gw.adminPort!),
        /gatehouse_jwks_fetches_total\{provider="sso",result="failure"\} [1-9]/,
      )
      // A kid the stale set does not know may have been rotated in during the outage: 503, not 401.
      const { privateKey } = await generateKeyPair('RS256')
      const now = Math.floor(Date.now() / 1000)
      const rotated = await new SignJWT({
        iss: idp.issuer,
        aud: 'ml-api',
        sub: 'batch',
        scope: 'predict',
        exp: now + 60,
      })
        .setProtectedHeader({ alg: 'RS256', kid: 'rotated-during-outage' }).sign(privateKey)
      const unknown = await call(gw, '/v1/predict', { authorization: `Bearer ${rotated}` })
      assert.equal(unknown.status, 503)
      assert.equal(unknown.problem.code, 'GH_AUTH_UNAVAILABLE')
      idp.down = false
      await waitUntilAsync(async () =>
        JSON.parse((await request(`http://127.0.0.1:${gw.adminPort}/readyz`)).body).status ===
        'ready'
      )
    } finally {
      await gw.close()
      await up.close()
      await idp.close()
    }
  })

  test('IdP down from the start: not ready, and tokens get 503 (never 401, never access)', async () => {
    const idp = await startIdp()
    const token = await idp.token({ scope: 'predict' })
    idp.down = true
    const up = await startEchoUpstream()
    const gw = await startGateway(jwtConfig(idp.issuer, up.url, { refetch_cooldown: '1s' }))
    try {
      const ready = await request(`http://127.0.0.1:${gw.adminPort}/readyz`)
      assert.equal(ready.status, 503)
      assert.equal(JSON.parse(ready.body).identity.sso.status, 'unavailable')
      const res = await call(gw, '/v1/predict', { authorization: `Bearer ${token}` })
      assert.equal(res.status, 503)
      assert.equal(res.problem.code, 'GH_AUTH_UNAVAILABLE')
      assert.equal(res.headers['www-authenticate'], undefined)
      assert.equal(up.calls, 0)
      idp.down = false
      await waitUntilAsync(
        async () =>
          (await call(gw, '/v1/predict', { authorization: `Bearer ${token}` })).status === 200,
        8000,
      )
      assert.equal((await request(`http://127.0.0.1:${gw.adminPort}/readyz`)).status, 200)
    } finally {
      await gw.close()
      await up.close()
      await idp.close()
    }
  })
})

function counter (metrics: string, result: string): number {
  const m = new RegExp(`gatehouse_auth_total\\{provider="sso",result="${result}"\\} (\\d+)`).exec(
    metrics,
  )
  return m === null ? 0 : Number(m[1])
}
