import type { Exchange, ResponseHandler, ResponseWrapper } from './exchange.js'

/*
 * A route's response behaviours, composed once at compile time (undici's compose() over its
 * interceptors is the model). Each wrapper is a small handler around the next; the last is
 * the Exchange, which writes to the client. Order, outermost first, is the route's:
 *
 *   capture (read whole)  →  cost tap  →  transform (head, status, events)  →  cache tee  →  client
 *
 * so the cost is read from what the upstream said, and the cache keeps what the client got.
 */

/** One function that builds a request's chain, or null when the route has no wrapper. */
export function composeResponse (
  wrappers: ReadonlyArray<ResponseWrapper | null>,
): ((ex: Exchange) => ResponseHandler) | null {
  const list = wrappers.filter((w): w is ResponseWrapper => w !== null)
  if (list.length === 0) return null
  // One wrapper needs no loop (hono: do not compose a single handler).
  if (list.length === 1) {
    const only = list[0]!
    return (ex) => only(ex, ex)
  }
  return (ex) => {
    let h: ResponseHandler = ex
    for (let i = list.length - 1; i >= 0; i--) h = list[i]!(ex, h)
    return h
  }
}

/**
 * A handler that passes everything on: wrappers extend it and override what they watch.
 * (What they do not override costs one call.)
 */
export class PassThrough implements ResponseHandler {
  protected readonly next: ResponseHandler

  constructor (next: ResponseHandler) {
    this.next = next
  }

  onHead (status: number, headers: string[], bodiless: boolean): void {
    this.next.onHead(status, headers, bodiless)
  }

  onBody (chunk: Buffer): boolean {
    return this.next.onBody(chunk)
  }

  onEnd (trailers: Buffer[] | null): void {
    this.next.onEnd(trailers)
  }

  onAbort (): void {
    this.next.onAbort()
  }
}
