import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import http from 'node:http'
import { once } from 'node:events'
import type { AddressInfo } from 'node:net'
import { generateKeyPairSync } from 'node:crypto'
import { decodeJwt, exportJWK, generateKeyPair, SignJWT, type CryptoKey } from 'jose'
import { validateConfig } from '../../src/config/load.js'
import { ConfigError } from '../../src/errors/index.js'
import { headerValue } from '../../src/policies/auth/policy.js'
import { request, startEchoUpstream, startGateway, type TestGateway } from '../helpers/index.js'

/*
 * Identity headers must tell distinct values apart: an upstream that decodes them (the snippets
 * in docs/configuration.md#identity-headers-and-header-stripping) gets back exactly the claim.
 */

/** The JS decoding snippet from the docs. */
const decodeValue = (h: string): string => decodeURIComponent(h)
const decodeList = (h: string): string[] => h.split(',').map(decodeURIComponent)
const decodeScopes = (h: string): string[] => h.split(' ').map(decodeURIComponent)

describe('headerValue: one header per distinct value', () => {
  it('tells a raw non-ASCII subject from its percent-encoded spelling', () => {
    assert.equal(headerValue('josé'), 'jos%C3%A9')
    assert.equal(headerValue('jos%C3%A9'), 'jos%25C3%25A9')
    assert.equal(decodeValue(headerValue('josé')!), 'josé')
    assert.equal(decodeValue(headerValue('jos%C3%A9')!), 'jos%C3%A9')
  })

  it('tells the list ["dev","admin"] from the string "dev,admin"', () => {
    assert.equal(headerValue(['dev', 'admin']), 'dev,admin')
    assert.equal(headerValue('dev,admin'), 'dev%2Cadmin')
    assert.deepEqual(decodeList(headerValue(['dev', 'admin'])!), ['dev', 'admin'])
    assert.deepEqual(decodeList(headerValue('dev,admin')!), ['dev,admin'])
  })

  it('keeps whitespace HTTP would trim, and escapes what could break the header', () => {
    assert.equal(headerValue(' alice'), '%20alice')
    assert.equal(headerValue('alice\t'), 'alice%09')
    assert.equal(headerValue(['a', ' b']), 'a,%20b')
    assert.equal(headerValue('evil\r\nx-admin: 1'), 'evil%0D%0Ax-admin:%201')
    assert.equal(headerValue('100%'), '100%25')
  })

  it('writes a Set (the scopes) space-separated, each scope escaped', () => {
    assert.equal(headerValue(new Set(['read', 'write'])), 'read write')
    assert.equal(headerValue(new Set(['a,b', '50%'])), 'a%2Cb 50%25')
    assert.deepEqual(decodeScopes(headerValue(new Set(['a,b', '50%']))!), ['a,b', '50%'])
    assert.equal(headerValue(new Set()), null)
  })

  it('sends no header for absent and empty values', () => {
    for (const v of [null, undefined, '', [], [''], new Set()]) {
      assert.equal(headerValue(v), null, String(v))
    }
  })

  it('objects and non-string list items are JSON, escaped like any item', () => {
    assert.equal(headerValue({ a: 1, b: 2 }), '{"a":1%2C"b":2}')
    assert.deepEqual(JSON.parse(decodeValue(headerValue({ a: 1, b: 'x y' })!)), { a: 1, b: 'x y' })
    assert.equal(headerValue([1, true, { k: 'v' }]), '1,true,{"k":"v"}')
    assert.equal(headerValue(600), '600')
    assert.equal(headerValue(false), 'false')
  })

  it('round-trips every string and list of strings, lone surrogates aside', () => {
    const samples = ['josé', 'jos%C3%A9', 'dev,admin', ' x ', '%', '%%2C', ',', 'a b', '日本', '😀',
      '\u0000', '\u007f', 'quote"s', 'back\\slash', '+plus']
    const seen = new Map<string, unknown>()
    const note = (v: unknown): void => {
      const h = headerValue(v)!
      assert.match(h, /^[\x21-\x7e]+(?: [\x21-\x7e]+)*$/, `${JSON.stringify(v)} → ${h}`)
      const before = seen.get(h)
      assert.ok(
        before === undefined,
        `${JSON.stringify(v)} and ${JSON.stringify(before)} share the header ${h}`,
      )
      seen.set(h, v)
    }
    for (const s of samples) {
      assert.equal(decodeValue(headerValue(s)!), s)
      note(s)
    }
    for (const a of samples) {
      for (const b of samples) {
        assert.deepEqual(decodeList(headerValue([a, b])!), [a, b])
        note([a, b])
      }
    }
    // Not text: a lone surrogate is sent as U+FFFD instead of failing the request.
    assert.equal(headerValue('\ud800'), '%EF%BF%BD')
  })
})

const PHANTOM_KEY = generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey.export({
  type: 'pkcs8',
  format: 'pem',
}) as string

