import type { IncomingMessage, ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import type { Config } from '../config/schema.js'
import type { Exchange } from '../pipeline/exchange.js'
import type { Logger } from '../observability/logger.js'
import type { Metrics } from '../observability/metrics.js'

/*
 * Per-connection bookkeeping on the proxy listener: connection caps, pipelining, and the
 * clocks that cut off clients too slow to send their body or to read their answer.
 *
 * Node's server does none of this for us: it parses every pipelined request in a read (one
 * 64 KiB read held 2,149 GETs) and hands each over at once; it never ends a response queued
 * behind one the client does not read (no 'close' for it even when the socket dies); and its
 * only body clock is `requestTimeout`, a cap on the whole request that a multi-GB upload must
 * be allowed to outlive.
 *
 * The clocks are one sweep over the open connections (undici's coarse timers, Node's own
 * connectionsCheckingInterval): a request costs no timer of its own, a chunk costs nothing.
 */

export interface ConnectionSettings {
  readonly maxConnections: number
  readonly maxPerIp: number
  readonly maxPipelined: number
  readonly bodyIdle: number
  readonly bodyMinRate: number
  readonly sendIdle: number
  readonly linger: number
}

export function connectionSettings (config: Config): ConnectionSettings {
  const l = config.listen
  return {
    maxConnections: l.limits.max_connections,
    maxPerIp: l.limits.max_connections_per_ip,
    maxPipelined: l.limits.max_pipelined,
    bodyIdle: l.timeouts.body_idle,
    bodyMinRate: l.timeouts.body_min_rate,
    sendIdle: l.timeouts.send_idle,
    linger: l.timeouts.linger,
  }
}

/** Parsed but not started: a pipelined request waiting for one ahead of it to end. */
type Deferred = [IncomingMessage, ServerResponse, boolean]

/** A connection that carries requests (the TLS socket on an HTTPS listener). */
export class Conn {
  readonly socket: Socket
  /** Requests started on this connection and not yet over, oldest first. */
  readonly active: Exchange[] = []
  deferred: Deferred[] | null = null
  /** The gateway stopped reading it (max_pipelined); resumed as requests end. */
  paused = false
  /** An early answer went out while the body was arriving: read and discard, then close. */
  lingering = false
  /**
   * What waits for the requests in progress to be answered: the last answer after a parser
   * error or CONNECT (null: just close), an upgrade Node handed over while they run (started
   * once their responses are out, so its own answer cannot land inside theirs), or undefined.
   */
  afterPending: string | null | (() => void) | undefined = undefined
  /** Response progress as last seen by the sweep, and when it last moved. */
  sent = -1
  queued = 0
  sentAt = 0
  /** The request whose body is being read, and its progress. */
  body: Exchange | null = null
  read = 0
  readAt = 0
  bodyAt = 0
  bodyFrom = 0
  /** Time the body waited on the gateway's side (backpressure from the upstream): not the client's. */
  excused = 0

  constructor (socket: Socket) {
    this.socket = socket
  }
}

const kConn = Symbol('gatehouse.conn')
const kTcpCounted = Symbol('gatehouse.tcpCounted')

/** Most pipelined requests kept parsed and waiting per connection; past it the connection is a flood. */
const MAX_DEFERRED = 1024

export class Connections {
  #settings: ConnectionSettings
  readonly #metrics: Metrics
  readonly #logger: Logger
  readonly #start: (req: IncomingMessage, res: ServerResponse, expectContinue: boolean) => void
  readonly #conns = new Set<Conn>()
  readonly #perIp = new Map<string, number>()
  #tcp = 0
  #timer: NodeJS.Timeout | null = null
  #period = 0
  #lastSweep = 0

  constructor (
    settings: ConnectionSettings,
    metrics: Metrics,
    logger: Logger,
    start: (req: IncomingMessage, res: ServerResponse, expectContinue: boolean) => void,
  ) {
    this.#settings = settings
    this.#metrics = metrics
    this.#logger = logger
    this.#start = start
    metrics.openConnections = () => this.#tcp
  }

  get open (): number {
    return this.#tcp
  }

  /** New limits and clocks (reload); connections already open keep going under them. */
  configure (settings: ConnectionSettings): void {
    this.#settings = settings
    if (this.#timer !== null) {
      clearInterval(this.#timer)
      this.#timer = null
    }
    if (this.#conns.size > 0) this.#arm()
  }

  /**
   * A new TCP connection ('connection', before TLS): false when it was closed at once because
   * a cap is reached. Closing before a byte is read costs the flood nothing but the accept.
   */
  accept (socket: Socket): boolean {
    const s = this.#settings
    if (s.maxConnections > 0 && this.#tcp >= s.maxConnections) {
      return this.#drop(socket, 'max_connections')
    }
    const ip = peerKey(socket.remoteAddress)
    // Counted even while the cap is off, so that a reload turning it on starts from the truth.
    const n = this.#perIp.get(ip) ?? 0
    if (s.maxPerIp > 0 && n >= s.maxPerIp) return this.#drop(socket, 'max_connections_per_ip')
    this.#tcp++
    this.#perIp.set(ip, n + 1)
    ;(socket as unknown as Record<symbol, string>)[kTcpCounted] = ip
    socket.once('close', onTcpClose)
    ;(socket as unknown as Record<symbol, Connections>)[kOwner] = this
    return true
  }

  #drop (socket: Socket, reason: 'max_connections' | 'max_connections_per_ip'): false {
    this.#metrics.connectionsRefused.labels(reason).inc()
    socket.destroy()
    return false
  }

  tcpClosed (ip: string): void {
    this.#tcp--
    const n = (this.#perIp.get(ip) ?? 1) - 1
    if (n <= 0) this.#perIp.delete(ip)
    else this.#perIp.set(ip, n)
  }

  /** The connection's state if it has carried a request. */
  peek (socket: Socket): Conn | undefined {
    return (socket as unknown as Record<symbol, Conn | undefined>)[kConn]
  }

  /** The connection a request arrived on (made on its first request). */
  of (socket: Socket): Conn {
    let conn = (socket as unknown as Record<symbol, Conn | undefined>)[kConn]
    if (conn === undefined) {
      conn = new Conn(socket)
      ;(socket as unknown as Record<symbol, Conn>)[kConn] = conn
      ;(socket as unknown as Record<symbol, Connections>)[kOwner] = this
      this.#conns.add(conn)
      socket.once('close', onConnClose)
      if (this.#timer === null) this.#arm()
    }
    return conn
  }

  /**
   * Whether a request may start now. Past `max_pipelined` requests in progress on its
   * connection it waits (and the connection is not read further) until one ends; a client
   * that keeps pipelining into a connection it does not read is closed.
   */
  admit (conn: Conn, req: IncomingMessage, res: ServerResponse, expectContinue: boolean): boolean {
    if (conn.active.length < this.#settings.maxPipelined && conn.deferred === null) return true
    // Requests parsed from the rest of a read after the connection was closed as a flood.
    if (conn.socket.destroyed) return false
    const deferred = (conn.deferred ??= [])
    if (deferred.length >= MAX_DEFERRED) {
      this.#metrics.connectionsRefused.labels('pipelining_flood').inc()
      this.#logger.info({
        msg: 'pipelining flood; connection closed',
        peer: conn.socket.remoteAddress,
        waiting: deferred.length,
      })
      conn.socket.destroy()
      return false
    }
    deferred.push([req, res, expectContinue])
    if (!conn.paused) {
      conn.paused = true
      conn.socket.pause()
    }
    return false
  }

  /** Called once per exchange when it is over. */
  done (conn: Conn, ex: Exchange): void {
    const i = conn.active.indexOf(ex)
    if (i !== -1) conn.active.splice(i, 1)
    if (conn.body === ex) conn.body = null
    if (conn.afterPending !== undefined) {
      if (conn.active.length > 0) return
      const next = conn.afterPending
      if (typeof next === 'function') {
        conn.afterPending = undefined
        next()
      } else {
        // Every response before the malformed bytes is out: now their answer, and close.
        endAndLinger(conn.socket, next, this.#settings.linger)
      }
      return
    }
    const next = conn.deferred
    if (next === null || conn.socket.destroyed) return
    // Started on the next turn: a request answered at once must not recurse through here.
    process.nextTick(startDeferred, this, conn)
  }

  startNext (conn: Conn): void {
    const deferred = conn.deferred
    if (deferred === null || conn.socket.destroyed) return
    // Taken off the connection while they start, so that admit() lets them through.
    conn.deferred = null
    while (deferred.length > 0 && conn.active.length < this.#settings.maxPipelined) {
      const [req, res, expectContinue] = deferred.shift()!
      this.#start(req, res, expectContinue)
    }
    if (deferred.length > 0) {
      conn.deferred = deferred
    } else {
      if (conn.paused) {
        conn.paused = false
        conn.socket.resume()
      }
    }
  }

  /** The request's body is being read from now on: its clocks start. */
  watchBody (ex: Exchange): void {
    const conn = ex.conn as Conn | null
    if (conn === null || ex.req.complete) return
    const now = performance.now()
    const read = conn.socket.bytesRead
    conn.body = ex
    conn.read = read
    conn.readAt = now
    conn.bodyAt = now
    conn.bodyFrom = read
    conn.excused = 0
  }

  /**
   * An early answer is going out while the body still arrives. Once it is written, close our
   * side and read (and drop) what the client still sends for at most `linger`, so that its
   * kernel does not answer our close with a reset that destroys the answer unread.
   */
  linger (ex: Exchange): void {
    const conn = ex.conn as Conn | null
    if (conn === null || conn.lingering) return
    conn.lingering = true
    const req = ex.req
    // Whatever was reading the body (a size check, an auth step) is done with it: drop the rest.
    req.unpipe()
    req.resume()
    const socket = conn.socket as Socket & { destroySoon: () => void }
    // Node calls destroySoon() when the answer carrying `Connection: close` has been written.
    socket.destroySoon = lingeringClose
    ;(socket as unknown as Record<symbol, number>)[kLinger] = this.#settings.linger
  }

  close (): void {
    if (this.#timer !== null) clearInterval(this.#timer)
    this.#timer = null
  }

  connClosed (conn: Conn): void {
    this.#conns.delete(conn)
    conn.deferred = null
    // Responses queued behind one that never finished get no 'close' from Node: end them here,
    // so every request that started reaches its end exactly once (Exchange.complete is idempotent).
    for (const ex of conn.active.slice()) ex.complete()
    if (this.#conns.size === 0 && this.#timer !== null) {
      clearInterval(this.#timer)
      this.#timer = null
    }
  }

  #arm (): void {
    const s = this.#settings
    // A twentieth of the shortest clock (whichever is on), at most a second: a clock is seen to
    // run out at most two periods late (it may start between sweeps), within 10 % of its value.
    let shortest = Infinity
    if (s.sendIdle > 0) shortest = s.sendIdle
    if (s.bodyIdle > 0) shortest = Math.min(shortest, s.bodyIdle)
    if (shortest === Infinity) return
    this.#period = Math.max(5, Math.min(1000, Math.floor(shortest / 20)))
    this.#lastSweep = performance.now()
    this.#timer = setInterval(sweep, this.#period, this)
    this.#timer.unref()
  }

  sweep (): void {
    const now = performance.now()
    const since = now - this.#lastSweep
    this.#lastSweep = now
    const s = this.#settings
    for (const conn of this.#conns) {
      const socket = conn.socket
      if (socket.destroyed) continue
      if (s.sendIdle > 0) this.#checkSend(conn, socket, now, s.sendIdle)
      if (conn.body !== null) this.#checkBody(conn, socket, now, since, s)
    }
  }

  /** The client accepted nothing of its answer for `send_idle`: cut it, the upstream is cancelled with it. */
  #checkSend (conn: Conn, socket: Socket, now: number, sendIdle: number): void {
    const waiting = socket.writableLength
    if (waiting === 0) {
      conn.sent = -1
      return
    }
    // Chunks the kernel took completely, and what is left of the one it is taking (libuv's
    // queue shrinks as the kernel takes part of a large write).
    const sent = socket.bytesWritten - waiting
    const queued =
      (socket as unknown as { _handle?: { writeQueueSize?: number } })._handle?.writeQueueSize ?? 0
    if (sent !== conn.sent || queued < conn.queued) {
      conn.sent = sent
      conn.queued = queued
      conn.sentAt = now
      return
    }
    conn.queued = queued
    if (now - conn.sentAt < sendIdle) return
    this.#metrics.clientTimeouts.labels('send_idle').inc()
    this.#logger.info({
      msg: 'client stopped reading its response; connection closed',
      peer: socket.remoteAddress,
      id: conn.active[0]?.requestId,
      waiting_bytes: waiting,
    })
    socket.destroy()
  }

  #checkBody (conn: Conn, socket: Socket, now: number, since: number, s: ConnectionSettings): void {
    const ex = conn.body!
    const req = ex.req
    if (ex.finished || req.complete) {
      conn.body = null
      return
    }
    const read = socket.bytesRead
    const body = ex.body
    if (
      req.readableLength >= req.readableHighWaterMark ||
      (body !== null && body !== req && body.readableLength >= body.readableHighWaterMark)
    ) {
      // The gateway's buffers are full: the upstream (or a check) reads slower than the client
      // sends, and the client is held back. Not the client's time.
      conn.excused += since
      conn.read = read
      conn.readAt = now
      return
    }
    if (read !== conn.read) {
      conn.read = read
      conn.readAt = now
    } else if (s.bodyIdle > 0 && now - conn.readAt >= s.bodyIdle) {
      return this.#bodyTimeout(
        conn,
        ex,
        'body_idle',
        `no byte of the request body for ${s.bodyIdle} ms`,
      )
    }
    if (s.bodyMinRate > 0) {
      const elapsed = now - conn.bodyAt - conn.excused - s.bodyIdle
      if (elapsed > 0 && (read - conn.bodyFrom) < s.bodyMinRate * elapsed / 1000) {
        return this.#bodyTimeout(
          conn,
          ex,
          'body_min_rate',
          `request body slower than ${s.bodyMinRate} bytes/s (${read - conn.bodyFrom} bytes in ${
            Math.round(now - conn.bodyAt)
          } ms)`,
        )
      }
    }
  }

  #bodyTimeout (
    conn: Conn,
    ex: Exchange,
    kind: 'body_idle' | 'body_min_rate',
    reason: string,
  ): void {
    conn.body = null
    this.#metrics.clientTimeouts.labels(kind).inc()
    ex.bodyTimedOut(reason)
  }
}

