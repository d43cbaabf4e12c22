import type { RouteExchange, RouteTable } from '../compile/table.js'
import type { DeliveryService } from '../delivery/service.js'
import { isGatewayError, type GatewayError } from '../errors/index.js'
import { requestHost, upstreamPath } from './exchange.js'
import { finishRequestHeaders } from './headers.js'
import { dropHeaders, isLengthField } from '../net/fields.js'
import { HANDLED, type Step, type Verdict } from './step.js'

/**
 * The terminal of an async route: hand the admitted request to the delivery log as a plain
 * record and answer `ack_status` (202) once the log says it is durable. A GatewayError (the
 * store cannot keep it, a bad or reused Idempotency-Key) is for the caller to answer.
 */
async function acceptInto (
  ex: RouteExchange,
  delivery: DeliveryService,
  encrypted: boolean,
): Promise<GatewayError | null> {
  const route = ex.route!
  finishRequestHeaders(ex, route, encrypted)
  // undici sets the length of the stored body itself on each attempt.
  dropHeaders(ex.outHeaders, isLengthField)
  const accepted = await delivery.enqueue({
    route,
    // The table this request was routed on (an Exchange<CompiledRoute> is made with a RouteTable).
    table: ex.table as RouteTable,
    method: ex.upstreamMethod ?? ex.method,
    target: (ex.upstreamPathOverride ?? upstreamPath(route, ex.path)) + ex.query,
    headers: ex.outHeaders,
    host: requestHost(ex),
    body: ex.bodyBuffer ?? EMPTY,
    idempotencyKey: ex.header('idempotency-key'),
    phantomToken: ex.phantomToken,
  })
  if (isGatewayError(accepted)) return accepted
  // The client left while the store wrote: the message is kept, and there is no one to answer.
  if (ex.finished) return null
  if (!accepted.duplicate) ex.rt.metrics.deliveryEnqueued.labels(route.name).inc()
  const location = accepted.statusUrl
  const text = JSON.stringify({ delivery_id: accepted.id, status_url: location })
  const res = ex.res
  const out = ['content-type', 'application/json', 'content-length',
    String(Buffer.byteLength(text)), 'location', location, 'x-request-id', ex.requestId,
    'cache-control', 'no-store']
  if (accepted.duplicate) out.push('idempotent-replayed', 'true')
  ex.pushRateLimitFields(out)
  const status = route.delivery!.ack_status
  ex.status = status
  ex.bytesOut = Buffer.byteLength(text)
  if (ex.rt.closing) res.shouldKeepAlive = false
  res.writeHead(status, out as unknown as string[])
  res.end(text)
  return null
}

const EMPTY = Buffer.alloc(0)

/** The terminal step of an async route (compile puts it last). */
export const accept: Step = {
  name: 'accept',
  async run (ex: RouteExchange): Promise<Verdict> {
    return await acceptInto(ex, ex.rt.delivery, ex.rt.encrypted) ?? HANDLED
  },
}
