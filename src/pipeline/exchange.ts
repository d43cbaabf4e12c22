import type { IncomingMessage, ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import type { Readable } from 'node:stream'
import type { Dispatcher } from 'undici'
import type { CidrSet } from '../net/cidr.js'
import type { DeliveryService } from '../delivery/service.js'
import { gatewayError, isGatewayError, problemBody, type GatewayError } from '../errors/index.js'
import type { Identity } from '../identity/types.js'
import type { Logger } from '../observability/logger.js'
import type { Metrics } from '../observability/metrics.js'
import type { Upstream, SlotWaiter } from '../upstream/balancer.js'
import type { Target } from '../upstream/target.js'
import {
  answered,
  dispatch,
  failed,
  release,
  upstreamRequest,
  type UpstreamRequest,
} from '../upstream/dispatch.js'
import type { RetryOwner } from '../upstream/retry-connect.js'
import { upstreamBusy } from '../upstream/errors.js'
import {
  addFields,
  dropHeaders,
  filterResponseHeaders,
  headerOf,
  isLengthField,
} from '../net/fields.js'
import type { PluginContext } from '../plugins/api.js'
import { clientAddress } from '../net/client-ip.js'

/*
 * The per-request state, and the shapes it meets: the steps that run over it (Step), the
 * route and table as a request reads them (RouteView, TableView), what the gateway gives it
 * (GatewayRuntime), and the response side policies hand it (ResponseHandler wrappers,
 * ResponseTap, ResponseCapture). Everything here is below the policies: they import it, it
 * imports none of them.
 */

/**
 * What a step decides about a request: go on to the next step (null), refuse it with a
 * GatewayError (the runner answers it as problem+json), or HANDLED: the step answered the
 * request itself (a cache hit, a plugin's own response) or took it over (a terminal: the
 * request is on its way upstream or into the delivery log).
 */
export type Verdict = GatewayError | null | typeof HANDLED

export const HANDLED = 1

/**
 * One link of a route's compiled chain (ip → cors → auth → limits → body → transform → plugin
 * → cache → terminal). Steps are built once per route by their policy's factory (`compile/`)
 * and shared by every request on it; per-request state lives on the Exchange. `run` returns
 * a Promise only when it must wait (a provider's I/O, a remote store, reading the body), so a
 * route whose steps all answer at once runs without a turn of the event loop.
 */
export interface Step {
  /** For logs, `gatehouse routes` and tests. */
  readonly name: string
  run(ex: Exchange): Verdict | Promise<Verdict>
}

/** Sees a response body go by (a quota's cost read from it). */
export interface ResponseTap {
  push(chunk: Buffer): void
}

/** Keeps a copy of a response as it streams (the cache's leading miss). */
export interface ResponseCapture {
  head(status: number, headers: readonly string[]): void
  push(chunk: Buffer): void
  complete(): void
  abort(): void
}

/**
 * The upstream's answer, once the Exchange (the undici handler) has checked its status and
 * filtered its head. A route's response behaviours (read whole, cost tap, transform, cache
 * tee) are handlers that wrap the next one, composed per route at compile time as undici's
 * interceptors are; the last is the Exchange itself, which writes to the client. A route
 * with none of them has no chain: the Exchange is its handler.
 */
export interface ResponseHandler {
  /** `headers` (flat, filtered) may be changed in place; `bodiless`: no body follows (HEAD, 204, 304). */
  onHead(status: number, headers: string[], bodiless: boolean): void
  /** false: pause the upstream until the Exchange resumes it (the client's socket drained). */
  onBody(chunk: Buffer): boolean
  onEnd(trailers: Buffer[] | null): void
  /** The answer failed or was cut short (upstream error, client gone, the gateway answered itself). */
  onAbort(): void
}

/** One response behaviour: wraps `next` for one request, or returns it when the request needs none. */
export type ResponseWrapper = (ex: Exchange, next: ResponseHandler) => ResponseHandler

/** A quota to charge once the response is known (what it is charged by is the policy's). */
export interface Charge {
  readonly key: string
}

/** The route as the request path reads it (compile/table.ts CompiledRoute is one). */
export interface RouteView {
  readonly name: string
  readonly upstream: Upstream
  readonly stripPrefix: string | null
  readonly preserveHost: boolean
  readonly requestTransform: { rewritePath(path: string): string } | null
  /** The route's response behaviours, composed (null: none, the Exchange handles the answer). */
  readonly responseChain: ((ex: Exchange) => ResponseHandler) | null
  readonly rateLimit: {
    /** RateLimit-Policy field value, sent with every response of the route. */
    readonly policyHeader: string
    charge(charges: readonly Charge[], tap: ResponseTap | null): void
  } | null
}

/** The route table as a request reads it (compile/table.ts RouteTable is one). */
export interface TableView {
  readonly trustedProxies: CidrSet
}

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
  finish(ex: Exchange): void
  /** The upstream's answer was read whole (ex.captured): transform it and answer. */
  finishCaptured(ex: Exchange): void
  /** An early answer went out while the client still sends its body: close gracefully. */
  linger(ex: Exchange): void
  /** The request body is being read from now on (body_idle, body_min_rate). */
  watchBody(ex: Exchange): void
}

