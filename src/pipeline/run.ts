import { gatewayError, type GatewayError } from '../errors/index.js'
import type { Exchange } from './exchange.js'
import { HANDLED, type Step, type Verdict } from './step.js'

/*
 * The runner: one loop over a route's compiled steps (hono's compose, fastify's hook arrays),
 * synchronous while the steps are, and one place where a refusal or a bug becomes an answer.
 */

/**
 * Run `steps` from `from` on. Returns the first verdict that is not null (or null when every
 * step let the request through), or a Promise of it as soon as a step has to wait. A request
 * whose client left while a step waited stops there (HANDLED: it is logged already).
 */
export function runSteps (
  ex: Exchange,
  steps: readonly Step[],
  from = 0,
): Verdict | Promise<Verdict> {
  for (let i = from; i < steps.length; i++) {
    const v = steps[i]!.run(ex)
    if (v === null) continue
    if (v instanceof Promise) {
      return v.then((r) => r !== null ? r : ex.finished ? HANDLED : runSteps(ex, steps, i + 1))
    }
    return v
  }
  return null
}

/** Run a request's route from its first step to its terminal; every refusal ends in `refuse`. */
export function run (ex: Exchange, steps: readonly Step[]): void {
  let v: Verdict | Promise<Verdict>
  try {
    v = runSteps(ex, steps)
  } catch (err) {
    internalError(ex, err)
    return
  }
  if (v === null || v === HANDLED) return
  if (v instanceof Promise) {
    v.then((r) => settle(ex, r), (err: unknown) => internalError(ex, err))
    return
  }
  refuse(ex, v)
}

function settle (ex: Exchange, v: Verdict): void {
  // The client may have left while a step waited: the exchange is logged already.
  if (v === null || v === HANDLED || ex.finished) return
  refuse(ex, v)
}

/** The one error sink: counted by code, answered as problem+json. */
export function refuse (ex: Exchange, err: GatewayError): void {
  ex.rt.metrics.refused.labels(err.code).inc()
  ex.fail(err)
}

/** A bug must cost one request, never the process. */
export function internalError (ex: Exchange, err: unknown): void {
  ex.rt.logger.error({
    msg: 'internal error',
    id: ex.requestId,
    err: (err as Error).stack ?? String(err),
  })
  if (!ex.finished) {
    ex.fail(
      gatewayError('GH_INTERNAL', 'The gateway failed to handle this request', {
        reason: (err as Error).message,
      }),
    )
  }
}
