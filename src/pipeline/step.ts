import type { GatewayError } from '../errors/index.js'
import type { Exchange } from './exchange.js'

/**
 * What a step decides about a request: go on to the next step (null), refuse it with a
 * GatewayError (the runner answers it as problem+json), or HANDLED: the step answered the
 * request itself (a cache hit, a plugin's own response) or took it over (a terminal: the
 * request is on its way upstream or into the delivery log).
 */
export type Verdict = GatewayError | null | typeof HANDLED

export const HANDLED = 1

/**
 * One link of a route's compiled chain (ip → auth → limits → body → transform → plugin →
 * cache → terminal). Steps are built once per route by their policy's factory (`compile/`)
 * and shared by every request on it; per-request state lives on the Exchange. `run` returns
 * a Promise only when it must wait (a provider's I/O, a remote store, reading the body), so a
 * route whose steps all answer at once runs without a turn of the event loop.
 */
export interface Step {
  /** For logs, `gatehouse routes` and tests. */
  readonly name: string
  run (ex: Exchange): Verdict | Promise<Verdict>
}