/** The client connection as the server tracks it (server/connections.ts Conn is one). */
export interface ClientConnection {
  readonly socket: Socket
}

/** An upstream answer read whole, for a response transform or a plugin's onResponse. */
export interface CapturedResponse {
  status: number
  headers: string[]
  chunks: Buffer[]
  bytes: number
  readonly cap: number
}

export const kExchange = Symbol('gatehouse.exchange')

/** Status logged when the client went away before the response was complete (nginx's 499). */
export const CLIENT_CLOSED = 499

/**
 * Everything about one request, in one object of one shape (all fields set in the
 * constructor, as fastify's Context does). It is also the undici dispatch handler for the
 * upstream call, so a plain proxied request allocates no per-request closures or wrappers
 * (a route with response behaviours allocates one small handler per behaviour it uses).
 *
 * It implements undici's callback-style handler (onConnect/onHeaders/onData/onComplete/onError):
 * undici 7 calls those on every request itself, and the newer controller-style API is
 * adapted onto them with an extra header parse per response.
 */
export class Exchange<R extends RouteView = RouteView>
  implements Dispatcher.DispatchHandler, ResponseHandler, SlotWaiter, RetryOwner {
  readonly req: IncomingMessage
  readonly res: ServerResponse
  readonly rt: GatewayRuntime
  readonly table: TableView
  readonly startedAt: number
  route: R | null = null
  requestId = ''
  /** Path without query, as received. */
  path = ''
  /** '?…' or ''. */
  query = ''
  host = ''
  /** Raw request-header values the gateway rewrites. */
  hostHeader: string | null = null
  hostCount = 0
  contentLength: string | null = null
  transferEncoding: string | null = null
  connection: string | null = null
  xForwardedFor: string | null = null
  xForwardedProto: string | null = null
  xForwardedHost: string | null = null
  xForwardedPort: string | null = null
  /** Other X-Forwarded-* fields, flat [name, value, …]: forwarded only from a trusted proxy. */
  xForwardedOther: string[] | null = null
  forwarded: string | null = null
  via: string | null = null
  /** Credentials, as the auth policy reads them (see CredentialCarrier). */
  authorization: string | null = null
  authorizationCount = 0
  credHeaders: string[] | null = null
  identity: Identity | null = null
  phantomToken: string | null = null
  /** Client address as ip rules and limits see it (set by admit when a route needs it). */
  clientIp = ''
  /** RateLimit field for the response, and quotas to charge from it (see RateLimitPolicy). */
  rateLimit: string | null = null
  charges: Charge[] | null = null
  costTap: ResponseTap | null = null
  /** The copy the cache keeps of this (leading) miss's answer: set by the cache step, fed by its cache tee. */
  cacheCapture: ResponseCapture | null = null
  /**
   * Fields a step adds to whatever answers this request (the upstream, the cache, a plugin or a
   * refusal): flat [lower-case name, value, …], replacing the upstream's fields of those names
   * (Vary is added to). CORS marks answers for an allowed origin this way.
   */
  responseFields: readonly string[] | null = null
  /** X-Cache for upstream responses on a cached route ('MISS' or 'BYPASS'), or null. */
  cacheStatus: string | null = null
  /** The whole request body, when it was read for a cache key (then `body` is null). */
  bodyBuffer: Buffer | null = null
  /** The media type of `bodyBuffer` (the client's Content-Type, or what a transform made it). */
  bodyType: string | null = null
  /** Set on routes that read the upstream's answer whole before answering (see CapturedResponse). */
  captured: CapturedResponse | null = null
  /** Read the upstream answer whole (response body transform, plugin onResponse). */
  captureLimit = 0
  /** Where the upstream's answer goes: the route's response chain, or this Exchange. */
  response: ResponseHandler
  /**
   * Chunks a response handler is still working on (an event being transformed): the upstream
   * stays paused until they are done, even when the client's socket drains first.
   */
  held = 0
  /** The plugin's view of this request, on plugin routes. */
  pluginCtx: PluginContext | null = null
  /** Aborts the plugin's work (ctx.signal) at its time limit or when the client leaves. */
  pluginAbort: AbortController | null = null
  /** Set when a plugin changed them: method and path (after strip_prefix) sent upstream. */
  upstreamMethod: string | null = null
  upstreamPathOverride: string | null = null
  /** Set while waiting for a slot on a full upstream (max_in_flight). */
  queueTimer: NodeJS.Timeout | null = null
  queuedAt = 0
  expectContinue = false
  /** Header fields forwarded as they are, flat [name, value, …]. */
  outHeaders: string[] = []
  body: Readable | null = null
  /** The request as dispatch sends it (upstream/dispatch.ts), made on the first attempt. */
  upstreamRequest: UpstreamRequest | null = null
  target: Target | null = null
  targetHeld = false
  attempts = 0
  upstreamStartedAt = 0
  upstreamHeadersAt = 0
  status = 0
  bytesIn = 0
  bytesOut = 0
  error: GatewayError | null = null
  abortUpstream: ((err?: Error) => void) | null = null
  resumeUpstream: (() => void) | null = null
  drainHooked = false
  clientGone = false
  upstreamDone = false
  finished = false
  /** The client connection (pipelining, slow-client clocks); null for upgrade handshakes. */
  conn: ClientConnection | null = null

  constructor (req: IncomingMessage, res: ServerResponse, rt: GatewayRuntime, table: TableView) {
    this.req = req
    this.res = res
    this.rt = rt
    this.table = table
    this.startedAt = performance.now()
    this.response = this
  }

  // --- undici handler ------------------------------------------------------------------------

  onConnect (abort: (err?: Error) => void): void {
    this.abortUpstream = abort
    // Over before undici got to it: the client left, or the gateway answered already (the
    // body turned out malformed or too slow while the request waited for a connection).
    if (this.clientGone) abort(clientClosedError())
    else if (this.error !== null) abort(this.error)
  }

  onHeaders (statusCode: number, rawHeaders: Buffer[], resume: () => void): boolean {
    // 1xx interim responses (103 Early Hints) are not relayed: Node cannot send them for us
    // without writeEarlyHints, and clients are not required to see them.
    if (statusCode < 200) return true
    // RFC 9110 §15: three digits, 1xx to 5xx. Anything else is no answer a client can act on.
    if (statusCode > 599) {
      this.abortUpstream?.(
        gatewayError('GH_UPSTREAM_BAD_RESPONSE', 'The upstream sent an invalid response', {
          reason: `${this.route!.upstream.name}: status ${statusCode} is outside 100-599`,
        }),
      )
      return false
    }
    this.upstreamHeadersAt = performance.now()
    answered(this.route!.upstream, this.target!)
    this.resumeUpstream = resume
    this.status = statusCode
    if (this.rt.closing) this.res.shouldKeepAlive = false
    const headers = filterResponseHeaders(rawHeaders, this.requestId)
    if (headers === null) {
      this.abortUpstream?.(
        gatewayError('GH_UPSTREAM_BAD_RESPONSE', 'The upstream sent an invalid response', {
          reason: `${this.route!.upstream.name}: a Transfer-Encoding other than chunked`,
        }),
      )
      return false
    }
    this.response.onHead(
      statusCode,
      headers,
      statusCode === 204 || statusCode === 304 || this.req.method === 'HEAD',
    )
    return true
  }

  onData (chunk: Buffer): boolean {
    // undici hands over an empty chunk after each resume; writing it costs a syscall.
    if (chunk.length === 0) return true
    return this.response.onBody(chunk)
  }

  onComplete (trailers: string[] | Buffer[] | null): void {
    this.upstreamDone = true
    this.releaseTarget()
    this.response.onEnd(trailers as Buffer[] | null)
  }

  onError (err: Error): void {
    this.upstreamDone = true
    const target = this.target!
    this.releaseTarget()
    this.response.onAbort()
    // The client's answer is complete (a bodiless status, whose length fields undici then
    // holds against it; or the gateway answered itself, e.g. 408): nothing left to tell it.
    if (this.clientGone || (this.res.writableEnded && this.captured === null)) return
    const upstream = this.route!.upstream
    const gerr = failed(upstream, target, err)
    if (!isGatewayError(err)) this.rt.metrics.upstreamErrors.labels(upstream.name, gerr.code).inc()
    if (this.res.headersSent) {
      // Reset mid-body: abort the client connection so the truncation is visible (no final
      // chunk, or fewer bytes than Content-Length), never a complete-looking response.
      this.error = gerr
      this.res.destroy()
      return
    }
    this.fail(gerr)
  }

  // --- the end of the response chain: the client ---------------------------------------------

  onHead (status: number, headers: string[], bodiless: boolean): void {
    const res = this.res
    this.status = status
    if (this.route!.rateLimit !== null) {
      // The gateway's limits are the ones the client meets; an upstream's own fields would
      // contradict them.
      dropHeaders(headers, isRateLimitField)
      this.pushRateLimitFields(headers)
    }
    if (this.cacheStatus !== null) headers.push('x-cache', this.cacheStatus)
    if (this.responseFields !== null) addFields(headers, this.responseFields)
    if (bodiless) {
      // No body, whatever length fields say (RFC 9110 §6.4.1, §15.4.5): the answer is complete
      // with its head. A 304 keeps Content-Length (the selected representation's); a 204 may
      // not carry one (§8.6). undici then reports a length mismatch for 204/304, which is moot.
      if (status === 204) dropHeaders(headers, isLengthField)
      res.writeHead(status, headers as unknown as string[])
      res.end()
      return
    }
    res.writeHead(status, headers as unknown as string[])
    // Server-sent events: send the head now rather than with the first event, which may be a
    // model's first token many seconds away.
    if (isEventStream(headers)) res.flushHeaders()
  }

  onBody (chunk: Buffer): boolean {
    // Answered already (a bodiless status, or the gateway's own answer such as a 408).
    if (this.res.writableEnded) return true
    this.bytesOut += chunk.length
    if (this.res.write(chunk)) return true
    // The client reads slower than the upstream sends: pause the upstream socket until the
    // client's socket drains (backpressure end to end, memory stays bounded).
    if (!this.drainHooked) {
      this.drainHooked = true
      this.res.on('drain', onResponseDrain)
    }
    return false
  }

  onEnd (trailers: Buffer[] | null): void {
    const res = this.res
    if (res.writableEnded) return
    if (trailers !== null && trailers.length > 0) {
      const pairs: Array<[string, string]> = []
      // latin1 keeps the bytes as sent (obs-text included), as for the head.
      for (let i = 0; i < trailers.length; i += 2) {
        const name = trailers[i]!.toString('latin1')
        if (!isForbiddenTrailer(name.toLowerCase())) {
          pairs.push([name, trailers[i + 1]!.toString('latin1')])
        }
      }
      if (pairs.length > 0) {
        try {
          res.addTrailers(pairs)
        } catch {
          // A field Node will not write (a name that is no token): the body is complete
          // without it.
        }
      }
    }
    res.end()
  }

  onAbort (): void {}

  /** Resume the upstream unless a response handler holds it (see `held`) or the client is behind. */
  resume (): void {
    if (this.held === 0 && !this.res.writableNeedDrain) this.resumeUpstream?.()
  }

  // --- request side ----------------------------------------------------------------------------

  /**
   * Send the request to `target` (this Exchange is the undici handler). The outgoing headers
   * and body were prepared by the caller; the request is made once and reused by a retry.
   */
  dispatchTo (target: Target): void {
    this.target = target
    this.targetHeld = true
    this.attempts++
    if (this.upstreamStartedAt === 0) this.upstreamStartedAt = performance.now()
    let req = this.upstreamRequest
    if (req === null) {
      const route = this.route!
      const path = (this.upstreamPathOverride ?? upstreamPath(route, this.path)) + this.query
      const host = route.preserveHost ? requestHost(this) : null
      req = this.upstreamRequest = upstreamRequest(
        this.upstreamMethod ?? this.req.method!,
        path,
        this.outHeaders,
        host,
        this.bodyBuffer ?? this.body,
        route.upstream.timeouts,
      )
    }
    dispatch(target, req, this, this.route!.upstream, this)
  }

  /** The request may go to another target after a failed connect (upstream/retry-connect.ts). */
  replayable (): boolean {
    if (this.clientGone || (this.res.writableEnded && this.captured === null)) return false
    return this.status === 0 && (this.body === null || !this.body.readableDidRead)
  }

  retry (target: Target): void {
    this.rt.logger.debug(
      { id: this.requestId, target: this.target!.origin },
      'connect failed, retrying on another target',
    )
    this.releaseTarget()
    this.dispatchTo(target)
  }

  /** Give back the target's in-flight slot, once; `target` stays set for the access log. */
  releaseTarget (): void {
    if (this.targetHeld) {
      this.targetHeld = false
      release(this.target!)
    }
  }

  // --- waiting for a slot (max_in_flight) ----------------------------------------------------

  granted (target: Target): void {
    this.rt.metrics.queued.labels(this.route!.upstream.name, 'granted').inc()
    // RFC 9110 §10.1.1: the body is asked for only now that it can go somewhere.
    if (this.expectContinue) this.sendContinue()
    this.dispatchTo(target)
  }

  timedOut (): void {
    const upstream = this.route!.upstream
    this.rt.metrics.queued.labels(upstream.name, 'timeout').inc()
    this.rt.metrics.refused.labels('GH_UPSTREAM_BUSY').inc()
    this.fail(
      upstreamBusy(
        upstream.name,
        `no slot within the queue timeout (${upstream.queueTimeout} ms, max_in_flight ${upstream.maxInFlight})`,
      ),
    )
  }

  /** Answer with a problem+json error (or cut the connection when a response has begun). */
  fail (err: GatewayError): void {
    this.error = err
    const res = this.res
    if (res.headersSent) {
      res.destroy()
      return
    }
    this.status = err.status
    const body = problemBody(err, this.requestId === '' ? null : this.requestId)
    const headers: string[] = [
      'content-type',
      'application/problem+json',
      'content-length',
      String(Buffer.byteLength(body)),
      'cache-control',
      'no-store',
    ]
    if (this.requestId !== '') headers.push('x-request-id', this.requestId)
    if (err.headers !== null) {
      for (const [k, v] of Object.entries(err.headers)) {
        headers.push(k, v)
      }
    }
    if (this.responseFields !== null) addFields(headers, this.responseFields)
    // A body we did not read cannot be skipped cheaply (it may be gigabytes): close instead.
    const hasBody = (this.contentLength !== null && this.contentLength !== '0') ||
      this.transferEncoding !== null
    const unread = hasBody && !this.req.complete
    if (unread || this.rt.closing) {
      headers.push('connection', 'close')
      res.shouldKeepAlive = false
    }
    res.writeHead(err.status, headers as unknown as string[])
    res.end(this.req.method === 'HEAD' ? undefined : body)
    // The client may still be sending: make sure it gets to read this answer.
    if (unread) this.rt.linger(this)
  }

  /**
   * `100 Continue` (RFC 9110 §10.1.1), when the client still waits for it and it can go out in
   * order: not for a pipelined request queued behind another's response (it would land inside
   * that response; a pipelining client sends its body anyway), not after this request's own
   * answer began, not once the body is all here.
   */
  sendContinue (): void {
    const res = this.res
    if (res.headersSent || res.socket === null || this.req.complete) return
    res.writeContinue()
  }

  /** The client sends its body too slowly (body_idle, body_min_rate): 408, the upstream call cancelled. */
  bodyTimedOut (reason: string): void {
    this.rt.metrics.refused.labels('GH_REQUEST_TIMEOUT').inc()
    this.bodyFailed(
      gatewayError('GH_REQUEST_TIMEOUT', 'The request body was not received in time', { reason }),
    )
  }

  /**
   * The request body cannot be completed (too slow, or malformed: a bad chunk): answer `err`
   * through this request's own response, so answers stay in order, and cancel the upstream call.
   */
  bodyFailed (err: GatewayError): void {
    if (this.finished || this.error !== null) return
    if (this.res.headersSent) {
      this.error = err
      this.res.destroy()
      return
    }
    this.fail(err)
    if (!this.upstreamDone && this.abortUpstream !== null) this.abortUpstream(err)
    this.response.onAbort()
  }

  /** The client's address as ip rules and limits see it (after trusted_proxies), once. */
  resolveClientIp (): string {
    if (this.clientIp === '') {
      this.clientIp = clientAddress(
        this.req.socket.remoteAddress ?? '',
        this.xForwardedFor,
        this.table.trustedProxies,
      )
    }
    return this.clientIp
  }

  /** The path sent upstream (strip_prefix and the request transform applied). */
  upstreamPath (): string {
    return upstreamPath(this.route!, this.path)
  }

  get peerIp (): string {
    return this.req.socket.remoteAddress ?? ''
  }

  /** RateLimit-Policy and RateLimit for a response of a limited route (upstream's or cached). */
  pushRateLimitFields (headers: string[]): void {
    const limits = this.route!.rateLimit
    if (limits === null) return
    headers.push('ratelimit-policy', limits.policyHeader)
    if (this.rateLimit !== null) headers.push('ratelimit', this.rateLimit)
  }

  get method (): string {
    return this.req.method ?? ''
  }

  /** Every value of a request header (lower-case name). */
  headerValues (name: string): string[] {
    const raw = this.req.rawHeaders
    const out: string[] = []
    for (let i = 0; i < raw.length; i += 2) {
      if (raw[i]!.length === name.length && raw[i]!.toLowerCase() === name) out.push(raw[i + 1]!)
    }
    return out
  }

  /** The client's headers as lower-case name → value (repeats joined), for expressions. */
  headerEntries (): Record<string, string> {
    const raw = this.req.rawHeaders
    const out: Record<string, string> = {}
    for (let i = 0; i < raw.length; i += 2) {
      const name = raw[i]!.toLowerCase()
      out[name] = out[name] === undefined ? raw[i + 1]! : `${out[name]}, ${raw[i + 1]!}`
    }
    return out
  }

  /** First value of a request header (lower-case name), for limits keyed on a header. */
  header (name: string): string | null {
    return headerOf(this.req.rawHeaders, name)
  }

  /** The response is over (finished, or the client went away): log and count, once. */
  complete (): void {
    if (this.finished) return
    this.finished = true
    // Quotas charged from the response: what was seen of it, even when it was cut short.
    if (this.charges !== null && this.status !== 0 && this.error === null) {
      this.route!.rateLimit!.charge(this.charges, this.costTap)
    }
    const res = this.res
    if (this.queueTimer !== null) this.route!.upstream.cancel(this)
    // A response chain that completed ignores it; one cut short lets go of what it kept.
    this.response.onAbort()
    if (!res.writableFinished) {
      this.clientGone = true
      this.pluginAbort?.abort(clientClosedError())
      if (!this.upstreamDone && this.abortUpstream !== null) this.abortUpstream(clientClosedError())
      if (!this.upstreamDone) this.releaseTarget()
    }
    this.rt.finish(this)
  }
}

