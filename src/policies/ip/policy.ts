import { isIP } from 'node:net'
import type { RouteConfig } from '../../config/schema.js'
import { gatewayError, type GatewayError } from '../../errors/index.js'
import { CidrSet } from '../../net/cidr.js'
import type { Exchange } from '../../pipeline/exchange.js'
import type { Step } from '../../pipeline/step.js'

/** A route's `ip` block: deny wins, then allow (when given) must match. */
export class IpPolicy implements Step {
  readonly name = 'ip'
  readonly #allow: CidrSet | null
  readonly #deny: CidrSet

  constructor (ip: NonNullable<RouteConfig['ip']>) {
    this.#allow = ip.allow === undefined ? null : new CidrSet(ip.allow)
    this.#deny = new CidrSet(ip.deny)
  }

  run (ex: Exchange): GatewayError | null {
    return this.check(ex.resolveClientIp())
  }

  check (address: string): GatewayError | null {
    // Not an address at all (an odd X-Forwarded-For entry from a trusted proxy): it cannot be
    // shown to be outside the deny list, so it is refused too.
    if (
      isIP(address) === 0 || this.#deny.has(address) ||
      (this.#allow !== null && !this.#allow.has(address))
    ) {
      return gatewayError(
        'GH_IP_FORBIDDEN',
        'Requests from this address are not allowed on this route',
        { reason: `client address ${address}` },
      )
    }
    return null
  }
}
