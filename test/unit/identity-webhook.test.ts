import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import type { WebhookProviderConfig } from '../../src/config/schema.js'
import { parseConfig } from '../../src/index.js'
import { GatewayError } from '../../src/errors/index.js'
import { IdentityRegistry } from '../../src/identity/registry.js'
import { isIdentity, type AuthResult, type Identity } from '../../src/identity/types.js'
import { WebhookProvider } from '../../src/identity/webhook.js'
import { createLogger } from '../../src/observability/logger.js'
import { Metrics } from '../../src/observability/metrics.js'
import { configError, issueAt } from '../helpers/config.js'

const deps = { logger: createLogger('silent'), metrics: new Metrics() }

type Cfg = Omit<WebhookProviderConfig, 'kind' | 'tolerance'> & { tolerance?: number }

function provider (cfg: Cfg, realm?: string): WebhookProvider {
  return new WebhookProvider('hook', { kind: 'webhook', tolerance: 300_000, ...cfg }, deps, realm)
}

/** A request's headers as the policy hands them over: every value of a (lower-case) name. */
function headers (h: Record<string, string | string[]>): (name: string) => readonly string[] {
  return (name) => {
    const v = h[name]
    return v === undefined ? [] : Array.isArray(v) ? v : [v]
  }
}

/**
 * HMAC computed by openssl, not by node:crypto, so the expected values do not share code (or
 * mistakes) with the implementation. The key is passed as hex, so any bytes work.
 */
function opensslHmac (
  algorithm: 'sha1' | 'sha256' | 'sha512',
  key: string | Buffer,
  data: Buffer,
): Buffer {
  const hexkey = (typeof key === 'string' ? Buffer.from(key, 'utf8') : key).toString('hex')
  return execFileSync('openssl', ['dgst', `-${algorithm}`, '-mac', 'HMAC', '-macopt',
    `hexkey:${hexkey}`, '-binary'], { input: data })
}

function ok (r: AuthResult): Identity {
  if (!isIdentity(r)) {
    assert.fail(
      `expected an identity, got ${(r as GatewayError).code}: ${(r as GatewayError).reason}`,
    )
  }
  return r
}

/** A refusal: always 401 GH_INVALID_SIGNATURE with a challenge; the reason names what failed. */
function refused (r: AuthResult, reason: RegExp, detail = /missing or invalid/): GatewayError {
  assert.ok(r instanceof GatewayError, 'expected a GatewayError')
  assert.equal(r.code, 'GH_INVALID_SIGNATURE')
  assert.equal(r.status, 401)
  assert.match(r.detail, detail)
  assert.match(r.reason ?? '', reason)
  assert.match(
    r.headers?.['www-authenticate'] ?? '',
    /^Signature realm="[^"]+", headers="[a-z0-9-]+"$/,
  )
  return r
}

// Slack's published example ("Verifying requests from Slack").
const SLACK = {
  secret: '8f742231b10e8888abcd99yyyzzz85a5',
  timestamp: '1531420618',
  body: Buffer.from(
    'token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c',
  ),
  signature: 'v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503',
}
const SLACK_NOW = Number(SLACK.timestamp) * 1000

// GitHub's published example ("Validating webhook deliveries").
const GITHUB = {
  secret: 'It\'s a Secret to Everybody',
  body: Buffer.from('Hello, World!'),
  signature: 'sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17',
}

// The Standard Webhooks specification's test vector (also in its reference libraries' tests).
const STANDARD = {
  secret: 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw',
  id: 'msg_p5jXN8AQM9LWM0D4loKWxJek',
  timestamp: '1614265330',
  body: Buffer.from('{"test": 2432232314}'),
  signature: 'v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=',
}

function slackHeaders (
  over: Record<string, string | string[]> = {},
): (name: string) => readonly string[] {
  return headers({
    'x-slack-signature': SLACK.signature,
    'x-slack-request-timestamp': SLACK.timestamp,
    ...over,
  })
}

