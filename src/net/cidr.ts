import ipaddr from 'ipaddr.js'

/** A parsed CIDR range (a bare address is a /32 or /128). */
export type Cidr = [ipaddr.IPv4 | ipaddr.IPv6, number]

export function parseCidr (text: string): Cidr | null {
  try {
    if (text.includes('/')) return ipaddr.parseCIDR(text)
    const addr = ipaddr.parse(text)
    return [addr, addr.kind() === 'ipv4' ? 32 : 128]
  } catch {
    return null
  }
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
      const c = parseCidr(r)
      if (c === null) throw new TypeError(`invalid CIDR "${r}"`)
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
    let addr: ipaddr.IPv4 | ipaddr.IPv6
    try {
      addr = ipaddr.parse(address)
    } catch {
      return false
    }
    // An IPv4 peer on a dual-stack socket shows up as ::ffff:a.b.c.d.
    if (addr.kind() === 'ipv6' && (addr as ipaddr.IPv6).isIPv4MappedAddress()) addr = (addr as ipaddr.IPv6).toIPv4Address()
    const list = addr.kind() === 'ipv4' ? this.#v4 : this.#v6
    for (const range of list) {
      if (addr.match(range as any)) return true
    }
    return false
  }
}
