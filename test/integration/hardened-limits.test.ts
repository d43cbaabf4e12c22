import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import http from 'node:http'
import { createHash } from 'node:crypto'
import ipaddr from 'ipaddr.js'
import { validateConfig } from '../../src/config/load.js'
import type { ConfigInput } from '../../src/config/schema.js'
import { ConfigError } from '../../src/errors/index.js'
import { addressBucket } from '../../src/policies/limits/policy.js'
import {
  metricsText,
  request,
  startEchoUpstream,
  startGateway,
  type TestGateway,
} from '../helpers/index.js'

/*
 * Rate limits under abuse: a client that owns a whole IPv6 /64, and a flood of fresh keys that
 * tries to push other callers' exhausted buckets out of a bounded memory store.
 */

type Echo = Awaited<ReturnType<typeof startEchoUpstream>>

/**
 * The 429 problem body of `limit`. Retry-After depends on when the refusal lands (a busy host can
 * take seconds between requests): its value, and the one in `detail`, is checked to agree and to
 * lie within the rate's 60 s.
 */
const RATE_LIMITED = (limit: string): Record<string, unknown> => ({
  type: 'https://gatehouse.dev/errors/GH_RATE_LIMITED',
  title: 'Too many requests',
  status: 429,
  detail: 'Too many requests; retry in {retry-after} s',
  code: 'GH_RATE_LIMITED',
  limit,
})

async function call (
  gw: TestGateway,
  path: string,
  headers: Record<string, string>,
  agent?: http.Agent,
): Promise<
  { status: number, problem: Record<string, unknown> | null, ratelimit: string | undefined }
> {
  const res = await request(gw.url + path, { headers, ...(agent === undefined ? {} : { agent }) })
  let problem: Record<string, unknown> | null = null
  if (res.status === 429) {
    const retry = Number(res.headers['retry-after'])
    assert.ok(retry >= 1 && retry <= 60, `retry-after ${String(res.headers['retry-after'])}`)
    const body = JSON.parse(res.body)
    delete body.instance
    problem = {
      ...body,
      detail: String(body.detail).replace(`retry in ${retry} s`, 'retry in {retry-after} s'),
      limit: /^"([^"]+)"/.exec(String(res.headers.ratelimit))?.[1],
    }
  }
  return { status: res.status, problem, ratelimit: res.headers.ratelimit as string | undefined }
}

describe('ip limits count an IPv6 client by its /64', () => {
  let up: Echo
  let gw: TestGateway
  before(async () => {
    up = await startEchoUpstream()
    gw = await startGateway({
      trusted_proxies: ['127.0.0.1'],
      upstreams: { up: { targets: [{ url: up.url }] } },
      routes: [
        {
          name: 'net',
          match: { path_prefix: '/net' },
          upstream: 'up',
          rate_limit: [{ name: 'net', key: 'ip', rate: '1/min', burst: 1 }],
        },
        {
          name: 'host',
          match: { path_prefix: '/host' },
          upstream: 'up',
          rate_limit: [{ name: 'host', key: 'ip', rate: '1/min', burst: 1, ipv6_prefix: 128 }],
        },
        {
          name: 'site',
          match: { path_prefix: '/site' },
          upstream: 'up',
          rate_limit: [{ name: 'site', key: 'ip', rate: '1/min', burst: 1, ipv6_prefix: 48 }],
        },
      ],
    })
  })
  after(async () => {
    await gw.close()
    await up.close()
  })

  const from = (address: string): Record<string, string> => ({ 'x-forwarded-for': address })

  it('2001:db8::1 exhausts the bucket that ::2 and ::3 of the same /64 share', async () => {
    assert.equal((await call(gw, '/net', from('2001:db8::1'))).status, 200)
    assert.deepEqual((await call(gw, '/net', from('2001:db8::2'))).problem, RATE_LIMITED('net'))
    assert.deepEqual((await call(gw, '/net', from('2001:db8::3'))).problem, RATE_LIMITED('net'))
    // Another spelling of an address in the same /64.
    assert.deepEqual(
      (await call(gw, '/net', from('2001:0DB8:0000:0000:ffff:ffff:ffff:ffff'))).problem,
      RATE_LIMITED('net'),
    )
    // The next /64 is another subscriber.
    assert.equal((await call(gw, '/net', from('2001:db8:0:1::1'))).status, 200)
  })

  it('IPv4 clients still count per address, mapped or not', async () => {
    assert.equal((await call(gw, '/net', from('192.0.2.1'))).status, 200)
    assert.deepEqual(
      (await call(gw, '/net', from('::ffff:192.0.2.1'))).problem,
      RATE_LIMITED('net'),
    )
    assert.equal((await call(gw, '/net', from('192.0.2.2'))).status, 200)
  })

  it('ipv6_prefix: 128 counts every address, 48 a whole site', async () => {
    assert.equal((await call(gw, '/host', from('2001:db8::1'))).status, 200)
    assert.equal((await call(gw, '/host', from('2001:db8::2'))).status, 200)
    assert.deepEqual(
      (await call(gw, '/host', from('2001:db8:0:0:0:0:0:2'))).problem,
      RATE_LIMITED('host'),
    )
    assert.equal((await call(gw, '/site', from('2001:db8:1:2::1'))).status, 200)
    assert.deepEqual(
      (await call(gw, '/site', from('2001:db8:1:ffff::1'))).problem,
      RATE_LIMITED('site'),
    )
    assert.equal((await call(gw, '/site', from('2001:db8:2::1'))).status, 200)
  })
})