describe('webhook provider: slack', () => {
  const slack = provider({ scheme: 'slack', secrets: [SLACK.secret] })

  it('verifies Slack\'s published example', () => {
    const id = ok(slack.verify(slackHeaders(), SLACK.body, SLACK_NOW))
    assert.equal(id.provider, 'hook')
    assert.equal(id.kind, 'webhook')
    assert.equal(id.subject, null)
    assert.equal(id.clientId, null)
    assert.equal(id.scopes.size, 0)
    assert.equal(id.expiresAt, Infinity)
    assert.equal(id.phantom, null)
    assert.deepEqual(id.claims, { scheme: 'slack', timestamp: 1531420618 })
    assert.ok(Object.isFrozen(id.claims))
  })

  it('names its headers and its credential source', () => {
    assert.equal(slack.kind, 'webhook')
    assert.deepEqual(slack.source, { kind: 'signature', name: 'x-slack-signature' })
    assert.deepEqual(slack.headers, ['x-slack-signature', 'x-slack-request-timestamp'])
  })

  it('accepts a timestamp exactly at the tolerance, refuses one second past it', () => {
    ok(slack.verify(slackHeaders(), SLACK.body, SLACK_NOW + 300_000))
    ok(slack.verify(slackHeaders(), SLACK.body, SLACK_NOW - 300_000))
    refused(
      slack.verify(slackHeaders(), SLACK.body, SLACK_NOW + 301_000),
      /too old by 301 s/,
      /outside the allowed tolerance/,
    )
  })

  it('refuses a replayed (valid but old) signature', () => {
    const r = refused(
      slack.verify(slackHeaders(), SLACK.body, SLACK_NOW + 86_400_000),
      /x-slack-request-timestamp 1531420618 is too old by 86400 s \(tolerance 300 s\)/,
      /outside the allowed tolerance/,
    )
    assert.equal(
      r.headers?.['www-authenticate'],
      'Signature realm="gatehouse", headers="x-slack-signature"',
    )
  })

  it('refuses stale and future timestamps before checking the signature', () => {
    const stale = String(Number(SLACK.timestamp) - 301)
    refused(
      slack.verify(slackHeaders({ 'x-slack-request-timestamp': stale }), SLACK.body, SLACK_NOW),
      /too old by 301 s/,
      /outside the allowed tolerance/,
    )
    const future = String(Number(SLACK.timestamp) + 3600)
    refused(
      slack.verify(slackHeaders({ 'x-slack-request-timestamp': future }), SLACK.body, SLACK_NOW),
      /too new by 3600 s/,
      /outside the allowed tolerance/,
    )
  })

  it('refuses missing headers', () => {
    refused(
      slack.verify(
        headers({ 'x-slack-request-timestamp': SLACK.timestamp }),
        SLACK.body,
        SLACK_NOW,
      ),
      /missing x-slack-signature header/,
    )
    refused(
      slack.verify(headers({ 'x-slack-signature': SLACK.signature }), SLACK.body, SLACK_NOW),
      /missing x-slack-request-timestamp header/,
    )
  })

  it('refuses a timestamp that is not whole seconds', () => {
    for (
      const ts of ['abc', '1531420618.0', '-1531420618', ' 1531420618', '1e9', '',
        '1234567890123456']
    ) {
      refused(
        slack.verify(slackHeaders({ 'x-slack-request-timestamp': ts }), SLACK.body, SLACK_NOW),
        /x-slack-request-timestamp is not a Unix time in whole seconds/,
      )
    }
  })

  it('refuses a signature or timestamp header sent twice (ambiguous), even when one is valid', () => {
    refused(
      slack.verify(
        slackHeaders({ 'x-slack-signature': [SLACK.signature, SLACK.signature] }),
        SLACK.body,
        SLACK_NOW,
      ),
      /x-slack-signature header present 2 times/,
    )
    refused(
      slack.verify(
        slackHeaders({ 'x-slack-request-timestamp': [SLACK.timestamp, SLACK.timestamp] }),
        SLACK.body,
        SLACK_NOW,
      ),
      /x-slack-request-timestamp header present 2 times/,
    )
  })

  it('refuses another version prefix', () => {
    refused(
      slack.verify(
        slackHeaders({ 'x-slack-signature': SLACK.signature.replace('v0=', 'v1=') }),
        SLACK.body,
        SLACK_NOW,
      ),
      /x-slack-signature does not start with "v0="/,
    )
  })

  it('refuses wrong-length signatures without throwing', () => {
    const hex = SLACK.signature.slice(3)
    refused(
      slack.verify(
        slackHeaders({ 'x-slack-signature': `v0=${hex.slice(0, 32)}` }),
        SLACK.body,
        SLACK_NOW,
      ),
      /is 16 bytes, a sha256 HMAC is 32/,
    )
    refused(
      slack.verify(slackHeaders({ 'x-slack-signature': `v0=${hex}00` }), SLACK.body, SLACK_NOW),
      /is 33 bytes, a sha256 HMAC is 32/,
    )
    refused(
      slack.verify(slackHeaders({ 'x-slack-signature': 'v0=' }), SLACK.body, SLACK_NOW),
      /not valid hex/,
    )
  })

  it('refuses non-hex garbage and odd-length hex (which Buffer.from would silently truncate)', () => {
    const hex = SLACK.signature.slice(3)
    refused(
      slack.verify(
        slackHeaders({ 'x-slack-signature': `v0=${'zz'.repeat(32)}` }),
        SLACK.body,
        SLACK_NOW,
      ),
      /not valid hex/,
    )
    // The valid signature plus one stray digit: Buffer.from(..., 'hex') would decode the valid 32 bytes.
    refused(
      slack.verify(slackHeaders({ 'x-slack-signature': `v0=${hex}0` }), SLACK.body, SLACK_NOW),
      /not valid hex/,
    )
    refused(
      slack.verify(
        slackHeaders({ 'x-slack-signature': `v0=${hex.slice(0, 62)}g${hex.slice(63)}` }),
        SLACK.body,
        SLACK_NOW,
      ),
      /not valid hex/,
    )
  })

  it('refuses a wrong secret and a body changed by one byte', () => {
    const wrong = provider({ scheme: 'slack', secrets: ['another-secret'] })
    refused(
      wrong.verify(slackHeaders(), SLACK.body, SLACK_NOW),
      /x-slack-signature signature matched none of 1 secret$/,
    )
    const body = Buffer.from(SLACK.body)
    body[body.length - 1]! ^= 1
    refused(slack.verify(slackHeaders(), body, SLACK_NOW), /matched none of 1 secret/)
  })

  it('tries every secret (rotation): the second of two matches', () => {
    const rotating = provider({ scheme: 'slack', secrets: ['the-new-secret', SLACK.secret] })
    ok(rotating.verify(slackHeaders(), SLACK.body, SLACK_NOW))
    const neither = provider({ scheme: 'slack', secrets: ['one', 'two'] })
    refused(neither.verify(slackHeaders(), SLACK.body, SLACK_NOW), /matched none of 2 secrets/)
  })

  it('uses the realm it was given in the challenge', () => {
    const r = refused(
      provider({ scheme: 'slack', secrets: [SLACK.secret] }, 'acme').verify(
        headers({}),
        SLACK.body,
        SLACK_NOW,
      ),
      /missing/,
    )
    assert.equal(
      r.headers?.['www-authenticate'],
      'Signature realm="acme", headers="x-slack-signature"',
    )
  })
})

