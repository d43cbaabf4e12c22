import { gatewayError, isGatewayError, type GatewayError } from '../errors/index.js'
import { runHook } from '../plugins/loader.js'
import type { PluginContext, PluginResponse } from '../plugins/api.js'
import { isJsonType, mediaType } from '../policies/transform/policy.js'
import { CostTap } from '../policies/limits/policy.js'
import { upstreamPath } from '../compile/index.js'
import type { Exchange } from './exchange.js'
import { dropHeaders, isLengthField } from './headers.js'
import { isGatewayOwned } from '../net/owned-headers.js'

/*
 * The intercepted side of a route: what runs only on routes that read a body whole (webhook
 * signatures, body transforms, plugins, async delivery). Every other route streams and never
 * reaches this module.
 */

/**
 * The whole request body, at most `cap` bytes (413 past it, as soon as it is passed), or
 * null when the client went away. A declared length over the cap is refused unread.
 */
export async function readBody (ex: Exchange, cap: number, expectContinue: boolean): Promise<Buffer | GatewayError | null> {
  if (ex.contentLength !== null && Number(ex.contentLength) > cap) return tooLarge(cap, Number(ex.contentLength))
  const source = ex.body
  if (source === null) return EMPTY
  // RFC 9110 §10.1.1: ask for the body only once the route wants it.
  if (expectContinue) ex.sendContinue()
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
    if (isGatewayError(err)) return err
    return null
  }
  if (ex.finished || !ex.req.complete) return null
  ex.body = null
  return chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, bytes)
}

const EMPTY = Buffer.alloc(0)

function tooLarge (cap: number, declared: number | null): GatewayError {
  return gatewayError('GH_BODY_TOO_LARGE', `The request body${declared === null ? '' : ` (${declared} bytes)`} exceeds the ${cap} bytes this route reads`)
}

/**
 * Request body transform, then the plugin's onRequest. Returns null to go on upstream (with
 * `ex.bodyBuffer` and the headers updated), a response a plugin answered with, or an error.
 */
export async function interceptRequest (ex: Exchange, body: Buffer): Promise<GatewayError | PluginResponse | null> {
  const route = ex.route!
  let contentType = ex.header('content-type')
  let changedType = false
  const t = route.requestTransform
  if (t !== null && t.needsBody && (body.length > 0 || ex.contentLength !== null)) {
    const r = await t.transformBody(body, contentType, ex)
    if (isGatewayError(r)) return r
    body = r.body
    changedType = r.contentType !== contentType
    contentType = r.contentType
  }
  const ref = route.plugin
  if (ref !== null) {
    const plugin = ref.plugin
    const abort = new AbortController()
    ex.pluginAbort = abort
    const ctx = pluginContext(ex, body, contentType, abort.signal)
    ex.pluginCtx = ctx
    if (plugin.onRequest !== undefined) {
      const original = ctx.request.body
      const typeBefore = contentType
      const r = await runHook(plugin.name, 'onRequest', () => plugin.onRequest!(ctx), ref.timeout, abort)
      if (r !== null) return r
      const req = ctx.request
      ex.upstreamMethod = req.method
      ex.upstreamPathOverride = req.path
      const q = req.query.toString()
      ex.query = q === '' ? '' : '?' + q
      if (req.rawBody !== body) {
        body = req.rawBody
      } else if (req.body !== undefined && (req.body !== original || isJsonType(mediaType(contentType)))) {
        // Objects may have been changed in place: what the plugin holds is what goes upstream.
        body = Buffer.from(JSON.stringify(req.body))
        if (!isJsonType(mediaType(contentType))) {
          contentType = 'application/json'
          changedType = true
        }
      }
      const headers: string[] = []
      for (const [name, value] of Object.entries(req.headers)) {
        const lower = name.toLowerCase()
        // Fields the gateway sets itself; a plugin's versions are ignored.
        if (isGatewayOwned(lower)) continue
        if (lower === 'content-type') {
          // ctx.request.headers starts with the body's type: only a type the plugin set wins
          // over the application/json a body it replaced with an object is labelled with.
          if (value !== typeBefore) {
            contentType = value
            changedType = true
            continue
          }
        }
        headers.push(lower, String(value))
      }
      ex.outHeaders = headers
    }
  }
  if (changedType && contentType !== null) {
    dropHeaders(ex.outHeaders, isContentType)
    ex.outHeaders.push('content-type', contentType)
  }
  ex.bodyBuffer = body
  ex.body = null
  ex.transferEncoding = null
  ex.contentLength = body.length > 0 || ex.contentLength !== null ? String(body.length) : null
  return null
}

function isContentType (lower: string): boolean {
  return lower === 'content-type'
}

