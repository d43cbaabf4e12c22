import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import type http from 'node:http'
import { createHmac } from 'node:crypto'
import {
  request,
  startGateway,
  startUpstream,
  type TestGateway,
  type Upstream,
} from '../helpers/index.js'

/** What the upstream received, per request (the body as raw bytes). */
interface Seen {
  url: string
  headers: http.IncomingHttpHeaders
  body: Buffer
}

const SLACK_SECRET = 'slack-signing-secret-2025'
/** The secret before the rotation: still listed, so deliveries signed with it are accepted. */
const SLACK_OLD_SECRET = 'slack-signing-secret-2024'
const GITHUB_SECRET = 'github-webhook-secret'
const STRIPE_SECRET = 'whsec_stripe-endpoint-secret'
const HMAC_SECRET = 'partner-shared-secret'

const now = (): string => String(Math.floor(Date.now() / 1000))
const TEN_MINUTES_AGO = (): string => String(Math.floor(Date.now() / 1000) - 600)

const hmac = (secret: string, ...parts: Array<string | Buffer>): Buffer => {
  const mac = createHmac('sha256', secret)
  for (const p of parts) mac.update(p)
  return mac.digest()
}

/** Slack: v0=hex(HMAC(secret, "v0:<ts>:<body>")). */
function slackHeaders (body: Buffer, ts = now(), secret = SLACK_SECRET): Record<string, string> {
  return {
    'content-type': 'application/x-www-form-urlencoded',
    'x-slack-request-timestamp': ts,
    'x-slack-signature': 'v0=' + hmac(secret, `v0:${ts}:`, body).toString('hex'),
  }
}

/** GitHub: sha256=hex(HMAC(secret, body)), with a delivery id. */
function githubHeaders (body: Buffer, secret = GITHUB_SECRET): Record<string, string> {
  return {
    'content-type': 'application/json',
    'x-github-event': 'push',
    'x-github-delivery': '72d3162e-cc78-11e3-81ab-4c9367dc0958',
    'x-hub-signature-256': 'sha256=' + hmac(secret, body).toString('hex'),
  }
}

/** Stripe: t=<ts>,v1=hex(HMAC(secret, "<ts>.<body>")). */
function stripeHeaders (body: Buffer, ts = now(), secret = STRIPE_SECRET): Record<string, string> {
  return {
    'content-type': 'application/json',
    'stripe-signature': `t=${ts},v1=${hmac(secret, `${ts}.`, body).toString('hex')}`,
  }
}

/** The generic layout configured below: sha256=base64(HMAC(secret, "<ts>.<body>")). */
function partnerHeaders (body: Buffer, ts = now(), secret = HMAC_SECRET): Record<string, string> {
  return {
    'content-type': 'application/json',
    'x-partner-timestamp': ts,
    'x-partner-delivery': 'd-1',
    'x-partner-signature': 'sha256=' + hmac(secret, `${ts}.`, body).toString('base64'),
  }
}

const SLACK_FORM = Buffer.from(
  'command=%2Fask&text=caf%C3%A9+au+lait&user_id=U2CERLKJA&tag=a&tag=b',
)
const CHALLENGE = {
  slack: 'Signature realm="hooks", headers="x-slack-signature"',
  github: 'Signature realm="hooks", headers="x-hub-signature-256"',
  stripe: 'Signature realm="hooks", headers="stripe-signature"',
  partner: 'Signature realm="hooks", headers="x-partner-signature"',
}

