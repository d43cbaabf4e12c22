import { isIP, isIPv4, isIPv6 } from 'node:net'
import ipaddr from 'ipaddr.js'

/** A parsed CIDR range (a bare address is a /32 or /128). */
export type Cidr = [ipaddr.IPv4 | ipaddr.IPv6, number]

/** The range a config entry names; null when it names none (cidrProblem says why). */
export function parseCidr (text: string): Cidr | null {
  const c = strictCidr(text)
  return typeof c === 'string' ? null : c
}

/** Why a config entry is not a range or address, as a config error message; null when it is one. */
export function cidrProblem (text: string): string | null {
  const c = strictCidr(text)
  return typeof c === 'string' ? c : null
}

/**
 * Strict on purpose: ipaddr.js, like inet_aton, also reads 010.0.0.1 as 8.0.0.1 (octal),
 * 0x0a.0.0.1 and 10.1 (shortened), so a rule could silently name another range than the one
 * its author read. Only dotted decimal with four parts, or IPv6 without a zone id, is accepted,
 * and a range must be written as its network address.
 *
 * An IPv4-mapped range (::ffff:10.0.0.0/104) becomes the IPv4 range (10.0.0.0/8): clients are
 * matched in IPv4 form, so the mapped spelling would otherwise match nothing (a deny failing open).
 */
function strictCidr (text: string): Cidr | string {
  const bad = (why?: string): string =>
    `invalid CIDR or address ${JSON.stringify(text)}${why === undefined ? '' : `: ${why}`}`
  const slash = text.indexOf('/')
  const address = slash === -1 ? text : text.slice(0, slash)
  const zone = address.indexOf('%')
  if (zone !== -1) {
    return bad(
      `a zone id (${address.slice(zone)}) is not allowed: rules name addresses, not interfaces`,
    )
  }
  let ip: ipaddr.IPv4 | ipaddr.IPv6
  if (isIPv4(address)) ip = ipaddr.IPv4.parse(address)
  else if (isIPv6(address)) ip = ipaddr.IPv6.parse(address)
  else return bad(ipv4Problem(address))
  const max = ip.kind() === 'ipv4' ? 32 : 128
  let prefix = max
  if (slash !== -1) {
    const p = text.slice(slash + 1)
    if (!/^(?:0|[1-9]\d{0,2})$/.test(p) || Number(p) > max) {
      return bad(`the prefix length must be a whole number from 0 to ${max}`)
    }
    prefix = Number(p)
  }
  let mapped = false
  if (ip.kind() === 'ipv6' && (ip as ipaddr.IPv6).isIPv4MappedAddress() && prefix >= 96) {
    ip = (ip as ipaddr.IPv6).toIPv4Address()
    prefix -= 96
    mapped = true
  }
  const network = ip.kind() === 'ipv4'
    ? ipaddr.IPv4.networkAddressFromCIDR(`${ip}/${prefix}`)
    : ipaddr.IPv6.networkAddressFromCIDR(`${ip}/${prefix}`)
  if (String(network.toByteArray()) !== String(ip.toByteArray())) {
    return bad(
      `host bits are set (did you mean ${mapped ? '::ffff:' : ''}${network}/${
        text.slice(slash + 1)
      }?)`,
    )
  }
  return [ip, prefix]
}

/** What is wrong with something that looks like an IPv4 address in a form inet_aton would take. */
function ipv4Problem (address: string): string | undefined {
  if (!/^\d[0-9a-fA-FxX.]*$/.test(address)) return undefined
  const parts = address.split('.')
  const hex = parts.find((p) => /^0[xX]/.test(p))
  if (hex !== undefined) return `"${hex}" is hexadecimal: write each part in decimal (a.b.c.d)`
  if (!parts.every((p) => /^\d+$/.test(p))) return undefined
  const octal = parts.find((p) => /^0\d/.test(p))
  if (octal !== undefined) {
    return `"${octal}" has a leading zero, which some parsers read as octal (010 is 8): write each part in plain decimal`
  }
  if (parts.length < 4) {
    return 'an IPv4 address needs all four parts (a.b.c.d): shortened forms like 10.1 are not allowed'
  }
  if (parts.length === 4 && parts.some((p) => Number(p) > 255)) {
    return 'each part of an IPv4 address is 0 to 255'
  }
  return undefined
}

/**
 * A compiled set of ranges with a bounded memo of recent answers: the same few peers (a load
 * balancer, a mesh sidecar) ask on every request, so parsing their address each time is waste.
 */
export class CidrSet {
  readonly #v4: Cidr[] = []
  readonly #v6: Cidr[] = []
  readonly #memo = new Map<string, boolean>()
  readonly size: number

  constructor (ranges: readonly string[]) {
    for (const r of ranges) {
      const c = strictCidr(r)
      if (typeof c === 'string') throw new TypeError(c)
      if (c[0].kind() === 'ipv4') this.#v4.push(c)
      else this.#v6.push(c)
    }
    this.size = ranges.length
  }

  has (address: string | undefined): boolean {
    if (this.size === 0 || address === undefined) return false
    const known = this.#memo.get(address)
    if (known !== undefined) return known
    const result = this.#test(address)
    if (this.#memo.size >= 1024) this.#memo.clear()
    this.#memo.set(address, result)
    return result
  }

  #test (address: string): boolean {
    // Node's strict reading, not ipaddr.js's: an X-Forwarded-For entry 010.0.0.1 is no address
    // (as IpPolicy sees it), rather than 8.0.0.1.
    if (isIP(address) === 0) return false
    let addr: ipaddr.IPv4 | ipaddr.IPv6
    try {
      addr = ipaddr.parse(address)
    } catch {
      return false
    }
    // An IPv4 peer on a dual-stack socket shows up as ::ffff:a.b.c.d.
    if (addr.kind() === 'ipv6' && (addr as ipaddr.IPv6).isIPv4MappedAddress()) {
      addr = (addr as ipaddr.IPv6).toIPv4Address()
    }
    const list = addr.kind() === 'ipv4' ? this.#v4 : this.#v6
    for (const range of list) {
      if (addr.match(range as any)) return true
    }
    return false
  }
}