function onResponseDrain (this: ServerResponse): void {
  const ex = (this as unknown as Record<symbol, Exchange>)[kExchange]
  // While a response handler holds the upstream (an event being transformed), it resumes it.
  if (ex !== undefined && ex.held === 0) ex.resumeUpstream?.()
}

/** Registered on every response: runs when the response ends or its connection dies. */
export function onResponseClose (this: ServerResponse): void {
  ;(this as unknown as Record<symbol, Exchange>)[kExchange]?.complete()
}

function clientClosedError (): Error {
  const err = new Error('client closed the connection')
  ;(err as Error & { code: string }).code = 'GH_CLIENT_CLOSED'
  return err
}

/**
 * Fields a trailer may not carry (RFC 9110 §6.5.1): framing, routing, authentication, request
 * modifiers and response control data. Relaying them would let an upstream re-frame or
 * re-label a response after its head went out; a strict client refuses the message.
 */
const FORBIDDEN_TRAILERS = new Set([
  'transfer-encoding',
  'content-length',
  'host',
  'connection',
  'keep-alive',
  'te',
  'trailer',
  'upgrade',
  'content-encoding',
  'content-type',
  'content-range',
  'cache-control',
  'expires',
  'date',
  'age',
  'location',
  'retry-after',
  'vary',
  'warning',
  'set-cookie',
  'www-authenticate',
  'authorization',
  'proxy-authenticate',
  'proxy-authorization',
  'x-request-id',
  'via',
])