describe('webhook provider: github', () => {
  const github = provider({ scheme: 'github', secrets: [GITHUB.secret] })

  it('verifies GitHub\'s published example, with the delivery id as claims.id', () => {
    const id = ok(
      github.verify(
        headers({
          'x-hub-signature-256': GITHUB.signature,
          'x-github-delivery': '72d3162e-cc78-11e3-81ab-4c9367dc0958',
        }),
        GITHUB.body,
        Date.now(),
      ),
    )
    assert.deepEqual(id.claims, { scheme: 'github', id: '72d3162e-cc78-11e3-81ab-4c9367dc0958' })
    // No timestamp: the same delivery verifies whenever it is replayed (GitHub offers no more).
    assert.deepEqual(
      ok(github.verify(headers({ 'x-hub-signature-256': GITHUB.signature }), GITHUB.body, 0))
        .claims,
      { scheme: 'github' },
    )
  })

  it('names its headers and its credential source', () => {
    assert.deepEqual(github.source, { kind: 'signature', name: 'x-hub-signature-256' })
    assert.deepEqual(github.headers, ['x-hub-signature-256', 'x-github-delivery'])
  })

  it('refuses the SHA-1 header alone, another prefix, and a changed body', () => {
    const sha1 = 'sha1=' + opensslHmac('sha1', GITHUB.secret, GITHUB.body).toString('hex')
    refused(
      github.verify(headers({ 'x-hub-signature': sha1 }), GITHUB.body, 0),
      /missing x-hub-signature-256 header/,
    )
    refused(
      github.verify(headers({ 'x-hub-signature-256': GITHUB.signature.slice(7) }), GITHUB.body, 0),
      /does not start with "sha256="/,
    )
    refused(
      github.verify(
        headers({ 'x-hub-signature-256': GITHUB.signature }),
        Buffer.from('Hello, World?'),
        0,
      ),
      /matched none of 1 secret/,
    )
  })

  it('refuses a repeated delivery id', () => {
    refused(
      github.verify(
        headers({ 'x-hub-signature-256': GITHUB.signature, 'x-github-delivery': ['a', 'b'] }),
        GITHUB.body,
        0,
      ),
      /x-github-delivery header present 2 times/,
    )
  })
})

