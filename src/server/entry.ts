import type { IncomingMessage, ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import type { RouteTable } from '../compile/index.js'
import type { CompiledRoute, RouteExchange } from '../compile/table.js'
import type { DeliveryService } from '../delivery/service.js'
import { gatewayError } from '../errors/index.js'
import type { AccessLog } from '../observability/access-log.js'
import type { Logger } from '../observability/logger.js'
import type { Metrics } from '../observability/metrics.js'
import { Exchange, kExchange, onResponseClose } from '../pipeline/exchange.js'
import type { GatewayRuntime } from '../pipeline/exchange.js'
import { finishCaptured } from '../pipeline/intercept.js'
import { record } from '../pipeline/finish.js'
import { deliveryStatus, prepare } from '../pipeline/request.js'
import { internalError, refuse, run } from '../pipeline/run.js'
import type { Connections, Conn } from './connections.js'
import type { Drain } from './drain.js'
import type { TableSwitcher } from './switcher.js'

export interface EntryDeps {
  readonly logger: Logger
  readonly metrics: Metrics
  readonly access: AccessLog
  readonly switcher: TableSwitcher
  readonly conns: Connections
  readonly drain: Drain
  readonly delivery: DeliveryService
  /** Whether the listener is TLS (X-Forwarded-Proto). */
  readonly encrypted: boolean
}

/**
 * Where a request enters once Node has parsed its head: admission on its connection, its
 * Exchange on the live table, then the delivery status path or the route's steps. It is
 * also what the Exchange calls back into (GatewayRuntime) until its response is over, and
 * the host of upgrades (server/upgrade.ts), which enter beside it.
 */
export class RequestEntry implements GatewayRuntime {
  readonly logger: Logger
  readonly metrics: Metrics
  readonly delivery: DeliveryService
  readonly encrypted: boolean
  /** True once shutdown began: responses close their connections, upgrades are refused. */
  closing = false
  /** log.access, which a reload may change. */
  accessLog = true
  readonly #access: AccessLog
  readonly #switcher: TableSwitcher
  readonly #conns: Connections
  readonly #drain: Drain

  constructor (deps: EntryDeps) {
    this.logger = deps.logger
    this.metrics = deps.metrics
    this.delivery = deps.delivery
    this.encrypted = deps.encrypted
    this.#access = deps.access
    this.#switcher = deps.switcher
    this.#conns = deps.conns
    this.#drain = deps.drain
  }

  /** The live route table; each request reads it once, when it arrives. */
  get table (): RouteTable {
    return this.#switcher.table
  }

  handle (req: IncomingMessage, res: ServerResponse, expectContinue: boolean): void {
    const conn = this.#conns.of(req.socket)
    // After an early answer the rest of what the client sends is read and dropped, unanswered.
    if (conn.lingering) return
    if (!this.#conns.admit(conn, req, res, expectContinue)) return
    const table = this.table
    const ex = new Exchange<CompiledRoute>(req, res, this, table)
    ex.conn = conn
    conn.active.push(ex)
    ;(res as unknown as Record<symbol, Exchange>)[kExchange] = ex
    res.on('close', onResponseClose)
    this.#drain.begin()

    ex.expectContinue = expectContinue
    try {
      const prefix = this.delivery.statusPrefix
      if (prefix !== '' && req.url!.startsWith(prefix)) {
        return deliveryStatus(ex, this.delivery, req.url!.slice(prefix.length))
      }
      const err = prepare(ex, table)
      if (err !== null) return refuse(ex, err)
      if ((req as unknown as Record<symbol, boolean | undefined>)[kBadExpectation] === true) {
        return refuse(
          ex,
          gatewayError(
            'GH_EXPECTATION_FAILED',
            'The only expectation this gateway meets is Expect: 100-continue',
          ),
        )
      }
    } catch (err) {
      return internalError(ex, err)
    }
    run(ex, ex.route!.steps)
  }

  /**
   * An Expect other than 100-continue: 417 as problem+json, through the usual path (Node's
   * own 417 is bare and keeps the connection, so the body that follows would be parsed as
   * the next request).
   */
  expectationFailed (req: IncomingMessage, res: ServerResponse): void {
    ;(req as unknown as Record<symbol, boolean>)[kBadExpectation] = true
    this.handle(req, res, false)
  }

  /** A request answered on a response of the server's making (an Upgrade not performed). */
  serve (req: IncomingMessage, res: ServerResponse): void {
    this.handle(req, res, false)
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

  /** Called once per exchange when its response is over. */
  finish (ex: RouteExchange): void {
    record(ex, this.metrics, this.accessLog ? this.#access : null)
    if (ex.conn !== null) this.#conns.done(ex.conn as Conn, ex)
    this.#drain.end()
  }

  /** An upgrade became a tunnel: shutdown waits for it like a request. */
  trackUpgrade (socket: Socket): void {
    this.#drain.track(socket)
  }
}

const kBadExpectation = Symbol('gatehouse.badExpectation')
