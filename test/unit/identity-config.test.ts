import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { generateKeyPairSync } from 'node:crypto'
import { parseConfig } from '../../src/index.js'
import { configError, issueAt } from '../helpers/config.js'

const BASE = `upstreams:
  model: { targets: [{ url: "http://127.0.0.1:9000" }] }
identity:
  providers:
    sso: { kind: jwt, issuer: "https://sso.example.com/", audiences: [ml-api] }
    keys:
      kind: api_key
      keys: [{ id: acme, sha256: "${'ab'.repeat(32)}", scopes: [predict], metadata: { org: acme } }]
`

describe('config: identity', () => {
  it('fills provider defaults', () => {
    const c = parseConfig(BASE + 'routes: []\n', { env: {} })
    const sso = c.identity.providers.sso!
    assert.equal(sso.kind, 'jwt')
    if (sso.kind !== 'jwt') return
    assert.deepEqual(sso.algorithms, ['RS256', 'PS256', 'ES256', 'EdDSA'])
    assert.equal(sso.clock_skew, 30_000)
    assert.equal(sso.key_max_age, 600_000)
    assert.equal(sso.refetch_cooldown, 30_000)
    assert.deepEqual(sso.token_types, ['at+jwt', 'JWT'])
    assert.equal(sso.max_token_size, 8192)
    const keys = c.identity.providers.keys!
    assert.equal(keys.kind === 'api_key' && keys.header, 'x-api-key')
    assert.equal(c.identity.realm, 'gatehouse')
  })

  it('names an unknown provider in any_of, with a hint and its line', () => {
    const err = configError(
      BASE + `routes:
  - name: predict
    upstream: model
    auth: { any_of: [keys, ssso] }
`,
    )
    const issue = issueAt(err, 'routes[0].auth.any_of[1]')
    assert.equal(issue.message, 'unknown identity provider "ssso" (did you mean "sso"?)')
    assert.equal(issue.line, 12)
  })

  it('refuses HMAC and "none" algorithms for JWKS-backed providers', () => {
    const err = configError(
      BASE.replace(
        'audiences: [ml-api] }',
        'audiences: [ml-api], algorithms: [RS256, HS256, none] }',
      ) + 'routes: []\n',
    )
    assert.match(
      issueAt(err, 'identity.providers.sso.algorithms[1]').message,
      /must be one of "RS256"/,
    )
    assert.match(issueAt(err, 'identity.providers.sso.algorithms[2]').message, /must be one of/)
  })

  it('requires audiences and an http(s) issuer', () => {
    const err = configError(`identity:
  providers:
    sso: { kind: jwt, issuer: "sso.example.com" }
`)
    assert.equal(issueAt(err, 'identity.providers.sso.audiences').message, 'is required')
    assert.equal(
      issueAt(err, 'identity.providers.sso.issuer').message,
      'issuer must be an http:// or https:// URL',
    )
  })

  it('names an unknown kind and lists the known ones', () => {
    const err = configError(`identity:
  providers:
    x: { kind: saml }
`)
    assert.equal(
      issueAt(err, 'identity.providers.x.kind').message,
      'unknown "saml": must be one of "jwt", "introspection", "api_key", "webhook"',
    )
  })

  it('suggests keys of the provider kind that was chosen', () => {
    const err = configError(`identity:
  providers:
    partner: { kind: introspection, endpoint: "https://as/introspect", client_id: gh, client_secret: s, auth_methd: post }
`)
    assert.equal(
      issueAt(err, 'identity.providers.partner.auth_methd').message,
      'unknown key "auth_methd" (did you mean "auth_method"?)',
    )
  })

  it('refuses API-key headers the gateway rewrites (Authorization is allowed: keys as bearer tokens)', () => {
    const err = configError(`identity:
  providers:
    a: { kind: api_key, header: host }
    b: { kind: api_key, header: X_Gatehouse_Key }
    c: { kind: api_key, header: authorization }
`)
    assert.equal(
      issueAt(err, 'identity.providers.a.header').message,
      '"host" is a header the gateway sets or rewrites itself',
    )
    assert.equal(
      issueAt(err, 'identity.providers.b.header').message,
      '"x_gatehouse_key" is a header the gateway sets or rewrites itself',
    )
    assert.equal(err.issues.length, 2)
  })

  it('checks API key digests', () => {
    const err = configError(`identity:
  providers:
    keys: { kind: api_key, keys: [{ id: a, sha256: "my-plain-key" }] }
`)
    assert.equal(
      issueAt(err, 'identity.providers.keys.keys[0].sha256').message,
      'must be the 64-hex-digit SHA-256 of the key',
    )
  })

  it('checks ip CIDRs, claim patterns and identity headers', () => {
    const err = configError(
      BASE + `routes:
  - name: predict
    upstream: model
    auth: { any_of: [sso], claims: { org: { pattern: "(" } } }
    ip: { allow: [10.0.0.0/33], deny: [nonsense] }
    identity_headers: { subject: authorization, claims: { org: x-api-key, tier: "bad header" } }
  - name: other
    upstream: model
    identity_headers: { subject: x-user }
`,
    )
    assert.match(
      issueAt(err, 'routes[0].auth.claims.org.pattern').message,
      /invalid regular expression/,
    )
    assert.equal(
      issueAt(err, 'routes[0].ip.allow[0]').message,
      'invalid CIDR or address "10.0.0.0/33": the prefix length must be a whole number from 0 to 32',
    )
    assert.equal(issueAt(err, 'routes[0].ip.deny[0]').message, 'invalid CIDR or address "nonsense"')
    assert.equal(
      issueAt(err, 'routes[0].identity_headers.subject').message,
      '"authorization" is a header the gateway sets or rewrites itself',
    )
    assert.equal(
      issueAt(err, 'routes[0].identity_headers.claims.org').message,
      '"x-api-key" carries API keys (identity.providers)',
    )
    assert.equal(
      issueAt(err, 'routes[0].identity_headers.claims.tier').message,
      'not a valid header name',
    )
    assert.equal(
      issueAt(err, 'routes[1].identity_headers').message,
      'identity headers need an auth block on the route',
    )
  })

  it('phantom tokens need a key that fits the algorithm', () => {
    const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({
      type: 'pkcs8',
      format: 'pem',
    }) as string
    const err = configError(`identity:
  phantom_token: { key: ${JSON.stringify(rsa)}, alg: ES256, issuer: gh, audience: models }
upstreams:
  model: { targets: [{ url: "http://127.0.0.1:9000" }] }
routes:
  - { name: a, upstream: model, auth: { any_of: [] } }
`)
    assert.equal(
      issueAt(err, 'identity.phantom_token.key').message,
      'a rsa key cannot sign ES256 (it needs ec)',
    )
    assert.equal(issueAt(err, 'routes[0].auth.any_of').message, 'name at least one provider')
    const err2 = configError(
      BASE + `routes:
  - { name: a, upstream: model, auth: { any_of: [sso], phantom_token: true } }
`,
    )
    assert.equal(
      issueAt(err2, 'routes[0].auth.phantom_token').message,
      'needs identity.phantom_token (the key the gateway signs with)',
    )
    const err3 = configError(`identity:
  phantom_token: { key: "not a key", issuer: gh, audience: models, header: X-Forwarded-For }
`)
    assert.match(issueAt(err3, 'identity.phantom_token.key').message, /^not a PEM private key/)
    assert.equal(
      issueAt(err3, 'identity.phantom_token.header').message,
      '"x-forwarded-for" is a header the gateway sets or rewrites itself',
    )
    const p256 = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey
    const sec1 = p256.export({ type: 'sec1', format: 'pem' }) as string
    const err4 = configError(`identity:
  phantom_token: { key: ${JSON.stringify(sec1)}, issuer: gh, audience: models }
`)
    assert.match(issueAt(err4, 'identity.phantom_token.key').message, /must be a PKCS#8 PEM/)
    const err5 = configError(`identity:
  phantom_token: { key: ${
    JSON.stringify(p256.export({ type: 'pkcs8', format: 'pem' }))
  }, alg: ES384, issuer: gh, audience: models }
`)
    assert.equal(
      issueAt(err5, 'identity.phantom_token.key').message,
      'ES384 needs a secp384r1 key, not prime256v1',
    )
  })
})
