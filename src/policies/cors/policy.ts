import type { CorsConfig } from '../../config/schema.js'
import { gatewayError, type GatewayError } from '../../errors/index.js'
import { singleHeaderOf } from '../../net/fields.js'
import type { Exchange } from '../../pipeline/exchange.js'
import { HANDLED, type Step, type Verdict } from '../../pipeline/step.js'

/** Methods a route without match.methods lets browsers ask for. */
const DEFAULT_METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE']

/** Every answer on a CORS route depends on Origin: a shared cache must key on it. */
const VARY_ORIGIN: readonly string[] = Object.freeze(['vary', 'Origin'])

/**
 * For a request from an origin not allowed (or none): the upstream's own CORS fields are
 * removed (the route's policy decides, not an upstream's `*`), and Vary: Origin added.
 */
const NOT_ALLOWED: readonly string[] = Object.freeze([
  'access-control-allow-origin',
  '',
  'access-control-allow-credentials',
  '',
  'access-control-expose-headers',
  '',
  ...VARY_ORIGIN,
])

/**
 * A route's `cors` block (Fetch §3.2): preflights (OPTIONS with Origin and
 * Access-Control-Request-Method) are answered here without reaching the upstream or the
 * route's credential checks (browsers send none on a preflight); other requests from an
 * allowed origin go on, and whatever answers them (the upstream, the cache, a refusal) is
 * marked with Access-Control-Allow-Origin for that origin. Origins are matched exactly,
 * never reflected: an origin not listed gets no CORS fields at all, so the browser keeps
 * the answer from the page.
 */
export class CorsPolicy implements Step {
  readonly name = 'cors'
  readonly #any: boolean
  /** Per allowed origin (lower-case), the fields added to its answers: built once. */
  readonly #fields = new Map<string, readonly string[]>()
  readonly #anyFields: readonly string[]
  readonly #methods: ReadonlySet<string>
  readonly #methodList: string
  readonly #headers: ReadonlySet<string>
  readonly #anyHeader: boolean
  readonly #headerList: string
  readonly #credentials: boolean
  readonly #maxAge: string
  /** The route lists its methods without OPTIONS: an OPTIONS that is no preflight is refused. */
  readonly #optionsRouted: boolean

  constructor (cfg: CorsConfig, routeMethods: readonly string[] | undefined) {
    this.#any = cfg.origins.includes('*')
    this.#credentials = cfg.credentials
    const common: string[] = []
    if (cfg.credentials) common.push('access-control-allow-credentials', 'true')
    if (cfg.expose_headers.length > 0) {
      common.push('access-control-expose-headers', cfg.expose_headers.join(', '))
    }
    common.push(...VARY_ORIGIN)
    for (const origin of cfg.origins) {
      if (origin !== '*') {
        this.#fields.set(origin, Object.freeze(['access-control-allow-origin', origin, ...common]))
      }
    }
    this.#anyFields = Object.freeze(['access-control-allow-origin', '*', ...common])
    const methods = cfg.methods ?? routeMethods ?? DEFAULT_METHODS
    this.#methods = new Set(methods)
    this.#methodList = [...this.#methods].join(', ')
    this.#anyHeader = cfg.headers.includes('*')
    this.#headers = new Set(cfg.headers)
    this.#headerList = cfg.headers.filter((h) => h !== '*').join(', ')
    this.#maxAge = String(Math.floor(cfg.max_age / 1000))
    this.#optionsRouted = routeMethods === undefined || routeMethods.includes('OPTIONS')
  }

  run (ex: Exchange): Verdict {
    const origin = this.#origin(ex)
    const preflight = ex.method === 'OPTIONS' && ex.header('access-control-request-method') !== null
    if (preflight) return this.#preflight(ex, origin)
    if (!this.#optionsRouted && ex.method === 'OPTIONS') {
      // The route answers OPTIONS only for preflights (compile adds it to the route's methods).
      return gatewayError(
        'GH_METHOD_NOT_ALLOWED',
        'This route does not accept OPTIONS except as a CORS preflight',
        { headers: { allow: this.#methodList } },
      )
    }
    ex.responseFields = origin === null ? NOT_ALLOWED : this.#fieldsFor(origin) ?? NOT_ALLOWED
    return null
  }

  /** The request's one Origin, lower-cased (browsers send it so); null when absent or repeated. */
  #origin (ex: Exchange): string | null {
    const origin = singleHeaderOf(ex.req.rawHeaders, 'origin')
    return origin === null ? null : origin.toLowerCase()
  }

  #fieldsFor (origin: string): readonly string[] | undefined {
    // "null" is what sandboxed and file: documents send: never matched by "*".
    return this.#fields.get(origin) ??
      (this.#any && origin !== 'null' ? this.#anyFields : undefined)
  }

  #preflight (ex: Exchange, origin: string | null): Verdict {
    const fields = origin === null ? undefined : this.#fieldsFor(origin)
    if (fields === undefined) {
      return rejected(
        origin === null
          ? 'A CORS preflight needs exactly one Origin header'
          : `Origin ${origin} is not allowed to call this route`,
      )
    }
    const method = ex.header('access-control-request-method')!.trim()
    if (!this.#methods.has(method)) {
      return rejected(
        `Method ${method} is not allowed cross-origin on this route (allowed: ${this.#methodList})`,
      )
    }
    const asked = ex.headerValues('access-control-request-headers').join(',').split(',').map((h) =>
      h.trim().toLowerCase()
    ).filter((h) => h !== '')
    if (!this.#anyHeader) {
      for (const h of asked) {
        if (!this.#headers.has(h)) {
          return rejected(
            `Header ${h} is not allowed cross-origin on this route (allowed: ${
              this.#headerList === '' ? 'none' : this.#headerList
            })`,
          )
        }
      }
    }
    const headers: string[] = [
      ...fields,
      'vary',
      'Access-Control-Request-Method, Access-Control-Request-Headers',
      'access-control-allow-methods',
      this.#methodList,
      'access-control-max-age',
      this.#maxAge,
      'cache-control',
      'no-store',
      'x-request-id',
      ex.requestId,
    ]
    // With credentials "*" is read literally by browsers (Fetch §3.2.5): name what was asked.
    const allowHeaders = this.#anyHeader
      ? (this.#credentials ? [...new Set(asked)].join(', ') : '*')
      : this.#headerList
    if (allowHeaders !== '') headers.push('access-control-allow-headers', allowHeaders)
    ex.status = 204
    ex.res.writeHead(204, headers as unknown as string[])
    ex.res.end()
    return HANDLED
  }
}

function rejected (detail: string): GatewayError {
  return gatewayError('GH_CORS_REJECTED', detail, { headers: { vary: 'Origin' } })
}