function isForbiddenTrailer (lowerName: string): boolean {
  return FORBIDDEN_TRAILERS.has(lowerName)
}

function isRateLimitField (lowerName: string): boolean {
  return lowerName === 'ratelimit' || lowerName === 'ratelimit-policy'
}

export function isEventStream (headers: readonly string[]): boolean {
  const type = headerOf(headers, 'content-type')
  return type !== null && type.startsWith('text/event-stream')
}

/**
 * The path sent upstream: `strip_prefix` removed when it covers whole segments (so
 * strip_prefix /v1 turns /v1/x into /x and /v1 into /, but leaves /v1x alone), then the
 * request transform's path rewrite.
 */
export function upstreamPath (route: RouteView, path: string): string {
  const prefix = route.stripPrefix
  const t = route.requestTransform
  if (prefix === null || !path.startsWith(prefix)) return t === null ? path : t.rewritePath(path)
  let out: string
  if (path.length === prefix.length) out = '/'
  else if (prefix.charCodeAt(prefix.length - 1) === 47) out = path.slice(prefix.length - 1)
  else out = path.charCodeAt(prefix.length) === 47 ? path.slice(prefix.length) : path
  return t === null ? out : t.rewritePath(out)
}

/** The Host the client sent, or the first target's authority for a client that sent none (HTTP/1.0). */
export function requestHost (ex: Exchange): string {
  return ex.hostHeader ?? ex.route!.upstream.targets[0]!.authority
}
