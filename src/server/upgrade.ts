import http, { type IncomingMessage } from 'node:http'
import type { Duplex } from 'node:stream'
import type { Socket } from 'node:net'
import type { Dispatcher } from 'undici'
import {
  upstreamPath,
  type CompiledRoute,
  type RouteTable,
  type RouteExchange,
} from '../compile/table.js'
import { gatewayError, rawProblemResponse, type GatewayError } from '../errors/index.js'
import type { Logger } from '../observability/logger.js'
import type { Metrics } from '../observability/metrics.js'
import { finishRequestHeaders, readHead } from '../pipeline/headers.js'
import { filterResponseHeaders } from '../net/fields.js'
import { Exchange, requestHost } from '../pipeline/exchange.js'
import { runSteps } from '../pipeline/run.js'
import { HANDLED } from '../pipeline/step.js'
import {
  answered,
  dispatch,
  failed,
  pickTarget,
  release,
  unavailable,
  upstreamRequest,
} from '../upstream/dispatch.js'
import { noHealthyTarget, upstreamBusy } from '../upstream/errors.js'
import type { Target } from '../upstream/target.js'
import { discardInput, endAndLinger, type Conn } from './connections.js'

interface UpgradeHost {
  readonly table: RouteTable
  readonly logger: Logger
  readonly metrics: Metrics
  readonly closing: boolean
  readonly encrypted: boolean
  trackUpgrade(socket: Socket): void
  finish(ex: RouteExchange): void
  /** Answer a request through the ordinary request path, on the response given. */
  serve(req: IncomingMessage, res: http.ServerResponse): void
}

/**
 * The listener's 'upgrade' event. Node hands over an upgrade's socket at once, even when
 * requests pipelined before it are still being answered on it: whatever the upgrade writes
 * (a 101, a refusal, a plain answer) must wait for their responses.
 */
export function onUpgrade (
  host: UpgradeHost,
  conn: Conn | undefined,
  req: IncomingMessage,
  socket: Socket,
  head: Buffer,
): void {
  if (conn !== undefined && conn.active.length > 0) {
    conn.afterPending = () => handleUpgrade(host, req, socket, head)
    socket.pause()
    return
  }
  handleUpgrade(host, req, socket, head)
}

/**
 * WebSocket (and other HTTP/1.1 Upgrade) pass-through: route like any request, send the
 * upgrade to the upstream, relay its 101 and then splice the two sockets together.
 *
 * Only a GET whose Upgrade names a protocol its route lists (`upgrade`, websocket by default)
 * becomes a tunnel. Anything else that asks for an upgrade (h2c above all: an HTTP/2 tunnel
 * would go past routes, scopes and header rules) is answered as the plain request it also is,
 * with Upgrade and Connection removed (RFC 9110 §7.8 lets a server ignore Upgrade), so that
 * `curl --http2 http://…` still works. Such a request cannot carry a body: Node's parser has let
 * go of the connection, so the body could not be framed.
 */
