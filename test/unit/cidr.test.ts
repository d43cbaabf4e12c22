import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { cidrProblem, CidrSet, parseCidr } from '../../src/net/cidr.js'
import { clientAddress, plainAddress } from '../../src/net/client-ip.js'
import { IpPolicy } from '../../src/policies/ip/policy.js'
import { configError, issueAt } from '../helpers/config.js'

describe('CIDRs in a config are parsed strictly', () => {
  // What ipaddr.js (like inet_aton) would read silently as another address than the one written.
  const cases: Array<[string, string]> = [
    ['010.0.0.1/32',
      'invalid CIDR or address "010.0.0.1/32": "010" has a leading zero, which some parsers read as octal (010 is 8): write each part in plain decimal'],
    ['10.0.0.01',
      'invalid CIDR or address "10.0.0.01": "01" has a leading zero, which some parsers read as octal (010 is 8): write each part in plain decimal'],
    ['0x0a.0.0.1',
      'invalid CIDR or address "0x0a.0.0.1": "0x0a" is hexadecimal: write each part in decimal (a.b.c.d)'],
    ['0xa000001',
      'invalid CIDR or address "0xa000001": "0xa000001" is hexadecimal: write each part in decimal (a.b.c.d)'],
    ['10.1',
      'invalid CIDR or address "10.1": an IPv4 address needs all four parts (a.b.c.d): shortened forms like 10.1 are not allowed'],
    ['167772161',
      'invalid CIDR or address "167772161": an IPv4 address needs all four parts (a.b.c.d): shortened forms like 10.1 are not allowed'],
    ['1.2.3.256', 'invalid CIDR or address "1.2.3.256": each part of an IPv4 address is 0 to 255'],
    ['fe80::1%eth0',
      'invalid CIDR or address "fe80::1%eth0": a zone id (%eth0) is not allowed: rules name addresses, not interfaces'],
    ['fe80::%eth0/64',
      'invalid CIDR or address "fe80::%eth0/64": a zone id (%eth0) is not allowed: rules name addresses, not interfaces'],
    ['1.2.3.4/8',
      'invalid CIDR or address "1.2.3.4/8": host bits are set (did you mean 1.0.0.0/8?)'],
    ['2001:db8::1/32',
      'invalid CIDR or address "2001:db8::1/32": host bits are set (did you mean 2001:db8::/32?)'],
    ['::ffff:127.0.0.1/104',
      'invalid CIDR or address "::ffff:127.0.0.1/104": host bits are set (did you mean ::ffff:127.0.0.0/104?)'],
    ['10.0.0.0/33',
      'invalid CIDR or address "10.0.0.0/33": the prefix length must be a whole number from 0 to 32'],
    ['10.0.0.0/08',
      'invalid CIDR or address "10.0.0.0/08": the prefix length must be a whole number from 0 to 32'],
    ['::/129',
      'invalid CIDR or address "::/129": the prefix length must be a whole number from 0 to 128'],
    ['nonsense', 'invalid CIDR or address "nonsense"'],
  ]
  for (const [text, message] of cases) {
    it(`refuses ${text}, saying why`, () => {
      assert.equal(cidrProblem(text), message)
      assert.equal(parseCidr(text), null)
      assert.throws(() => new CidrSet([text]), { name: 'TypeError', message })
    })
  }

  it('accepts dotted-decimal IPv4, IPv6, bare addresses and network addresses', () => {
    for (
      const ok of ['10.0.0.0/8', '0.0.0.0/0', '192.0.2.7', '192.0.2.7/32', '::1', '::/0',
        '2001:db8::/32', 'fd00::/8', '::ffff:10.0.0.0/104']
    ) {
      assert.equal(cidrProblem(ok), null, ok)
    }
  })

  it('names the config path of a bad trusted_proxies or ip entry', () => {
    const err = configError(`trusted_proxies: [10.0.0.0/8, 010.0.0.1/32]
upstreams: { up: { targets: [{ url: "http://127.0.0.1:9000" }] } }
routes:
  - name: a
    upstream: up
    ip: { allow: ["10.1"], deny: [1.2.3.4/8, "fe80::1%eth0"] }
`)
    assert.deepEqual(err.issues.map((i) => [i.path, i.message, i.line]), [
      ['routes[0].ip.allow[0]',
        'invalid CIDR or address "10.1": an IPv4 address needs all four parts (a.b.c.d): shortened forms like 10.1 are not allowed',
        6],
      ['routes[0].ip.deny[0]',
        'invalid CIDR or address "1.2.3.4/8": host bits are set (did you mean 1.0.0.0/8?)', 6],
      ['routes[0].ip.deny[1]',
        'invalid CIDR or address "fe80::1%eth0": a zone id (%eth0) is not allowed: rules name addresses, not interfaces',
        6],
      ['trusted_proxies[1]',
        'invalid CIDR or address "010.0.0.1/32": "010" has a leading zero, which some parsers read as octal (010 is 8): write each part in plain decimal',
        1],
    ])
    assert.match(
      err.message,
      /^gatehouse\.yaml:6:\d+: routes\[0\]\.ip\.deny\[0\]: invalid CIDR or address "1\.2\.3\.4\/8": host bits are set \(did you mean 1\.0\.0\.0\/8\?\)$/m,
    )
    assert.equal(issueAt(err, 'trusted_proxies[1]').column, 31)
  })
})

