import type { IncomingMessage } from 'node:http'
import { Transform, type TransformCallback } from 'node:stream'
import { formatSize } from '../config/units.js'
import { gatewayError, isGatewayError, type GatewayError } from '../errors/index.js'
import type { Exchange } from './exchange.js'
import { dropHeaders } from '../net/fields.js'
import { HANDLED, type Step, type Verdict } from './step.js'

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
      cb(
        gatewayError(
          'GH_BODY_TOO_LARGE',
          `The request body exceeds this route's limit of ${formatSize(this.#limit)}`,
        ),
      )
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

/**
 * Routes that need the request body whole (webhook signatures, body transforms, plugins, async
 * delivery) read it here, at most `cap` bytes (413 as soon as it is passed; a declared length
 * over it is refused unread). Afterwards the body is `ex.bodyBuffer`, framed by length.
 */
export class ReadBody implements Step {
  readonly name = 'body'
  readonly cap: number

  constructor (cap: number) {
    this.cap = cap
  }

  async run (ex: Exchange): Promise<Verdict> {
    const cap = this.cap
    if (ex.contentLength !== null && Number(ex.contentLength) > cap) {
      return tooLarge(cap, Number(ex.contentLength))
    }
    const body = await readWhole(ex, cap)
    if (!Buffer.isBuffer(body)) return body
    ex.bodyType = ex.header('content-type')
    setBody(ex, body)
    return null
  }
}

/**
 * The request body as one Buffer, at most `cap` bytes: asked for (100 Continue) and timed
 * (body_idle, body_min_rate) as it is read. Otherwise a GatewayError to answer (413 once the cap
 * is passed, or a malformed body), or HANDLED when the client went away (its exchange is
 * logged already). The one reader of whole bodies: the body step and the cache's key.
 */
export async function readWhole (
  ex: Exchange,
  cap: number,
): Promise<Buffer | GatewayError | typeof HANDLED> {
  const source = ex.body
  if (source === null) return EMPTY
  // RFC 9110 §10.1.1: ask for the body only once the route wants it.
  if (ex.expectContinue) ex.sendContinue()
  ex.expectContinue = false
  ex.rt.watchBody(ex)
  const chunks: Buffer[] = []
  let bytes = 0
  try {
    for await (const chunk of source) {
      bytes += (chunk as Buffer).length
      if (bytes > cap) return tooLarge(cap, null)
      chunks.push(chunk as Buffer)
    }
  } catch (err) {
    return isGatewayError(err) ? err : HANDLED
  }
  if (ex.finished || !ex.req.complete) return HANDLED
  ex.body = null
  return chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, bytes)
}

/** The body sent on (read whole, maybe transformed): framed by its length from here on. */
export function setBody (ex: Exchange, body: Buffer): void {
  ex.bodyBuffer = body
  ex.transferEncoding = null
  ex.contentLength = body.length > 0 || ex.contentLength !== null ? String(body.length) : null
}

/** A step changed the body's media type: the outgoing Content-Type follows. */
export function setBodyType (ex: Exchange, type: string | null): void {
  ex.bodyType = type
  if (type === null) return
  dropHeaders(ex.outHeaders, isContentType)
  ex.outHeaders.push('content-type', type)
}

function isContentType (lower: string): boolean {
  return lower === 'content-type'
}

const EMPTY = Buffer.alloc(0)

function tooLarge (cap: number, declared: number | null): GatewayError {
  return gatewayError(
    'GH_BODY_TOO_LARGE',
    `The request body${
      declared === null ? '' : ` (${declared} bytes)`
    } exceeds the ${cap} bytes this route reads`,
  )
}
