import type { Readable } from 'node:stream'
import type { Dispatcher } from 'undici'
import type { GatewayError } from '../errors/index.js'
import type { Upstream } from './balancer.js'
import { isConnectFailure, upstreamError } from './errors.js'
import { releaseSlot, type Target } from './target.js'
import { RetryConnect, type RetryOwner } from './retry-connect.js'
import { PreciseTimeouts, type UpstreamTimeouts } from './timeouts.js'

/*
 * The one way a request reaches an upstream: the proxy (pipeline/exchange.ts), async delivery
 * (delivery/service.ts) and upgrades (server/upgrade.ts) all go through here.
 *
 *   const target = pickTarget(upstream, now)            // null: see unavailable()
 *   const req = upstreamRequest(method, path, headers, host, body, upstream.timeouts)
 *   dispatch(target, req, handler, upstream, owner)     // takes a slot on target
 *   // handler: answered() on the response head, release() once it is over, and on an
 *   // error failed(): the answer to give. A failed connect with a retry owner goes to another
 *   // target first (retry-connect.ts), and reaches the handler only when none is left.
 *
 * The handler is the caller's own undici handler (the Exchange, on the proxy path), so a
 * request that needs nothing more goes to the pool as it is: no wrapper, no closure. Only a
 * request with a short timeout (timeouts.ts), or one that may retry on another target, gets
 * a wrapper. What wraps nothing is done by
 * the plain functions below, which the handler calls at the points it already has.
 */

/**
 * One request to an upstream, for as many attempts as it takes. It is undici's dispatch
 * options as well: each attempt sets origin and path for its target and hands the object
 * itself to the pool (undici reads it when the request starts), so an attempt copies nothing.
 */
export interface UpstreamRequest extends Dispatcher.DispatchOptions {
  origin: string
  path: string
  method: Dispatcher.HttpMethod
  headers: string[]
  body: Readable | Buffer | null
  upgrade: string | null
  headersTimeout: number
  bodyTimeout: number
  /** Path and query as routed (after strip_prefix); each attempt puts its target's base path in front. */
  readonly routedPath: string
  readonly timeouts: UpstreamTimeouts
}

/**
 * A request for dispatch(). `headers` (flat [name, value, …]) become the request's own and
 * must not carry Host: `host` says which Host is sent.
 *
 * - null: the authority of whichever target serves the attempt (routes without preserve_host).
 *   undici writes it itself for a request without a Host field, from the pool's origin, which
 *   is the target's URL (Target.authority is the same URL's host).
 * - a string: this value whatever the target (preserve_host: the Host the client sent).
 */
export function upstreamRequest (
  method: string,
  routedPath: string,
  headers: string[],
  host: string | null,
  body: Readable | Buffer | null,
  timeouts: UpstreamTimeouts,
  upgrade: string | null = null,
): UpstreamRequest {
  if (host !== null) headers.push('host', host)
  return {
    origin: '',
    path: routedPath,
    method: method as Dispatcher.HttpMethod,
    headers,
    body,
    upgrade,
    headersTimeout: timeouts.headersTimeout,
    bodyTimeout: timeouts.bodyTimeout,
    routedPath,
    timeouts,
  }
}

/** A healthy target of `upstream` with a free slot, or null (unavailable() says why). */
export function pickTarget (upstream: Upstream, now: number): Target | null {
  return upstream.pick(now)
}

/**
 * Why pickTarget() found none: 'busy' when a healthy target exists and every one is at
 * max_in_flight (the proxy may wait for a slot), 'down' when every target is ejected.
 */
export function unavailable (upstream: Upstream, now: number): 'busy' | 'down' {
  return upstream.maxInFlight > 0 && upstream.anyHealthy(now) ? 'busy' : 'down'
}

/**
 * Send one attempt of `req` to `target` (from pickTarget(), a retry or a slot the balancer's
 * queue granted), holding one of the target's slots until release(). With a `retry` owner, a failed
 * connect goes to another target (retry-connect.ts) when the upstream has one; without, or on
 * a single-target upstream, the handler goes to the pool as it is.
 */
export function dispatch (
  target: Target,
  req: UpstreamRequest,
  handler: Dispatcher.DispatchHandler,
  upstream: Upstream | null = null,
  retry: RetryOwner | null = null,
): void {
  target.inFlight++
  req.origin = target.origin
  req.path = target.basePath + req.routedPath
  let h = handler
  if (retry !== null && upstream !== null && upstream.size > 1) {
    h = new RetryConnect(h, upstream, target, retry)
  }
  if (req.timeouts.precise) h = new PreciseTimeouts(h, req.timeouts, req.body)
  target.pool.dispatch(req, h)
}

/** The attempt on `target` is over (answered, failed or abandoned): its slot goes back, and to a queued request if one waits. */
export function release (target: Target): void {
  releaseSlot(target)
}

/** The target answered (a response head, or a 101): it is healthy. */
export function answered (upstream: Upstream, target: Target): void {
  upstream.recordSuccess(target)
}

/**
 * The attempt on `target` failed and will not be retried: the answer to give, mapped in one
 * place (errors.ts). A failed connect counts against the target's health (ejection).
 */
export function failed (upstream: Upstream, target: Target, err: unknown): GatewayError {
  if (isConnectFailure(err)) upstream.recordConnectFailure(target, Date.now())
  return upstreamError(err, upstream.name)
}
