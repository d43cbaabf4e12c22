import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { clientAddress } from '../../src/net/client-ip.js'
import { CidrSet } from '../../src/net/cidr.js'
import { headerValue } from '../../src/policies/auth/policy.js'
import { IpPolicy } from '../../src/policies/ip/policy.js'
import { normalizePath } from '../../src/pipeline/headers.js'
import { peekPayload, scopesOf } from '../../src/identity/common.js'

describe('clientAddress', () => {
  const trusted = new CidrSet(['10.0.0.0/8', '::1'])
  it('is the peer when the peer is not a trusted proxy', () => {
    assert.equal(clientAddress('203.0.113.1', '10.1.1.1', trusted), '203.0.113.1')
  })
  it('is the right-most untrusted X-Forwarded-For entry behind trusted proxies', () => {
    assert.equal(
      clientAddress('10.0.0.2', '198.51.100.7, 203.0.113.9, 10.0.0.5', trusted),
      '203.0.113.9',
    )
    assert.equal(clientAddress('::1', '2001:db8::5', trusted), '2001:db8::5')
  })
  it('strips ports and brackets', () => {
    assert.equal(clientAddress('10.0.0.2', '203.0.113.9:5555', trusted), '203.0.113.9')
    assert.equal(clientAddress('10.0.0.2', '[2001:db8::5]:443', trusted), '2001:db8::5')
  })
  it('falls back to the left-most hop when every hop is trusted', () => {
    assert.equal(clientAddress('10.0.0.2', '10.9.9.9, 10.0.0.5', trusted), '10.9.9.9')
    assert.equal(clientAddress('10.0.0.2', ' , ', trusted), '10.0.0.2')
  })
})

describe('IpPolicy', () => {
  const p = new IpPolicy({
    allow: ['10.0.0.0/8', '2001:db8::/32'],
    deny: ['10.6.6.0/24', '2001:db8:bad::/48'],
  })
  it('allows listed ranges, IPv4 and IPv6 (also IPv4-mapped)', () => {
    assert.equal(p.check('10.1.2.3'), null)
    assert.equal(p.check('::ffff:10.1.2.3'), null)
    assert.equal(p.check('2001:db8:1::1'), null)
  })
  it('denies first, then refuses what allow does not list', () => {
    assert.equal(p.check('10.6.6.1')?.code, 'GH_IP_FORBIDDEN')
    assert.equal(p.check('2001:db8:bad::1')?.code, 'GH_IP_FORBIDDEN')
    assert.equal(p.check('192.168.1.1')?.code, 'GH_IP_FORBIDDEN')
    assert.equal(p.check('not-an-address')?.code, 'GH_IP_FORBIDDEN')
  })
  it('with only deny, every other address passes; something that is no address does not', () => {
    const d = new IpPolicy({ deny: ['192.0.2.0/24'] })
    assert.equal(d.check('192.0.2.5')?.status, 403)
    assert.equal(d.check('198.51.100.1'), null)
    assert.equal(d.check('unknown')?.code, 'GH_IP_FORBIDDEN')
  })
})

describe('identity helpers', () => {
  it('headerValue never lets a claim break a header', () => {
    assert.equal(headerValue('acme'), 'acme')
    assert.equal(headerValue(42), '42')
    assert.equal(headerValue(['a', 'b']), 'a,b')
    assert.equal(headerValue(['dev,admin']), 'dev%2Cadmin')
    assert.equal(headerValue(''), null)
    assert.equal(headerValue({ x: 1 }), '{"x":1}')
    assert.equal(headerValue('evil\r\nx-admin: 1'), 'evil%0D%0Ax-admin:%201')
    assert.equal(headerValue('Zoë'), 'Zo%C3%AB')
    assert.equal(headerValue(null), null)
    assert.equal(headerValue(undefined), null)
  })
  it('scopesOf reads scope strings and scp lists', () => {
    assert.deepEqual([...scopesOf({ scope: 'a  b' })], ['a', 'b'])
    assert.deepEqual([...scopesOf({ scp: ['x', 'y', 3] })], ['x', 'y'])
    assert.deepEqual([...scopesOf({})], [])
  })
  it('peekPayload reads a JWS payload without trusting it, and refuses other shapes', () => {
    const enc = (o: object): string => Buffer.from(JSON.stringify(o)).toString('base64url')
    assert.deepEqual(peekPayload(`${enc({ alg: 'RS256' })}.${enc({ iss: 'x' })}.sig`), { iss: 'x' })
    assert.equal(peekPayload('opaque-token'), null)
    assert.equal(peekPayload('a.b.c.d'), null)
    assert.equal(peekPayload(`x.${Buffer.from('[1]').toString('base64url')}.y`), null)
    assert.equal(peekPayload('x.!!!.y'), null)
  })
})

describe('normalizePath', () => {
  it('decodes unreserved escapes, upper-cases the rest, merges slashes', () => {
    assert.equal(normalizePath('/%61dmin/x'), '/admin/x')
    assert.equal(normalizePath('/%7euser'), '/~user')
    assert.equal(normalizePath('/a%2fb'), '/a%2Fb')
    assert.equal(normalizePath('/caf%c3%a9'), '/caf%C3%A9')
    assert.equal(normalizePath('//a///b//'), '/a/b/')
    assert.equal(normalizePath('/plain'), '/plain')
  })
  it('refuses a % without two hex digits', () => {
    assert.equal(normalizePath('/x%zz'), null)
    assert.equal(normalizePath('/x%4'), null)
    assert.equal(normalizePath('/%'), null)
  })
})