function pluginContext (ex: Exchange, body: Buffer, contentType: string | null, signal: AbortSignal): PluginContext {
  const route = ex.route!
  const ref = route.plugin!
  const headers: Record<string, string> = {}
  const out = ex.outHeaders
  for (let i = 0; i < out.length; i += 2) {
    const name = out[i]!.toLowerCase()
    headers[name] = headers[name] === undefined ? out[i + 1]! : `${headers[name]}, ${out[i + 1]!}`
  }
  if (contentType !== null) headers['content-type'] = contentType
  let parsed: unknown
  if (isJsonType(mediaType(contentType)) && body.length > 0) {
    try {
      parsed = JSON.parse(body.toString('utf8'))
    } catch {}
  }
  return {
    route: route.name,
    requestId: ex.requestId,
    identity: ex.identity,
    options: ref.options as Record<string, unknown>,
    request: {
      method: ex.method,
      path: upstreamPath(route, ex.path),
      query: new URLSearchParams(ex.query),
      headers,
      body: parsed,
      rawBody: body,
    },
    response: null,
    state: {},
    signal,
    log: ex.rt.logger.child({ plugin: ref.plugin.name, id: ex.requestId }),
    respond: (status: number, b?: unknown, h?: Record<string, string>): PluginResponse => ({ status, body: b, ...(h === undefined ? {} : { headers: h }) }),
  }
}

export interface FinalResponse {
  status: number
  headers: string[]
  body: Buffer
}

/**
 * The upstream answered whole (ex.captured): the plugin's onResponse, then the response
 * transform. Returns what to send, or an error (502) to answer instead.
 */
export async function interceptResponse (ex: Exchange): Promise<FinalResponse | GatewayError> {
  const route = ex.route!
  const c = ex.captured!
  let status = c.status
  let headers = c.headers
  let body = c.chunks.length === 1 ? c.chunks[0]! : Buffer.concat(c.chunks, c.bytes)
  c.chunks.length = 0
  if (ex.charges !== null) {
    // Quotas charged from the response read what the upstream said it cost.
    ex.costTap = new CostTap(false)
    ex.costTap.push(body)
  }
  const encoding = headerOf(headers, 'content-encoding')
  const ref = route.plugin
  const ctx = ex.pluginCtx
  if (ref !== null && ctx !== null && ref.plugin.onResponse !== undefined) {
    const record: Record<string, string> = {}
    for (let i = 0; i < headers.length; i += 2) {
      const name = headers[i]!.toLowerCase()
      record[name] = record[name] === undefined ? headers[i + 1]! : `${record[name]}, ${headers[i + 1]!}`
    }
    let parsed: unknown
    if ((encoding === null || encoding === 'identity') && isJsonType(mediaType(record['content-type'] ?? null)) && body.length > 0) {
      try {
        parsed = JSON.parse(body.toString('utf8'))
      } catch {}
    }
    const response = { status, headers: record, body: parsed, rawBody: body }
    ctx.response = response
    const plugin = ref.plugin
    const r = await runHook(plugin.name, 'onResponse', () => plugin.onResponse!(ctx), ref.timeout, ex.pluginAbort!)
    if (isGatewayError(r)) return r
    if (r !== null) return fromPluginResponse(ex, r)
    const now = ctx.response ?? response
    if (!Number.isInteger(now.status) || now.status < 200 || now.status > 599) {
      return gatewayError('GH_PLUGIN_INVALID_RESULT', `Plugin "${plugin.name}" returned an invalid result`, { reason: `${plugin.name}.onResponse set status ${String(now.status)}` })
    }
    status = now.status
    headers = []
    for (const [name, value] of Object.entries(now.headers)) {
      if (name === 'content-length' || name === 'transfer-encoding') continue
      headers.push(name, String(value))
    }
    if (now.rawBody !== body) body = now.rawBody
    else if (now.body !== undefined) body = Buffer.from(JSON.stringify(now.body))
    if (!Buffer.isBuffer(body)) return gatewayError('GH_PLUGIN_INVALID_RESULT', `Plugin "${plugin.name}" returned an invalid result`, { reason: `${plugin.name}.onResponse set rawBody to a ${typeof body}` })
  }
  const t = route.responseTransform
  if (t !== null) {
    if (t.headers !== null) t.headers.apply(headers)
    if (t.body !== null && status >= 200 && status < 300 && status !== 204 && ex.method !== 'HEAD') {
      if (encoding !== null && encoding !== 'identity') {
        return gatewayError('GH_TRANSFORM_FAILED', 'The upstream answered with a body this route cannot transform', { reason: `upstream content-encoding ${encoding}` })
      }
      const r = await t.transformBody(body, headerOf(headers, 'content-type'), status, ex)
      if (isGatewayError(r)) return r
      body = r
      dropHeaders(headers, isEntityField)
      headers.push('content-type', 'application/json')
    }
    status = t.mapStatus(status)
  }
  return { status, headers, body }
}

function isEntityField (lower: string): boolean {
  return lower === 'content-type' || lower === 'content-length' || lower === 'etag' || lower === 'content-md5' || lower === 'digest' || lower === 'content-digest'
}

/** A plugin's own response, as the client gets it. */
export function fromPluginResponse (ex: Exchange, r: PluginResponse): FinalResponse {
  const headers: string[] = []
  let type: string | null = null
  for (const [name, value] of Object.entries(r.headers ?? {})) {
    const lower = name.toLowerCase()
    if (lower === 'content-length' || lower === 'transfer-encoding' || lower === 'connection') continue
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

function headerOf (headers: string[], name: string): string | null {
  for (let i = 0; i < headers.length; i += 2) {
    if (headers[i]!.length === name.length && headers[i]!.toLowerCase() === name) return headers[i + 1]!
  }
  return null
}
