import type { AccessLog } from '../observability/access-log.js'
import type { Metrics } from '../observability/metrics.js'
import { BodyLimit } from './body.js'
import { CLIENT_CLOSED, type Exchange } from './exchange.js'

/** A request is over: its metrics, and its access-log line (null: access logs are off). */
export function record (ex: Exchange, metrics: Metrics, access: AccessLog | null): void {
  const now = performance.now()
  const route = ex.route
  // 499 only when the client left on its own; when the gateway cut the connection (upstream
  // fault mid-body) the log keeps the status that was sent, plus the error code.
  const status = ex.clientGone && ex.error === null && !ex.res.writableFinished
    ? CLIENT_CLOSED
    : ex.status
  const routeName = route === null ? '(none)' : route.name
  const upstreamName = route === null ? '(none)' : route.upstream.name
  if (ex.body instanceof BodyLimit) ex.bytesIn = ex.body.bytes
  else if (ex.body !== null && ex.req.complete) ex.bytesIn = Number(ex.contentLength)
  else if (ex.bodyBuffer !== null) ex.bytesIn = ex.bodyBuffer.length
  const rm = metrics.forRoute(route, routeName, upstreamName)
  rm.countRequest(ex.req.method ?? '', status)
  rm.duration.observe((now - ex.startedAt) / 1000)
  if (ex.upstreamHeadersAt !== 0) {
    rm.upstreamDuration.observe((ex.upstreamHeadersAt - ex.upstreamStartedAt) / 1000)
  }
  if (ex.bytesIn > 0) rm.bytesIn.inc(ex.bytesIn)
  if (ex.bytesOut > 0) rm.bytesOut.inc(ex.bytesOut)
  if (access !== null) {
    access.write({
      id: ex.requestId,
      route: routeName,
      method: ex.req.method ?? '',
      path: ex.path,
      status,
      target: ex.target === null ? null : ex.target.origin,
      attempts: ex.attempts,
      bytesIn: ex.bytesIn,
      bytesOut: ex.bytesOut,
      ms: round(now - ex.startedAt),
      upstreamMs: ex.upstreamHeadersAt === 0
        ? null
        : round(ex.upstreamHeadersAt - ex.upstreamStartedAt),
      code: ex.error === null ? null : ex.error.code,
      reason: ex.error === null ? null : (ex.error.reason ?? ex.error.detail),
      provider: ex.identity === null ? null : ex.identity.provider,
      subject: ex.identity === null ? null : ex.identity.subject,
    })
  }
}

function round (ms: number): number {
  return Math.round(ms * 1000) / 1000
}
