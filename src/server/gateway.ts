import http, { type IncomingMessage, type ServerResponse } from 'node:http'
import { randomUUID } from 'node:crypto'
import https from 'node:https'
import type { AddressInfo, Socket } from 'node:net'
import type { DestinationStream } from 'pino'
import { compile, type RouteTable } from '../compile/index.js'
import { validateConfig } from '../config/load.js'
import type { Config, ConfigInput } from '../config/schema.js'
import { formatDuration } from '../config/units.js'
import { gatewayError, isGatewayError, rawProblemResponse, type GatewayError } from '../errors/index.js'
import { createLogger, flushLogger, type Logger } from '../observability/logger.js'
import { Metrics } from '../observability/metrics.js'
import { AccessLog } from '../observability/access-log.js'
import { BodyLimit } from '../pipeline/body.js'
import { CLIENT_CLOSED, Exchange, kExchange, onResponseClose } from '../pipeline/exchange.js'
import { finishRequestHeaders, readHead } from '../pipeline/headers.js'
import { admit } from '../pipeline/admit.js'
import { accept } from '../pipeline/accept.js'
import { clientAddress } from '../net/client-ip.js'
import { fromPluginResponse, interceptRequest, interceptResponse, readBody, sendWhole } from '../pipeline/intercept.js'
import type { CompiledRoute } from '../compile/index.js'
import { CacheCapture, parseCacheControl, type CacheEntry, type CachePolicy } from '../cache/policy.js'
import type { Readable } from 'node:stream'
import type { GatewayRuntime } from '../pipeline/runtime.js'
import { TargetRegistry } from '../upstream/target.js'
import { pickTarget, unavailable } from '../upstream/dispatch.js'
import { noHealthyTarget, upstreamBusy } from '../upstream/errors.js'
import { IdentityRegistry, type IdentitySet } from '../identity/registry.js'
import { StoreRegistry, type StoreSet } from '../limits/registry.js'
import type { ProviderStatus } from '../identity/types.js'
import { createAdminServer } from '../admin/server.js'
import { handleUpgrade } from './upgrade.js'
import { DeliveryService } from '../delivery/service.js'
import { answered, Connections, connectionSettings, discardInput, endAndLinger } from './connections.js'

export interface GatewayOptions {
  /** A pino logger to use instead of the one built from `log` in the config. */
  logger?: Logger
  /** Where the built-in logger writes (default: stdout, batched). */
  logDestination?: DestinationStream
  /** Register default process metrics (CPU, memory, event loop) on /metrics. Default true. */
  processMetrics?: boolean
}

export interface ListenInfo {
  port: number
  host: string
  adminPort: number | null
}

export interface Gateway {
  /** Bind the proxy and admin listeners. Resolves once both accept connections. */
  listen (): Promise<ListenInfo>
  /**
   * Validate, compile and swap in a new configuration. Requests already routed finish on the
   * old table. Rejects (and keeps the old table) if the new config is invalid. `config` may be
   * a function (e.g. one reading the file), so that reading errors are logged and counted like
   * validation errors. Listener addresses and TLS take effect only on restart; client
   * timeouts, header limits and log settings apply at once.
   */
  reload (config: ConfigInput | Config | (() => Config)): Promise<void>
  /** Stop accepting, let in-flight requests finish up to `shutdown.grace`, then close everything. */
  close (): Promise<void>
  readonly table: RouteTable
  readonly logger: Logger
  readonly metrics: Metrics
  readonly ready: boolean
}

/** Build a gateway from a config object (raw YAML shape or an already-validated Config). */
export function createGateway (input: ConfigInput | Config, options: GatewayOptions = {}): Gateway {
  const config = validateConfig(input)
  return new GatewayImpl(config, options)
}

class GatewayImpl implements Gateway, GatewayRuntime {
  table: RouteTable
  readonly logger: Logger
  readonly metrics: Metrics
  closing = false
  #listening = false
  readonly #registry = new TargetRegistry()
  readonly #identity: IdentityRegistry
  #reloads: Promise<void> = Promise.resolve()
  readonly #stores: StoreRegistry
  #storesStarting: Promise<void>
  readonly #server: http.Server
  readonly #encrypted: boolean
  #admin: http.Server | null = null
  #inFlight = 0
  #drained: (() => void) | null = null
  readonly #upgraded = new Set<Socket>()
  readonly #onRequest: (req: IncomingMessage, res: ServerResponse) => void
  readonly #onContinue: (req: IncomingMessage, res: ServerResponse) => void
  #accessLog = true
  readonly #access: AccessLog
  readonly #delivery: DeliveryService
  readonly #conns: Connections