describe('webhook provider: stripe', () => {
  const secret = 'whsec_stripe_test_secret'
  const stripe = provider({ scheme: 'stripe', secrets: [secret] })
  const body = Buffer.from('{"id":"evt_1","object":"event","type":"payment_intent.succeeded"}')
  const t = 1_700_000_000
  const now = t * 1000 + 5_000
  const sign = (key: string, ts = t, b = body): string =>
    opensslHmac('sha256', key, Buffer.concat([Buffer.from(`${ts}.`), b])).toString('hex')

  it('accepts any v1 entry; v0 and unknown keys are ignored', () => {
    const header = `t=${t},v1=${sign('an-old-secret')},v1=${sign(secret)},v0=${
      'ab'.repeat(32)
    },foo=bar`
    const id = ok(stripe.verify(headers({ 'stripe-signature': header }), body, now))
    assert.deepEqual(id.claims, { scheme: 'stripe', timestamp: t })
    assert.deepEqual(stripe.source, { kind: 'signature', name: 'stripe-signature' })
    assert.deepEqual(stripe.headers, ['stripe-signature'])
  })

  it('refuses a header with no v1 (v0 alone does not count)', () => {
    refused(
      stripe.verify(headers({ 'stripe-signature': `t=${t},v0=${sign(secret)}` }), body, now),
      /stripe-signature has no v1= signature/,
    )
  })

  it('refuses a missing, repeated, malformed or stale t', () => {
    refused(
      stripe.verify(headers({ 'stripe-signature': `v1=${sign(secret)}` }), body, now),
      /stripe-signature has no t= timestamp/,
    )
    refused(
      stripe.verify(headers({ 'stripe-signature': `t=${t},t=${t},v1=${sign(secret)}` }), body, now),
      /t= more than once/,
    )
    refused(
      stripe.verify(headers({ 'stripe-signature': `t=soon,v1=${sign(secret)}` }), body, now),
      /stripe-signature t= is not a Unix time/,
    )
    refused(
      stripe.verify(
        headers({ 'stripe-signature': `t=${t},v1=${sign(secret)}` }),
        body,
        now + 600_000,
      ),
      /too old by 605 s/,
      /outside the allowed tolerance/,
    )
  })

  it('refuses when no v1 entry matches, and says how many were tried', () => {
    refused(
      stripe.verify(
        headers({ 'stripe-signature': `t=${t},v1=${sign('x')},v1=${sign('y')}` }),
        body,
        now,
      ),
      /none of 2 stripe-signature signatures matched any of 1 secret/,
    )
    // The signature covers t: moving t within the tolerance breaks it.
    refused(
      stripe.verify(headers({ 'stripe-signature': `t=${t + 1},v1=${sign(secret)}` }), body, now),
      /matched none/,
    )
  })

  it('reports malformed entries when nothing else could match', () => {
    refused(
      stripe.verify(
        headers({ 'stripe-signature': `t=${t},v1=nothex,v1=${sign(secret).slice(2)}` }),
        body,
        now,
      ),
      /signature is not valid hex/,
    )
    refused(
      stripe.verify(headers({ 'stripe-signature': `t=${t},v1=nothex,v1=${sign('x')}` }), body, now),
      /none of 2 .* matched any of 1 secret; another one: .*not valid hex/,
    )
  })

  it('honours a configured tolerance', () => {
    const strict = provider({ scheme: 'stripe', secrets: [secret], tolerance: 1_000 })
    refused(
      strict.verify(headers({ 'stripe-signature': `t=${t},v1=${sign(secret)}` }), body, now),
      /too old by 5 s \(tolerance 1 s\)/,
      /outside the allowed tolerance/,
    )
  })
})

