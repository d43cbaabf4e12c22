import type { IncomingMessage } from 'node:http'
import { Transform, type TransformCallback } from 'node:stream'
import { formatSize } from '../config/units.js'
import { gatewayError } from '../errors/index.js'

/**
 * Sits between a request of unknown length (chunked) and the upstream: counts bytes and fails
 * with 413 the moment the streamed size passes the route's limit. Requests with a declared
 * Content-Length are checked before a byte is read and never pass through here.
 */
export class BodyLimit extends Transform {
  bytes = 0
  readonly #limit: number

  constructor (req: IncomingMessage, limit: number) {
    super({ highWaterMark: 64 * 1024 })
    this.#limit = limit
    // The body may fail (client gone, 413, a malformed chunk) before anything reads it, e.g.
    // while credentials are being checked: the exchange learns of it from its own 'close',
    // and whoever reads the body later gets the error from the stream itself.
    this.on('error', ignoreError)
    req.on('close', onRequestClose)
    ;(req as unknown as Record<symbol, BodyLimit>)[kLimit] = this
    req.pipe(this)
  }

  override _transform (chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.bytes += chunk.length
    if (this.#limit > 0 && this.bytes > this.#limit) {
      cb(gatewayError('GH_BODY_TOO_LARGE', `The request body exceeds this route's limit of ${formatSize(this.#limit)}`))
      return
    }
    cb(null, chunk)
  }
}

const kLimit = Symbol('gatehouse.bodyLimit')

function ignoreError (): void {}

/** A client that disconnects mid-upload must fail the upstream request, not end it cleanly. */
function onRequestClose (this: IncomingMessage): void {
  const limit = (this as unknown as Record<symbol, BodyLimit>)[kLimit]
  if (limit !== undefined && !this.complete && !limit.destroyed) {
    const err = new Error('client aborted the request body')
    ;(err as Error & { code: string }).code = 'GH_CLIENT_CLOSED'
    limit.destroy(err)
  }
}
