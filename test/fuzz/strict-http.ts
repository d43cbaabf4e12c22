/*
 * A strict HTTP/1.1 parser (RFC 9112), used as the fuzz suite's oracle on both sides of the
 * gateway: on the bytes a client sent (which requests did it really send?), on the bytes the
 * upstream received (did the gateway forward anything ambiguous?) and on the bytes the client
 * received (are the gateway's responses well-formed?).
 *
 * Wherever the RFC lets a recipient choose between refusing and repairing (bare LF, obs-fold,
 * CR/LF/NUL in a value, Content-Length lists, Content-Length with Transfer-Encoding), this
 * parser refuses: the gateway is allowed to refuse what this parser refuses, but a request
 * this parser refuses must never reach the upstream. Responses keep, next to the refusal, the
 * readings RFC 9112 allows a recipient to make of them (`lenient`), so that a proxy that
 * relays one of those readings is not blamed.
 */

export interface Field {
  name: string
  /** Latin-1, OWS trimmed. */
  value: string
}

export type Rest =
  { kind: 'none' } |
  /** The bytes end inside a message (more bytes would be needed). */
  { kind: 'incomplete', at: number, reason: string, method?: string } |
  /**
   * A message that must be refused; nothing after it can be framed. `method`: the refused
   * request's, when its request-line was read (its answer is framed as an answer to it: none
   * to a HEAD carries a body).
   */
  { kind: 'error', at: number, reason: string, method?: string }

export interface ParsedRequest {
  method: string
  target: string
  version: string
  fields: Field[]
  body: Buffer
  trailers: Field[]
  /** Offsets of the message in the parsed bytes. */
  start: number
  end: number
  /** The connection ends after this request (Connection: close, or HTTP/1.0 without keep-alive). */
  close: boolean
  /**
   * Why the request must be refused although its framing is clear (a missing or repeated
   * Host): the recipient answers 4xx and may go on with the next request. null: valid.
   */
  invalid: string | null
}

export interface RequestParse {
  requests: ParsedRequest[]
  rest: Rest
}

export interface ParsedResponse {
  version: string
  status: number
  reason: string
  fields: Field[]
  body: Buffer
  trailers: Field[]
  framing: 'none' | 'length' | 'chunked' | 'close'
  /** Bytes of the status-line and header section. */
  head: number
  start: number
  end: number
  close: boolean
}

export interface ResponseParse {
  /** Interim (1xx) and final responses, in order. */
  responses: ParsedResponse[]
  rest: Rest
}

const CR = 13
const LF = 10
const TCHAR = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/
// field-value: VCHAR, obs-text, SP and HTAB (RFC 9110 §5.5).
// eslint-disable-next-line no-control-regex
const FIELD_VALUE_BAD = /[\x00-\x08\x0a-\x1f\x7f]/
const MAX_HEX_DIGITS = 13 // 2^52 > 16^13: every size this parser accepts is a safe integer

class Fail extends Error {
  constructor (readonly kind: 'incomplete' | 'error', readonly at: number, reason: string) {
    super(reason)
  }
}

function incomplete (at: number, reason: string): never {
  throw new Fail('incomplete', at, reason)
}

function error (at: number, reason: string): never {
  throw new Fail('error', at, reason)
}

/**
 * One line ending in CRLF, as latin1 without the CRLF. A CR not followed by LF, or an LF not
 * preceded by CR, is an error; the end of the bytes before a CRLF is incomplete.
 */
function readLine (buf: Buffer, pos: number, what: string): [string, number] {
  for (let i = pos; i < buf.length; i++) {
    const c = buf[i]
    if (c === LF) error(i, `bare LF in ${what}`)
    if (c === CR) {
      if (i + 1 === buf.length) incomplete(i, `${what} cut after CR`)
      if (buf[i + 1] !== LF) error(i, `bare CR in ${what}`)
      return [buf.toString('latin1', pos, i), i + 2]
    }
  }
  return incomplete(buf.length, `${what} cut`)
}

/** Field lines up to the empty line (RFC 9112 §5). */
function readFields (buf: Buffer, pos: number, what: string): [Field[], number] {
  const fields: Field[] = []
  for (;;) {
    const at = pos
    const [line, next] = readLine(buf, pos, what)
    pos = next
    if (line === '') return [fields, pos]
    const c = line.charCodeAt(0)
    if (c === 0x20 || c === 0x09) {
      error(
        at,
        fields.length === 0 ? `whitespace line before the first ${what}` : `obs-fold in ${what}`,
      )
    }
    const colon = line.indexOf(':')
    if (colon <= 0) error(at, `${what} without a name and colon`)
    const name = line.slice(0, colon)
    if (!TCHAR.test(name)) error(at, `${what} name ${JSON.stringify(name)} is not a token`)
    const value = line.slice(colon + 1).replace(/^[ \t]+|[ \t]+$/g, '')
    if (FIELD_VALUE_BAD.test(value)) error(at, `control character in ${what} ${name}`)
    fields.push({ name, value })
  }
}