describe('webhook provider: standard webhooks', () => {
  const std = provider({ scheme: 'standard', secrets: [STANDARD.secret] })
  const now = Number(STANDARD.timestamp) * 1000
  const std3 = (
    sig: string | string[],
    over: Record<string, string | string[]> = {},
  ): (name: string) => readonly string[] =>
    headers({
      'webhook-id': STANDARD.id,
      'webhook-timestamp': STANDARD.timestamp,
      'webhook-signature': sig,
      ...over,
    })

  it('verifies the specification\'s test vector, with id and timestamp as claims', () => {
    const id = ok(std.verify(std3(STANDARD.signature), STANDARD.body, now))
    assert.deepEqual(id.claims, { scheme: 'standard', timestamp: 1614265330, id: STANDARD.id })
    assert.deepEqual(std.source, { kind: 'signature', name: 'webhook-signature' })
    assert.deepEqual(std.headers, ['webhook-signature', 'webhook-timestamp', 'webhook-id'])
  })

  it('takes the secret with or without its whsec_ prefix', () => {
    ok(
      provider({ scheme: 'standard', secrets: [STANDARD.secret.slice(6)] }).verify(
        std3(STANDARD.signature),
        STANDARD.body,
        now,
      ),
    )
  })

  it('accepts any v1 entry of a space-separated list and skips other versions', () => {
    const key = Buffer.from('a freshly generated 32-byte key!')
    const secret = 'whsec_' + key.toString('base64')
    const body = Buffer.from('{"type":"invoice.paid"}')
    const sig = opensslHmac('sha256', key, Buffer.from(`msg_2.1700000000.${body.toString()}`))
      .toString('base64')
    const p = provider({ scheme: 'standard', secrets: [STANDARD.secret, secret] })
    const hdr = headers({
      'webhook-id': 'msg_2',
      'webhook-timestamp': '1700000000',
      'webhook-signature': `v1a,${sig} v1,${'A'.repeat(43)}= v1,${sig}`,
    })
    assert.equal(ok(p.verify(hdr, body, 1_700_000_000_000)).claims.id, 'msg_2')
  })

  it('refuses a header with only v1a entries', () => {
    refused(
      std.verify(std3(`v1a,${STANDARD.signature.slice(3)}`), STANDARD.body, now),
      /webhook-signature has no v1 signature/,
    )
  })

  it('refuses a missing id or timestamp, and a changed id (the id is signed)', () => {
    refused(
      std.verify(
        headers({
          'webhook-timestamp': STANDARD.timestamp,
          'webhook-signature': STANDARD.signature,
        }),
        STANDARD.body,
        now,
      ),
      /missing webhook-id header/,
    )
    refused(
      std.verify(
        headers({ 'webhook-id': STANDARD.id, 'webhook-signature': STANDARD.signature }),
        STANDARD.body,
        now,
      ),
      /missing webhook-timestamp header/,
    )
    refused(
      std.verify(std3(STANDARD.signature, { 'webhook-id': 'msg_other' }), STANDARD.body, now),
      /matched none of 1 secret/,
    )
    refused(
      std.verify(
        std3(STANDARD.signature, { 'webhook-id': [STANDARD.id, 'msg_other'] }),
        STANDARD.body,
        now,
      ),
      /webhook-id header present 2 times/,
    )
  })

  it('refuses a replay outside the tolerance', () => {
    refused(
      std.verify(std3(STANDARD.signature), STANDARD.body, now + 301_000),
      /webhook-timestamp 1614265330 is too old by 301 s/,
      /outside the allowed tolerance/,
    )
  })

  it('refuses malformed base64 and wrong lengths without throwing', () => {
    refused(std.verify(std3('v1,not*base64!'), STANDARD.body, now), /not valid base64/)
    refused(
      std.verify(std3('v1,' + STANDARD.signature.slice(3, -1)), STANDARD.body, now),
      /not valid base64/,
    )
    refused(std.verify(std3('v1,AAAA'), STANDARD.body, now), /is 3 bytes, a sha256 HMAC is 32/)
  })
})

