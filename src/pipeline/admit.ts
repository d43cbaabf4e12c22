import type { CompiledRoute } from '../compile/index.js'
import type { GatewayError } from '../errors/index.js'
import { clientAddress } from '../net/client-ip.js'
import type { Exchange } from './exchange.js'

/**
 * The route's access checks, cheapest first: client address, then credentials. Synchronous
 * unless a credential needs I/O or a signature check; plain requests and upgrades share it.
 */
export function admit (ex: Exchange, route: CompiledRoute): GatewayError | null | Promise<GatewayError | null> {
  if (route.ip !== null) {
    const err = route.ip.check(clientAddress(ex.req.socket.remoteAddress ?? '', ex.xForwardedFor, ex.table.trustedProxies))
    if (err !== null) return err
  }
  return route.auth === null ? null : route.auth.check(ex, Date.now())
}