/** Comma-separated list elements (RFC 9110 §5.6.1), empty elements dropped. */
export function listElements (values: string[]): string[] {
  const out: string[] = []
  for (const v of values) {
    for (const e of v.split(',')) {
      const t = e.trim()
      if (t !== '') out.push(t)
    }
  }
  return out
}

export function fieldValues (fields: Field[], lowerName: string): string[] {
  const out: string[] = []
  for (const f of fields) if (f.name.toLowerCase() === lowerName) out.push(f.value)
  return out
}

export function fieldValue (fields: Field[], lowerName: string): string | null {
  const v = fieldValues(fields, lowerName)
  return v.length === 0 ? null : v.join(', ')
}

// RFC 9112 §7.1.1 allows BWS around ';' and '='; llhttp (Node, undici) does not, and a
// recipient may refuse it, so extensions with whitespace are read as refusable here.
const CHUNK_EXT =
  /^(?:;[!#$%&'*+.^_`|~0-9A-Za-z-]+(?:=(?:[!#$%&'*+.^_`|~0-9A-Za-z-]+|"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"))?)*$/

/** A chunked body (RFC 9112 §7.1): the decoded data, the trailer fields and where it ends. */
function readChunked (buf: Buffer, pos: number, strictExt = true): [Buffer, Field[], number] {
  const parts: Buffer[] = []
  for (;;) {
    const at = pos
    const [line, next] = readLine(buf, pos, 'chunk-size line')
    const m = /^([0-9A-Fa-f]+)(.*)$/s.exec(line)
    if (m === null) error(at, `bad chunk size ${JSON.stringify(line.slice(0, 40))}`)
    const hex = m[1]!.replace(/^0+(?=.)/, '')
    if (hex.length > MAX_HEX_DIGITS) error(at, 'chunk size overflows')
    if (
      !CHUNK_EXT.test(m[2]!) &&
      (strictExt || !/^[ \t]*;/.test(m[2]!) || FIELD_VALUE_BAD.test(m[2]!))
    ) error(at, `bad chunk extension ${JSON.stringify(m[2]!.slice(0, 40))}`)
    const size = parseInt(hex, 16)
    pos = next
    if (size === 0) {
      const [trailers, end] = readFields(buf, pos, 'trailer field')
      return [Buffer.concat(parts), trailers, end]
    }
    if (buf.length < pos + size) incomplete(buf.length, 'chunk data cut')
    parts.push(buf.subarray(pos, pos + size))
    pos += size
    if (buf.length < pos + 2) {
      if (buf.length === pos || buf[pos] === CR) incomplete(buf.length, 'chunk cut before its CRLF')
      error(pos, 'chunk data longer than its size')
    }
    if (buf[pos] !== CR || buf[pos + 1] !== LF) error(pos, 'chunk data not followed by CRLF')
    pos += 2
  }
}

function connectionClose (fields: Field[], minor: number): boolean {
  const tokens = listElements(fieldValues(fields, 'connection')).map((t) => t.toLowerCase())
  if (tokens.includes('close')) return true
  return minor === 0 && !tokens.includes('keep-alive')
}

const SAFE_DIGITS = /^[0-9]{1,15}$/

/** Every request in `buf` (RFC 9112 §2–§7), stopping at the first that must be refused. */
export function parseRequests (buf: Buffer): RequestParse {
  const requests: ParsedRequest[] = []
  let pos = 0
  let closed = false
  let current: string | undefined
  try {
    for (;;) {
      // RFC 9112 §2.2: empty lines before a request-line are ignored. Node's parser skips any
      // run of CR and LF there (bare ones included); before a request-line they frame nothing,
      // so that reading cannot hide or invent a request, and it is accepted here too.
      while (buf[pos] === CR || buf[pos] === LF) {
        if (buf[pos] === CR && pos + 1 === buf.length) break
        pos++
      }
      if (pos >= buf.length) return { requests, rest: { kind: 'none' } }
      if (buf[pos] === CR && pos + 1 === buf.length) incomplete(pos, 'cut after CR')
      const start = pos
      const [line, next] = readLine(buf, pos, 'request-line')
      // RFC 9112 §3: recipients MAY split the request-line on runs of whitespace; a gateway
      // writes its own request-line upstream, so runs of SP or HTAB cannot be read two ways.
      const m = /^([!#$%&'*+.^_`|~0-9A-Za-z-]+)[ \t]+([\x21-\x7e]+)[ \t]+HTTP\/([0-9])\.([0-9])$/
        .exec(line)
      if (m === null) error(start, `bad request-line ${JSON.stringify(line.slice(0, 80))}`)
      const [, method, target, major, version] = m as unknown as [
        string,
        string,
        string,
        string,
        string,
      ]
      current = method
      // RFC 9110 §6.2: a higher minor version is processed as the highest one implemented.
      const minor = major === '1' && version === '0' ? '0' : '1'
      const [fields, afterHead] = readFields(buf, next, 'header field')
      pos = afterHead
      const hosts = fieldValues(fields, 'host').length
      // Framed as HTTP/1.1 below (as a lenient recipient would), so that what follows can be
      // read, but refused.
      const invalid = closed
        ? 'sent after a request that closes the connection (RFC 9112 §9.6: not to be processed)'
        : major !== '1'
        ? `unsupported version HTTP/${major}.${version}`
        : (minor === '1' && hosts !== 1) || hosts > 1
        ? 'a request needs exactly one Host (HTTP/1.0: at most one)'
        : null
      const te = fieldValues(fields, 'transfer-encoding')
      const cl = fieldValues(fields, 'content-length')
      let body: Buffer = Buffer.alloc(0)
      let trailers: Field[] = []
      if (te.length > 0) {
        if (cl.length > 0) error(start, 'Content-Length and Transfer-Encoding')
        const codings = listElements(te).map((c) => c.toLowerCase())
        if (codings.length === 0 || codings.some((c) => !TCHAR.test(c))) {
          error(start, 'bad Transfer-Encoding')
        }
        if (codings[codings.length - 1] !== 'chunked') {
          error(start, 'chunked is not the final transfer coding')
        }
        if (codings.filter((c) => c === 'chunked').length > 1) error(start, 'chunked applied twice')
        // An extension out of grammar but free of control characters cannot move a chunk
        // boundary: the gateway may refuse it or pass the body on.
        ;[body, trailers, pos] = readChunked(buf, pos, false)
      } else if (cl.length > 0) {
        if (cl.length > 1) error(start, 'more than one Content-Length')
        if (!SAFE_DIGITS.test(cl[0]!)) error(start, `bad Content-Length ${JSON.stringify(cl[0])}`)
        const length = Number(cl[0])
        if (buf.length < pos + length) incomplete(buf.length, 'body cut')
        body = buf.subarray(pos, pos + length)
        pos += length
      }
      // RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 is faulty framing; the connection closes
      // after the message.
      const close = connectionClose(fields, Number(minor)) || (minor === '0' && te.length > 0)
      requests.push({
        method,
        target,
        version: `1.${minor}`,
        fields,
        body,
        trailers,
        start,
        end: pos,
        close,
        invalid,
      })
      current = undefined
      closed ||= close
    }
  } catch (err) {
    if (!(err instanceof Fail)) throw err
    if (current !== undefined) {
      return {
        requests,
        rest: { kind: err.kind, at: err.at, reason: err.message, method: current },
      }
    }
    return { requests, rest: { kind: err.kind, at: err.at, reason: err.message } }
  }
}

/** RFC 9112 §6.3 readings other than the strict one, for a response the strict parser refuses. */
export interface LenientReading {
  why: string
  response: ParsedResponse
}

export interface ResponseOptions {
  /** Method of the request each final response answers, in order (HEAD responses have no body). */
  methods: readonly string[]
  /** The sender closed the connection after these bytes (a close-delimited body ends here). */
  closed: boolean
}

/**
 * Every response in `buf`, stopping at the first that must be refused. Interim (1xx)
 * responses are listed too; each final response consumes one entry of `methods`.
 */
export function parseResponses (
  buf: Buffer,
  opts: ResponseOptions,
): ResponseParse & { lenient: LenientReading[] } {
  const responses: ParsedResponse[] = []
  const lenient: LenientReading[] = []
  let pos = 0
  let finals = 0
  let badReason: string | null = null
  /** A final response, unless its status-line is out of grammar: then one reading of an error. */
  const accept = (r: ParsedResponse): void => {
    if (badReason !== null) {
      lenient.push({ why: 'reason-phrase ignored', response: r })
      error(r.start, badReason)
    }
    responses.push(r)
  }
  try {
    for (;;) {
      if (pos >= buf.length) return { responses, rest: { kind: 'none' }, lenient }
      const start = pos
      const [line, next] = readLine(buf, pos, 'status-line')
      // The SP before an empty reason-phrase is often left out; nothing can be misread then.
      const m = /^HTTP\/([0-9])\.([0-9]) ([0-9]{3})(?: (.*))?$/s.exec(line)
      if (m === null) error(start, `bad status-line ${JSON.stringify(line.slice(0, 80))}`)
      const [, major, minor, code, reason = ''] = m as unknown as [
        string,
        string,
        string,
        string,
        string | undefined,
      ]
      // A control character in the reason-phrase (which recipients ignore) is out of grammar
      // but moves no boundary: relaying the response or refusing it are both fair.
      badReason = FIELD_VALUE_BAD.test(reason)
        ? `control character in the reason-phrase ${JSON.stringify(reason.slice(0, 40))}`
        : null
      if (major !== '1') error(start, `unsupported version HTTP/${major}.${minor}`)
      const status = Number(code)
      if (status < 100 || status > 599) error(start, `status ${code} out of range`)
      const [fields, afterHead] = readFields(buf, next, 'header field')
      const method = opts.methods[finals] ?? 'GET'
      const base = {
        version: `1.${minor}`,
        status,
        reason,
        fields,
        start,
        head: afterHead - start,
        close: connectionClose(fields, Number(minor)),
      }
      if (status < 200) {
        if (status === 101) error(start, 'unsolicited 101 Switching Protocols')
        responses.push({
          ...base,
          body: Buffer.alloc(0),
          trailers: [],
          framing: 'none',
          end: afterHead,
        })
        pos = afterHead
        continue
      }
      finals++
      const te = fieldValues(fields, 'transfer-encoding')
      const cl = fieldValues(fields, 'content-length')
      const noBody = method === 'HEAD' || status === 204 || status === 304
      if (noBody) {
        // RFC 9112 §6.3 (1): these end at the empty line whatever their framing fields say;
        // framing fields that would be refused elsewhere may still be refused here.
        const reading: ParsedResponse = {
          ...base,
          body: Buffer.alloc(0),
          trailers: [],
          framing: 'none',
          end: afterHead,
        }
        const suspect = (te.length > 0 && (cl.length > 0 || status !== 200)) || cl.length > 1 ||
          (cl.length === 1 && !SAFE_DIGITS.test(cl[0]!))
        if (suspect) {
          lenient.push({ why: 'framing fields on a response without a body', response: reading })
          error(
            start,
            `framing fields on a ${status} to ${method}: ${JSON.stringify([...te, ...cl])}`,
          )
        }
        accept(reading)
        pos = afterHead
        continue
      }
      if (te.length > 0) {
        const codings = listElements(te).map((c) => c.toLowerCase())
        if (!codings.includes('chunked') && opts.closed && cl.length === 0) {
          // Whatever else is wrong with it (an empty list, a coding that is no token), a
          // Transfer-Encoding without chunked can only mean a body to the close (RFC 9112
          // §6.3 (4)); refusing it is as fair.
          lenient.push({
            why: 'Transfer-Encoding without chunked: body to the close',
            response: {
              ...base,
              body: buf.subarray(afterHead),
              trailers: [],
              framing: 'close',
              end: buf.length,
              close: true,
            },
          })
        }
        if (
          codings.length > 0 && codings.some((c) => !TCHAR.test(c)) &&
          codings[codings.length - 1] === 'chunked' && cl.length === 0
        ) {
          // The coding that is no token is not understood, but chunked last still frames it.
          const reading = tryRead(() => readChunked(buf, afterHead, false))
          if (reading !== null) {
            lenient.push({
              why: 'chunked last after a coding that is no token',
              response: {
                ...base,
                body: reading[0],
                trailers: reading[1],
                framing: 'chunked',
                end: reading[2],
              },
            })
          }
        }
        if (codings.length === 0 || codings.some((c) => !TCHAR.test(c))) {
          error(start, 'bad Transfer-Encoding')
        }
        if (codings.filter((c) => c === 'chunked').length > 1) error(start, 'chunked applied twice')
        if (codings[codings.length - 1] === 'chunked') {
          if (cl.length > 0) {
            // RFC 9112 §6.3 (3): Transfer-Encoding overrides Content-Length; a proxy may relay
            // the chunked reading (without the Content-Length) or refuse.
            const reading = tryRead(() => readChunked(buf, afterHead))
            if (reading !== null) {
              const [body, trailers, end] = reading
              lenient.push({
                why: 'Content-Length and Transfer-Encoding: chunked wins',
                response: { ...base, body, trailers, framing: 'chunked', end },
              })
            }
            error(start, 'Content-Length and Transfer-Encoding')
          }
          const loose = tryRead(() => readChunked(buf, afterHead, false))
          let read: [Buffer, Field[], number]
          try {
            read = readChunked(buf, afterHead)
          } catch (err) {
            // An extension out of grammar but free of control characters cannot move the
            // chunk boundaries: a recipient may ignore it.
            if (
              loose !== null && err instanceof Fail && err.message.startsWith('bad chunk extension')
            ) {
              lenient.push({
                why: 'malformed chunk extension ignored',
                response: {
                  ...base,
                  body: loose[0],
                  trailers: loose[1],
                  framing: 'chunked',
                  end: loose[2],
                },
              })
            }
            throw err
          }
          const [body, trailers, end] = read
          if (trailers.some((t) => /^(content-length|transfer-encoding)$/i.test(t.name))) {
            // RFC 9110 §6.5.1: framing fields in a trailer are not to be used; refusing the
            // response is as fair as relaying it without them.
            lenient.push({
              why: 'framing field in the trailer section',
              response: { ...base, body, trailers, framing: 'chunked', end },
            })
            error(end, 'a framing field in the trailer section')
          }
          accept({ ...base, body, trailers, framing: 'chunked', end })
          pos = end
          continue
        }
        if (cl.length > 0) error(start, 'Content-Length and a non-chunked Transfer-Encoding')
        // A coding other than chunked last: the body runs to the close (RFC 9112 §6.3 (4)).
        if (!opts.closed) incomplete(buf.length, 'close-delimited body, connection still open')
        accept({
          ...base,
          body: buf.subarray(afterHead),
          trailers: [],
          framing: 'close',
          end: buf.length,
          close: true,
        })
        return { responses, rest: { kind: 'none' }, lenient }
      }
      if (cl.length > 0) {
        const distinct = [...new Set(listElements(cl))]
        if (cl.length > 1 || distinct.length !== 1 || cl[0] !== distinct[0]) {
          if (distinct.length === 1 && SAFE_DIGITS.test(distinct[0]!)) {
            // RFC 9112 §6.3 (5): identical values may be taken as one.
            const length = Number(distinct[0])
            if (buf.length >= afterHead + length) {
              lenient.push({
                why: 'repeated identical Content-Length',
                response: {
                  ...base,
                  body: buf.subarray(afterHead, afterHead + length),
                  trailers: [],
                  framing: 'length',
                  end: afterHead + length,
                },
              })
            }
          }
          error(start, `ambiguous Content-Length ${JSON.stringify(cl)}`)
        }
        if (!SAFE_DIGITS.test(cl[0]!)) error(start, `bad Content-Length ${JSON.stringify(cl[0])}`)
        const length = Number(cl[0])
        if (buf.length < afterHead + length) incomplete(buf.length, 'body cut')
        accept({
          ...base,
          body: buf.subarray(afterHead, afterHead + length),
          trailers: [],
          framing: 'length',
          end: afterHead + length,
        })
        pos = afterHead + length
        continue
      }
      if (!opts.closed) incomplete(buf.length, 'close-delimited body, connection still open')
      accept({
        ...base,
        body: buf.subarray(afterHead),
        trailers: [],
        framing: 'close',
        end: buf.length,
        close: true,
      })
      return { responses, rest: { kind: 'none' }, lenient }
    }
  } catch (err) {
    if (!(err instanceof Fail)) throw err
    return { responses, rest: { kind: err.kind, at: err.at, reason: err.message }, lenient }
  }
}

function tryRead<T> (read: () => T): T | null {
  try {
    return read()
  } catch (err) {
    if (err instanceof Fail) return null
    throw err
  }
}

/** The request-target with percent-encoded unreserved characters decoded and '//' runs merged. */
export function normalTarget (target: string): string {
  const q = target.indexOf('?')
  const path = q === -1 ? target : target.slice(0, q)
  return path.replace(/%([0-9A-Fa-f]{2})/g, (all, hex: string) => {
    const ch = String.fromCharCode(parseInt(hex, 16))
    return /[A-Za-z0-9\-._~]/.test(ch) ? ch : all
  }).replace(/\/{2,}/g, '/')
}