describe('webhook provider: generic hmac', () => {
  it('defaults to sha256, hex, no prefix, over the body', () => {
    const p = provider({ scheme: 'hmac', secrets: ['s3cret'], header: 'x-signature' })
    const body = Buffer.from('{"event":"ping"}')
    const sig = opensslHmac('sha256', 's3cret', body).toString('hex')
    assert.deepEqual(ok(p.verify(headers({ 'x-signature': sig }), body, 0)).claims, {
      scheme: 'hmac',
    })
    assert.deepEqual(p.source, { kind: 'signature', name: 'x-signature' })
    assert.deepEqual(p.headers, ['x-signature'])
    refused(
      p.verify(headers({ 'x-signature': sig.toUpperCase().slice(2) }), body, 0),
      /x-signature signature is 31 bytes/,
    )
  })

  it('signs a template with {timestamp} and {id}; the tolerance applies', () => {
    const p = provider({
      scheme: 'hmac',
      secrets: ['k1'],
      header: 'x-sig',
      algorithm: 'sha512',
      encoding: 'base64url',
      prefix: 'sha512=',
      signed: 'v2:{timestamp}:{id}:{body}',
      timestamp_header: 'x-ts',
      id_header: 'x-id',
    })
    assert.deepEqual(p.headers, ['x-sig', 'x-ts', 'x-id'])
    const body = Buffer.from('payload')
    const sig = 'sha512=' +
      opensslHmac('sha512', 'k1', Buffer.from('v2:1700000000:evt-9:payload')).toString('base64url')
    const h = (over: Record<string, string | string[]> = {}): (name: string) => readonly string[] =>
      headers({ 'x-sig': sig, 'x-ts': '1700000000', 'x-id': 'evt-9', ...over })
    assert.deepEqual(ok(p.verify(h(), body, 1_700_000_000_000)).claims, {
      scheme: 'hmac',
      timestamp: 1_700_000_000,
      id: 'evt-9',
    })
    refused(
      p.verify(h(), body, 1_700_000_301_000),
      /x-ts 1700000000 is too old by 301 s/,
      /outside the allowed tolerance/,
    )
    refused(p.verify(h({ 'x-id': 'evt-10' }), body, 1_700_000_000_000), /matched none/)
    refused(p.verify(h({ 'x-id': [] }), body, 1_700_000_000_000), /missing x-id header/)
    refused(p.verify(h({ 'x-ts': [] }), body, 1_700_000_000_000), /missing x-ts header/)
    refused(
      p.verify(h({ 'x-sig': sig.slice(7) }), body, 1_700_000_000_000),
      /x-sig does not start with "sha512="/,
    )
    // Standard base64 characters are not base64url.
    refused(
      p.verify(h({ 'x-sig': 'sha512=' + '+/'.repeat(43) }), body, 1_700_000_000_000),
      /not valid base64url/,
    )
  })

  it('reads sha1 signatures in padded base64', () => {
    const p = provider({
      scheme: 'hmac',
      secrets: ['k'],
      header: 'x-sig',
      algorithm: 'sha1',
      encoding: 'base64',
    })
    const body = Buffer.from('x')
    const sig = opensslHmac('sha1', 'k', body).toString('base64')
    assert.ok(sig.endsWith('='))
    ok(p.verify(headers({ 'x-sig': sig }), body, 0))
    refused(p.verify(headers({ 'x-sig': sig.slice(0, -1) + '==' }), body, 0), /not valid base64/)
  })

  it('hashes the raw body bytes, never a decoded string', () => {
    // Both bodies decode to the same UTF-8 string (each invalid byte becomes U+FFFD): a
    // verifier that decoded the body would accept the second one.
    const body = Buffer.from([0x7b, 0xff, 0x7d])
    const other = Buffer.from([0x7b, 0xfe, 0x7d])
    assert.equal(body.toString('utf8'), other.toString('utf8'))
    const p = provider({ scheme: 'hmac', secrets: ['k'], header: 'x-sig' })
    const sig = opensslHmac('sha256', 'k', body).toString('hex')
    ok(p.verify(headers({ 'x-sig': sig }), body, 0))
    refused(p.verify(headers({ 'x-sig': sig }), other, 0), /matched none/)
  })
})

