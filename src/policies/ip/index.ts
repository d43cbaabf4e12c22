import type { RouteConfig } from '../../config/schema.js'
import { IpPolicy } from './policy.js'

export { IpPolicy }

/** `ip: { allow, deny }` → the address check, first in the route's steps. */
export function ipPolicy (route: RouteConfig): IpPolicy | null {
  return route.ip === undefined ? null : new IpPolicy(route.ip)
}