describe('ipv6_prefix in config', () => {
  const problems = (limits: unknown[][]): string[] => {
    try {
      validateConfig({
        upstreams: { up: { targets: [{ url: 'http://127.0.0.1:1' }] } },
        routes: limits.map((rateLimit, i) => ({
          name: `r${i}`,
          match: {},
          upstream: 'up',
          rate_limit: rateLimit,
        })),
      } as ConfigInput)
    } catch (err) {
      if (err instanceof ConfigError) return err.issues.map((i) => `${i.path}: ${i.message}`)
      throw err
    }
    return []
  }

  it('is 1-128, only where addresses are counted, and the same wherever a named limit is used', () => {
    assert.deepEqual(problems([[{ key: 'ip', rate: '1/s', ipv6_prefix: 0 }]]), [
      'routes[0].rate_limit[0].ipv6_prefix: Too small: expected number to be >=1',
    ])
    assert.deepEqual(problems([[{ key: 'header:x-k', rate: '1/s', ipv6_prefix: 56 }]]), [
      'routes[0].rate_limit[0].ipv6_prefix: only for key: ip or missing: ip (it says how addresses are counted)',
    ])
    assert.deepEqual(
      problems([[{ key: 'header:x-k', missing: 'ip', rate: '1/s', ipv6_prefix: 56 }]]),
      [],
    )
    assert.deepEqual(
      problems([[{ name: 'n', key: 'ip', rate: '1/s' }], [{
        name: 'n',
        key: 'ip',
        rate: '1/s',
        ipv6_prefix: 48,
      }]]),
      [
        'routes[1].rate_limit[0].name: limit "n" is defined differently at routes[0].rate_limit[0]; a shared name means one bucket, so key, rate, burst, quota, cost, store and ipv6_prefix must match',
      ],
    )
    assert.deepEqual(
      problems([[{ name: 'n', key: 'ip', rate: '1/s' }], [{
        name: 'n',
        key: 'ip',
        rate: '1/s',
        ipv6_prefix: 64,
      }]]),
      [],
    )
  })
})

describe('addressBucket', () => {
  it('names the prefix an address counts in', () => {
    assert.equal(addressBucket('203.0.113.9', 64), '203.0.113.9')
    assert.equal(addressBucket('2001:db8::1', 64), '2001:db8:0:0::/64')
    assert.equal(addressBucket('2001:db8:aaaa:bbbb:cccc::1', 56), '2001:db8:aaaa:bb00::/56')
    assert.equal(addressBucket('2001:db8::1', 128), '2001:db8:0:0:0:0:0:1/128')
    assert.equal(addressBucket('::', 64), '0:0:0:0::/64')
    assert.equal(addressBucket('64:ff9b::192.0.2.33', 128), '64:ff9b:0:0:0:0:c000:221/128')
    assert.equal(addressBucket('fe80::1%eth0', 64), 'fe80:0:0:0::/64')
    assert.equal(addressBucket('garbage:', 64), 'garbage:')
  })

  it('agrees with ipaddr.js on every spelling it accepts', () => {
    const samples = ['::', '::1', '1::', '1:2:3:4:5:6:7:8', '1::8', '1:2::7:8', 'FFFF::',
      '::ffff:1.2.3.4', '1:2:3:4:5:6:1.2.3.4', '0:0:0:0:0:0:0:0', 'abcd:ef01::2345:6789']
    for (let i = 0; i < 300; i++) {
      const parts = Array.from(
        { length: 8 },
        () => Math.random() < 0.3 ? 0 : Math.floor(Math.random() * 0x10000),
      )
      samples.push(ipaddr.fromByteArray(new ipaddr.IPv6(parts).toByteArray()).toString())
      samples.push(parts.map((p) => p.toString(16).padStart(4, '0')).join(':'))
    }
    for (const s of samples) {
      const expected = ipaddr.IPv6.parse(s).parts.map((p) => p.toString(16)).join(':') + '/128'
      assert.equal(addressBucket(s, 128), expected, s)
    }
    for (
      const bad of ['1:2:3:4:5:6:7:8:9', '1:::2', ':1::2', '1::2::3', '12345::',
        '1:2:3:4:5:6:7:1.2.3.4', '::1.2.3', '::1.2.3.256', '1:']
    ) {
      assert.equal(addressBucket(bad, 64), bad, bad)
    }
  })
})