describe('webhook provider: the IdentityProvider side', () => {
  const p = provider({ scheme: 'github', secrets: [GITHUB.secret] })

  it('has nothing to cache and refuses a bare credential (a signature needs the body)', () => {
    assert.equal(p.cached(), null)
    assert.equal(p.takes(), true)
    refused(p.authenticate(), /over the request body/)
    assert.deepEqual(p.status(), { status: 'ok' })
    assert.equal(
      p.fingerprint,
      JSON.stringify({
        kind: 'webhook',
        tolerance: 300_000,
        scheme: 'github',
        secrets: [GITHUB.secret],
      }),
    )
    p.close()
  })

  it('never throws on odd input', () => {
    for (
      const v of ['', '=', 'sha256=', 'sha256==', `sha256=${'0'.repeat(10_000)}`,
        'sha256=\u00ff\u00fe']
    ) {
      refused(p.verify(headers({ 'x-hub-signature-256': v }), Buffer.alloc(0), 0), /./)
    }
  })

  it('is built by the registry for kind: webhook', () => {
    const config = parseConfig(
      `identity:
  realm: acme
  providers:
    slack: { kind: webhook, scheme: slack, secrets: ["${SLACK.secret}"] }
routes: []
`,
      { env: {} },
    )
    const set = new IdentityRegistry(deps).prepare(config.identity)
    const made = set.providers.get('slack')
    assert.ok(made instanceof WebhookProvider)
    ok(made.verify(slackHeaders(), SLACK.body, SLACK_NOW))
  })
})

describe('config: webhook providers', () => {
  const config = (provider: string): string =>
    `identity:\n  providers:\n    hook: ${provider}\nroutes: []\n`

  it('fills defaults and accepts each scheme', () => {
    const c = parseConfig(
      `identity:
  providers:
    a: { kind: webhook, scheme: slack, secrets: [s] }
    b: { kind: webhook, scheme: standard, secrets: ["${STANDARD.secret}", "c2VjcmV0"], tolerance: 1m }
    c: { kind: webhook, scheme: hmac, secrets: [s], header: X-Sig, signed: "{timestamp}.{body}", timestamp_header: X-Ts }
routes: []
`,
      { env: {} },
    )
    const a = c.identity.providers.a!
    assert.equal(a.kind === 'webhook' && a.tolerance, 300_000)
    const b = c.identity.providers.b!
    assert.equal(b.kind === 'webhook' && b.tolerance, 60_000)
    const h = c.identity.providers.c!
    assert.equal(h.kind === 'webhook' && h.header, 'x-sig')
  })

  it('requires header for scheme: hmac', () => {
    const err = configError(config('{ kind: webhook, scheme: hmac, secrets: [s] }'))
    assert.match(
      issueAt(err, 'identity.providers.hook.header').message,
      /is required for scheme: hmac/,
    )
  })

  it('requires timestamp_header for {timestamp} and id_header for {id}', () => {
    const err = configError(
      config(
        '{ kind: webhook, scheme: hmac, secrets: [s], header: x-sig, signed: "{id}.{timestamp}.{body}" }',
      ),
    )
    assert.match(
      issueAt(err, 'identity.providers.hook.timestamp_header').message,
      /required when signed uses \{timestamp\}/,
    )
    assert.match(
      issueAt(err, 'identity.providers.hook.id_header').message,
      /required when signed uses \{id\}/,
    )
  })

  it('requires the signed template to cover the body', () => {
    const err = configError(
      config(
        '{ kind: webhook, scheme: hmac, secrets: [s], header: x-sig, signed: "{timestamp}", timestamp_header: x-ts }',
      ),
    )
    assert.match(issueAt(err, 'identity.providers.hook.signed').message, /must include \{body\}/)
  })

  it('refuses hmac-only fields on the named schemes', () => {
    const err = configError(
      config(
        '{ kind: webhook, scheme: github, secrets: [s], header: x-sig, algorithm: sha1, encoding: hex, prefix: "sha1=", signed: "{body}", timestamp_header: x-ts, id_header: x-id }',
      ),
    )
    for (
      const f of ['header', 'algorithm', 'encoding', 'prefix', 'signed', 'timestamp_header',
        'id_header']
    ) {
      assert.match(issueAt(err, `identity.providers.hook.${f}`).message, /only for scheme: hmac/)
    }
  })

  it('requires base64 secrets for scheme: standard, without echoing them', () => {
    const err = configError(
      config(
        '{ kind: webhook, scheme: standard, secrets: ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_not base64!", "plain-text", "whsec_"] }',
      ),
    )
    assert.equal(
      err.issues.filter((i) => i.path.startsWith('identity.providers.hook.secrets[0]')).length,
      0,
    )
    for (const j of [1, 2, 3]) {
      const issue = issueAt(err, `identity.providers.hook.secrets[${j}]`)
      assert.match(issue.message, /must be base64 \(after an optional "whsec_" prefix\)/)
    }
    assert.doesNotMatch(err.message, /not base64!|plain-text/)
  })
})
