import { hash } from 'node:crypto'
import type { RouteConfig } from '../../config/schema.js'
import { gatewayError, type GatewayError } from '../../errors/index.js'
import { INVALID_DETAIL } from '../../identity/common.js'
import type { PhantomSigner } from '../../identity/phantom.js'
import type { IdentitySet } from '../../identity/registry.js'
import type { Exchange } from '../../pipeline/exchange.js'
import type { Step } from '../../pipeline/step.js'
import {
  isIdentity,
  type AuthResult,
  type Identity,
  type IdentityProvider,
} from '../../identity/types.js'

/** What the policy reads from a request: filled in by the header scan. */
export interface CredentialCarrier {
  /** The first Authorization value, and how many there were. */
  authorization: string | null
  authorizationCount: number
  /** Credential headers the table knows (API-key headers), flat [lower-case name, value, …]. */
  credHeaders: string[] | null
  identity: Identity | null
  /** The gateway's own token to forward (phantom tokens), once signed. */
  phantomToken: string | null
  /** The whole request body, when the route read it (signatures are over the raw bytes). */
  bodyBuffer: Buffer | null
  /** Every value of a request header (lower-case name), for webhook signatures. */
  headerValues(name: string): string[]
}

/** What a webhook provider adds to IdentityProvider (see webhook.ts). */
interface SignatureVerifier {
  verify(header: (lowerName: string) => readonly string[], body: Buffer, now: number): AuthResult
}

const EMPTY = Buffer.alloc(0)

type Outcome = GatewayError | null

/** RFC 6750 §2.1: b64token after "Bearer" and one or more spaces. */
const BEARER = /^Bearer +([A-Za-z0-9\-._~+/]+=*) *$/i
const B64TOKEN = /^[A-Za-z0-9\-._~+/]+=*$/

interface ClaimRule {
  readonly name: string
  readonly path: readonly string[]
  readonly test: (v: unknown) => boolean
}

/**
 * A route's `auth` block, compiled: which providers to ask (in order), what the identity must
 * hold, and the challenges to answer with. `check` is synchronous when the credential is in a
 * provider's cache (the common case) and returns a Promise only when a provider must do I/O or
 * a signature check.
 */
export class AuthPolicy implements Step {
  readonly name = 'auth'
  readonly providers: readonly IdentityProvider[]
  readonly hasBearer: boolean
  /** A provider checks a signature over the body: the body must be read before `check`. */
  readonly needsBody: boolean
  /** Header names that carry this route's credentials (Authorization, API-key headers). */
  readonly credentialNames: readonly string[]
  readonly stripCredentials: boolean
  readonly phantom: PhantomSigner | null
  readonly scopesAll: readonly string[] | null
  readonly scopesAny: readonly string[] | null
  readonly claims: readonly ClaimRule[] | null
  readonly #realm: string
  readonly #missing: GatewayError
  readonly #scopeHint: string
  /** Challenge scheme by provider name: Bearer for bearer credentials, ApiKey for headers. */
  readonly #schemes = new Map<string, string>()

