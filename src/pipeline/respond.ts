import type { Exchange } from './exchange.js'
import { addFields, dropHeaders, isLengthField } from '../net/fields.js'
import type { PluginResponse } from '../plugins/api.js'

/*
 * Whole answers the gateway writes itself (a plugin's response, a transformed upstream
 * answer), as opposed to upstream answers relayed as they stream.
 */

export interface FinalResponse {
  status: number
  headers: string[]
  body: Buffer
}

/** A plugin's own response, as the client gets it. */
export function fromPluginResponse (ex: Exchange, r: PluginResponse): FinalResponse {
  const headers: string[] = []
  let type: string | null = null
  for (const [name, value] of Object.entries(r.headers ?? {})) {
    const lower = name.toLowerCase()
    if (lower === 'content-length' || lower === 'transfer-encoding' || lower === 'connection') {
      continue
    }
    if (lower === 'content-type') type = value
    headers.push(lower, value)
  }
  let body: Buffer
  const b = r.body
  if (b === undefined) {
    body = EMPTY
  } else if (Buffer.isBuffer(b)) {
    body = b
  } else if (typeof b === 'string') {
    body = Buffer.from(b)
    if (type === null) headers.push('content-type', 'text/plain; charset=utf-8')
  } else {
    body = Buffer.from(JSON.stringify(b))
    if (type === null) headers.push('content-type', 'application/json')
  }
  headers.push('x-request-id', ex.requestId)
  return { status: r.status, headers, body }
}

/** Answer with a whole response (content-length set here). */
export function sendWhole (ex: Exchange, r: FinalResponse): void {
  const res = ex.res
  const headers = r.headers
  dropHeaders(headers, isLengthField)
  ex.pushRateLimitFields(headers)
  if (ex.responseFields !== null) addFields(headers, ex.responseFields)
  const head = ex.method === 'HEAD'
  // 1xx, 204 and 304 carry no body (RFC 9110 §6.4.1).
  const bodiless = r.status === 204 || r.status === 304
  if (!bodiless) headers.push('content-length', String(r.body.length))
  if (ex.rt.closing) res.shouldKeepAlive = false
  ex.status = r.status
  ex.bytesOut = head || bodiless ? 0 : r.body.length
  res.writeHead(r.status, headers as unknown as string[])
  res.end(head || bodiless ? undefined : r.body)
}

const EMPTY = Buffer.alloc(0)
