import http from 'node:http'
import type { Socket } from 'node:net'
import type { RouteTable } from '../compile/index.js'
import { gatewayError, rawProblemResponse } from '../errors/index.js'
import type { Logger } from '../observability/logger.js'
import type { Metrics } from '../observability/metrics.js'
import { answered, discardInput, endAndLinger, type Connections } from './connections.js'

/**
 * What the proxy listener answers on its own, outside any request: bytes Node's parser
 * refused (and header/request timeouts), CONNECT, and the last answer of a connection the
 * HTTP server let go of, each kept in order behind the responses pipelined before it.
 */
export class ClientErrors {
  readonly #conns: Connections
  readonly #metrics: Metrics
  readonly #logger: Logger
  /** The table in force (limits and timeouts change on reload). */
  readonly #table: () => RouteTable

  constructor (conns: Connections, metrics: Metrics, logger: Logger, table: () => RouteTable) {
    this.#conns = conns
    this.#metrics = metrics
    this.#logger = logger
    this.#table = table
  }

  /** CONNECT asks for a tunnel: 405, as nginx answers, and the connection is closed. */
  refuseConnect (socket: Socket): void {
    socket.on('error', destroyOnError)
    const err = gatewayError(
      'GH_METHOD_NOT_ALLOWED',
      'CONNECT is not allowed: this is a gateway, not a tunnel',
      { headers: { allow: 'GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS' } },
    )
    this.#metrics.refused.labels(err.code).inc()
    this.lastAnswer(socket, rawProblemResponse(err, null, http.STATUS_CODES[err.status]))
  }

  /**
   * The last answer on a connection the HTTP server let go of: at once, or, when requests
   * pipelined before it are still being answered, after their responses (in order).
   */
  lastAnswer (socket: Socket, answer: string | null): void {
    const conn = this.#conns.peek(socket)
    // Closing already (an earlier answer said Connection: close): nothing more is written,
    // and the lingering close must go on reading to see the client leave.
    if (!socket.writable || conn?.lingering === true) {
      discardInput(socket)
      return
    }
    if (conn !== undefined && conn.active.length > 0) {
      conn.afterPending = answer
      socket.pause()
      return
    }
    endAndLinger(socket, answer, this.#table().config.listen.timeouts.linger)
  }

  /** Malformed requests Node's parser refused (and header/request timeouts): answer, then close. */
  clientError (err: Error & { code?: string }, socket: Socket): void {
    const code = err.code ?? ''
    if (code === 'ECONNRESET' || socket.destroyed) {
      socket.destroy()
      return
    }
    // A TLS connection that never finished its handshake cannot carry an HTTP answer: a
    // plaintext write on it would wait forever to be flushed.
    if (
      (socket as unknown as { encrypted?: boolean }).encrypted === true &&
      (socket as unknown as { _secureEstablished?: boolean })._secureEstablished !== true
    ) {
      socket.destroy()
      return
    }
    const conn = this.#conns.peek(socket)
    // Answered already: what follows a parser error is noise (the parser stays failed).
    if (answered(socket) || conn?.afterPending !== undefined) return
    const reason = (err as { reason?: string }).reason
    const maxUri = this.#table().config.listen.limits.max_uri
    const gerr = code === 'HPE_HEADER_OVERFLOW'
      ? requestLineTooLong(err, maxUri)
        ? gatewayError(
          'GH_URI_TOO_LONG',
          `The request target is longer than the ${maxUri} bytes this gateway accepts`,
        )
        : gatewayError(
          'GH_HEADERS_TOO_LARGE',
          'The request head is larger than this gateway accepts',
        )
      : code === 'ERR_HTTP_REQUEST_TIMEOUT'
      ? gatewayError('GH_REQUEST_TIMEOUT', 'The request was not received in time')
      : code === 'HPE_INVALID_TRANSFER_ENCODING' || code === 'HPE_UNEXPECTED_CONTENT_LENGTH' ||
          code === 'HPE_INVALID_CONTENT_LENGTH'
      ? gatewayError(
        'GH_AMBIGUOUS_LENGTH',
        `The request's message length is ambiguous: ${reason ?? code}`,
      )
      : gatewayError('GH_BAD_REQUEST', `Malformed request: ${reason ?? code}`)
    // The connection ended in the middle of a request: the client went away (a 499 for a
    // request in progress), nobody is left to answer.
    const gone = code === 'HPE_INVALID_EOF_STATE'
    if (!gone) {
      this.#metrics.refused.labels(gerr.code).inc()
      this.#logger.info({
        msg: 'client error',
        code: gerr.code,
        reason: `${code} ${reason ?? err.message}`,
        peer: socket.remoteAddress,
      })
    }
    const last = conn?.active[conn.active.length - 1]
    if (last !== undefined && !last.finished) {
      if (!last.req.complete) {
        // The bytes that failed are this request's body (a malformed chunk, a request timeout):
        // its own response answers it, in order.
        if (gone || last.res.headersSent) socket.destroy()
        else last.bodyFailed(gerr)
        return
      }
    }
    // After requests still being answered, this answer waits for their responses (writing now
    // would put it before theirs).
    this.lastAnswer(
      socket,
      gone
        ? null
        : rawProblemResponse(gerr, null, http.STATUS_CODES[gerr.status], failedOnHead(err)),
    )
  }
}

