import type { RouteExchange, RouteTable } from '../compile/table.js'
import type { DeliveryService } from '../delivery/service.js'
import { gatewayError, isGatewayError, type GatewayError } from '../errors/index.js'
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
  // One key or none (two say nothing a retry could be matched by), of the form delivery keeps.
  const keys = ex.headerValues('idempotency-key')
  const keyError = keyProblem(keys)
  if (keyError !== null) return keyError
  const key = keys[0] ?? null
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
    idempotencyKey: key,
    // Only a key needs an owner.
    caller: key === null ? '' : callerOf(ex),
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

/**
 * Whose Idempotency-Key a request's is (Stripe scopes keys per account): the authenticated
 * caller, per provider, or the client's address (after trusted_proxies) on a route without
 * auth. A webhook's sender is its provider: the one holder of the secret, whatever address a
 * retry comes from. Each part says which claim it came from, so that one caller's `sub` can
 * never equal another's `client_id` or (introspection) `username`. A token that names no one
 * (no sub, client or username: a provider may not require them) is scoped by its address,
 * never shared with every other such token.
 */
export function callerOf (ex: RouteExchange): string {
  const id = ex.identity
  if (id === null) return `ip:${ex.resolveClientIp()}`
  const provider = `${id.kind}:${id.provider}`
  if (id.kind === 'webhook') return provider
  if (id.kind === 'api_key') return `${provider}:key:${id.subject ?? ''}`
  const claims = id.claims
  if (typeof claims.sub === 'string' && claims.sub !== '') return `${provider}:sub:${claims.sub}`
  if (id.clientId !== null && id.clientId !== '') return `${provider}:client:${id.clientId}`
  if (typeof claims.username === 'string' && claims.username !== '') {
    return `${provider}:user:${claims.username}`
  }
  return `${provider}:ip:${ex.resolveClientIp()}`
}

/**
 * On routes with `delivery.idempotency: required`, before the body is read: a request without
 * an Idempotency-Key is refused (400 GH_IDEMPOTENCY_KEY_REQUIRED), and so is one whose key is
 * malformed or sent twice (400 GH_BAD_REQUEST), so no body is uploaded only to be refused.
 */
export const requireIdempotencyKey: Step = {
  name: 'idempotency_key',
  run (ex: RouteExchange): Verdict {
    const keys = ex.headerValues('idempotency-key')
    if (keys.length === 0) {
      return gatewayError(
        'GH_IDEMPOTENCY_KEY_REQUIRED',
        'This route requires an Idempotency-Key header (1 to 255 printable characters)',
        { reason: `route ${ex.route!.name} has delivery.idempotency: required` },
      )
    }
    return keyProblem(keys)
  },
}

const PRINTABLE = /^[\x20-\x7e]+$/

/**
 * A key sent twice, or not 1 to 255 printable ASCII characters (space to `~`): the 400 to
 * answer; else null. The one check of a key's form: delivery stores what passes it.
 */
export function keyProblem (keys: readonly string[]): GatewayError | null {
  if (keys.length > 1) return gatewayError('GH_BAD_REQUEST', 'Idempotency-Key must be sent once')
  const key = keys[0]
  if (key !== undefined && (key.length === 0 || key.length > 255 || !PRINTABLE.test(key))) {
    return gatewayError('GH_BAD_REQUEST', 'Idempotency-Key must be 1 to 255 printable characters')
  }
  return null
}

/** The terminal step of an async route (compile puts it last). */
export const accept: Step = {
  name: 'accept',
  async run (ex: RouteExchange): Promise<Verdict> {
    return await acceptInto(ex, ex.rt.delivery, ex.rt.encrypted) ?? HANDLED
  },
}