describe('identity headers and phantom tokens reach the upstream unambiguously', () => {
  let jwks: http.Server
  let issuer: string
  let privateKey: CryptoKey
  let up: Awaited<ReturnType<typeof startEchoUpstream>>
  let gw: TestGateway
  before(async () => {
    const pair = await generateKeyPair('ES256')
    privateKey = pair.privateKey
    const jwk = { ...(await exportJWK(pair.publicKey)), kid: 'k1', alg: 'ES256' }
    jwks = http.createServer((_req, res) => {
      res.setHeader('content-type', 'application/json')
      res.end(JSON.stringify({ keys: [jwk] }))
    })
    jwks.listen(0, '127.0.0.1')
    await once(jwks, 'listening')
    issuer = `http://127.0.0.1:${(jwks.address() as AddressInfo).port}`
    up = await startEchoUpstream()
    gw = await startGateway({
      identity: {
        providers: {
          sso: { kind: 'jwt', issuer, jwks_uri: `${issuer}/jwks`, audiences: ['ml-api'] },
        },
        phantom_token: {
          key: PHANTOM_KEY,
          issuer: 'https://gatehouse.internal',
          audience: 'models',
        },
      },
      upstreams: { up: { targets: [{ url: up.url }] } },
      routes: [
        {
          name: 'r',
          match: { path_prefix: '/r' },
          upstream: 'up',
          auth: { any_of: ['sso'] },
          identity_headers: { claims: { roles: 'x-roles' } },
        },
        {
          name: 'phantom',
          match: { path_prefix: '/phantom' },
          upstream: 'up',
          auth: { any_of: ['sso'], phantom_token: true },
        },
      ],
    })
  })
  after(async () => {
    await gw.close()
    await up.close()
    jwks.close()
  })

  const seen = async (
    claims: Record<string, unknown>,
    path = '/r',
  ): Promise<Record<string, string>> => {
    const now = Math.floor(Date.now() / 1000)
    const token = await new SignJWT(claims).setProtectedHeader({
      alg: 'ES256',
      kid: 'k1',
      typ: 'at+jwt',
    })
      .setIssuer(issuer).setAudience('ml-api').setIssuedAt(now).setExpirationTime(now + 600).sign(
        privateKey,
      )
    const res = await request(gw.url + path, { headers: { authorization: `Bearer ${token}` } })
    assert.equal(res.status, 200)
    return JSON.parse(res.body).headers
  }

  it('subjects josé and jos%C3%A9 arrive as two different headers', async () => {
    const a = await seen({ sub: 'josé' })
    const b = await seen({ sub: 'jos%C3%A9' })
    assert.equal(a['x-gatehouse-subject'], 'jos%C3%A9')
    assert.equal(b['x-gatehouse-subject'], 'jos%25C3%25A9')
  })

  it('roles ["dev","admin"] and "dev,admin" arrive as two different headers', async () => {
    const list = await seen({ sub: 'u1', roles: ['dev', 'admin'] })
    const text = await seen({ sub: 'u2', roles: 'dev,admin' })
    assert.equal(list['x-roles'], 'dev,admin')
    assert.equal(text['x-roles'], 'dev%2Cadmin')
  })

  it('scopes with a comma cannot pose as two', async () => {
    const h = await seen({ sub: 'u3', scp: ['read,admin', 'write'] })
    assert.equal(h['x-gatehouse-scopes'], 'read%2Cadmin write')
  })

  it('a phantom token carries the scopes the gateway checked as one scope claim, never the caller\'s scp', async () => {
    const phantom = async (claims: Record<string, unknown>): Promise<Record<string, unknown>> => {
      const h = await seen(claims, '/phantom')
      return decodeJwt(h.authorization!.replace(/^Bearer /, ''))
    }
    // The gateway reads `scope` and ignores `scp`: an upstream reading scp must not see admin.
    const both = await phantom({ sub: 'u4', scope: 'read', scp: ['read', 'admin'] })
    assert.equal(both.scope, 'read')
    assert.equal(both.scp, undefined)
    // Okta style: scp only, normalised to scope.
    const okta = await phantom({ sub: 'u5', scp: ['read', 'write', 'not a scope'] })
    assert.equal(okta.scope, 'read write')
    assert.equal(okta.scp, undefined)
  })
})

describe('API key scopes', () => {
  it('refuses a scope with whitespace, which the space-separated scope lists would read as two', () => {
    assert.throws(() => validateConfig({
      identity: {
        providers: {
          keys: {
            kind: 'api_key',
            keys: [{ id: 'k', sha256: 'a'.repeat(64), scopes: ['read admin'] }],
          },
        },
      },
    }), (err: unknown) =>
      err instanceof ConfigError &&
      err.message ===
        'config: identity.providers.keys.keys[0].scopes[0]: a scope cannot contain whitespace (scopes are space-separated)')
  })
})
