import { isIPv4, isIPv6 } from 'node:net'
import ipaddr from 'ipaddr.js'
import type { CidrSet } from './cidr.js'

/**
 * The client's address: the TCP peer, unless the peer is a trusted proxy, in which case the
 * right-most X-Forwarded-For entry that is not itself a trusted proxy. Entries to the left of
 * that one were written by the client and prove nothing.
 */
export function clientAddress (
  peer: string,
  xForwardedFor: string | null,
  trusted: CidrSet,
): string {
  if (xForwardedFor === null || trusted.size === 0 || !trusted.has(peer)) return plainAddress(peer)
  const parts = xForwardedFor.split(',')
  let leftmost = peer
  for (let i = parts.length - 1; i >= 0; i--) {
    const addr = bareAddress(parts[i]!.trim())
    if (addr === '') continue
    if (!trusted.has(addr)) return plainAddress(addr)
    leftmost = addr
  }
  // Every hop is a trusted proxy: the first one is as close to the client as we can know.
  return plainAddress(leftmost)
}

/**
 * An IPv4-mapped IPv6 address (::ffff:a.b.c.d) as the IPv4 address it is; anything else as it
 * is. An IPv4 client on a dual-stack socket shows up mapped, and a proxy may write either form:
 * one client must be one address to `ip` rules and to `ip` limit keys.
 */
export function plainAddress (address: string): string {
  // The socket's own spelling first, without a parse: this runs on every request.
  if (address.startsWith('::ffff:')) {
    const v4 = address.slice(7)
    if (isIPv4(v4)) return v4
  }
  // Other spellings (::FFFF:7f00:1, 0:0:0:0:0:ffff:…) are rare; garbage stays as it was.
  if (!/ffff/i.test(address) || !isIPv6(address)) return address
  try {
    const ip = ipaddr.IPv6.parse(address)
    return ip.isIPv4MappedAddress() ? ip.toIPv4Address().toString() : address
  } catch {
    // Node and ipaddr.js disagree about this spelling: not worth a crash.
    return address
  }
}

/** "[2001:db8::1]:443" → "2001:db8::1", "192.0.2.1:8080" → "192.0.2.1". */
function bareAddress (v: string): string {
  if (v.charCodeAt(0) === 91 /* [ */) {
    const end = v.indexOf(']')
    return end === -1 ? v : v.slice(1, end)
  }
  const colon = v.indexOf(':')
  // One colon: IPv4 with a port. More: a bare IPv6 address.
  return colon !== -1 && v.indexOf(':', colon + 1) === -1 ? v.slice(0, colon) : v
}
