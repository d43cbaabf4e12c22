import type { IdentitySet } from '../identity/registry.js'
import type { StoreSet } from '../stores/registry.js'
import type { Metrics } from '../observability/metrics.js'

/**
 * What a policy factory may be given besides its route's config: the identity providers and
 * stores prepared for this config, and the metrics registry. Factories run once per route at
 * compile time and throw on a config they cannot use (startup fails, not a request).
 */
export interface PolicyDeps {
  readonly identity: IdentitySet
  readonly stores: StoreSet
  readonly metrics: Metrics
}
