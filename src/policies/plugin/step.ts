import { isGatewayError } from '../../errors/index.js'
import { isGatewayOwned } from '../../net/owned-headers.js'
import { setBody, setBodyType } from '../../pipeline/body.js'
import type { Exchange } from '../../pipeline/exchange.js'
import { fromPluginResponse, sendWhole } from '../../pipeline/respond.js'
import { HANDLED, type Step, type Verdict } from '../../pipeline/step.js'
import type { PluginContext, PluginResponse } from '../../plugins/api.js'
import { runHook, type PluginRef } from '../../plugins/loader.js'
import { isJsonType, mediaType } from '../transform/policy.js'

/**
 * A route's TypeScript plugin, request side: its context is made for every request (onResponse
 * reads it too), and onRequest, when the plugin has one, may change what goes upstream or
 * answer itself.
 */
export class PluginStep implements Step {
  readonly name = 'plugin'
  readonly ref: PluginRef

  constructor (ref: PluginRef) {
    this.ref = ref
  }

  async run (ex: Exchange): Promise<Verdict> {
    const ref = this.ref
    const plugin = ref.plugin
    let body = ex.bodyBuffer!
    let contentType = ex.bodyType
    const abort = new AbortController()
    ex.pluginAbort = abort
    const ctx = pluginContext(ex, ref, body, contentType, abort.signal)
    ex.pluginCtx = ctx
    if (plugin.onRequest === undefined) return null
    const original = ctx.request.body
    const typeBefore = contentType
    let changedType = false
    const r = await runHook(
      plugin.name,
      'onRequest',
      () => plugin.onRequest!(ctx),
      ref.timeout,
      abort,
    )
    if (r !== null) {
      if (isGatewayError(r)) return r
      sendWhole(ex, fromPluginResponse(ex, r))
      return HANDLED
    }
    const req = ctx.request
    ex.upstreamMethod = req.method
    ex.upstreamPathOverride = req.path
    const q = req.query.toString()
    ex.query = q === '' ? '' : '?' + q
    if (req.rawBody !== body) {
      body = req.rawBody
    } else if (
      req.body !== undefined && (req.body !== original || isJsonType(mediaType(contentType)))
    ) {
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
    setBody(ex, body)
    if (changedType) setBodyType(ex, contentType)
    return null
  }
}

function pluginContext (
  ex: Exchange,
  ref: PluginRef,
  body: Buffer,
  contentType: string | null,
  signal: AbortSignal,
): PluginContext {
  const route = ex.route!
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
      path: ex.upstreamPath(),
      query: new URLSearchParams(ex.query),
      headers,
      body: parsed,
      rawBody: body,
    },
    response: null,
    state: {},
    signal,
    log: ex.rt.logger.child({ plugin: ref.plugin.name, id: ex.requestId }),
    respond: (status: number, b?: unknown, h?: Record<string, string>): PluginResponse => ({
      status,
      body: b,
      ...(h === undefined ? {} : { headers: h }),
    }),
  }
}