  constructor (auth: NonNullable<RouteConfig['auth']>, identity: IdentitySet) {
    this.providers = auth.any_of.map((n) => identity.providers.get(n)!)
    this.hasBearer = this.providers.some((p) => p.source.kind === 'bearer')
    this.needsBody = this.providers.some((p) => p.source.kind === 'signature')
    const headers = [
      ...new Set(this.providers.flatMap((p) => p.source.kind === 'header' ? [p.source.name] : [])),
    ]
    const signatures = [
      ...new Set(
        this.providers.flatMap((p) => p.source.kind === 'signature' ? [p.source.name] : []),
      ),
    ]
    this.credentialNames = [...(this.hasBearer ? ['authorization'] : []), ...headers, ...signatures]
    this.stripCredentials = auth.strip_credentials
    this.phantom = auth.phantom_token ? identity.phantom : null
    this.scopesAll = auth.scopes?.all ?? null
    this.scopesAny = auth.scopes?.any ?? null
    this.claims = auth.claims === undefined
      ? null
      : Object.entries(auth.claims).map(([name, m]) => ({
        name,
        path: name.split('.'),
        test: claimTest(m),
      }))
    this.#realm = identity.realm
    for (const p of this.providers) {
      this.#schemes.set(
        p.name,
        p.source.kind === 'bearer'
          ? 'Bearer'
          : p.source.kind === 'signature'
          ? 'Signature'
          : 'ApiKey',
      )
    }
    const challenges: string[] = []
    if (this.hasBearer) challenges.push(`Bearer realm="${this.#realm}"`)
    for (const h of headers) challenges.push(`ApiKey realm="${this.#realm}", header="${h}"`)
    for (const h of signatures) challenges.push(`Signature realm="${this.#realm}", headers="${h}"`)
    this.#missing = gatewayError('GH_AUTH_REQUIRED', 'This route requires credentials', {
      reason: 'no credentials',
      headers: { 'www-authenticate': challenges.join(', ') },
    })
    this.#scopeHint = [...(this.scopesAll ?? []), ...(this.scopesAny ?? [])].join(' ')
  }

  run (ex: Exchange): Outcome | Promise<Outcome> {
    return this.check(ex, Date.now())
  }

  /** Authenticate and authorize; sets `ex.identity` (and `ex.phantomToken`) on success. */
  check (ex: CredentialCarrier, now: number): Outcome | Promise<Outcome> {
    const providers = this.providers
    const creds: Array<string | null> = new Array(providers.length)
    const digests: string[] = new Array(providers.length)
    let any = false
    let bearer: string | null | undefined
    let bearerDigest = ''
    let signatureFailure: GatewayError | null = null
    let others = false
    for (let i = 0; i < providers.length; i++) {
      const p = providers[i]!
      let cred: string | null
      let digest: string
      if (p.source.kind === 'signature') {
        // Webhook signatures: checked here, synchronously (one HMAC per secret), over the
        // body the gateway read before asking. Never cached: every delivery is signed anew.
        creds[i] = null
        digests[i] = ''
        if (ex.headerValues(p.source.name).length === 0) continue
        any = true
        const r = (p as unknown as SignatureVerifier).verify(
          (n) => ex.headerValues(n),
          ex.bodyBuffer ?? EMPTY,
          now,
        )
        if (isIdentity(r)) return this.#admit(ex, r, now)
        // The provider is built without the identity realm (and is kept across reloads that may
        // change it), so the challenge is the policy's, like every other challenge it sends.
        signatureFailure ??= gatewayError(r.code, r.detail, {
          ...(r.reason === null ? {} : { reason: r.reason }),
          headers: {
            ...r.headers,
            'www-authenticate': `Signature realm="${this.#realm}", headers="${p.source.name}"`,
          },
        })
        continue
      }
      if (p.source.kind === 'bearer') {
        if (bearer === undefined) {
          const parsed = this.#bearer(ex)
          if (parsed !== null && typeof parsed !== 'string') return parsed
          bearer = parsed
          if (bearer !== null) bearerDigest = hash('sha256', bearer, 'base64')
        }
        cred = bearer
        digest = bearerDigest
      } else {
        const found = headerCredential(ex, p.source.name)
        if (found === -1) {
          return this.#invalidRequest(`more than one ${p.source.name} header`, 'ApiKey')
        }
        cred = found
        digest = cred === null ? '' : hash('sha256', cred, 'base64')
      }
      creds[i] = cred
      digests[i] = digest
      if (cred === null) continue
      any = true
      others = true
      const hit = p.cached(digest, now)
      if (hit !== null) return this.#admit(ex, hit, now)
    }
    if (!any) return this.#missing
    if (!others) return signatureFailure!
    if (bearer !== null && bearer !== undefined && !B64TOKEN.test(bearer)) {
      return this.#invalidRequest('malformed Bearer credentials', 'Bearer')
    }
    return this.#ask(ex, creds, digests, 0, null, null, false, now)
  }

  /**
   * The bearer token, null when there is none, or the 400 for a malformed Authorization.
   * Only the scheme is checked here; the token's syntax is checked on a cache miss (#ask), so
   * a token seen before costs a prefix compare and a hash.
   */
  #bearer (ex: CredentialCarrier): string | null | GatewayError {
    const v = ex.authorization
    if (v === null) return null
    if (ex.authorizationCount > 1) {
      return this.#invalidRequest('more than one Authorization header', 'Bearer')
    }
    // Another scheme (Basic, ...) is not a bearer credential: the request has none for us.
    if (
      v.length < 6 || (v.charCodeAt(0) | 0x20) !== 0x62 || v.slice(0, 6).toLowerCase() !== 'bearer'
    ) return null
    if (v.length > 6 && v.charCodeAt(6) !== 32) return null // "Bearerish": another scheme
    if (v.length > 7 && v.charCodeAt(6) === 32 && v.charCodeAt(7) !== 32) return v.slice(7)
    const m = BEARER.exec(v)
    if (m === null) return this.#invalidRequest('malformed Bearer credentials', 'Bearer')
    return m[1]!
  }

  /**
   * Ask each provider that takes its credential, in order, until one vouches. Runs
   * synchronously until a provider answers with a Promise, then continues from there.
   */
  #ask (
    ex: CredentialCarrier,
    creds: Array<string | null>,
    digests: string[],
    from: number,
    failure: { err: GatewayError, provider: IdentityProvider } | null,
    outage: GatewayError | null,
    taken: boolean,
    now: number,
  ): Outcome | Promise<Outcome> {
    const providers = this.providers
    for (let i = from; i < providers.length; i++) {
      const cred = creds[i]
      if (cred === null || cred === undefined) continue
      const p = providers[i]!
      if (!p.takes(cred)) continue
      const r = p.authenticate(cred, digests[i]!, now)
      const next = (res: AuthResult): Outcome | Promise<Outcome> => {
        if (isIdentity(res)) return this.#admit(ex, res, now)
        // Any provider that could not decide makes the answer 503: it might have said yes.
        if (res.code === 'GH_AUTH_UNAVAILABLE') {
          return this.#ask(ex, creds, digests, i + 1, failure, outage ?? res, true, now)
        }
        return this.#ask(
          ex,
          creds,
          digests,
          i + 1,
          failure ?? { err: res, provider: p },
          outage,
          true,
          now,
        )
      }
      if (r instanceof Promise) return r.then(next)
      return next(r)
    }
    if (outage !== null) return outage
    if (failure === null) {
      // A credential no provider takes (a JWT from an issuer this route does not trust).
      return this.#invalid(
        taken ? 'credential refused' : 'no provider on this route takes this credential',
        this.hasBearer && creds.some((c, i) => c !== null && providers[i]!.source.kind === 'bearer')
          ? 'Bearer'
          : 'ApiKey',
      )
    }
    return this.#invalid(
      failure.err.reason ?? failure.err.detail,
      failure.provider.source.kind === 'bearer' ? 'Bearer' : 'ApiKey',
      failure.err.detail === INVALID_DETAIL ? null : failure.err.detail,
    )
  }

  /** Authorization proper: scopes, then claims. Then the phantom token, if the route wants one. */
  #admit (ex: CredentialCarrier, identity: Identity, now: number): Outcome | Promise<Outcome> {
    const scheme = this.#schemes.get(identity.provider) ?? 'Bearer'
    if (this.scopesAll !== null) {
      for (const s of this.scopesAll) {
        if (!identity.scopes.has(s)) {
          return this.#insufficientScope(identity, `missing scope "${s}"`, scheme)
        }
      }
    }
    if (this.scopesAny !== null && !this.scopesAny.some((s) => identity.scopes.has(s))) {
      return this.#insufficientScope(
        identity,
        `none of the scopes ${this.scopesAny.join(', ')}`,
        scheme,
      )
    }
    if (this.claims !== null) {
      for (const rule of this.claims) {
        const value = claimAt(identity.claims, rule.path)
        const ok = Array.isArray(value) ? value.some(rule.test) : rule.test(value)
        if (!ok) {
          return gatewayError('GH_FORBIDDEN', 'The credentials do not grant access to this route', {
            reason: `${identity.provider}: claim "${rule.name}" (${
              JSON.stringify(value) ?? 'absent'
            }) does not match (subject ${identity.subject ?? '-'})`,
            headers: {
              'www-authenticate': `${scheme} realm="${this.#realm}", error="insufficient_scope"`,
            },
          })
        }
      }
    }
    ex.identity = identity
    const phantom = this.phantom
    if (phantom !== null) {
      const token = phantom.cached(identity, now)
      if (token !== null) {
        ex.phantomToken = token
      } else {
        return phantom.sign(identity, now).then((t) => {
          ex.phantomToken = t
          return null
        })
      }
    }
    return null
  }

  #insufficientScope (identity: Identity, reason: string, scheme: string): GatewayError {
    return gatewayError(
      'GH_INSUFFICIENT_SCOPE',
      'The credentials lack a scope this route requires',
      {
        reason: `${identity.provider}: ${reason} (subject ${identity.subject ?? '-'})`,
        headers: {
          'www-authenticate':
            `${scheme} realm="${this.#realm}", error="insufficient_scope", scope="${this.#scopeHint}"`,
        },
      },
    )
  }

  /** `description`: what the provider chose to tell the caller (see INVALID_DETAIL), or null. */
  #invalid (reason: string, scheme: string, description: string | null = null): GatewayError {
    const error = scheme === 'Bearer' ? 'invalid_token' : 'invalid_key'
    // RFC 6750 §3: error_description is a quoted-string of printable ASCII without " or \.
    const told = description === null ? '' : `, error_description="${description}"`
    return gatewayError('GH_INVALID_CREDENTIALS', description ?? INVALID_DETAIL, {
      reason,
      headers: {
        'www-authenticate': `${scheme} realm="${this.#realm}", error="${error}"${told}`,
      },
    })
  }

  #invalidRequest (reason: string, scheme: string): GatewayError {
    return gatewayError(
      'GH_INVALID_AUTH_REQUEST',
      'The request carries malformed or repeated credentials',
      {
        reason,
        headers: {
          'www-authenticate': `${scheme} realm="${this.#realm}", error="invalid_request"`,
        },
      },
    )
  }
}

