import type { DeliveryService } from '../delivery/service.js'
import type { Logger } from '../observability/logger.js'
import type { Metrics } from '../observability/metrics.js'
import type { Exchange } from './exchange.js'

/** What an Exchange needs from the gateway that owns it. */
export interface GatewayRuntime {
  readonly logger: Logger
  readonly metrics: Metrics
  /** True once shutdown began: responses close their connections. */
  readonly closing: boolean
  /** Whether the listener is TLS (X-Forwarded-Proto). */
  readonly encrypted: boolean
  /** Where async routes' requests go (the accept terminal). */
  readonly delivery: DeliveryService
  /** Called once per exchange when its response is over. */
  finish (ex: Exchange): void
  /** The upstream's answer was read whole (ex.captured): transform it and answer. */
  finishCaptured (ex: Exchange): void
  /** An early answer went out while the client still sends its body: close gracefully. */
  linger (ex: Exchange): void
  /** The request body is being read from now on (body_idle, body_min_rate). */
  watchBody (ex: Exchange): void
}
