import { gatewayError } from '../../errors/index.js'
import { dropHeaders } from '../../net/fields.js'
import {
  isEventStream,
  type Exchange,
  type ResponseHandler,
  type ResponseWrapper,
} from '../../pipeline/exchange.js'
import { PassThrough } from '../../pipeline/response.js'
import type { ResponseTransform } from './policy.js'
import type { SseEventTransform } from './sse.js'

/**
 * The transform wrapper, on routes with `transform.response`: header edits and the status map
 * on a streamed answer, and server-sent events through the `events` expression one by one as
 * they pass. (An answer read whole is transformed by pipeline/intercept.ts instead.)
 */
export function transformResponse (t: ResponseTransform | null): ResponseWrapper | null {
  if (t === null || (t.headers === null && t.status === null && t.events === null)) return null
  return (ex, next) => new TransformHandler(t, ex, next)
}

class TransformHandler extends PassThrough {
  readonly #t: ResponseTransform
  readonly #ex: Exchange
  #events: SseEventTransform | null = null
  /** The events so far, in order: each chunk waits for the one before it. */
  #chain: Promise<void> | null = null

  constructor (t: ResponseTransform, ex: Exchange, next: ResponseHandler) {
    super(next)
    this.#t = t
    this.#ex = ex
  }

  override onHead (status: number, headers: string[], bodiless: boolean): void {
    const t = this.#t
    if (t.headers !== null) t.headers.apply(headers)
    if (t.status !== null) status = t.mapStatus(status)
    if (isEventStream(headers) && (this.#events = t.eventStream(this.#ex)) !== null) {
      // The events change length; the stream is chunked from here.
      dropHeaders(headers, isContentLength)
    }
    this.next.onHead(status, headers, bodiless)
  }

  /** The upstream stays paused while a chunk is transformed (Exchange.held); it resumes after. */
  override onBody (chunk: Buffer): boolean {
    const events = this.#events
    if (events === null) return this.next.onBody(chunk)
    const ex = this.#ex
    ex.held++
    const chain = (this.#chain ?? Promise.resolve()).then(() => events.push(chunk)).then((out) => {
      ex.held--
      if (out !== '' && !ex.clientGone) this.next.onBody(Buffer.from(out))
    })
    this.#chain = chain
    chain.then(() => ex.resume(), (err: Error) => {
      if (this.#chain !== chain) return
      ex.rt.logger.warn({
        msg: 'event transform failed; closing the stream',
        id: ex.requestId,
        err: err.message,
      })
      ex.error = gatewayError(
        'GH_TRANSFORM_FAILED',
        'A server-sent event could not be transformed',
        { reason: err.message },
      )
      ex.abortUpstream?.(ex.error)
      ex.res.destroy()
    })
    return false
  }

  override onEnd (trailers: Buffer[] | null): void {
    const chain = this.#chain
    if (chain === null) return this.next.onEnd(trailers)
    // Events still being transformed go out first, then what is left of an unterminated one.
    chain.then(() => {
      const rest = this.#events!.end()
      if (rest !== '') this.next.onBody(Buffer.from(rest))
      this.next.onEnd(null)
    }, () => {})
  }
}

function isContentLength (lowerName: string): boolean {
  return lowerName === 'content-length'
}