  constructor (config: Config, options: GatewayOptions) {
    this.logger = options.logger ?? createLogger(config.log.level, options.logDestination)
    this.metrics = new Metrics(options.processMetrics ?? true, () => this.#inFlight, () => [...this.table.upstreams].filter(([, u]) => u.maxInFlight > 0).map(([name, u]) => [name, u.queueLength] as [string, number]))
    this.#access = new AccessLog(this.logger)
    this.#identity = new IdentityRegistry({ logger: this.logger, metrics: this.metrics })
    const identity = this.#identity.prepare(config.identity)
    this.#delivery = new DeliveryService(this.logger, this.metrics)
    this.#stores = new StoreRegistry(this.logger)
    const stores = this.#stores.prepare(config)
    this.table = compile(config, this.#registry, identity, { stores, metrics: this.metrics })
    this.#identity.commit(identity)
    this.#stores.commit(stores)
    this.#storesStarting = this.#stores.start(stores)
    const l = config.listen
    const serverOptions: http.ServerOptions = {
      maxHeaderSize: l.max_header_size,
      headersTimeout: l.timeouts.headers,
      requestTimeout: l.timeouts.request,
      keepAliveTimeout: l.timeouts.keep_alive,
      // Node checks header/request timeouts on this interval (30 s by default), which lets a
      // slowloris client hold a socket long past `headers`. A twentieth of the shorter one (at
      // most a second) keeps each within 10 % of its value; the check is a walk over the
      // open connections.
      connectionsCheckingInterval: checkingInterval(l.timeouts.headers, l.timeouts.request),
      noDelay: true,
      // Node corks each response write until the next tick, so with the default 16 KiB mark
      // every 64 KiB chunk from the upstream reported backpressure and paused the upstream
      // socket once per chunk. 128 KiB per direction per connection keeps streams flowing.
      highWaterMark: STREAM_HIGH_WATER_MARK,
      insecureHTTPParser: false,
      // A missing Host is refused by readHead as problem+json (Node's own 400 is bare).
      requireHostHeader: false,
      joinDuplicateHeaders: false,
    }
    this.#encrypted = l.tls !== undefined
    this.#server = l.tls === undefined
      ? http.createServer(serverOptions)
      // validateConfig has replaced TLS paths with the PEM text they name.
      : https.createServer({
        ...serverOptions,
        cert: l.tls.cert,
        key: l.tls.key,
        ...(l.tls.ca === undefined ? {} : { ca: l.tls.ca }),
        minVersion: l.tls.min_version,
        ciphers: l.tls.ciphers,
        // The client chooses among the server's preferences, strongest first.
        honorCipherOrder: true,
        // A connection that never completes its handshake is held no longer than a head that
        // never completes (Node's default is 120 s).
        handshakeTimeout: l.timeouts.headers,
      })
    this.#conns = new Connections(connectionSettings(config), this.metrics, this.logger, (req, res, expectContinue) => this.#handle(req, res, expectContinue))
    this.#applyServerSettings(config)
    this.#onRequest = (req, res) => this.#handle(req, res, false)
    this.#onContinue = (req, res) => this.#handle(req, res, true)
    // Before Node's own listener: a connection over a cap is closed before a parser is made.
    this.#server.prependListener('connection', (socket: Socket) => { this.#conns.accept(socket) })
    this.#server.on('request', this.#onRequest)
    this.#server.on('checkContinue', this.#onContinue)
    // An Expect other than 100-continue: 417 as problem+json, through the usual path (Node's
    // own 417 is bare and keeps the connection, so the body that follows would be parsed as
    // the next request).
    this.#server.on('checkExpectation', (req: IncomingMessage, res: ServerResponse) => {
      ;(req as unknown as Record<symbol, boolean>)[kBadExpectation] = true
      this.#handle(req, res, false)
    })
    this.#server.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => this.#upgrade(req, socket, head))
    // A gateway is no tunnel (Node would otherwise drop the connection without a word).
    this.#server.on('connect', (req: IncomingMessage, socket: Socket) => this.#refuseConnect(req, socket))
    this.#server.on('clientError', (err: Error & { code?: string }, socket: Socket) => this.#clientError(err, socket))
  }

