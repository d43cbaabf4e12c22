import type { TransformConfig } from '../../config/schema.js'
import { gatewayError, type GatewayError } from '../../errors/index.js'
import type { Identity } from '../../identity/types.js'
import { Expression, limitOf, type TransformLimitError } from './expression.js'
import { formToJson } from './form.js'
import { HeaderEdits } from './headers.js'
import { SseEventTransform } from './sse.js'

/** What a request transform reads besides the body. */
export interface RequestView {
  readonly method: string
  readonly path: string
  readonly query: string
  readonly identity: Identity | null
  header(name: string): string | null
  headerEntries(): Record<string, string>
}

/** A route's `transform.request`, compiled. Header, path and query edits never need the body. */
export class RequestTransform {
  readonly formToJson: boolean
  readonly body: Expression | null
  readonly headers: HeaderEdits | null
  readonly path: { readonly pattern: RegExp, readonly replace: string } | null
  readonly querySet: ReadonlyArray<readonly [string, string]> | null
  readonly queryRemove: readonly string[] | null
  /** The body must be read whole before the request goes upstream. */
  readonly needsBody: boolean
  /** Which bindings `body` reads (BIND_* bits). */
  readonly #reads: number

  constructor (cfg: NonNullable<TransformConfig['request']>) {
    this.formToJson = cfg.form_to_json
    this.body = cfg.body === undefined ? null : new Expression(cfg.body, cfg.timeout)
    this.headers = cfg.headers === undefined ? null : new HeaderEdits(cfg.headers)
    this.path = cfg.path === undefined
      ? null
      : { pattern: new RegExp(cfg.path.pattern), replace: cfg.path.replace }
    this.querySet = cfg.query?.set === undefined ? null : Object.entries(cfg.query.set)
    this.queryRemove = cfg.query?.remove ?? null
    this.needsBody = this.formToJson || this.body !== null
    this.#reads = this.body === null ? 0 : bindingsRead(this.body)
  }

  /** The upstream path after the rewrite (applied after strip_prefix). */
  rewritePath (path: string): string {
    return this.path === null ? path : path.replace(this.path.pattern, this.path.replace)
  }

  /** The query ('?…' or '') after the edits. */
  rewriteQuery (query: string): string {
    if (this.querySet === null && this.queryRemove === null) return query
    const params = new URLSearchParams(query)
    for (const name of this.queryRemove ?? []) params.delete(name)
    for (const [name, value] of this.querySet ?? []) params.set(name, value)
    const s = params.toString()
    return s === '' ? '' : '?' + s
  }