const kOwner = Symbol('gatehouse.connections')
const kLinger = Symbol('gatehouse.linger')

function onTcpClose (this: Socket): void {
  const owner = (this as unknown as Record<symbol, Connections>)[kOwner]!
  owner.tcpClosed((this as unknown as Record<symbol, string>)[kTcpCounted]!)
}

function onConnClose (this: Socket): void {
  const owner = (this as unknown as Record<symbol, Connections>)[kOwner]!
  owner.connClosed((this as unknown as Record<symbol, Conn>)[kConn]!)
}

function sweep (c: Connections): void {
  c.sweep()
}

function startDeferred (c: Connections, conn: Conn): void {
  c.startNext(conn)
}

/**
 * destroySoon() of a lingering connection: half-close, read and drop for at most `linger`, close.
 * Bounded by time only, as nginx's lingering_time: a byte cap would reset exactly the clients
 * that upload the most, before they get to read the answer.
 */
function lingeringClose (this: Socket): void {
  const socket = this
  if (socket.destroyed) return
  socket.end()
  const limit = (socket as unknown as Record<symbol, number>)[kLinger] ?? 0
  const started = performance.now()
  const timer = setInterval(() => {
    if (performance.now() - started >= limit) socket.destroy()
  }, Math.max(10, Math.min(100, limit)))
  timer.unref()
  socket.once('close', () => clearInterval(timer))
  // The client read the answer and closed its side: nothing left to protect.
  socket.once('end', () => socket.destroy())
  discardInput(socket)
}

