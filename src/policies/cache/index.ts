import type { RouteConfig } from '../../config/schema.js'
import type { PolicyDeps } from '../deps.js'
import { CachePolicy } from './policy.js'
import { CacheStep } from './step.js'

export { CachePolicy, CacheStep }
export { cacheTee } from './response.js'

/** `cache: { ttl, key, ... }` → lookups before the terminal, misses captured as they stream. */
export function cachePolicy (route: RouteConfig, deps: PolicyDeps): CacheStep | null {
  const cfg = route.cache
  if (cfg === undefined) return null
  return new CacheStep(
    new CachePolicy(
      route.name,
      cfg,
      deps.stores.cacheStores.get(cfg.store)!,
      cfg.store,
      route.auth === undefined,
    ),
  )
}