  /**
   * The body to send upstream, with its content type, or a 400 for a body this transform
   * cannot read (a malformed form, invalid JSON): nothing is forwarded then.
   */
  async transformBody (
    body: Buffer,
    contentType: string | null,
    view: RequestView,
  ): Promise<{ body: Buffer, contentType: string } | GatewayError> {
    let value: unknown
    const type = mediaType(contentType)
    if (this.formToJson && type === 'application/x-www-form-urlencoded') {
      const form = formToJson(body)
      if (form === null) {
        return gatewayError(
          'GH_INVALID_BODY',
          'The form body is malformed (a bad %-escape or an unescaped character)',
          { reason: 'malformed application/x-www-form-urlencoded body' },
        )
      }
      value = form
    } else if (this.formToJson && this.body === null) {
      // Only forms are converted; JSON (or anything else) passes as it came.
      return { body, contentType: contentType ?? 'application/octet-stream' }
    } else {
      if (!isJsonType(type)) {
        return gatewayError(
          'GH_INVALID_BODY',
          `This route transforms JSON request bodies; got ${
            type === '' ? 'no Content-Type' : `"${type}"`
          }`,
          { reason: `request content-type ${type || '(none)'}` },
        )
      }
      const parsed = parseJson(body)
      if (parsed instanceof Error) {
        return gatewayError(
          'GH_INVALID_BODY',
          `The request body is not valid JSON: ${parsed.message}`,
          { reason: 'invalid JSON request body' },
        )
      }
      value = parsed
    }
    if (this.body !== null) {
      try {
        value = await this.body.evaluate(value, bindingsFor(this.#reads, view, 0))
        return {
          body: Buffer.from(value === undefined ? '' : JSON.stringify(value)),
          contentType: 'application/json',
        }
      } catch (err) {
        const limit = limitOf(err)
        if (limit !== null) return limitError('request', limit)
        return gatewayError('GH_INVALID_BODY', 'The request body cannot be transformed', {
          reason: `request expression failed: ${(err as Error).message}`,
        })
      }
    }
    return { body: Buffer.from(JSON.stringify(value)), contentType: 'application/json' }
  }
}

/** A route's `transform.response`, compiled. */
/** The most of one server-sent event held while it is transformed (characters). */
const MAX_EVENT = 1024 * 1024

export class ResponseTransform {
  readonly body: Expression | null
  readonly events: Expression | null
  readonly headers: HeaderEdits | null
  /** Upstream status → client status, or null. */
  readonly status: ReadonlyMap<number, number> | null
  readonly maxBody: number
  readonly #reads: number

  constructor (cfg: NonNullable<TransformConfig['response']>) {
    this.body = cfg.body === undefined ? null : new Expression(cfg.body, cfg.timeout)
    this.events = cfg.events === undefined ? null : new Expression(cfg.events, cfg.timeout)
    this.headers = cfg.headers === undefined ? null : new HeaderEdits(cfg.headers)
    this.status = cfg.status === undefined
      ? null
      : new Map(Object.entries(cfg.status).map(([k, v]) => [Number(k), v]))
    this.maxBody = cfg.max_body
    this.#reads = this.body === null ? 0 : bindingsRead(this.body)
  }

  mapStatus (status: number): number {
    return this.status?.get(status) ?? status
  }

  /** The `events` expression over this request's server-sent events, or null without one. */
  eventStream (view: RequestView): SseEventTransform | null {
    return this.events === null
      ? null
      : new SseEventTransform(this.events, requestBindings(view), MAX_EVENT)
  }

  /**
   * Transform a whole upstream body. Only successful (2xx) JSON answers are transformed; the
   * caller passes others through. Non-JSON from the upstream is a 502: the client was
   * promised the transformed shape.
   */
  async transformBody (
    body: Buffer,
    contentType: string | null,
    status: number,
    view: RequestView,
  ): Promise<Buffer | GatewayError> {
    const type = mediaType(contentType)
    if (!isJsonType(type)) {
      return gatewayError(
        'GH_TRANSFORM_FAILED',
        'The upstream answered with a body this route cannot transform',
        { reason: `upstream content-type ${type || '(none)'}, expected JSON` },
      )
    }
    const parsed = parseJson(body)
    if (parsed instanceof Error) {
      return gatewayError('GH_TRANSFORM_FAILED', 'The upstream answered with invalid JSON', {
        reason: `upstream JSON: ${parsed.message}`,
      })
    }
    try {
      const value = await this.body!.evaluate(parsed, bindingsFor(this.#reads, view, status))
      return Buffer.from(value === undefined ? '' : JSON.stringify(value))
    } catch (err) {
      const limit = limitOf(err)
      if (limit !== null) return limitError('response', limit)
      return gatewayError('GH_TRANSFORM_FAILED', 'The upstream response cannot be transformed', {
        reason: `response expression failed: ${(err as Error).message}`,
      })
    }
  }
}

function limitError (side: 'request' | 'response', err: TransformLimitError): GatewayError {
  return gatewayError(
    'GH_TRANSFORM_LIMIT',
    `The ${side} body transform was stopped: ${err.message}`,
    { reason: `${side} expression stopped (${err.limit}): ${err.message}` },
  )
}

const NO_BINDINGS: Record<string, unknown> = Object.freeze({}) as Record<string, unknown>

const BIND_METHOD = 1
const BIND_PATH = 2
const BIND_QUERY = 4
const BIND_HEADERS = 8
const BIND_IDENTITY = 16
const BIND_STATUS = 32
const BIND_ALL = 63

/** The bindings an expression reads, as BIND_* bits (all of them when it uses $eval). */
function bindingsRead (expr: Expression): number {
  const reads = expr.reads
  if (reads === null) return BIND_ALL
  return (reads.has('method') ? BIND_METHOD : 0) | (reads.has('path') ? BIND_PATH : 0) |
    (reads.has('query') ? BIND_QUERY : 0) |
    (reads.has('headers') ? BIND_HEADERS : 0) | (reads.has('identity') ? BIND_IDENTITY : 0) |
    (reads.has('status') ? BIND_STATUS : 0)
}

/**
 * Only what the expression reads: most read none or one of these, and the headers and query
 * are objects built from the request for each evaluation. `status` 0: not a response.
 */
function bindingsFor (reads: number, view: RequestView, status: number): Record<string, unknown> {
  if (reads === 0) return NO_BINDINGS
  const out: Record<string, unknown> = {}
  if ((reads & BIND_METHOD) !== 0) out.method = view.method
  if ((reads & BIND_PATH) !== 0) out.path = view.path
  if ((reads & BIND_QUERY) !== 0) out.query = Object.fromEntries(new URLSearchParams(view.query))
  if ((reads & BIND_HEADERS) !== 0) out.headers = view.headerEntries()
  if ((reads & BIND_IDENTITY) !== 0) out.identity = identityBinding(view.identity)
  if (status !== 0 && (reads & BIND_STATUS) !== 0) out.status = status
  return out
}

export function requestBindings (view: RequestView): Record<string, unknown> {
  return {
    method: view.method,
    path: view.path,
    query: Object.fromEntries(new URLSearchParams(view.query)),
    headers: view.headerEntries(),
    identity: identityBinding(view.identity),
  }
}

function identityBinding (id: Identity | null): Record<string, unknown> | null {
  return id === null
    ? null
    : {
      provider: id.provider,
      subject: id.subject,
      client_id: id.clientId,
      scopes: [...id.scopes],
      claims: id.claims,
    }
}

/** "application/json; charset=utf-8" → "application/json". */
export function mediaType (contentType: string | null): string {
  if (contentType === null) return ''
  const semi = contentType.indexOf(';')
  return (semi === -1 ? contentType : contentType.slice(0, semi)).trim().toLowerCase()
}

export function isJsonType (type: string): boolean {
  return type === 'application/json' || (type.startsWith('application/') && type.endsWith('+json'))
}

function parseJson (body: Buffer): unknown {
  try {
    return JSON.parse(body.toString('utf8'))
  } catch (err) {
    return err as Error
  }
}