function handleUpgrade (
  host: UpgradeHost,
  req: IncomingMessage,
  socket: Socket,
  head: Buffer,
): void {
  socket.on('error', onSocketError)
  const table = host.table
  const url = req.url ?? ''
  let requestId: string | null = null
  const refuse = (err: GatewayError): void => {
    host.metrics.refused.labels(err.code).inc()
    host.logger.info({
      msg: 'upgrade refused',
      id: requestId,
      code: err.code,
      reason: err.reason ?? err.detail,
      path: url.split('?')[0],
    })
    writeProblem(socket, err, requestId, table.config.listen.timeouts.linger, req.method === 'HEAD')
  }
  if (host.closing) {
    refuse(gatewayError('GH_SHUTTING_DOWN'))
    return
  }
  // The Exchange carries the parsed head; its response object is never used here.
  const ex = new Exchange<CompiledRoute>(
    req,
    null as unknown as http.ServerResponse,
    host as never,
    table,
  )
  // RFC 6455 §4.1: the opening handshake is a GET.
  const err = req.method === 'GET' ? readHead(ex, table) : null
  requestId = ex.requestId === '' ? null : ex.requestId
  const route = ex.route
  const protocol = err === null && route !== null && req.method === 'GET'
    ? chosenProtocol(route, req.headers.upgrade)
    : null
  if (protocol === null || route === null) {
    const length = req.headers['content-length']
    if (
      (length !== undefined && length !== '0') || req.headers['transfer-encoding'] !== undefined
    ) {
      return refuse(
        gatewayError(
          'GH_UPGRADE_NOT_ALLOWED',
          'A request asking for a protocol upgrade this gateway does not perform cannot carry a body',
        ),
      )
    }
    // Refusals (a bad path, no route, …) and plain answers alike come from the ordinary path.
    serveWithoutUpgrade(host, req, socket)
    return
  }
  // An intercepted route (signatures over the body, transforms, a plugin, async delivery) must
  // not be reachable around its interception by asking for a tunnel.
  if (route.buffer !== null || route.responseTransform !== null || route.plugin !== null) {
    return refuse(
      gatewayError(
        'GH_UPGRADE_NOT_ALLOWED',
        `Route "${route.name}" intercepts requests and does not accept protocol upgrades`,
      ),
    )
  }
  // A WebSocket is a request like any other: the route's address and credential checks apply.
  const proceed = (): void => {
    finishRequestHeaders(ex, route, host.encrypted)
    const now = Date.now()
    const target = pickTarget(route.upstream, now)
    if (target === null) {
      // Upgrades do not wait for a slot: a long-lived socket would hold the queue for its life.
      if (unavailable(route.upstream, now) === 'busy') {
        return refuse(
          upstreamBusy(
            route.upstream.name,
            'every target is at max_in_flight (upgrades do not wait for a slot)',
          ),
        )
      }
      return refuse(noHealthyTarget(route.upstream))
    }
    new UpgradeHandler(
      host,
      route,
      socket,
      head,
      target,
      ex.requestId,
      ex.identity?.expiresAt ?? Infinity,
    ).dispatch(ex, protocol)
  }
  // The same runner as every request, over the route's checks (no body, no cache, no terminal).
  let checked
  try {
    checked = runSteps(ex, route.tunnelSteps)
  } catch (e) {
    host.logger.error({
      msg: 'internal error',
      id: requestId,
      err: (e as Error).stack ?? String(e),
    })
    return refuse(gatewayError('GH_INTERNAL'))
  }
  if (checked === null) return proceed()
  if (!(checked instanceof Promise)) return checked === HANDLED ? undefined : refuse(checked)
  checked.then((e) => {
    if (socket.destroyed || e === HANDLED) return
    if (e !== null) refuse(e)
    else proceed()
  }).catch((e: unknown) => {
    host.logger.error({
      msg: 'internal error',
      id: requestId,
      err: (e as Error).stack ?? String(e),
    })
    refuse(gatewayError('GH_INTERNAL'))
  })
}

/**
 * An Upgrade this gateway does not perform (h2c, a protocol the route does not name) is
 * answered as the plain request it also is (RFC 9110 §7.8 lets a server ignore Upgrade), on
 * a response made here: Node has handed the socket over, so the connection closes after it.
 */
function serveWithoutUpgrade (host: UpgradeHost, req: IncomingMessage, socket: Socket): void {
  // The response before it may be all written yet not flushed: Node lets go of the socket
  // (detachSocket) only on that response's 'finish', and a second response cannot take it
  // before then.
  const previous = (socket as Socket & { _httpMessage?: http.ServerResponse | null })._httpMessage
  if (previous != null) {
    let once = false
    const next = (): void => {
      if (once) return
      once = true
      serveWithoutUpgrade(host, req, socket)
    }
    previous.once('finish', next)
    previous.once('close', next)
    return
  }
  if (socket.destroyed) return
  if (!socket.writable) {
    discardInput(socket)
    return
  }
  const res = new http.ServerResponse(req)
  res.shouldKeepAlive = false
  res.assignSocket(socket)
  res.once('finish', () => socket.destroySoon())
  host.serve(req, res)
}

/**
 * The Upgrade value sent upstream: the client's offers (RFC 9110 §7.8, a comma list of
 * name[/version]) that the route lists, in the client's order; null when there is none.
 */
function chosenProtocol (route: CompiledRoute, upgrade: string | undefined): string | null {
  if (upgrade === undefined || route.upgrade.length === 0) return null
  const kept: string[] = []
  for (const offer of upgrade.split(',')) {
    const token = offer.trim()
    const slash = token.indexOf('/')
    const name = (slash === -1 ? token : token.slice(0, slash)).toLowerCase()
    if (name !== 'h2c' && route.upgrade.includes(name)) kept.push(token)
  }
  return kept.length === 0 ? null : kept.join(', ')
}

const MAX_TIMER = 2 ** 31 - 1

class UpgradeHandler implements Dispatcher.DispatchHandler {
  readonly #host: UpgradeHost
  readonly #route: CompiledRoute
  readonly #client: Socket
  readonly #head: Buffer
  readonly #target: Target
  readonly #requestId: string
  /** When the credentials that admitted this upgrade expire (epoch ms; Infinity: never). */
  readonly #expiresAt: number
  #responded = false
  /** The target's in-flight slot, held for the tunnel's life (max_in_flight counts tunnels). */
  #holding = false

  constructor (
    host: UpgradeHost,
    route: CompiledRoute,
    client: Socket,
    head: Buffer,
    target: Target,
    requestId: string,
    expiresAt: number,
  ) {
    this.#expiresAt = expiresAt
    this.#host = host
    this.#route = route
    this.#client = client
    this.#head = head
    this.#target = target
    this.#requestId = requestId
  }

