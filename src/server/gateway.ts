import type { IncomingMessage, Server, ServerResponse } from 'node:http'
import type { AddressInfo, Socket } from 'node:net'
import type { DestinationStream } from 'pino'
import type { RouteTable } from '../compile/index.js'
import { compileChecks } from '../compile/checks.js'
import { validateConfig } from '../config/load.js'
import type { Config, ConfigInput } from '../config/schema.js'
import { formatDuration } from '../config/units.js'
import { createLogger, flushLogger, type Logger } from '../observability/logger.js'
import { Metrics } from '../observability/metrics.js'
import { AccessLog } from '../observability/access-log.js'
import { createAdminServer } from '../admin/server.js'
import { ClientErrors } from './client-errors.js'
import { Connections, connectionSettings } from './connections.js'
import { Drain } from './drain.js'
import { RequestEntry } from './entry.js'
import { applyListenerSettings, createListener, listening } from './listener.js'
import { Reloader, type ConfigSource } from './reload.js'
import { TableSwitcher } from './switcher.js'
import { onUpgrade } from './upgrade.js'

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
  listen(): Promise<ListenInfo>
  /**
   * Validate, compile and swap in a new configuration. Requests already routed finish on the
   * old table. Rejects (and keeps the old table) if the new config is invalid. `config` may be
   * a function (e.g. one reading the file), so that reading errors are logged and counted like
   * validation errors. Listener addresses and TLS take effect only on restart; client
   * timeouts, header limits and log settings apply at once.
   */
  reload(config: ConfigInput | Config | (() => Config)): Promise<void>
  /** Stop accepting, let in-flight requests finish up to `shutdown.grace`, then close everything. */
  close(): Promise<void>
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

/**
 * The gateway as a server: the proxy and admin listeners, the live route table (swapped
 * whole on reload; server/reload.ts builds the next one) and shutdown. Requests enter
 * through server/entry.ts.
 */
class GatewayImpl implements Gateway {
  readonly logger: Logger
  readonly metrics: Metrics
  #listening = false
  readonly #switcher: TableSwitcher
  readonly #reloader: Reloader
  readonly #entry: RequestEntry
  readonly #server: Server
  #admin: Server | null = null
  readonly #drain: Drain
  readonly #conns: Connections

