import type { CompiledRoute } from '../compile/index.js'
import type { GatewayError } from '../errors/index.js'
import { clientAddress } from '../net/client-ip.js'
import type { Exchange } from './exchange.js'

/**
 * The route's access checks, cheapest first: client address, credentials, then limits. Synchronous
 * unless a credential needs I/O or a signature check; plain requests and upgrades share it.
 */
export function admit (ex: Exchange, route: CompiledRoute): GatewayError | null | Promise<GatewayError | null> {
  if (route.ip !== null || route.rateLimit !== null) {
    ex.clientIp = clientAddress(ex.req.socket.remoteAddress ?? '', ex.xForwardedFor, ex.table.trustedProxies)
  }
  if (route.ip !== null) {
    const err = route.ip.check(ex.clientIp)
    if (err !== null) return err
  }
  const auth = route.auth === null ? null : route.auth.check(ex, Date.now())
  // Limits count admitted callers only, and may be keyed on who they are.
  const limits = route.rateLimit
  if (limits === null || (auth !== null && !(auth instanceof Promise))) return auth
  if (auth === null) return limits.check(ex)
  return auth.then((err) => err !== null ? err : limits.check(ex))
}