  /** Listener settings Node lets us change on a live server (also on reload). */
  #applyServerSettings (config: Config): void {
    const server = this.#server
    const t = config.listen.timeouts
    server.headersTimeout = t.headers
    server.requestTimeout = t.request
    server.keepAliveTimeout = t.keep_alive
    server.timeout = t.idle
    // Node closes the connection after this many requests (Connection: close on the last).
    server.maxRequestsPerSocket = config.listen.limits.max_requests_per_connection
    this.#conns.configure(connectionSettings(config))
    // One more than the limit, so that "too many" is visible in rawHeaders (Node truncates silently).
    server.maxHeadersCount = config.listen.max_headers + 1
    this.#accessLog = config.log.access
    this.logger.level = config.log.level
  }

  get ready (): boolean {
    if (!this.#listening || this.closing) return false
    // A JWT provider that never got keys cannot admit anyone; one serving stale keys can.
    for (const s of Object.values(this.#identity.status())) if (s.status === 'unavailable') return false
    return true
  }

  identityStatus (): Record<string, ProviderStatus> {
    return this.#identity.status()
  }

  storeStatus (): Record<string, { status: string, kind: string }> {
    return { ...this.#stores.status(), ...this.#delivery.status() }
  }

  get delivery (): DeliveryService {
    return this.#delivery
  }

  get encrypted (): boolean {
    return this.#encrypted
  }

  // --- request entry ---------------------------------------------------------------------------

  #handle (req: IncomingMessage, res: ServerResponse, expectContinue: boolean): void {
    const conn = this.#conns.of(req.socket)
    // After an early answer the rest of what the client sends is read and dropped, unanswered.
    if (conn.lingering) return
    if (!this.#conns.admit(conn, req, res, expectContinue)) return
    const ex = new Exchange(req, res, this, this.table)
    ex.conn = conn
    conn.active.push(ex)
    ;(res as unknown as Record<symbol, Exchange>)[kExchange] = ex
    res.on('close', onResponseClose)
    this.#inFlight++

    try {
      const prefix = this.#delivery.statusPrefix
      if (prefix !== '' && req.url!.startsWith(prefix)) return this.#deliveryStatus(ex, req.url!.slice(prefix.length))
      const err = this.#prepare(ex)
      if (err !== null) return this.#refuse(ex, err)
      if ((req as unknown as Record<symbol, boolean | undefined>)[kBadExpectation] === true) {
        return this.#refuse(ex, gatewayError('GH_EXPECTATION_FAILED', 'The only expectation this gateway meets is Expect: 100-continue'))
      }
      if (ex.route!.buffer !== null) {
        this.#intercepted(ex, expectContinue).catch((e: unknown) => this.#internalError(ex, e))
        return
      }
      const checked = admit(ex, ex.route!)
      if (checked === null) return this.#forward(ex, expectContinue)
      if (!(checked instanceof Promise)) return this.#refuse(ex, checked)
      checked.then((e) => {
        // The client may have left while a provider was asked; the exchange is logged already.
        if (ex.finished) return
        if (e !== null) this.#refuse(ex, e)
        else this.#forward(ex, expectContinue)
      }).catch((e: unknown) => this.#internalError(ex, e))
    } catch (err) {
      this.#internalError(ex, err)
    }
  }

  /**
   * Routes that read the body whole: credentials (before the body, unless a signature over it
   * is the credential), the body, the request transform and plugin, then on as usual.
   */
  async #intercepted (ex: Exchange, expectContinue: boolean): Promise<void> {
    const route = ex.route!
    const buffer = route.buffer!
    if (!buffer.authFirst && route.ip !== null) {
      // A signature needs the body before the credentials can be checked, but the client
      // address does not: a refused address never gets to upload.
      ex.clientIp = clientAddress(ex.req.socket.remoteAddress ?? '', ex.xForwardedFor, ex.table.trustedProxies)
      const e = route.ip.check(ex.clientIp)
      if (e !== null) return this.#refuse(ex, e)
    }
    if (buffer.authFirst) {
      const e = await admit(ex, route)
      if (ex.finished) return
      if (e !== null) return this.#refuse(ex, e)
    }
    const body = await readBody(ex, buffer.cap, expectContinue)
    if (body === null || ex.finished) return
    if (isGatewayError(body)) return this.#refuse(ex, body)
    ex.bodyBuffer = body
    if (!buffer.authFirst) {
      const e = await admit(ex, route)
      if (ex.finished) return
      if (e !== null) return this.#refuse(ex, e)
    }
    const r = await interceptRequest(ex, body)
    if (ex.finished) return
    if (r !== null) {
      if (isGatewayError(r)) return this.#refuse(ex, r)
      return sendWhole(ex, fromPluginResponse(ex, r))
    }
    if (route.delivery !== null) {
      const e = await accept(ex, this.#delivery, this.#encrypted)
      if (e !== null && !ex.finished) this.#refuse(ex, e)
      return
    }
    this.#forward(ex, false)
  }

  /** GET <status_path>/<id>: an async request's state (the 202's Location). */
  #deliveryStatus (ex: Exchange, id: string): void {
    ex.requestId = ex.header('x-request-id') ?? randomUUID()
    const method = ex.req.method
    if (method !== 'GET' && method !== 'HEAD') {
      return this.#refuse(ex, gatewayError('GH_BAD_REQUEST', 'Delivery status is read with GET'))
    }
    this.#delivery.publicStatus(id).then((view) => {
      if (ex.finished) return
      if (view === null) return this.#refuse(ex, gatewayError('GH_DELIVERY_NOT_FOUND', 'No delivery with this id (it may have expired)'))
      const text = JSON.stringify(view)
      ex.status = 200
      ex.res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store', 'x-request-id': ex.requestId })
      ex.res.end(method === 'HEAD' ? undefined : text)
    }).catch((err: unknown) => this.#internalError(ex, err))
  }

  finishCaptured (ex: Exchange): void {
    interceptResponse(ex).then((r) => {
      if (ex.finished) return
      if (isGatewayError(r)) {
        this.logger.warn({ msg: 'response interception failed', id: ex.requestId, code: r.code, reason: r.reason })
        return this.#refuse(ex, r)
      }
      sendWhole(ex, r)
    }).catch((err: unknown) => this.#internalError(ex, err))
  }

  /** Admitted: through the cache when the route has one, else straight upstream. */
  #forward (ex: Exchange, expectContinue: boolean): void {
    const cache = ex.route!.cache
    if (cache === null) return this.#dispatch(ex, expectContinue)
    this.#viaCache(ex, cache, expectContinue).catch((err: unknown) => this.#internalError(ex, err))
  }

  /**
   * Look the request up; serve a hit, wait for a concurrent miss of the same key, or go upstream
   * as the leader of a miss (its response is captured while it streams). Requests the cache
   * cannot key (a method not listed, Cache-Control: no-store, a body over key.body.max_size or
   * sent chunked) go straight upstream with X-Cache: BYPASS.
   */
  async #viaCache (ex: Exchange, cache: CachePolicy, expectContinue: boolean): Promise<void> {
    const req = ex.req
    const method = req.method!
    const route = ex.route!
    const rm = this.metrics.forRoute(route, route.name, route.upstream.name)
    const cc = ex.header('cache-control')
    const directives = cc === null ? null : parseCacheControl(cc)
    let bypass = !cache.methods.has(method) || directives?.has('no-store') === true
    // An intercepted route has read (and maybe transformed) the body already.
    let body: Buffer | null = ex.bodyBuffer
    if (!bypass && ex.body !== null) {
      const declared = ex.contentLength === null ? NaN : Number(ex.contentLength)
      if (!(declared <= cache.bodyMax)) {
        bypass = true
      } else {
        if (expectContinue) {
          ex.sendContinue()
          expectContinue = false
        }
        body = await readAll(ex.body)
        if (ex.finished) return
        ex.bodyBuffer = body
        ex.body = null
      }
    }
    if (bypass) {
      rm.countCache('bypass')
      ex.cacheStatus = 'BYPASS'
      return this.#dispatch(ex, expectContinue)
    }
    const key = cache.key(ex, body)
    // Cache-Control: no-cache from the client: skip the lookup, but the fresh answer may be stored.
    if (directives?.has('no-cache') !== true) {
      let hit: CacheEntry | null = null
      try {
        // A memory store answers at once: no await, no turn of the event loop.
        const r = cache.lookup(key)
        hit = r instanceof Promise ? await r : r
      } catch (err) {
        this.metrics.limitStoreErrors.labels(cache.storeName, 'cache').inc()
        this.logger.debug({ msg: 'cache lookup failed', id: ex.requestId, err: (err as Error).message })
      }
      if (ex.finished) return
      if (hit !== null) {
        rm.countCache('hit')
        return this.#serveCached(ex, hit, 'HIT')
      }
      const leader = cache.follower(key)
      if (leader !== null) {
        // null: the leader's answer is not stored, failed, or took longer than coalesce_timeout.
        const entry = await leader
        if (ex.finished) return
        if (entry !== null) {
          rm.countCache('coalesced')
          return this.#serveCached(ex, entry, 'HIT')
        }
      }
    }
    rm.countCache('miss')
    ex.cacheStatus = 'MISS'
    // HEAD answers have no body: they may be served from a GET entry but never make one.
    if (method !== 'HEAD') {
      const done = cache.lead(key)
      if (done !== null) ex.cacheCapture = new CacheCapture(cache, key, done, cache.shared(ex))
    }
    this.#dispatch(ex, expectContinue)
  }

  #serveCached (ex: Exchange, entry: CacheEntry, status: string): void {
    const res = ex.res
    const headers = [...entry.headers, 'age', String(Math.max(0, Math.floor((Date.now() - entry.storedAt) / 1000))), 'x-cache', status, 'x-request-id', ex.requestId]
    ex.pushRateLimitFields(headers)
    if (this.closing) res.shouldKeepAlive = false
    ex.status = entry.status
    const head = ex.req.method === 'HEAD'
    ex.bytesOut = head ? 0 : entry.body.length
    res.writeHead(entry.status, headers as unknown as string[])
    res.end(head ? undefined : entry.body)
  }

  /** Finish the head, pick a target (or wait for a slot), and send. */
  #dispatch (ex: Exchange, expectContinue: boolean): void {
    const route = ex.route!
    if (route.responseTransform !== null || route.plugin !== null) ex.captureLimit = captureLimit(route, ex.method)
    finishRequestHeaders(ex, route, this.#encrypted)
    const upstream = route.upstream
    const now = Date.now()
    const target = pickTarget(upstream, now)
    if (target === null) {
      if (unavailable(upstream, now) === 'busy') {
        // Every target is at max_in_flight: wait for a slot (Exchange.granted / timedOut).
        ex.expectContinue = expectContinue
        if (upstream.enqueue(ex)) return
        this.metrics.queued.labels(upstream.name, 'full').inc()
        return this.#refuse(ex, upstreamBusy(upstream.name, `queue full (${upstream.queueSize} waiting, max_in_flight ${upstream.maxInFlight})`))
      }
      return this.#refuse(ex, noHealthyTarget(upstream))
    }
    // RFC 9110 §10.1.1: ask for the body only once we know we want it.
    if (expectContinue) ex.sendContinue()
    if (ex.body !== null) this.#conns.watchBody(ex)
    ex.dispatchTo(target)
  }

  watchBody (ex: Exchange): void {
    this.#conns.watchBody(ex)
  }

  linger (ex: Exchange): void {
    this.#conns.linger(ex)
  }

  /**
   * Node hands over an upgrade's socket at once, even when requests pipelined before it are
   * still being answered on it: whatever the upgrade writes (a 101, a refusal, a plain answer)
   * must wait for their responses.
   */
  #upgrade (req: IncomingMessage, socket: Socket, head: Buffer): void {
    const conn = this.#conns.peek(socket)
    if (conn !== undefined && conn.active.length > 0) {
      conn.afterPending = () => handleUpgrade(this, req, socket, head)
      socket.pause()
      return
    }
    handleUpgrade(this, req, socket, head)
  }

  /** CONNECT asks for a tunnel: 405, as nginx answers, and the connection is closed. */
  #refuseConnect (_req: IncomingMessage, socket: Socket): void {
    socket.on('error', destroyOnError)
    const err = gatewayError('GH_METHOD_NOT_ALLOWED', 'CONNECT is not allowed: this is a gateway, not a tunnel', { headers: { allow: 'GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS' } })
    this.metrics.refused.labels(err.code).inc()
    this.#lastAnswer(socket, rawProblemResponse(err, null, http.STATUS_CODES[err.status]))
  }

  /**
   * The last answer on a connection the HTTP server let go of: at once, or, when requests
   * pipelined before it are still being answered, after their responses (in order).
   */
  #lastAnswer (socket: Socket, answer: string | null): void {
    const conn = this.#conns.peek(socket)
    // Closing already (an earlier answer said Connection: close): nothing more is written,
    // and the lingering close must go on reading to see the client leave.
    if (!socket.writable || conn?.lingering === true) {
      discardInput(socket)
      return
    }
    if (conn !== undefined && conn.active.length > 0) {
      conn.afterPending = answer
      socket.pause()
      return
    }
    endAndLinger(socket, answer, this.table.config.listen.timeouts.linger)
  }

  /**
   * An Upgrade this gateway does not perform (h2c, a protocol the route does not name) is
   * answered as the plain request it also is (RFC 9110 §7.8 lets a server ignore Upgrade), on
   * a response made here: Node has handed the socket over, so the connection closes after it.
   */
  serveWithoutUpgrade (req: IncomingMessage, socket: Socket): void {
    // The response before it may be all written yet not flushed: Node lets go of the socket
    // (detachSocket) only on that response's 'finish', and a second response cannot take it
    // before then.
    const previous = (socket as Socket & { _httpMessage?: http.ServerResponse | null })._httpMessage
    if (previous != null) {
      let once = false
      const next = (): void => {
        if (once) return
        once = true
        this.serveWithoutUpgrade(req, socket)
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
    this.#handle(req, res, false)
  }

  /** A bug must cost one request, never the process. */
  #internalError (ex: Exchange, err: unknown): void {
    this.logger.error({ msg: 'internal error', id: ex.requestId, err: (err as Error).stack ?? String(err) })
    if (!ex.finished) ex.fail(gatewayError('GH_INTERNAL', 'The gateway failed to handle this request', { reason: (err as Error).message }))
  }

  #refuse (ex: Exchange, err: GatewayError): void {
    this.metrics.refused.labels(err.code).inc()
    ex.fail(err)
  }

  /** Validate the request line and head, pick the route, set up the body. */
  #prepare (ex: Exchange): GatewayError | null {
    const headErr = readHead(ex, this.table)
    if (headErr !== null) return headErr
    const req = ex.req
    const route = ex.route!

    const te = ex.transferEncoding !== null
    if (ex.contentLength !== null) {
      const declared = Number(ex.contentLength)
      if (route.maxBody > 0 && declared > route.maxBody) {
        return gatewayError('GH_BODY_TOO_LARGE', `The request body (${declared} bytes) exceeds this route's limit of ${route.maxBody} bytes`)
      }
      if (declared > 0) ex.body = req
    } else if (te) {
      ex.body = new BodyLimit(req, route.maxBody)
    }
    return null
  }

  /** Malformed requests Node's parser refused (and header/request timeouts): answer, then close. */
  #clientError (err: Error & { code?: string }, socket: Socket): void {
    const code = err.code ?? ''
    if (code === 'ECONNRESET' || socket.destroyed) {
      socket.destroy()
      return
    }
    // A TLS connection that never finished its handshake cannot carry an HTTP answer: a
    // plaintext write on it would wait forever to be flushed.
    if ((socket as unknown as { encrypted?: boolean }).encrypted === true && (socket as unknown as { _secureEstablished?: boolean })._secureEstablished !== true) {
      socket.destroy()
      return
    }
    const conn = this.#conns.peek(socket)
    // Answered already: what follows a parser error is noise (the parser stays failed).
    if (answered(socket) || conn?.afterPending !== undefined) return
    const reason = (err as { reason?: string }).reason
    const maxUri = this.table.config.listen.limits.max_uri
    const gerr = code === 'HPE_HEADER_OVERFLOW'
      ? requestLineTooLong(err, maxUri)
        ? gatewayError('GH_URI_TOO_LONG', `The request target is longer than the ${maxUri} bytes this gateway accepts`)
        : gatewayError('GH_HEADERS_TOO_LARGE', 'The request head is larger than this gateway accepts')
      : code === 'ERR_HTTP_REQUEST_TIMEOUT'
        ? gatewayError('GH_REQUEST_TIMEOUT', 'The request was not received in time')
        : code === 'HPE_INVALID_TRANSFER_ENCODING' || code === 'HPE_UNEXPECTED_CONTENT_LENGTH' || code === 'HPE_INVALID_CONTENT_LENGTH'
          ? gatewayError('GH_AMBIGUOUS_LENGTH', `The request's message length is ambiguous: ${reason ?? code}`)
          : gatewayError('GH_BAD_REQUEST', `Malformed request: ${reason ?? code}`)
    // The connection ended in the middle of a request: the client went away (a 499 for a
    // request in progress), nobody is left to answer.
    const gone = code === 'HPE_INVALID_EOF_STATE'
    if (!gone) {
      this.metrics.refused.labels(gerr.code).inc()
      this.logger.info({ msg: 'client error', code: gerr.code, reason: `${code} ${reason ?? err.message}`, peer: socket.remoteAddress })
    }
    const last = conn?.active[conn.active.length - 1]
    if (last !== undefined && !last.finished) {
      if (!last.req.complete) {
        // The bytes that failed are this request's body (a malformed chunk, a request timeout):
        // its own response answers it, in order.
        if (gone || last.res.headersSent) socket.destroy()
        else last.bodyFailed(gerr)
        return
      }
    }
    // After requests still being answered, this answer waits for their responses (writing now
    // would put it before theirs).
    this.#lastAnswer(socket, gone ? null : rawProblemResponse(gerr, null, http.STATUS_CODES[gerr.status], failedOnHead(err)))
  }

  /** Called once per exchange when its response is over. */
  finish (ex: Exchange): void {
    const now = performance.now()
    const route = ex.route
    // 499 only when the client left on its own; when the gateway cut the connection (upstream
    // fault mid-body) the log keeps the status that was sent, plus the error code.
    const status = ex.clientGone && ex.error === null && !ex.res.writableFinished ? CLIENT_CLOSED : ex.status
    const routeName = route === null ? '(none)' : route.name
    const upstreamName = route === null ? '(none)' : route.upstream.name
    if (ex.body instanceof BodyLimit) ex.bytesIn = ex.body.bytes
    else if (ex.body !== null && ex.req.complete) ex.bytesIn = Number(ex.contentLength)
    else if (ex.bodyBuffer !== null) ex.bytesIn = ex.bodyBuffer.length
    const rm = this.metrics.forRoute(route, routeName, upstreamName)
    rm.countRequest(ex.req.method ?? '', status)
    rm.duration.observe((now - ex.startedAt) / 1000)
    if (ex.upstreamHeadersAt !== 0) rm.upstreamDuration.observe((ex.upstreamHeadersAt - ex.upstreamStartedAt) / 1000)
    if (ex.bytesIn > 0) rm.bytesIn.inc(ex.bytesIn)
    if (ex.bytesOut > 0) rm.bytesOut.inc(ex.bytesOut)
    if (this.#accessLog) {
      this.#access.write({
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
        upstreamMs: ex.upstreamHeadersAt === 0 ? null : round(ex.upstreamHeadersAt - ex.upstreamStartedAt),
        code: ex.error === null ? null : ex.error.code,
        reason: ex.error === null ? null : (ex.error.reason ?? ex.error.detail),
        provider: ex.identity === null ? null : ex.identity.provider,
        subject: ex.identity === null ? null : ex.identity.subject,
      })
    }
    if (ex.conn !== null) this.#conns.done(ex.conn, ex)
    if (--this.#inFlight === 0 && this.#upgraded.size === 0 && this.#drained !== null) this.#drained()
  }

  trackUpgrade (socket: Socket): void {
    this.#upgraded.add(socket)
    this.metrics.upgrades.inc()
    socket.once('close', () => {
      this.#upgraded.delete(socket)
      this.metrics.upgrades.dec()
      if (this.#inFlight === 0 && this.#upgraded.size === 0 && this.#drained !== null) this.#drained()
    })
  }

  // --- lifecycle -----------------------------------------------------------------------------------

  async listen (): Promise<ListenInfo> {
    const config = this.table.config
    // Keys first, so the first request with a token does not find an empty key set. An IdP
    // that does not answer delays start-up by at most IDENTITY_START_TIMEOUT; the gateway then
    // starts, reports not ready, and keeps trying in the background.
    const [,,, delivery] = await Promise.all([this.#identity.start(this.table.identity, IDENTITY_START_TIMEOUT), this.#storesStarting, loadPlugins(this.table), this.#delivery.prepare(this.table.config)])
    // Workers start with the listeners: what the store holds from before a restart goes out now.
    this.#delivery.commit(this.table, delivery)
    // Both listeners bind at once; a bind error (port in use) rejects listen().
    const servers: http.Server[] = [this.#server]
    const bound = [listening(this.#server.listen(config.listen.port, config.listen.host), 'listen', config.listen.host, config.listen.port)]
    if (config.admin.enabled) {
      this.#admin = createAdminServer(this)
      servers.push(this.#admin)
      bound.push(listening(this.#admin.listen(config.admin.port, config.admin.host), 'admin', config.admin.host, config.admin.port))
    }
    const failed = (await Promise.allSettled(bound)).flatMap((r) => r.status === 'rejected' ? [r.reason as Error] : [])
    if (failed.length > 0) {
      // Half up is worse than down: a proxy without /metrics, or a /healthz that answers 200
      // for a proxy that serves nothing. What did bind is closed before listen() rejects.
      await Promise.all(servers.filter((s) => s.listening).map((s) => new Promise((resolve) => s.close(resolve))))
      this.#admin = null
      throw failed[0]
    }
    const adminPort = this.#admin === null ? null : (this.#admin.address() as AddressInfo).port
    this.#listening = true
    const addr = this.#server.address() as AddressInfo
    this.logger.info({ msg: 'listening', host: addr.address, port: addr.port, tls: this.#encrypted, admin_port: adminPort, routes: this.table.routes.length })
    return { port: addr.port, host: addr.address, adminPort }
  }

  reload (input: ConfigInput | Config | (() => Config)): Promise<void> {
    // One reload at a time, in the order asked: a reload that waits for a slow IdP must not
    // commit its (older) config after a later one, nor build on providers a later one closed.
    const run = this.#reloads.then(() => this.#reload(input))
    this.#reloads = run.catch(() => {})
    return run
  }

  async #reload (input: ConfigInput | Config | (() => Config)): Promise<void> {
    let next: RouteTable
    let identity: IdentitySet | null = null
    let stores: StoreSet | null = null
    let delivery: Awaited<ReturnType<DeliveryService['prepare']>> | null = null
    try {
      const config = validateConfig(typeof input === 'function' ? input() : input)
      identity = this.#identity.prepare(config.identity)
      stores = this.#stores.prepare(config)
      next = compile(config, this.#registry, identity, { stores, metrics: this.metrics })
      const started = await Promise.allSettled([this.#identity.start(identity, IDENTITY_START_TIMEOUT), this.#stores.start(stores), loadPlugins(next), this.#delivery.prepare(config)])
      if (started[3].status === 'fulfilled') delivery = started[3].value
      for (const r of started) if (r.status === 'rejected') throw r.reason
    } catch (err) {
      if (delivery !== null) this.#delivery.discard(delivery)
      // Providers and stores this attempt created must not keep running in the background.
      if (identity !== null) this.#identity.discard(identity)
      if (stores !== null) this.#stores.discard(stores)
      this.metrics.reloads.labels('failure').inc()
      this.logger.error({ msg: 'config reload failed; keeping the running config', err: (err as Error).message })
      throw err
    }
    const prev = this.table
    // The swap: requests that already hold `prev` finish on it.
    this.table = next
    this.#identity.commit(next.identity)
    this.#stores.commit(stores)
    if (this.#listening) this.#delivery.commit(next, delivery!)
    else this.#delivery.discard(delivery!)
    this.#applyServerSettings(next.config)
    this.metrics.reloads.labels('success').inc()
    const p = prev.config
    const n = next.config
    const needsRestart = p.listen.host !== n.listen.host || p.listen.port !== n.listen.port ||
      JSON.stringify(p.listen.tls) !== JSON.stringify(n.listen.tls) || p.listen.max_header_size !== n.listen.max_header_size ||
      JSON.stringify(p.admin) !== JSON.stringify(n.admin)
    this.logger.info({ msg: 'config reloaded', routes: next.routes.length })
    if (needsRestart) this.logger.warn({ msg: 'changes to the listen address, TLS, max_header_size or admin take effect on restart' })
    // Pools no longer referenced close once their in-flight requests end; reload() does not
    // wait for that (a long SSE stream on the old table may run for minutes).
    this.#registry.retain(next.targetKeys).catch(() => {})
  }

  async close (): Promise<void> {
    if (this.closing) return
    this.closing = true
    const grace = this.table.config.shutdown.grace
    this.logger.info({ msg: 'shutting down', in_flight: this.#inFlight, grace: formatDuration(grace) })
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()))
    this.#server.closeIdleConnections()
    // Open tunnels (WebSockets) count as work in progress: they get the grace period to end.
    if (this.#inFlight > 0 || this.#upgraded.size > 0) {
      const drained = new Promise<void>((resolve) => { this.#drained = resolve })
      let timer: NodeJS.Timeout | undefined
      const timeout = new Promise<void>((resolve) => { timer = setTimeout(resolve, grace) })
      await Promise.race([drained, timeout])
      clearTimeout(timer)
      if (this.#inFlight > 0 || this.#upgraded.size > 0) this.logger.warn({ msg: 'grace period over; closing connections', in_flight: this.#inFlight, upgraded: this.#upgraded.size })
    }
    this.#server.closeAllConnections()
    this.#conns.close()
    // Tunnels are ended (FIN both ways, so each side sees an orderly close), and cut if a peer
    // does not close its side within a second.
    for (const s of this.#upgraded) {
      s.end()
      setTimeout(() => s.destroy(), 1000).unref()
    }
    await closed
    await this.#delivery.close(grace)
    if (this.#admin !== null) {
      const admin = this.#admin
      await new Promise<void>((resolve) => admin.close(() => resolve()))
      admin.closeAllConnections()
    }
    await this.#registry.closeAll(true)
    this.#identity.close()
    await this.#stores.close()
    this.logger.info({ msg: 'stopped' })
    flushLogger(this.logger)
  }
}

const STREAM_HIGH_WATER_MARK = 128 * 1024
const kBadExpectation = Symbol('gatehouse.badExpectation')
const IDENTITY_START_TIMEOUT = 10_000

function checkingInterval (headers: number, request: number): number {
  const shortest = request > 0 ? Math.min(headers, request) : headers
  return Math.max(5, Math.min(1000, Math.floor(shortest / 20)))
}

/**
 * Whether the request the parser failed on is a HEAD (its answer then has no body). The
 * server never saw that request; its head starts after the last blank line before the error
 * in the bytes Node was parsing (a failure inside a body belongs to a request in progress and
 * is answered through its own response).
 */
function failedOnHead (err: Error): boolean {
  const raw = (err as { rawPacket?: Buffer }).rawPacket
  if (raw === undefined) return false
  const at = Math.min(raw.length, (err as { bytesParsed?: number }).bytesParsed ?? raw.length)
  const end = raw.lastIndexOf('\r\n\r\n', at - 1)
  let start = end === -1 ? 0 : end + 4
  // Blank lines before a request line are allowed (RFC 9112 §2.2).
  while (raw[start] === 13 || raw[start] === 10) start++
  // A tab after the method is what some senders write (and RFC 9112 §3 lets a reader accept).
  return raw.length >= start + 5 && raw.toString('latin1', start, start + 4) === 'HEAD' && (raw[start + 4] === 32 || raw[start + 4] === 9)
}

/** Whether a head Node found too large was too large because of its request line (→ 414, not 431). */
function requestLineTooLong (err: Error, maxUri: number): boolean {
  const raw = (err as { rawPacket?: Buffer }).rawPacket
  if (raw === undefined) return false
  const end = raw.indexOf('\r\n')
  return end === -1 ? raw.length > maxUri : end > maxUri + 16
}

function destroyOnError (this: Socket): void {
  this.destroy()
}

/**
 * Resolves once `server` listens. A bind error rejects with one line that names the listener
 * and its address, `listen 0.0.0.0:8080: address already in use`, with code GH_LISTEN_FAILED
 * and the system error as its cause.
 */
function listening (server: http.Server, what: 'listen' | 'admin', host: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('listening', resolve)
    server.once('error', (err: NodeJS.ErrnoException) => {
      const words: Record<string, string> = { EADDRINUSE: 'address already in use', EACCES: 'permission denied', EADDRNOTAVAIL: 'address not available', ENOTFOUND: 'host not found' }
      const reason = words[err.code ?? ''] ?? err.code ?? err.message
      const failure = new Error(`${what} ${host.includes(':') ? `[${host}]` : host}:${port}: ${reason}`, { cause: err })
      reject(Object.assign(failure, { code: 'GH_LISTEN_FAILED' }))
    })
  })
}

/** A bounded body (its declared length was checked against the cap) as one Buffer. */
async function readAll (body: Readable): Promise<Buffer> {
  const chunks: Buffer[] = []
  for await (const c of body) chunks.push(c as Buffer)
  return Buffer.concat(chunks)
}

/** Load every plugin a table names (each route its own instance), before the table serves. */
async function loadPlugins (table: RouteTable): Promise<void> {
  await Promise.all(table.routes.map((r) => r.plugin?.load()))
}

/** How much of the upstream's answer to read whole before answering (0: stream it). */
function captureLimit (route: CompiledRoute, method: string): number {
  if (method === 'HEAD') return 0
  let cap = 0
  const t = route.responseTransform
  if (t !== null && t.body !== null) cap = t.maxBody
  const p = route.plugin
  if (p !== null && p.plugin.onResponse !== undefined) cap = cap === 0 ? p.maxResponseBody : Math.min(cap, p.maxResponseBody)
  return cap
}

function round (ms: number): number {
  return Math.round(ms * 1000) / 1000
}

export type { GatewayImpl }