describe('webhook signatures', () => {
  let up: Upstream
  let gw: TestGateway
  const seen: Seen[] = []

  before(async () => {
    up = await startUpstream((req, res) => {
      const chunks: Buffer[] = []
      req.on('data', (c: Buffer) => chunks.push(c))
      req.on('end', () => {
        seen.push({ url: req.url!, headers: req.headers, body: Buffer.concat(chunks) })
        res.writeHead(200, { 'content-type': 'application/json' })
        res.end('{"ok":true}')
      })
    })
    gw = await startGateway({
      identity: {
        realm: 'hooks',
        providers: {
          slack: { kind: 'webhook', scheme: 'slack', secrets: [SLACK_SECRET, SLACK_OLD_SECRET] },
          github: { kind: 'webhook', scheme: 'github', secrets: [GITHUB_SECRET] },
          stripe: { kind: 'webhook', scheme: 'stripe', secrets: [STRIPE_SECRET] },
          partner: {
            kind: 'webhook',
            scheme: 'hmac',
            secrets: [HMAC_SECRET],
            header: 'x-partner-signature',
            prefix: 'sha256=',
            encoding: 'base64',
            signed: '{timestamp}.{body}',
            timestamp_header: 'x-partner-timestamp',
            id_header: 'x-partner-delivery',
          },
        },
      },
      upstreams: { up: { targets: [{ url: up.url }] } },
      routes: [
        {
          name: 'slack',
          match: { path: '/hooks/slack', methods: ['POST'] },
          upstream: 'up',
          auth: { any_of: ['slack'] },
          transform: { request: { form_to_json: true } },
          identity_headers: {
            provider: 'x-webhook-provider',
            claims: { timestamp: 'x-webhook-timestamp', scheme: 'x-webhook-scheme' },
          },
          limits: { max_buffered_body: '4KiB' },
        },
        {
          name: 'github',
          match: { path: '/hooks/github', methods: ['POST'] },
          upstream: 'up',
          auth: { any_of: ['github'] },
          identity_headers: { claims: { id: 'x-webhook-id' } },
        },
        {
          name: 'stripe',
          match: { path: '/hooks/stripe', methods: ['POST'] },
          upstream: 'up',
          auth: { any_of: ['stripe'] },
        },
        {
          name: 'walled',
          match: { path: '/hooks/walled', methods: ['POST'] },
          upstream: 'up',
          auth: { any_of: ['slack'] },
          ip: { allow: ['10.0.0.0/8'] },
          limits: { max_buffered_body: '4KiB' },
        },
        {
          name: 'partner',
          match: { path: '/hooks/partner', methods: ['POST'] },
          upstream: 'up',
          auth: { any_of: ['partner'] },
          identity_headers: { claims: { id: 'x-webhook-id' } },
        },
      ],
    })
  })
  after(async () => {
    await gw.close()
    await up.close()
  })

  const post = (path: string, body: Buffer, headers: http.OutgoingHttpHeaders) =>
    request(gw.url + path, { method: 'POST', headers, body })

  /** The access-log line of a response (written when the exchange ends, maybe after the client read it). */
  const logLine = (res: { headers: http.IncomingHttpHeaders }) =>
    gw.logs.waitFor((l) => l.msg === 'request' && l.id === res.headers['x-request-id'])

  /**
   * A refused delivery: 401 problem+json with the code and the route's challenge, nothing
   * forwarded, and the reason on the access-log line (but not in the client's answer).
   */
  async function refused (
    path: string,
    body: Buffer,
    headers: http.OutgoingHttpHeaders,
    challenge: string,
    reason: RegExp,
    code = 'GH_INVALID_SIGNATURE',
  ): Promise<void> {
    const calls = seen.length
    const res = await post(path, body, headers)
    assert.equal(res.status, 401, res.body)
    assert.equal(res.headers['content-type'], 'application/problem+json')
    assert.equal(JSON.parse(res.body).code, code)
    assert.equal(res.headers['www-authenticate'], challenge)
    const line = await logLine(res)
    assert.equal(line.status, 401)
    assert.equal(line.code, code)
    assert.match(line.reason, reason)
    assert.equal(res.body.includes(line.reason), false, 'the log reason is not shown to the client')
    assert.equal(seen.length, calls, 'nothing was forwarded')
  }

  test('slack: a valid delivery is forwarded as JSON from the form, with the identity', async () => {
    seen.length = 0
    const ts = now()
    const res = await post('/hooks/slack', SLACK_FORM, slackHeaders(SLACK_FORM, ts))
    assert.equal(res.status, 200, res.body)
    assert.equal(seen.length, 1)
    const s = seen[0]!
    assert.equal(s.headers['content-type'], 'application/json')
    assert.equal(s.headers['content-length'], String(s.body.length))
    assert.deepEqual(JSON.parse(s.body.toString('utf8')), {
      command: '/ask',
      text: 'café au lait',
      user_id: 'U2CERLKJA',
      tag: ['a', 'b'],
    })
    assert.equal(s.headers['x-gatehouse-provider'], 'slack')
    assert.equal(s.headers['x-webhook-provider'], 'slack')
    assert.equal(s.headers['x-webhook-timestamp'], ts)
    assert.equal(s.headers['x-webhook-scheme'], 'slack')
    // The signature headers travel on (strip_credentials is off): the upstream may check them itself.
    assert.equal(s.headers['x-slack-request-timestamp'], ts)
    const line = await logLine(res)
    assert.equal(line.auth, 'slack')
    assert.equal(line.code, undefined)
  })

  test('slack: a delivery signed with the previous secret is accepted while both are listed', async () => {
    seen.length = 0
    const res = await post(
      '/hooks/slack',
      SLACK_FORM,
      slackHeaders(SLACK_FORM, now(), SLACK_OLD_SECRET),
    )
    assert.equal(res.status, 200, res.body)
    assert.equal(seen.length, 1)
    assert.equal(JSON.parse(seen[0]!.body.toString('utf8')).command, '/ask')
  })

  test('github: the body arrives byte for byte, with the delivery id as identity claim', async () => {
    seen.length = 0
    // Whitespace, key order and escapes as sent: the signature covers these exact bytes.
    const body = Buffer.from(
      '{ "ref":"refs/heads/main",\n  "zen": "caf\\u00e9 \u2713", "n": 1.50 }\n',
    )
    const res = await post('/hooks/github', body, githubHeaders(body))
    assert.equal(res.status, 200, res.body)
    assert.deepEqual(seen[0]!.body, body)
    assert.equal(seen[0]!.headers['x-gatehouse-provider'], 'github')
    assert.equal(seen[0]!.headers['x-webhook-id'], '72d3162e-cc78-11e3-81ab-4c9367dc0958')
    assert.equal(seen[0]!.headers['x-github-event'], 'push')
  })

  test('stripe and a generic hmac layout: valid deliveries are forwarded', async () => {
    seen.length = 0
    const event = Buffer.from('{"id":"evt_1","type":"invoice.paid"}')
    const stripe = await post('/hooks/stripe', event, stripeHeaders(event))
    assert.equal(stripe.status, 200, stripe.body)
    assert.deepEqual(seen[0]!.body, event)
    assert.equal(seen[0]!.headers['x-gatehouse-provider'], 'stripe')
    const partner = await post('/hooks/partner', event, partnerHeaders(event))
    assert.equal(partner.status, 200, partner.body)
    assert.deepEqual(seen[1]!.body, event)
    assert.equal(seen[1]!.headers['x-gatehouse-provider'], 'partner')
    assert.equal(seen[1]!.headers['x-webhook-id'], 'd-1')
  })

  test('a missing signature is 401 GH_AUTH_REQUIRED with a Signature challenge', async () => {
    const h = slackHeaders(SLACK_FORM)
    delete h['x-slack-signature']
    await refused(
      '/hooks/slack',
      SLACK_FORM,
      h,
      CHALLENGE.slack,
      /no credentials/,
      'GH_AUTH_REQUIRED',
    )
    await refused(
      '/hooks/github',
      Buffer.from('{}'),
      { 'content-type': 'application/json' },
      CHALLENGE.github,
      /no credentials/,
      'GH_AUTH_REQUIRED',
    )
  })

  test('a signature with the wrong secret is refused', async () => {
    await refused(
      '/hooks/slack',
      SLACK_FORM,
      slackHeaders(SLACK_FORM, now(), 'not-the-secret'),
      CHALLENGE.slack,
      /^slack: x-slack-signature signature matched none of 2 secrets$/,
    )
    const event = Buffer.from('{"id":"evt_2"}')
    await refused(
      '/hooks/stripe',
      event,
      stripeHeaders(event, now(), 'whsec_other'),
      CHALLENGE.stripe,
      /^stripe: stripe-signature signature matched none of 1 secret$/,
    )
    await refused(
      '/hooks/partner',
      event,
      partnerHeaders(event, now(), 'other'),
      CHALLENGE.partner,
      /^partner: x-partner-signature signature matched none of 1 secret$/,
    )
  })

  test('a body changed after signing is refused', async () => {
    const altered = Buffer.from(SLACK_FORM.toString('latin1').replace('ask', 'rm'), 'latin1')
    await refused(
      '/hooks/slack',
      altered,
      slackHeaders(SLACK_FORM),
      CHALLENGE.slack,
      /matched none of 2 secrets/,
    )
    const body = Buffer.from('{"ref":"refs/heads/main"}')
    const changed = Buffer.from('{"ref":"refs/heads/evil"}')
    await refused(
      '/hooks/github',
      changed,
      githubHeaders(body),
      CHALLENGE.github,
      /^github: x-hub-signature-256 signature matched none of 1 secret$/,
    )
    // One byte more (a trailing newline) is another body.
    await refused(
      '/hooks/github',
      Buffer.concat([body, Buffer.from('\n')]),
      githubHeaders(body),
      CHALLENGE.github,
      /matched none/,
    )
  })

  test('a stale timestamp (10 minutes old, correctly signed) is refused as outside the tolerance', async () => {
    const calls = seen.length
    const res = await post('/hooks/slack', SLACK_FORM, slackHeaders(SLACK_FORM, TEN_MINUTES_AGO()))
    assert.equal(res.status, 401)
    const p = JSON.parse(res.body)
    assert.equal(p.code, 'GH_INVALID_SIGNATURE')
    assert.match(p.detail, /outside the allowed tolerance/)
    assert.equal(res.headers['www-authenticate'], CHALLENGE.slack)
    assert.match(
      (await logLine(res)).reason,
      /^slack: x-slack-request-timestamp \d+ is too old by 6\d\d s \(tolerance 300 s\)$/,
    )
    assert.equal(seen.length, calls)
    const event = Buffer.from('{"id":"evt_3"}')
    await refused(
      '/hooks/stripe',
      event,
      stripeHeaders(event, TEN_MINUTES_AGO()),
      CHALLENGE.stripe,
      /stripe-signature t= \d+ is too old/,
    )
    await refused(
      '/hooks/partner',
      event,
      partnerHeaders(event, TEN_MINUTES_AGO()),
      CHALLENGE.partner,
      /x-partner-timestamp \d+ is too old/,
    )
  })

  test('a replayed delivery: as captured (stale), or with a fresh timestamp put in (no match)', async () => {
    // A delivery that was valid when it was sent, ten minutes ago.
    const ts = TEN_MINUTES_AGO()
    const captured = slackHeaders(SLACK_FORM, ts)
    await refused('/hooks/slack', SLACK_FORM, captured, CHALLENGE.slack, /too old/)
    await refused(
      '/hooks/slack',
      SLACK_FORM,
      { ...captured, 'x-slack-request-timestamp': now() },
      CHALLENGE.slack,
      /matched none of 2 secrets/,
    )
    const event = Buffer.from('{"id":"evt_4"}')
    const old = stripeHeaders(event, ts)['stripe-signature']!
    await refused(
      '/hooks/stripe',
      event,
      {
        'content-type': 'application/json',
        'stripe-signature': old.replace(`t=${ts}`, `t=${now()}`),
      },
      CHALLENGE.stripe,
      /matched none/,
    )
  })

  test('a signature of the wrong length or encoding is refused', async () => {
    const h = slackHeaders(SLACK_FORM)
    const short = h['x-slack-signature']!.slice(0, 3 + 32)
    await refused(
      '/hooks/slack',
      SLACK_FORM,
      { ...h, 'x-slack-signature': short },
      CHALLENGE.slack,
      /x-slack-signature signature is 16 bytes, a sha256 HMAC is 32/,
    )
    await refused(
      '/hooks/slack',
      SLACK_FORM,
      { ...h, 'x-slack-signature': h['x-slack-signature']! + '00' },
      CHALLENGE.slack,
      /is 33 bytes/,
    )
    await refused(
      '/hooks/slack',
      SLACK_FORM,
      { ...h, 'x-slack-signature': 'v0=' + 'zz'.repeat(32) },
      CHALLENGE.slack,
      /not valid hex/,
    )
    await refused(
      '/hooks/slack',
      SLACK_FORM,
      { ...h, 'x-slack-signature': h['x-slack-signature']!.slice(3) },
      CHALLENGE.slack,
      /does not start with "v0="/,
    )
  })

  test('a signature or timestamp header sent twice is refused, even when one copy is valid', async () => {
    const h = slackHeaders(SLACK_FORM)
    const valid = h['x-slack-signature']!
    const wrong = slackHeaders(SLACK_FORM, now(), 'nope')['x-slack-signature']!
    await refused(
      '/hooks/slack',
      SLACK_FORM,
      { ...h, 'x-slack-signature': [valid, valid] },
      CHALLENGE.slack,
      /x-slack-signature header present 2 times/,
    )
    await refused(
      '/hooks/slack',
      SLACK_FORM,
      { ...h, 'x-slack-signature': [wrong, valid] },
      CHALLENGE.slack,
      /present 2 times/,
    )
    await refused(
      '/hooks/slack',
      SLACK_FORM,
      {
        ...h,
        'x-slack-request-timestamp': [h['x-slack-request-timestamp']!,
          h['x-slack-request-timestamp']!],
      },
      CHALLENGE.slack,
      /x-slack-request-timestamp header present 2 times/,
    )
    const body = Buffer.from('{}')
    const gh = githubHeaders(body)
    await refused(
      '/hooks/github',
      body,
      { ...gh, 'x-hub-signature-256': [gh['x-hub-signature-256']!, gh['x-hub-signature-256']!] },
      CHALLENGE.github,
      /present 2 times/,
    )
  })

  test('a refused client address is answered before the body is read', async () => {
    const calls = seen.length
    // Over the buffering cap: had the body been read first, this would be 413.
    const big = Buffer.from('text=' + 'x'.repeat(8 * 1024))
    const res = await post('/hooks/walled', big, slackHeaders(big))
    assert.equal(res.status, 403)
    assert.equal(JSON.parse(res.body).code, 'GH_IP_FORBIDDEN')
    assert.equal(seen.length, calls)
  })

  test('a body over limits.max_buffered_body is 413 and the upstream is not called', async () => {
    const calls = seen.length
    const big = Buffer.from('text=' + 'x'.repeat(8 * 1024))
    // Correctly signed: the size is refused before any signature is checked.
    const res = await post('/hooks/slack', big, slackHeaders(big))
    assert.equal(res.status, 413)
    assert.equal(res.headers['content-type'], 'application/problem+json')
    assert.equal(JSON.parse(res.body).code, 'GH_BODY_TOO_LARGE')
    assert.equal(seen.length, calls)
    // Just under the cap is fine.
    const fits = Buffer.from('text=' + 'x'.repeat(4 * 1024 - 5))
    const ok = await post('/hooks/slack', fits, slackHeaders(fits))
    assert.equal(ok.status, 200, ok.body)
    assert.equal(seen.length, calls + 1)
  })
})
