import type { RouteConfig } from '../../config/schema.js'
import type { PolicyDeps } from '../deps.js'
import { AuthPolicy } from './policy.js'

export { AuthPolicy }

/** `auth: { any_of, scopes, claims }` → credentials checked against the named providers. */
export function authPolicy (route: RouteConfig, deps: PolicyDeps): AuthPolicy | null {
  return route.auth === undefined ? null : new AuthPolicy(route.auth, deps.identity)
}