describe('IPv4-mapped IPv6 addresses', () => {
  const rules = ['127.0.0.1', '::ffff:127.0.0.1', '127.0.0.0/8', '::ffff:127.0.0.0/104']
  const clients = ['127.0.0.1', '::ffff:127.0.0.1', '::FFFF:127.0.0.1', '::ffff:7f00:1',
    '0:0:0:0:0:ffff:127.0.0.1']

  it('a mapped range with a prefix of 96 or more is the IPv4 range', () => {
    const [ip, prefix] = parseCidr('::ffff:127.0.0.0/104')!
    assert.equal(ip.kind(), 'ipv4')
    assert.equal(`${ip.toString()}/${prefix}`, '127.0.0.0/8')
    assert.equal(parseCidr('::ffff:10.1.2.3')![0].toString(), '10.1.2.3')
  })

  for (const rule of rules) {
    it(`a deny rule ${rule} refuses a client in either form`, () => {
      const set = new CidrSet([rule])
      const policy = new IpPolicy({ deny: [rule] })
      for (const client of clients) {
        assert.equal(set.has(client), true, `${rule} has ${client}`)
        assert.equal(policy.check(client)?.code, 'GH_IP_FORBIDDEN', `${rule} refuses ${client}`)
      }
      assert.equal(set.has('128.0.0.1'), false)
      assert.equal(set.has('::ffff:128.0.0.1'), false)
    })
  }

  it('client addresses are given in IPv4 form, so ip limits count one client once', () => {
    const none = new CidrSet([])
    assert.equal(clientAddress('::ffff:203.0.113.9', null, none), '203.0.113.9')
    const trusted = new CidrSet(['10.0.0.0/8'])
    assert.equal(clientAddress('::ffff:10.0.0.2', '::ffff:203.0.113.9', trusted), '203.0.113.9')
    assert.equal(clientAddress('10.0.0.2', '[::ffff:cb00:7109]:443', trusted), '203.0.113.9')
    assert.equal(clientAddress('10.0.0.2', '::ffff:10.0.0.5', trusted), '10.0.0.5')
    for (const client of clients) assert.equal(plainAddress(client), '127.0.0.1', client)
  })

  it('leaves other addresses, and garbage, as they are', () => {
    for (
      const a of ['2001:db8::1', 'ffff::1', '::1', 'fe80::1%eth0', 'unknown', '', '::ffff:garbage',
        '::ffff:010.0.0.1', '010.0.0.1']
    ) {
      assert.equal(plainAddress(a), a)
    }
    // A garbage X-Forwarded-For entry from a trusted proxy is the client address (ip rules refuse it).
    const trusted = new CidrSet(['10.0.0.0/8'])
    assert.equal(clientAddress('10.0.0.2', 'ffff:::zz', trusted), 'ffff:::zz')
    assert.equal(
      new IpPolicy({ deny: ['192.0.2.0/24'] }).check('ffff:::zz')?.code,
      'GH_IP_FORBIDDEN',
    )
    // ipaddr.js would read 010.0.0.1 as 8.0.0.1: as an X-Forwarded-For entry it is no address at all.
    assert.equal(new CidrSet(['8.0.0.0/8']).has('010.0.0.1'), false)
  })
})
