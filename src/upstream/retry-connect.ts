import type { Dispatcher } from 'undici'
import type { Upstream } from './balancer.js'
import { isConnectFailure } from './errors.js'
import type { Target } from './target.js'

/** What a retry needs from the request's owner (the proxy's Exchange). */
export interface RetryOwner {
  /** Attempts made so far, this one included. */
  readonly attempts: number
  /** Whether the request may go again: its client still waits, and no byte of its body was read. */
  replayable(): boolean
  /** Send the request to `target` instead: the failed attempt's slot goes back first. */
  retry(target: Target): void
}

/**
 * The retry-connect interceptor: a connect that failed reached no upstream, so the request
 * may go to another target of the same upstream, as long as its body was not touched. Only
 * connect failures are retried here; anything after the connection (a reset, a timeout) may
 * have reached the upstream, and a non-idempotent request must not run twice. dispatch()
 * wraps an attempt with it when the upstream has another target to offer; a single-target
 * upstream dispatches straight to its pool.
 */
export class RetryConnect implements Dispatcher.DispatchHandler {
  readonly #handler: Dispatcher.DispatchHandler
  readonly #upstream: Upstream
  readonly #target: Target
  readonly #owner: RetryOwner

  constructor (
    handler: Dispatcher.DispatchHandler,
    upstream: Upstream,
    target: Target,
    owner: RetryOwner,
  ) {
    this.#handler = handler
    this.#upstream = upstream
    this.#target = target
    this.#owner = owner
  }

  onConnect (abort: (err?: Error) => void): void {
    this.#handler.onConnect!(abort)
  }

  onHeaders (status: number, headers: Buffer[], resume: () => void, statusText: string): boolean {
    return this.#handler.onHeaders!(status, headers, resume, statusText)
  }

  onData (chunk: Buffer): boolean {
    return this.#handler.onData!(chunk)
  }

  onComplete (trailers: string[] | null): void {
    this.#handler.onComplete!(trailers)
  }

  onError (err: Error): void {
    const owner = this.#owner
    const upstream = this.#upstream
    if (isConnectFailure(err) && owner.attempts < upstream.size && owner.replayable()) {
      const now = Date.now()
      const next = upstream.pick(now, this.#target)
      if (next !== null) {
        // The failure counts against the target's health here; when no retry follows, the
        // handler's failed() counts it instead (unless its client has gone: then, as before
        // this wrapper, not at all), so it is never counted twice.
        upstream.recordConnectFailure(this.#target, now)
        owner.retry(next)
        return
      }
    }
    this.#handler.onError!(err)
  }
}