/**
 * Read and drop whatever the client still sends. A 'data' listener, not only resume(): Node
 * resets a socket's flowing state when it hands it over (CONNECT, upgrades), which would leave
 * bytes sitting unread and the client's close unseen.
 */
export function discardInput (socket: Socket): void {
  // Node's HTTP server pauses a connection (its own socket._paused, and the parser) while too
  // much of its output is queued, and resumes it only as that output drains; a connection
  // being closed queues nothing more, so its reading must not wait for that.
  const s = socket as Socket & { _paused?: boolean, parser?: { resume(): void } | null }
  if (s._paused === true) {
    s._paused = false
    s.parser?.resume()
  }
  if (socket.listenerCount('data') === 0) socket.on('data', discard)
  socket.resume()
}

function discard (): void {}

const kAnswered = Symbol('gatehouse.answered')

/**
 * Write a last answer on a connection the HTTP server no longer answers on (a parser error,
 * CONNECT, a refused upgrade), then close it without losing that answer: half-close, read and
 * drop what the client still sends until it closes or `linger` runs out. Ending without reading
 * would leave a client that is still sending unaware of the close, and the socket open forever.
 * Once per socket: later parser errors on the same bytes are noise.
 */
export function endAndLinger (socket: Socket, answer: string | null, linger: number): void {
  const s = socket as Socket & Record<symbol, boolean | undefined>
  if (s[kAnswered] === true || socket.destroyed) return
  s[kAnswered] = true
  if (!socket.writable) {
    socket.destroy()
    return
  }
  if (answer === null) socket.end()
  else socket.end(answer)
  const timer = setTimeout(() => socket.destroy(), Math.max(1, linger))
  timer.unref()
  socket.once('close', () => clearTimeout(timer))
  socket.once('end', () => socket.destroy())
  discardInput(socket)
}

/** Whether endAndLinger already answered on this socket. */
export function answered (socket: Socket): boolean {
  return (socket as Socket & Record<symbol, boolean | undefined>)[kAnswered] === true
}

/** The per-address key for connection caps: IPv4 peers on a dual-stack socket show as ::ffff:a.b.c.d. */
function peerKey (address: string | undefined): string {
  if (address === undefined) return ''
  return address.startsWith('::ffff:') && address.indexOf('.') !== -1 ? address.slice(7) : address
}