  constructor (config: Config, options: GatewayOptions) {
    const logger = this.logger = options.logger ??
      createLogger(config.log.level, options.logDestination)
    const metrics = this.metrics = new Metrics(
      options.processMetrics ?? true,
      () => this.#drain.inFlight,
      () => queueLengths(this.table),
    )
    const drain = this.#drain = new Drain(metrics)
    const access = new AccessLog(logger)
    this.#reloader = new Reloader(logger, metrics, {
      listening: () => this.#listening,
      apply: (next) => this.#applySettings(next),
    })
    const switcher = this.#switcher = new TableSwitcher(this.#reloader.first(config))
    const server = this.#server = createListener(config)
    const conns = this.#conns = new Connections(
      connectionSettings(config),
      metrics,
      logger,
      (req, res, expectContinue) => this.#entry.handle(req, res, expectContinue),
    )
    const delivery = this.#reloader.delivery
    const encrypted = config.listen.tls !== undefined
    const entry = this.#entry = new RequestEntry({
      logger,
      metrics,
      access,
      switcher,
      conns,
      drain,
      delivery,
      encrypted,
    })
    const clientErrors = new ClientErrors(conns, metrics, logger, () => this.table)
    this.#applySettings(config)
    // Before Node's own listener: a connection over a cap is closed before a parser is made.
    server.prependListener('connection', (socket: Socket) => {
      conns.accept(socket)
    })
    server.on('request', (req: IncomingMessage, res: ServerResponse) => {
      entry.handle(req, res, false)
    })
    server.on('checkContinue', (req: IncomingMessage, res: ServerResponse) => {
      entry.handle(req, res, true)
    })
    server.on('checkExpectation', (req: IncomingMessage, res: ServerResponse) => {
      entry.expectationFailed(req, res)
    })
    server.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => {
      onUpgrade(entry, conns.peek(socket), req, socket, head)
    })
    // A gateway is no tunnel (Node would otherwise drop the connection without a word).
    server.on('connect', (_req: IncomingMessage, socket: Socket) => {
      clientErrors.refuseConnect(socket)
    })
    server.on('clientError', (err: Error & { code?: string }, socket: Socket) => {
      clientErrors.clientError(err, socket)
    })
  }

  /** Listener settings that apply at once (also on reload). */
  #applySettings (config: Config): void {
    applyListenerSettings(this.#server, config)
    this.#conns.configure(connectionSettings(config))
    this.#entry.accessLog = config.log.access
    this.logger.level = config.log.level
  }

  get table (): RouteTable {
    return this.#switcher.table
  }

  get ready (): boolean {
    return this.#listening && !this.#entry.closing && this.#reloader.identityReady
  }

  async listen (): Promise<ListenInfo> {
    // The addresses of the config the gateway was created with: a reload while start-up waits
    // (keys, stores, plugins) changes them only at the next start, as it says it does.
    const { listen, admin } = this.table.config
    await this.#reloader.start(this.#switcher)
    // Both listeners bind at once; a bind error (port in use) rejects listen().
    const servers: Server[] = [this.#server]
    const bound = [
      listening(this.#server.listen(listen.port, listen.host), 'listen', listen.host, listen.port),
    ]
    if (admin.enabled) {
      this.#admin = createAdminServer(this, this.#reloader)
      servers.push(this.#admin)
      bound.push(
        listening(this.#admin.listen(admin.port, admin.host), 'admin', admin.host, admin.port),
      )
    }
    const failed = (await Promise.allSettled(bound))
      .flatMap((r) => r.status === 'rejected' ? [r.reason as Error] : [])
    if (failed.length > 0) {
      // Half up is worse than down: a proxy without /metrics, or a /healthz that answers 200
      // for a proxy that serves nothing. What did bind is closed before listen() rejects.
      await Promise.all(
        servers.filter((s) => s.listening)
          .map((s) => new Promise((resolve) => s.close(resolve))),
      )
      this.#admin = null
      throw failed[0]
    }
    const adminPort = this.#admin === null ? null : (this.#admin.address() as AddressInfo).port
    this.#listening = true
    const addr = this.#server.address() as AddressInfo
    this.logger.info({
      msg: 'listening',
      host: addr.address,
      port: addr.port,
      tls: this.#entry.encrypted,
      admin_port: adminPort,
      routes: this.table.routes.length,
    })
    return { port: addr.port, host: addr.address, adminPort }
  }

  reload (input: ConfigSource): Promise<void> {
    return this.#reloader.reload(input, this.#switcher)
  }

  async close (): Promise<void> {
    if (this.#entry.closing) return
    this.#entry.closing = true
    const grace = this.table.config.shutdown.grace
    const drain = this.#drain
    this.logger.info({
      msg: 'shutting down',
      in_flight: drain.inFlight,
      grace: formatDuration(grace),
    })
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()))
    this.#server.closeIdleConnections()
    // Open tunnels (WebSockets) count as work in progress: they get the grace period to end.
    if (!await drain.wait(grace)) {
      this.logger.warn({
        msg: 'grace period over; closing connections',
        in_flight: drain.inFlight,
        upgraded: drain.tunnels,
      })
    }
    this.#server.closeAllConnections()
    this.#conns.close()
    drain.endTunnels()
    await closed
    await this.#reloader.delivery.close(grace)
    if (this.#admin !== null) {
      const admin = this.#admin
      await new Promise<void>((resolve) => admin.close(() => resolve()))
      admin.closeAllConnections()
    }
    await this.#reloader.close()
    this.logger.info({ msg: 'stopped' })
    flushLogger(this.logger)
  }
}

/** Requests waiting for a slot, per upstream with max_in_flight (read at scrape time). */
function queueLengths (table: RouteTable): Array<[string, number]> {
  return [...table.upstreams].filter(([, u]) => u.maxInFlight > 0)
    .map(([name, u]) => [name, u.queueLength])
}

export type { GatewayImpl }
