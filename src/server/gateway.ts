import http, { type IncomingMessage, type ServerResponse } from 'node:http'
import type { CompiledRoute, RouteExchange } from '../compile/table.js'
import type { AddressInfo, Socket } from 'node:net'
import type { DestinationStream } from 'pino'
import { compile, type RouteTable } from '../compile/index.js'
import { compileChecks } from '../compile/checks.js'
import { validateConfig } from '../config/load.js'
import type { Config, ConfigInput } from '../config/schema.js'
import { formatDuration } from '../config/units.js'
import { gatewayError } from '../errors/index.js'
import { createLogger, flushLogger, type Logger } from '../observability/logger.js'
import { Metrics } from '../observability/metrics.js'
import { AccessLog } from '../observability/access-log.js'
import { Exchange, kExchange, onResponseClose } from '../pipeline/exchange.js'
import { finishCaptured } from '../pipeline/intercept.js'
import { record } from '../pipeline/finish.js'
import { deliveryStatus, prepare } from '../pipeline/request.js'
import { internalError, refuse, run } from '../pipeline/run.js'
import type { GatewayRuntime } from '../pipeline/exchange.js'
import { TargetRegistry } from '../upstream/target.js'
import { IdentityRegistry, type IdentitySet } from '../identity/registry.js'
import { StoreRegistry, type StoreSet } from '../stores/registry.js'
import type { ProviderStatus } from '../identity/types.js'
import { createAdminServer } from '../admin/server.js'
import { handleUpgrade } from './upgrade.js'
import { ClientErrors } from './client-errors.js'
import { applyListenerSettings, createListener } from './listener.js'
import { DeliveryService } from '../delivery/service.js'
import { Connections, connectionSettings, discardInput, type Conn } from './connections.js'

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
  const config = validateConfig(input, { checks: compileChecks })
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
  readonly #clientErrors: ClientErrors

  constructor (config: Config, options: GatewayOptions) {
    this.logger = options.logger ?? createLogger(config.log.level, options.logDestination)
    this.metrics = new Metrics(options.processMetrics ?? true, () => this.#inFlight, () => [...this.table.upstreams].filter(([, u]) => u.maxInFlight > 0).map(([name, u]) => [name, u.queueLength] as [string, number]))
    this.#access = new AccessLog(this.logger)
    this.#identity = new IdentityRegistry({ logger: this.logger, metrics: this.metrics })
    const identity = this.#identity.prepare(config.identity)
    this.#delivery = new DeliveryService(this.logger, this.metrics)
    this.#stores = new StoreRegistry(this.logger)
    const stores = this.#stores.prepare(config)
    this.table = compile(config, { targets: this.#registry.prepare(config.upstreams), identity, stores, metrics: this.metrics })
    this.#identity.commit(identity)
    this.#stores.commit(stores)
    this.#storesStarting = this.#stores.start(stores)
    const l = config.listen
    this.#encrypted = l.tls !== undefined
    this.#server = createListener(config)
    this.#conns = new Connections(connectionSettings(config), this.metrics, this.logger, (req, res, expectContinue) => this.#handle(req, res, expectContinue))
    this.#clientErrors = new ClientErrors(this.#conns, this.metrics, this.logger, () => this.table)
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
    this.#server.on('connect', (_req: IncomingMessage, socket: Socket) => this.#clientErrors.refuseConnect(socket))
    this.#server.on('clientError', (err: Error & { code?: string }, socket: Socket) => this.#clientErrors.clientError(err, socket))
  }

  /** Listener settings that apply at once (also on reload). */
  #applyServerSettings (config: Config): void {
    applyListenerSettings(this.#server, config)
    this.#conns.configure(connectionSettings(config))
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
    const ex = new Exchange<CompiledRoute>(req, res, this, this.table)
    ex.conn = conn
    conn.active.push(ex)
    ;(res as unknown as Record<symbol, Exchange>)[kExchange] = ex
    res.on('close', onResponseClose)
    this.#inFlight++

    ex.expectContinue = expectContinue
    try {
      const prefix = this.#delivery.statusPrefix
      if (prefix !== '' && req.url!.startsWith(prefix)) return deliveryStatus(ex, this.#delivery, req.url!.slice(prefix.length))
      const err = prepare(ex, this.table)
      if (err !== null) return refuse(ex, err)
      if ((req as unknown as Record<symbol, boolean | undefined>)[kBadExpectation] === true) {
        return refuse(ex, gatewayError('GH_EXPECTATION_FAILED', 'The only expectation this gateway meets is Expect: 100-continue'))
      }
    } catch (err) {
      return internalError(ex, err)
    }
    run(ex, ex.route!.steps)
  }

  finishCaptured (ex: RouteExchange): void {
    finishCaptured(ex)
  }

  watchBody (ex: RouteExchange): void {
    this.#conns.watchBody(ex)
  }

  linger (ex: RouteExchange): void {
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

  /** Called once per exchange when its response is over. */
  finish (ex: RouteExchange): void {
    record(ex, this.metrics, this.#accessLog ? this.#access : null)
    if (ex.conn !== null) this.#conns.done(ex.conn as Conn, ex)
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
      const config = validateConfig(typeof input === 'function' ? input() : input, { checks: compileChecks })
      identity = this.#identity.prepare(config.identity)
      stores = this.#stores.prepare(config)
      next = compile(config, { targets: this.#registry.prepare(config.upstreams), identity, stores, metrics: this.metrics })
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

const kBadExpectation = Symbol('gatehouse.badExpectation')
const IDENTITY_START_TIMEOUT = 10_000

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

/** Load every plugin a table names (each route its own instance), before the table serves. */
async function loadPlugins (table: RouteTable): Promise<void> {
  await Promise.all(table.routes.map((r) => r.plugin?.load()))
}

export type { GatewayImpl }