  dispatch (ex: RouteExchange, upgrade: string): void {
    const route = this.#route
    const host = route.preserveHost ? requestHost(ex) : null
    const req = upstreamRequest(
      'GET',
      upstreamPath(route, ex.path) + ex.query,
      ex.outHeaders,
      host,
      null,
      route.upstream.timeouts,
      upgrade,
    )
    this.#holding = true
    this.#client.once('close', () => this.#release())
    dispatch(this.#target, req, this)
  }

  onConnect (abort: (err?: Error) => void): void {
    if (this.#client.destroyed) abort()
    else this.#client.once('close', () => abort())
  }

  onUpgrade (statusCode: number, rawHeaders: Buffer[] | string[] | null, upstream: Duplex): void {
    this.#responded = true
    const client = this.#client
    if (client.destroyed) {
      upstream.destroy()
      return
    }
    // Upgrade and Connection are hop-by-hop in general but are the point of a 101: keep them.
    let head = `HTTP/1.1 ${statusCode} ${
      http.STATUS_CODES[statusCode] ?? 'Switching Protocols'
    }\r\n`
    const raw = (rawHeaders ?? []) as Buffer[]
    for (let i = 0; i < raw.length; i += 2) {
      head += `${raw[i]!.toString('latin1')}: ${raw[i + 1]!.toString('latin1')}\r\n`
    }
    head += `x-request-id: ${this.#requestId}\r\n\r\n`
    client.write(head)
    if (this.#head.length > 0) upstream.write(this.#head)
    upstream.on('error', onSocketError)
    answered(this.#route.upstream, this.#target)
    // A tunnel with no byte either way for the upstream's idle timeout is closed, like a
    // response body that stalls. Socket timers are refreshed by reads and writes alike.
    const idle = this.#route.upstream.idleTimeout
    client.setTimeout(idle)
    if (idle > 0) {
      client.once('timeout', () => {
        this.#host.logger.info({
          msg: 'upgrade closed: idle',
          id: this.#requestId,
          route: this.#route.name,
          idle_ms: idle,
        })
        client.destroy()
      })
    }
    client.setNoDelay(true)
    upstream.pipe(client)
    client.pipe(upstream)
    upstream.once('close', () => client.destroy())
    client.once('close', () => upstream.destroy())
    this.#host.trackUpgrade(client)
    this.#host.logger.info({
      msg: 'upgrade',
      id: this.#requestId,
      route: this.#route.name,
      status: statusCode,
      target: this.#target.origin,
    })
    // A socket admitted with a token lives no longer than the token (timers cap at ~24.8 days).
    const left = this.#expiresAt - Date.now()
    if (left <= MAX_TIMER) {
      const timer = setTimeout(() => {
        this.#host.logger.info({
          msg: 'upgrade closed: credentials expired',
          id: this.#requestId,
          route: this.#route.name,
        })
        client.destroy()
      }, Math.max(0, left))
      timer.unref()
      client.once('close', () => clearTimeout(timer))
    }
  }

  // A non-101 answer (401, 404, …) is relayed as an ordinary response, then the connection closes.
  onHeaders (statusCode: number, rawHeaders: Buffer[]): boolean {
    if (statusCode < 200) return true
    this.#responded = true
    answered(this.#route.upstream, this.#target)
    const headers = filterResponseHeaders(rawHeaders, this.#requestId) ?? []
    let head = `HTTP/1.1 ${statusCode} ${http.STATUS_CODES[statusCode] ?? ''}\r\n`
    for (let i = 0; i < headers.length; i += 2) head += `${headers[i]}: ${headers[i + 1]}\r\n`
    this.#client.write(head + 'connection: close\r\n\r\n')
    return true
  }

  onData (chunk: Buffer): boolean {
    return this.#client.write(chunk)
  }

  onComplete (): void {
    this.#client.end()
  }

  #release (): void {
    if (!this.#holding) return
    this.#holding = false
    release(this.#target)
  }

  onError (err: Error): void {
    this.#release()
    if (this.#responded) {
      this.#client.destroy()
      return
    }
    const upstream = this.#route.upstream
    // Not replayable: an upgrade is not retried on another target.
    const gerr = failed(upstream, this.#target, err)
    this.#host.metrics.upstreamErrors.labels(upstream.name, gerr.code).inc()
    this.#host.logger.info({
      msg: 'upgrade failed',
      id: this.#requestId,
      route: this.#route.name,
      code: gerr.code,
      reason: gerr.reason,
    })
    writeProblem(
      this.#client,
      gerr,
      this.#requestId,
      this.#host.table.config.listen.timeouts.linger,
    )
  }
}

function writeProblem (
  socket: Socket,
  err: GatewayError,
  requestId: string | null,
  linger: number,
  head = false,
): void {
  endAndLinger(
    socket,
    rawProblemResponse(err, requestId, http.STATUS_CODES[err.status], head),
    linger,
  )
}

function onSocketError (this: Duplex): void {
  this.destroy()
}
