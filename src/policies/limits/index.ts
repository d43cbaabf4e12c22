import type { RouteConfig } from '../../config/schema.js'
import type { PolicyDeps } from '../deps.js'
import { RateLimitPolicy } from './policy.js'

export { RateLimitPolicy }
export { costTap } from './response.js'

/** `rate_limit: [...]` → every limit checked in order, after the caller is known. */
export function rateLimitPolicy (route: RouteConfig, deps: PolicyDeps): RateLimitPolicy | null {
  return route.rate_limit === undefined || route.rate_limit.length === 0
    ? null
    : new RateLimitPolicy(route, deps.stores.counterStores, deps.metrics)
}
