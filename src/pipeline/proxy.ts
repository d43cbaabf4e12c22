import type { CompiledRoute, RouteExchange } from '../compile/table.js'
import { noHealthyTarget, upstreamBusy } from '../upstream/errors.js'
import { pickTarget, unavailable } from '../upstream/dispatch.js'
import { finishRequestHeaders } from './headers.js'
import { HANDLED, type Step, type Verdict } from './step.js'

/**
 * The terminal of an ordinary route: finish the head, pick a target (or wait for a slot on a
 * full upstream), and send. From here the Exchange is the upstream call's handler.
 */
export const proxy: Step = {
  name: 'proxy',
  run (ex: RouteExchange): Verdict {
    const route = ex.route!
    if (route.responseTransform !== null || route.plugin !== null) {
      ex.captureLimit = captureLimit(route, ex.method)
    }
    // The answer's way back, built before anything can fail: a leading cache miss refused
    // here still lets its followers go (through its cache tee's onAbort).
    if (route.responseChain !== null) ex.response = route.responseChain(ex)
    finishRequestHeaders(ex, route, ex.rt.encrypted)
    const upstream = route.upstream
    const now = Date.now()
    const target = pickTarget(upstream, now)
    if (target === null) {
      if (unavailable(upstream, now) === 'busy') {
        // Every target is at max_in_flight: wait for a slot (Exchange.granted / timedOut).
        if (upstream.enqueue(ex)) return HANDLED
        ex.rt.metrics.queued.labels(upstream.name, 'full').inc()
        return upstreamBusy(
          upstream.name,
          `queue full (${upstream.queueSize} waiting, max_in_flight ${upstream.maxInFlight})`,
        )
      }
      return noHealthyTarget(upstream)
    }
    // RFC 9110 §10.1.1: ask for the body only once we know we want it.
    if (ex.expectContinue) ex.sendContinue()
    if (ex.body !== null) ex.rt.watchBody(ex)
    ex.dispatchTo(target)
    return HANDLED
  },
}

/** How much of the upstream's answer to read whole before answering (0: stream it). */
function captureLimit (route: CompiledRoute, method: string): number {
  if (method === 'HEAD') return 0
  let cap = 0
  const t = route.responseTransform
  if (t !== null && t.body !== null) cap = t.maxBody
  const p = route.plugin
  if (p !== null && p.plugin.onResponse !== undefined) {
    cap = cap === 0 ? p.maxResponseBody : Math.min(cap, p.maxResponseBody)
  }
  return cap
}
