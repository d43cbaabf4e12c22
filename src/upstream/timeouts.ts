import type { Socket } from 'node:net'
import type { Duplex, Readable } from 'node:stream'
import { buildConnector, errors, type Dispatcher } from 'undici'

/*
 * Upstream timeouts that fire on time. undici times `timeouts.connect` (core/connect.js),
 * `first_byte` (headersTimeout) and `idle` (bodyTimeout) with its "fast timers": one shared
 * Node timer scans a list every 499 ms, and a scan credits each entry with the whole tick
 * before, so a timeout fires on that grid, up to ~0.5 s early or late. first_byte 200ms and
 * 60ms both answered at ~1 s, and an upstream answering at 500 ms was served although
 * first_byte was 60 ms. That is cheap and right for the defaults (60 s, 5 min: one scan
 * instead of a Node timer armed and cleared twice per request), and wrong for short values.
 *
 * So a value below PRECISE_BELOW is never given to undici. The connect timeout wraps the
 * pool's connector (preciseConnector), and first_byte, idle and async delivery's whole-attempt
 * deadline wrap the request's handler (PreciseTimeouts), on unref'd native timers that fail
 * the request with undici's own errors. Only requests that have such a value are wrapped; the
 * rest go to the pool as they are. From 10 s up undici's clock stays: ±0.5 s is within 5 %,
 * which leaves the other half of a 10 % budget to the event loop's lag.
 */

/** Timeouts shorter than this (ms) get a precise timer; the rest keep undici's coarse clock. */
export const PRECISE_BELOW = 10_000

function isShort (ms: number): boolean {
  return ms > 0 && ms < PRECISE_BELOW
}

/**
 * The pool's connector with `timeout`: undici's own from PRECISE_BELOW up; below, undici's
 * without one plus a native timer that fails the connect as undici's would (the same
 * ConnectTimeoutError and message, a setImmediate later so that a socket error already on
 * its way is the one reported).
 */
export function preciseConnector (timeout: number): buildConnector.connector {
  if (!isShort(timeout)) return buildConnector({ allowH2: false, timeout })
  const connect = buildConnector({ allowH2: false, timeout: 0 })
  return function connectPrecisely (opts, callback) {
    let immediate: NodeJS.Immediate | null = null
    const timer = setTimeout(() => {
      immediate = setImmediate(connectTimedOut, socket, opts, timeout)
    }, timeout)
    // As undici's own timers: a connect in progress never keeps the process up.
    timer.unref()
    // buildConnector's connect returns the socket (its type says void).
    const socket =
      (connect as unknown as (o: buildConnector.Options, cb: buildConnector.Callback) => Socket)(
        opts,
        (...args) => {
          clearTimeout(timer)
          if (immediate !== null) clearImmediate(immediate)
          callback(...args)
        },
      )
    return socket
  }
}

function connectTimedOut (
  socket: Socket & { autoSelectFamilyAttemptedAddresses?: string[] },
  opts: buildConnector.Options,
  timeout: number,
): void {
  if (socket.destroyed) return
  // The message undici's setupConnectTimeout writes.
  const tried = Array.isArray(socket.autoSelectFamilyAttemptedAddresses)
    ? `attempted addresses: ${socket.autoSelectFamilyAttemptedAddresses.join(', ')}`
    : `attempted address: ${opts.hostname}:${opts.port}`
  socket.destroy(
    new errors.ConnectTimeoutError(`Connect Timeout Error (${tried}, timeout: ${timeout}ms)`),
  )
}

/** How one request is timed: partly by undici, partly here. Built once per upstream (or delivery route). */
export interface UpstreamTimeouts {
  /** For undici: first_byte and idle from PRECISE_BELOW up, else 0 (undici does not time it). */
  readonly headersTimeout: number
  readonly bodyTimeout: number
  /** Timed here: first_byte and idle below PRECISE_BELOW, else 0. */
  readonly firstByte: number
  readonly idle: number
  /** The whole attempt, from dispatch to the last byte (async delivery's `timeout`); 0: none. */
  readonly deadline: number
  /** Something is timed here: the request's handler is wrapped in PreciseTimeouts. */
  readonly precise: boolean
}

/** first_byte and idle as configured (0: none), and an optional whole-attempt deadline. */
export function upstreamTimeouts (firstByte: number, idle: number, deadline = 0): UpstreamTimeouts {
  const shortFirstByte = isShort(firstByte)
  const shortIdle = isShort(idle)
  return {
    headersTimeout: shortFirstByte ? 0 : firstByte,
    bodyTimeout: shortIdle ? 0 : idle,
    firstByte: shortFirstByte ? firstByte : 0,
    idle: shortIdle ? idle : 0,
    deadline,
    precise: shortFirstByte || shortIdle || deadline > 0,
  }
}

/** What undici's Request calls (core/request.js): its types give onBodySent an older signature. */
interface LegacyExtras {
  onBodySent?: (chunk: unknown) => void
  onRequestSent?: () => void
}

const SENDING = 0
const WAITING = 1
const RECEIVING = 2
const DONE = 3

