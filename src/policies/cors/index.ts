import type { RouteConfig } from '../../config/schema.js'
import { CorsPolicy } from './policy.js'

export { CorsPolicy }

/** `cors: { origins, methods, headers, credentials, max_age }` → preflights and origin marks. */
export function corsPolicy (route: RouteConfig): CorsPolicy | null {
  return route.cors === undefined ? null : new CorsPolicy(route.cors, route.match.methods)
}