/**
 * Whether the request the parser failed on is a HEAD (its answer then has no body). The
 * server never saw that request; its head starts after the last blank line before the error
 * in the bytes Node was parsing (a failure inside a body belongs to a request in progress and
 * is answered through its own response). The body of the request before it may sit between
 * that blank line and the request line: a client that pipelined a HEAD would read a body as
 * the start of the next response.
 */
function failedOnHead (err: Error): boolean {
  const raw = (err as { rawPacket?: Buffer }).rawPacket
  if (raw === undefined) return false
  const at = Math.min(raw.length, (err as { bytesParsed?: number }).bytesParsed ?? raw.length)
  if ((err as { code?: string }).code === 'HPE_INVALID_METHOD') {
    // Node stops at the byte that ends the method it could read, from the request's first
    // byte: "HEAD\t/p" fails just after HEAD, "0HEAD /p" or "XHEAD /p" (methods Node does not
    // know, and no HEAD to the client that sent them) fail before. No other method ends in HEAD.
    return at >= 4 && raw[at - 4] === 72 && raw[at - 3] === 69 && raw[at - 2] === 65 &&
      raw[at - 1] === 68
  }
  // The blank line must end before the error: Node reports a bad Content-Length at the failing
  // head's own blank line, which does not end a head before it.
  const end = raw.lastIndexOf('\r\n\r\n', at - 4)
  let start = end === -1 ? 0 : end + 4
  // Blank lines before a request line are allowed (RFC 9112 §2.2).
  while (raw[start] === 13 || raw[start] === 10) start++
  // The request line is the first line from there that ends in a version ("<method> <target>
  // HTTP/1.1"), up to the end of the line that failed. Body bytes of the request before it may
  // precede it on the same line or on lines of their own ("\0HEAD\t/p HTTP/1.1",
  // " \r\nHEAD /p HTTP/1.1"), so it is found from its version backwards. The first such line,
  // not the failing one: a head may fail on a later line that also ends in a version (a request
  // line where a header field should be). SP or HTAB may separate the parts (RFC 9112 §3 lets a
  // reader accept both).
  // Node's bytesParsed is just past the byte that failed (a bare LF ending the head: the next
  // request's first byte), so the failed line is the one holding at - 1.
  const nl = raw.indexOf(10, Math.max(start, at - 1))
  const stop = nl === -1 ? raw.length : nl
  let version = raw.indexOf('HTTP/', start)
  while (version !== -1 && version < stop && !endsLine(raw, version + 8)) {
    version = raw.indexOf('HTTP/', version + 5)
  }
  if (version === -1 || version >= stop) return false
  let i = version - 1
  while (i >= start && (raw[i] === 32 || raw[i] === 9)) i--
  while (i >= start && raw[i] !== 32 && raw[i] !== 9 && raw[i] !== 10) i--
  while (i >= start && (raw[i] === 32 || raw[i] === 9)) i--
  return i - 3 >= start && raw[i - 3] === 72 && raw[i - 2] === 69 && raw[i - 1] === 65 &&
    raw[i] === 68
}

/** Whether `raw` has a line end (CR or LF), or its end, at `i`: just after "HTTP/1.1". */
function endsLine (raw: Buffer, i: number): boolean {
  return i >= raw.length || raw[i] === 13 || raw[i] === 10
}

/** Whether a head Node found too large was too large because of its request line (→ 414, not 431). */
function requestLineTooLong (err: Error, maxUri: number): boolean {
  const raw = (err as { rawPacket?: Buffer }).rawPacket
  if (raw === undefined) return false
  const end = raw.indexOf('\r\n')
  return end === -1 ? raw.length > maxUri : end > maxUri + 16
}

function destroyOnError (this: Socket): void {
  this.destroy()
}