/**
 * A handler wrapper (undici's callback-style handler, as ours are) that times first_byte, idle
 * and the deadline on native timers, with undici's rules for the first two (client-h1.js):
 *
 * - first_byte runs from when the request goes out on a connection (onConnect) and restarts
 *   with each chunk of the request body and at its end. While the body is still being sent it
 *   fires only if the upload is stuck (undici paused the body: the upstream stopped reading);
 *   an upload that keeps moving is not a late answer.
 * - idle runs from the response head and restarts with each chunk; it does not fire while the
 *   handler holds the response paused (a slow client), and restarts on resume.
 */
export class PreciseTimeouts implements Dispatcher.DispatchHandler {
  readonly #handler: Dispatcher.DispatchHandler
  readonly #timeouts: UpstreamTimeouts
  readonly #body: Readable | null
  #abort: ((err?: Error) => void) | null = null
  /** first_byte, then idle. */
  #timer: NodeJS.Timeout | null = null
  #deadline: NodeJS.Timeout | null = null
  /** The deadline passed before undici handed over the request's abort. */
  #expired: Error | null = null
  #phase = SENDING
  #paused = false
  #resume: (() => void) | null = null
  readonly #resumed = (): void => {
    this.#paused = false
    this.#timer?.refresh()
    this.#resume?.()
  }

  constructor (handler: Dispatcher.DispatchHandler, timeouts: UpstreamTimeouts, body: unknown) {
    this.#handler = handler
    this.#timeouts = timeouts
    this.#body = body !== null && typeof (body as Readable).isPaused === 'function'
      ? body as Readable
      : null
    if (timeouts.deadline > 0) {
      this.#deadline = setTimeout(PreciseTimeouts.#deadlinePassed, timeouts.deadline, this)
      this.#deadline.unref()
    }
  }

  static #elapsed (self: PreciseTimeouts): void {
    const phase = self.#phase
    if (phase === SENDING) {
      // Restarted by the next chunk or the body's end.
      if (self.#body === null || !self.#body.isPaused()) return
    } else if (phase === RECEIVING) {
      // Restarted on resume.
      if (self.#paused) return
    } else if (phase === DONE) {
      return
    }
    self.#abort?.(
      phase === RECEIVING ? new errors.BodyTimeoutError() : new errors.HeadersTimeoutError(),
    )
  }

  static #deadlinePassed (self: PreciseTimeouts): void {
    self.#deadline = null
    if (self.#phase === DONE) return
    const err = self.#phase === RECEIVING
      ? new errors.BodyTimeoutError()
      : new errors.HeadersTimeoutError()
    if (self.#abort === null) self.#expired = err
    else self.#abort(err)
  }

  #arm (ms: number): void {
    if (this.#timer !== null) clearTimeout(this.#timer)
    this.#timer = null
    if (ms === 0) return
    this.#timer = setTimeout(PreciseTimeouts.#elapsed, ms, this)
    this.#timer.unref()
  }

  #done (): void {
    this.#phase = DONE
    if (this.#timer !== null) clearTimeout(this.#timer)
    if (this.#deadline !== null) clearTimeout(this.#deadline)
    this.#timer = null
    this.#deadline = null
  }

  onConnect (abort: (err?: Error) => void): void {
    this.#abort = abort
    this.#phase = SENDING
    this.#arm(this.#timeouts.firstByte)
    this.#handler.onConnect?.(abort)
    if (this.#expired !== null) abort(this.#expired)
  }

  // undici calls these two only on a handler that has them: forwarded when ours does.
  onBodySent (chunk: unknown): void {
    if (this.#phase === SENDING) this.#timer?.refresh()
    ;(this.#handler as LegacyExtras).onBodySent?.(chunk)
  }

  onRequestSent (): void {
    if (this.#phase === SENDING) {
      this.#phase = WAITING
      this.#timer?.refresh()
    }
    ;(this.#handler as LegacyExtras).onRequestSent?.()
  }

  onResponseStarted (): void {
    this.#handler.onResponseStarted?.()
  }

  onHeaders (
    statusCode: number,
    headers: Buffer[],
    resume: () => void,
    statusText: string,
  ): boolean {
    if (statusCode >= 200) {
      this.#phase = RECEIVING
      this.#arm(this.#timeouts.idle)
    } else {
      this.#timer?.refresh()
    }
    this.#resume = resume
    return this.#handler.onHeaders!(statusCode, headers, this.#resumed, statusText)
  }

  onData (chunk: Buffer): boolean {
    this.#timer?.refresh()
    const more = this.#handler.onData!(chunk)
    if (more === false) this.#paused = true
    return more
  }

  onComplete (trailers: string[] | null): void {
    this.#done()
    this.#handler.onComplete!(trailers)
  }

  onError (err: Error): void {
    this.#done()
    this.#handler.onError!(err)
  }

  onUpgrade (statusCode: number, headers: Buffer[] | string[] | null, socket: Duplex): void {
    this.#done()
    this.#handler.onUpgrade!(statusCode, headers, socket)
  }
}
