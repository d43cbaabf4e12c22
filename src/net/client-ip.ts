import type { CidrSet } from './cidr.js'

/**
 * The client's address: the TCP peer, unless the peer is a trusted proxy, in which case the
 * right-most X-Forwarded-For entry that is not itself a trusted proxy. Entries to the left of
 * that one were written by the client and prove nothing.
 */
export function clientAddress (peer: string, xForwardedFor: string | null, trusted: CidrSet): string {
  if (xForwardedFor === null || trusted.size === 0 || !trusted.has(peer)) return peer
  const parts = xForwardedFor.split(',')
  let leftmost = peer
  for (let i = parts.length - 1; i >= 0; i--) {
    const addr = bareAddress(parts[i]!.trim())
    if (addr === '') continue
    if (!trusted.has(addr)) return addr
    leftmost = addr
  }
  // Every hop is a trusted proxy: the first one is as close to the client as we can know.
  return leftmost
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
