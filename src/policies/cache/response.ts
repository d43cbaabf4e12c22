import type { ResponseCapture, ResponseHandler, ResponseWrapper } from '../../pipeline/exchange.js'
import { PassThrough } from '../../pipeline/response.js'
import type { CacheStep } from './step.js'

/**
 * The cache-tee wrapper, on cached routes: the leading miss (the cache step set
 * ex.cacheCapture) keeps a copy of the answer as it streams to its client, stored once it is
 * complete; any other request goes past it. It sits last before the client, so the copy is
 * the answer the client got (after the route's transforms).
 */
export function cacheTee (step: CacheStep | null): ResponseWrapper | null {
  if (step === null) return null
  return (ex, next) => ex.cacheCapture === null ? next : new CacheTee(ex.cacheCapture, next)
}

class CacheTee extends PassThrough {
  #capture: ResponseCapture | null

  constructor (capture: ResponseCapture, next: ResponseHandler) {
    super(next)
    this.#capture = capture
  }

  override onHead (status: number, headers: string[], bodiless: boolean): void {
    const capture = this.#capture
    if (capture !== null) {
      capture.head(status, headers)
      // Complete as it stands (a cacheable 204 is stored with its empty body).
      if (bodiless) this.#settle(capture.complete)
    }
    this.next.onHead(status, headers, bodiless)
  }

  override onBody (chunk: Buffer): boolean {
    this.#capture?.push(chunk)
    return this.next.onBody(chunk)
  }

  override onEnd (trailers: Buffer[] | null): void {
    if (this.#capture !== null) this.#settle(this.#capture.complete)
    this.next.onEnd(trailers)
  }

  override onAbort (): void {
    // Nothing is stored; followers waiting for this answer go upstream themselves.
    if (this.#capture !== null) this.#settle(this.#capture.abort)
    this.next.onAbort()
  }

  #settle (how: (this: ResponseCapture) => void): void {
    const capture = this.#capture!
    this.#capture = null
    how.call(capture)
  }
}