/** The header's value, null when absent, -1 when repeated (ambiguous: refused). */
function headerCredential (ex: CredentialCarrier, name: string): string | null | -1 {
  const list = ex.credHeaders
  if (list === null) return null
  let found: string | null = null
  for (let i = 0; i < list.length; i += 2) {
    if (list[i] !== name) continue
    if (found !== null) return -1
    found = list[i + 1]!
  }
  return found
}

/**
 * A claim by name: the whole name first (namespaced claims such as
 * "https://example.com/org" contain dots), then as a dotted path into nested objects.
 */
export function claimAt (claims: unknown, path: readonly string[]): unknown {
  if (path.length > 1 && claims !== null && typeof claims === 'object') {
    const whole = path.join('.')
    if (Object.hasOwn(claims, whole)) return (claims as Record<string, unknown>)[whole]
  }
  let v: unknown = claims
  for (const k of path) {
    if (v === null || typeof v !== 'object' || !Object.hasOwn(v, k)) return undefined
    v = (v as Record<string, unknown>)[k]
  }
  return v
}

type Scalar = string | number | boolean
type Matcher = Scalar | Scalar[] | { pattern: string }

function claimTest (m: Matcher): (v: unknown) => boolean {
  if (Array.isArray(m)) {
    const set = new Set<unknown>(m)
    return (v) => set.has(v)
  }
  if (typeof m === 'object') {
    const re = new RegExp(m.pattern)
    return (v) => typeof v === 'string' && re.test(v)
  }
  return (v) => v === m
}

