import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { call, startEchoUpstream, startGateway, type TestGateway } from '../helpers/index.js'

/*
 * IPv4-mapped IPv6 (::ffff:a.b.c.d) and plain IPv4 are one address to `ip` rules and `ip` limit
 * keys, in rules and in client addresses alike. Before, a rule written in the mapped form never
 * matched, so such a deny rule failed open. The gateway listens on 127.0.0.1; clients in the
 * mapped form arrive through a trusted proxy's X-Forwarded-For.
 */
describe('ip rules and IPv4-mapped addresses', () => {
  let up: Awaited<ReturnType<typeof startEchoUpstream>>
  let gw: TestGateway

  before(async () => {
    up = await startEchoUpstream()
    const route = (name: string, extra: Record<string, unknown>) => ({
      name,
      match: { path: `/${name}` },
      upstream: 'up',
      ...extra,
    })
    gw = await startGateway({
      trusted_proxies: ['127.0.0.1'],
      upstreams: { up: { targets: [{ url: up.url }] } },
      routes: [
        route('mapped-peer', { ip: { deny: ['::ffff:127.0.0.1'] } }),
        route('plain-rule', { ip: { deny: ['10.0.0.0/8'] } }),
        route('mapped-rule', { ip: { deny: ['::ffff:10.0.0.0/104'] } }),
        route('limited', { rate_limit: [{ key: 'ip', rate: '1/min' }] }),
      ],
    })
  })
  after(async () => {
    await gw.close()
    await up.close()
  })

  test('a rule for 127.0.0.1 written as ::ffff:127.0.0.1 refuses the client at 127.0.0.1', async () => {
    const calls = up.calls
    const res = await call(gw, '/mapped-peer')
    assert.equal(res.status, 403)
    assert.equal(res.problem.code, 'GH_IP_FORBIDDEN')
    assert.equal(up.calls, calls)
  })

  test('a plain IPv4 rule refuses a client in the mapped form', async () => {
    assert.equal(
      (await call(gw, '/plain-rule', { 'x-forwarded-for': '::ffff:10.1.2.3' })).problem?.code,
      'GH_IP_FORBIDDEN',
    )
    assert.equal(
      (await call(gw, '/plain-rule', { 'x-forwarded-for': '10.1.2.3' })).problem?.code,
      'GH_IP_FORBIDDEN',
    )
    assert.equal(
      (await call(gw, '/plain-rule', { 'x-forwarded-for': '::ffff:192.0.2.1' })).status,
      200,
    )
  })

  test('a mapped rule refuses a client in either form', async () => {
    assert.equal(
      (await call(gw, '/mapped-rule', { 'x-forwarded-for': '10.1.2.3' })).problem?.code,
      'GH_IP_FORBIDDEN',
    )
    assert.equal(
      (await call(gw, '/mapped-rule', { 'x-forwarded-for': '::ffff:10.1.2.3' })).problem?.code,
      'GH_IP_FORBIDDEN',
    )
    assert.equal((await call(gw, '/mapped-rule', { 'x-forwarded-for': '192.0.2.1' })).status, 200)
  })

  test('an ip limit counts a client once, in whichever form it arrives', async () => {
    assert.equal((await call(gw, '/limited', { 'x-forwarded-for': '203.0.113.9' })).status, 200)
    assert.equal(
      (await call(gw, '/limited', { 'x-forwarded-for': '::ffff:203.0.113.9' })).problem?.code,
      'GH_RATE_LIMITED',
    )
    assert.equal((await call(gw, '/limited', { 'x-forwarded-for': '203.0.113.10' })).status, 200)
  })
})
