import type { Config, RouteDeliveryConfig } from '../config/schema.js'
import type { PhantomSigner } from '../identity/phantom.js'
import type { IdentityProvider } from '../identity/types.js'
import type { Upstream } from '../upstream/balancer.js'

/*
 * What the delivery log reads of a route and of the route table (compile/table.ts CompiledRoute
 * and RouteTable are ones): delivery sits below the pipeline and the compiler, and imports
 * neither.
 */

export interface DeliveryRoute {
  readonly name: string
  /** Set on async routes. */
  readonly delivery: RouteDeliveryConfig | null
  readonly upstream: Upstream
  readonly preserveHost: boolean
  /** The route's credential providers (their credentials are never stored in the clear). */
  readonly auth: {
    readonly providers: readonly IdentityProvider[]
    readonly phantom: PhantomSigner | null
  } | null
}

export interface DeliveryTable {
  readonly config: Config
  readonly routes: readonly DeliveryRoute[]
  /** Request headers the config gives a role: 'credential' ones are stored sealed. */
  readonly headerRoles: ReadonlyMap<string, 'strip' | 'credential'>
}