/** Identity headers a route sets, compiled to (header, value getter) pairs; see headerValue. */
export type IdentityHeader = readonly [string, (id: Identity) => unknown]

export function compileIdentityHeaders (cfg: RouteConfig['identity_headers']): IdentityHeader[] {
  // Scopes go as their Set: headerValue writes a Set space-separated, as OAuth's `scope` is.
  const out: IdentityHeader[] = [
    ['x-gatehouse-provider', (id) => id.provider],
    ['x-gatehouse-subject', (id) => id.subject],
    ['x-gatehouse-client-id', (id) => id.clientId],
    ['x-gatehouse-scopes', (id) => id.scopes],
  ]
  if (cfg === undefined) return out
  if (cfg.subject !== undefined) out.push([cfg.subject, (id) => id.subject])
  if (cfg.client_id !== undefined) out.push([cfg.client_id, (id) => id.clientId])
  if (cfg.scopes !== undefined) out.push([cfg.scopes, (id) => id.scopes])
  if (cfg.provider !== undefined) out.push([cfg.provider, (id) => id.provider])
  for (const [claim, header] of Object.entries(cfg.claims)) {
    const path = claim.split('.')
    out.push([header, (id) => claimAt(id.claims, path)])
  }
  return out
}

/** Printable ASCII but space, `%` and `,`: the bytes an item keeps as they are. */
const PLAIN = /^[\x21-\x24\x26-\x2b\x2d-\x7e]*$/
const HEX = Array.from(
  { length: 256 },
  (_, b) => '%' + b.toString(16).toUpperCase().padStart(2, '0'),
)

