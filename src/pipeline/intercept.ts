import { gatewayError, isGatewayError, type GatewayError } from '../errors/index.js'
import type { RouteExchange } from '../compile/table.js'
import { runHook } from '../plugins/loader.js'
import { isJsonType, mediaType } from '../policies/transform/policy.js'
import { CostTap } from '../policies/limits/policy.js'
import { dropHeaders, headerOf } from '../net/fields.js'
import { fromPluginResponse, sendWhole, type FinalResponse } from './respond.js'
import { internalError, refuse } from './run.js'
import { isEventStream, type Exchange, type ResponseHandler } from './exchange.js'
import { PassThrough } from './response.js'

/*
 * The intercepted side of a route: what runs only on routes that read a body whole (webhook
 * signatures, body transforms, plugins, async delivery). Every other route streams and never
 * reaches this module.
 */

/**
 * The upstream answered whole (ex.captured): the plugin's onResponse, then the response
 * transform. Returns what to send, or an error (502) to answer instead.
 */
export async function interceptResponse (ex: RouteExchange): Promise<FinalResponse | GatewayError> {
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
      record[name] = record[name] === undefined
        ? headers[i + 1]!
        : `${record[name]}, ${headers[i + 1]!}`
    }
    let parsed: unknown
    if (
      (encoding === null || encoding === 'identity') &&
      isJsonType(mediaType(record['content-type'] ?? null)) && body.length > 0
    ) {
      try {
        parsed = JSON.parse(body.toString('utf8'))
      } catch {}
    }
    const response = { status, headers: record, body: parsed, rawBody: body }
    ctx.response = response
    const plugin = ref.plugin
    const r = await runHook(
      plugin.name,
      'onResponse',
      () => plugin.onResponse!(ctx),
      ref.timeout,
      ex.pluginAbort!,
    )
    if (isGatewayError(r)) return r
    if (r !== null) return fromPluginResponse(ex, r)
    const now = ctx.response ?? response
    if (!Number.isInteger(now.status) || now.status < 200 || now.status > 599) {
      return gatewayError(
        'GH_PLUGIN_INVALID_RESULT',
        `Plugin "${plugin.name}" returned an invalid result`,
        { reason: `${plugin.name}.onResponse set status ${String(now.status)}` },
      )
    }
    status = now.status
    headers = []
    for (const [name, value] of Object.entries(now.headers)) {
      if (name === 'content-length' || name === 'transfer-encoding') continue
      headers.push(name, String(value))
    }
    if (now.rawBody !== body) body = now.rawBody
    else if (now.body !== undefined) body = Buffer.from(JSON.stringify(now.body))
    if (!Buffer.isBuffer(body)) {
      return gatewayError(
        'GH_PLUGIN_INVALID_RESULT',
        `Plugin "${plugin.name}" returned an invalid result`,
        { reason: `${plugin.name}.onResponse set rawBody to a ${typeof body}` },
      )
    }
  }
  const t = route.responseTransform
  if (t !== null) {
    if (t.headers !== null) t.headers.apply(headers)
    if (
      t.body !== null && status >= 200 && status < 300 && status !== 204 && ex.method !== 'HEAD'
    ) {
      if (encoding !== null && encoding !== 'identity') {
        return gatewayError(
          'GH_TRANSFORM_FAILED',
          'The upstream answered with a body this route cannot transform',
          { reason: `upstream content-encoding ${encoding}` },
        )
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
  return lower === 'content-type' || lower === 'content-length' || lower === 'etag' ||
    lower === 'content-md5' || lower === 'digest' || lower === 'content-digest'
}

/** The upstream's answer was read whole (ex.captured): its plugin and transform, then the answer. */
export function finishCaptured (ex: RouteExchange): void {
  interceptResponse(ex).then((r) => {
    if (ex.finished) return
    if (isGatewayError(r)) {
      ex.rt.logger.warn({
        msg: 'response interception failed',
        id: ex.requestId,
        code: r.code,
        reason: r.reason,
      })
      return refuse(ex, r)
    }
    sendWhole(ex, r)
  }).catch((err: unknown) => internalError(ex, err))
}

/**
 * The capture wrapper, outermost on routes that read the upstream's answer whole (a response
 * body transform, a plugin's onResponse): the answer is kept, up to the route's cap, and
 * handed to finishCaptured once complete. Answers without a body and event streams pass
 * through (they are transformed event by event, if at all).
 */
export function captureResponse (ex: Exchange, next: ResponseHandler): ResponseHandler {
  return ex.captureLimit > 0 ? new Capture(ex, next) : next
}

class Capture extends PassThrough {
  readonly #ex: Exchange

  constructor (ex: Exchange, next: ResponseHandler) {
    super(next)
    this.#ex = ex
  }

  override onHead (status: number, headers: string[], bodiless: boolean): void {
    const ex = this.#ex
    if (bodiless || isEventStream(headers)) return this.next.onHead(status, headers, bodiless)
    ex.captured = { status, headers, chunks: [], bytes: 0, cap: ex.captureLimit }
  }

  override onBody (chunk: Buffer): boolean {
    const ex = this.#ex
    const captured = ex.captured
    if (captured === null) return this.next.onBody(chunk)
    captured.bytes += chunk.length
    if (captured.bytes > captured.cap) {
      ex.abortUpstream?.(
        gatewayError(
          'GH_RESPONSE_TOO_LARGE',
          'The upstream response is larger than this route reads whole',
          { reason: `response body over ${captured.cap} bytes` },
        ),
      )
      return false
    }
    captured.chunks.push(chunk)
    return true
  }

  override onEnd (trailers: Buffer[] | null): void {
    if (this.#ex.captured === null) return this.next.onEnd(trailers)
    this.#ex.rt.finishCaptured(this.#ex)
  }
}