describe('a flood of fresh keys on a memory store', () => {
  let up: Echo
  let gw: TestGateway
  let agent: http.Agent
  before(async () => {
    up = await startEchoUpstream()
    agent = new http.Agent({ keepAlive: true, maxSockets: 16 })
    gw = await startGateway({
      stores: { small: { kind: 'memory', max_keys: 1000 } },
      upstreams: { up: { targets: [{ url: up.url }] } },
      routes: [
        {
          name: 'victim',
          match: { path_prefix: '/victim' },
          upstream: 'up',
          rate_limit: [{
            name: 'users',
            key: 'header:x-user',
            rate: '1/min',
            burst: 1,
            store: 'small',
          }],
        },
        {
          name: 'flood',
          match: { path_prefix: '/flood' },
          upstream: 'up',
          rate_limit: [{
            name: 'keys',
            key: 'header:x-k',
            rate: '1/min',
            burst: 1,
            store: 'small',
          }],
        },
      ],
    })
  })
  after(async () => {
    agent.destroy()
    await gw.close()
    await up.close()
  })

  const flood = async (path: string, header: string, n: number): Promise<number[]> =>
    await Promise.all(
      Array.from(
        { length: n },
        async (_, i) => (await call(gw, path, { [header]: `k${i}` }, agent)).status,
      ),
    )

  it('1,200 keys on another route leave an exhausted bucket exhausted', async () => {
    assert.equal((await call(gw, '/victim', { 'x-user': 'victim' })).status, 200)
    assert.deepEqual(
      (await call(gw, '/victim', { 'x-user': 'victim' })).problem,
      RATE_LIMITED('users'),
    )
    const statuses = await flood('/flood', 'x-k', 1200)
    assert.deepEqual(new Set(statuses), new Set([200]))
    assert.deepEqual(
      (await call(gw, '/victim', { 'x-user': 'victim' })).problem,
      RATE_LIMITED('users'),
    )
    const text = await metricsText(gw.adminPort!)
    // Each limit has its own 1,000 buckets: the flood pushed out 200 of its own, none of the victim's.
    assert.match(text, /^gatehouse_limit_evictions_total\{store="small",limit="keys"\} 200$/m)
    assert.match(text, /^gatehouse_limit_evictions_total\{store="small",limit="users"\} 0$/m)
  })

  it('within one limit max_keys is the bound, and each bucket dropped while counting is counted', async () => {
    // On the victim's own limit, 1,200 fresh keys do push it out (LRU): the metric says so.
    const statuses = await flood('/victim', 'x-user', 1200)
    assert.deepEqual(new Set(statuses), new Set([200]))
    assert.equal((await call(gw, '/victim', { 'x-user': 'victim' })).status, 200)
    const text = await metricsText(gw.adminPort!)
    // 1 + 1,200 + the victim again: 1,202 buckets for 1,000 places.
    assert.match(text, /^gatehouse_limit_evictions_total\{store="small",limit="users"\} 202$/m)
  })
})

describe('subject limits are per identity provider', () => {
  let up: Echo
  let gw: TestGateway
  const sha = (k: string): string => createHash('sha256').update(k).digest('hex')
  before(async () => {
    up = await startEchoUpstream()
    gw = await startGateway({
      identity: {
        providers: {
          partners: {
            kind: 'api_key',
            header: 'x-partner-key',
            keys: [{ id: 'alice', sha256: sha('partner-alice-key') }],
          },
          staff: {
            kind: 'api_key',
            header: 'x-staff-key',
            keys: [{ id: 'alice', sha256: sha('staff-alice-key') }],
          },
        },
      },
      upstreams: { up: { targets: [{ url: up.url }] } },
      routes: [
        {
          name: 's',
          match: { path_prefix: '/s' },
          upstream: 'up',
          auth: { any_of: ['partners', 'staff'] },
          rate_limit: [{ name: 'per-caller', key: 'subject', rate: '1/min', burst: 1 }],
        },
        {
          name: 'k',
          match: { path_prefix: '/k' },
          upstream: 'up',
          auth: { any_of: ['partners', 'staff'] },
          rate_limit: [{ name: 'per-key', key: 'api_key', rate: '1/min', burst: 1 }],
        },
      ],
    })
  })
  after(async () => {
    await gw.close()
    await up.close()
  })

  it('alice of one provider exhausting her bucket leaves alice of another untouched', async () => {
    for (const [path, limit] of [['/s', 'per-caller'], ['/k', 'per-key']] as const) {
      assert.equal((await call(gw, path, { 'x-partner-key': 'partner-alice-key' })).status, 200)
      assert.deepEqual(
        (await call(gw, path, { 'x-partner-key': 'partner-alice-key' })).problem,
        RATE_LIMITED(limit),
      )
      const staff = await call(gw, path, { 'x-staff-key': 'staff-alice-key' })
      assert.equal(staff.status, 200)
      assert.match(String(staff.ratelimit), new RegExp(`^"${limit}";r=0;t=(60|59)$`))
      assert.deepEqual(
        (await call(gw, path, { 'x-staff-key': 'staff-alice-key' })).problem,
        RATE_LIMITED(limit),
      )
    }
  })
})