/**
 * A claim as a header value that upstreams can decode exactly: a string is one item, a list its
 * items joined with `,`, a Set (the scopes) its items joined with ` `; numbers and booleans as
 * text, objects (and non-strings in a list) as their JSON, each an item too. In an item, every
 * UTF-8 byte outside printable ASCII, the space, `%` and `,` are percent-encoded, so:
 * - `%` always means an escape: `josé` is `jos%C3%A9` and `jos%C3%A9` is `jos%25C3%25A9`;
 * - a raw `,` only ever separates items: `"dev,admin"` is `dev%2Cadmin`, `["dev","admin"]`
 *   `dev,admin` (HTTP also reads a raw comma as a list separator, RFC 9110 §5.3);
 * - no item starts or ends with whitespace, which HTTP would trim;
 * - no claim can add a header or break the message framing.
 * null, undefined, `""`, `[]` and an empty Set: no header.
 */
export function headerValue (v: unknown): string | null {
  if (v === null || v === undefined) return null
  if (typeof v === 'string') return v === '' ? null : headerItem(v)
  if (typeof v === 'number' || typeof v === 'boolean') return String(v)
  if (v instanceof Set) return joinItems(v, ' ')
  if (Array.isArray(v)) return joinItems(v, ',')
  return headerItem(JSON.stringify(v))
}

function joinItems (items: Iterable<unknown>, sep: string): string | null {
  let out: string | null = null
  for (const x of items) {
    const item = headerItem(typeof x === 'string' ? x : JSON.stringify(x) ?? 'null')
    out = out === null ? item : out + sep + item
  }
  return out === '' ? null : out
}

/** One item, escaped (see headerValue). The common case, plain ASCII, costs one regex test. */
export function headerItem (s: string): string {
  if (PLAIN.test(s)) return s
  // Buffer.from, not encodeURIComponent: a lone surrogate in a claim must not throw.
  const bytes = Buffer.from(s, 'utf8')
  let out = ''
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i]!
    out += b > 0x20 && b < 0x7f && b !== 0x25 && b !== 0x2c ? String.fromCharCode(b) : HEX[b]!
  }
  return out
}
