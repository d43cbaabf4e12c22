import { createPrivateKey, type KeyObject } from 'node:crypto'
import { safeParse, ZodArray, ZodDiscriminatedUnion, ZodObject, ZodRecord, type core } from 'zod'
import { cidrProblem } from '../net/cidr.js'
import { isGatewayOwned } from '../net/owned-headers.js'
import type { PathKey } from './refs.js'
import { ConfigSchema, type Config, type PhantomTokenConfig, type RouteConfig } from './schema.js'
import { didYouMean } from './suggest.js'
import { bare, isMapping, optionFor } from './walk.js'

/** A problem at a config path, given as keys so that validateConfig can find its YAML node. */
export interface CheckIssue {
  readonly path: readonly PathKey[]
  readonly message: string
}

/**
 * A check that config/ cannot make itself, because what it knows belongs to a later layer:
 * whether a transform's JSONata expression compiles is for transform/ to say. validateConfig
 * runs it (its `checks` option) beside the cross-checks, on the same Parts, and locates and
 * redacts its issues like every other.
 */
export type ConfigCheck = (config: Parts<Config>) => readonly CheckIssue[]

/** Where the config gave a value that the schema refused: present, but not to be read. */
export const INVALID: unique symbol = Symbol('invalid config value')
export type Invalid = typeof INVALID

/**
 * A config as the cross-checks read it. When the schema accepted the input, that is the
 * validated Config. When it refused something, the cross-checks still run, so that one run
 * lists (nearly) every problem: on the input as far as the schema accepts it (see salvage), where
 * a refused value is INVALID rather than absent, so that a rate given wrongly is still a rate
 * given ("give either rate or quota" must not follow "invalid rate").
 */
export type Parts<T> = T extends readonly (infer E)[] ? ReadonlyArray<Parts<E>> | Invalid :
  T extends object ? { readonly [K in keyof T]?: Parts<T[K]> } | Invalid :
  T | Invalid

/** The value to read: undefined when it is absent or the schema refused it. */
export function got<T> (value: T | Invalid | undefined): T | undefined {
  return value === INVALID ? undefined : value
}

/** The parts of an input the schema refused (references already resolved); see Parts. */
export function partsOf (input: unknown): Parts<Config> {
  // salvage() follows ConfigSchema, which is what Parts<Config> describes.
  return salvage(ConfigSchema, input) as Parts<Config>
}

/**
 * `value` as `schema` reads it, as far as it accepts it: what validates is its output (with
 * defaults filled in); a refused object, record or list is salvaged key by key or item by item;
 * any other refused value is INVALID, and an absent one stays absent.
 */
function salvage (schema: core.$ZodType, value: unknown): unknown {
  const parsed = safeParse(schema, value)
  if (parsed.success) return parsed.data
  if (value === undefined) return undefined
  let s = bare(schema)
  if (s instanceof ZodDiscriminatedUnion) {
    // Read as the option the input names; naming none is a refused value.
    const option = optionFor(s, value)
    if (option === undefined) return INVALID
    s = option
  }
  if (s instanceof ZodObject && isMapping(value)) {
    const out: Record<string, unknown> = {}
    for (const [key, field] of Object.entries(s.shape)) {
      const v = salvage(field, value[key])
      if (v !== undefined) out[key] = v
    }
    return out
  }
  if (s instanceof ZodRecord && isMapping(value)) {
    const valueType = s.valueType
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, salvage(valueType, v)]))
  }
  if (s instanceof ZodArray && Array.isArray(value)) {
    const element = s.element
    return value.map((v) => salvage(element, v))
  }
  return INVALID
}

function at (path: PathKey[], message: string): CheckIssue {
  return { path, message }
}

/** RFC 9110 token: what a header name may contain. */
const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/
const MATCH_KINDS = ['path', 'path_prefix', 'path_regex'] as const

/** A validated config, or the parts of a refused one (see Parts). */
type Checked = Parts<Config>
type ConfigParts = Exclude<Checked, Invalid>
type RouteParts = Exclude<Parts<RouteConfig>, Invalid>

/**
 * Checks that span several parts of the config (names that refer to each other, regexes,
 * header names, combinations). Typed against Parts, they also run when the schema refused
 * something, on what it accepted.
 */
export function crossCheck (config: Checked): CheckIssue[] {
  const c = got(config) ?? {}
  const routes = (got(c.routes) ?? []).map(got)
  const issues: CheckIssue[] = []
  const upstreams = got(c.upstreams) ?? {}
  const upstreamNames = Object.keys(upstreams)
  const seen = new Map<string, number>()
  routes.forEach((route, i) => {
    if (route === undefined) return
    const name = got(route.name)
    if (name !== undefined) {
      const first = seen.get(name)
      if (first !== undefined) {
        issues.push(
          at(
            ['routes', i, 'name'],
            `duplicate route name "${name}" (first used by routes[${first}])`,
          ),
        )
      } else seen.set(name, i)
    }
    const upstream = got(route.upstream)
    if (upstream !== undefined && !Object.hasOwn(upstreams, upstream)) {
      issues.push(
        at(
          ['routes', i, 'upstream'],
          `unknown upstream "${upstream}"${didYouMean(upstream, upstreamNames)}`,
        ),
      )
    }
    const match = got(route.match) ?? {}
    const kinds = MATCH_KINDS.filter((k) => match[k] !== undefined)
    if (kinds.length > 1) {
      issues.push(
        at(
          ['routes', i, 'match'],
          `use only one of path, path_prefix and path_regex (got ${kinds.join(', ')})`,
        ),
      )
    }
    const regex = got(match.path_regex)
    if (regex !== undefined) {
      const problem = regexProblem(regex)
      if (problem !== null) issues.push(at(['routes', i, 'match', 'path_regex'], problem))
    }
    for (const header of Object.keys(got(match.headers) ?? {})) {
      if (!HEADER_NAME.test(header)) {
        issues.push(at(['routes', i, 'match', 'headers', header], 'not a valid header name'))
      }
    }
    const strip = got(route.strip_prefix)
    const prefix = got(match.path_prefix)
    // Whole segments, as upstreamPath() strips them: /api is a prefix of /api/v1, not of /apiv1.
    if (
      strip !== undefined && prefix !== undefined &&
      !(prefix === strip || prefix.startsWith(strip.endsWith('/') ? strip : strip + '/'))
    ) {
      issues.push(
        at(
          ['routes', i, 'strip_prefix'],
          `"${strip}" is not a prefix of match.path_prefix "${prefix}"`,
        ),
      )
    }
  })
  issues.push(...checkIdentity(c, routes))
  issues.push(...checkLimits(c, routes))
  issues.push(...checkIntercepts(routes))
  const timeouts = got(got(c.listen)?.timeouts)
  const request = got(timeouts?.request)
  const headers = got(timeouts?.headers)
  if (request !== undefined && headers !== undefined && request > 0 && request < headers) {
    // Node refuses to start a server with requestTimeout < headersTimeout.
    issues.push(
      at(['listen', 'timeouts', 'request'], 'must be 0 (off) or at least listen.timeouts.headers'),
    )
  }
  ;(got(c.trusted_proxies) ?? []).forEach((entry, i) => {
    const cidr = got(entry)
    const problem = cidr === undefined ? null : cidrProblem(cidr)
    if (problem !== null) issues.push(at(['trusted_proxies', i], problem))
  })
  return issues
}

function regexProblem (source: string): string | null {
  try {
    RegExp(source)
    return null
  } catch (err) {
    return `invalid regular expression: ${(err as Error).message}`
  }
}

function checkLimits (
  config: ConfigParts,
  routes: ReadonlyArray<RouteParts | undefined>,
): CheckIssue[] {
  const issues: CheckIssue[] = []
  const stores = ['default', ...Object.keys(got(config.stores) ?? {})]
  // A limit `name` is one bucket wherever it is used, so every use must define it the same way.
  const named = new Map<string, { at: string, def: string }>()
  routes.forEach((route, i) => {
    const cacheStore = got(got(route?.cache)?.store)
    if (cacheStore !== undefined && !stores.includes(cacheStore)) {
      issues.push(
        at(
          ['routes', i, 'cache', 'store'],
          `unknown store "${cacheStore}"${didYouMean(cacheStore, stores)}`,
        ),
      )
    }
  })
  routes.forEach((route, i) => {
    const limits = got(route?.rate_limit)
    if (route === undefined || limits === undefined) return
    const onRoute = new Set<string>()
    limits.forEach((item, j) => {
      const l = got(item)
      if (l === undefined) return
      const path = (...k: PathKey[]): PathKey[] => ['routes', i, 'rate_limit', j, ...k]
      const name = got(l.name)
      if (name !== undefined) {
        if (onRoute.has(name)) {
          issues.push(
            at(
              path('name'),
              `limit "${name}" is listed twice on this route (each request would count twice)`,
            ),
          )
        }
        onRoute.add(name)
        const def = JSON.stringify([l.key, l.rate, l.burst, l.quota, l.cost, l.store ?? 'default',
          l.ipv6_prefix ?? 64])
        const first = named.get(name)
        if (first === undefined) named.set(name, { at: `routes[${i}].rate_limit[${j}]`, def })
        else if (first.def !== def) {
          issues.push(
            at(
              path('name'),
              `limit "${name}" is defined differently at ${first.at}; a shared name means one bucket, so key, rate, burst, quota, cost, store and ipv6_prefix must match`,
            ),
          )
        }
      }
      const quota = got(l.quota)
      if (quota !== undefined && !Number.isInteger(quota.count)) {
        issues.push(at(path('quota'), 'a quota counts whole requests or units: use a whole number'))
      }
      const store = got(l.store)
      if (store !== undefined && !stores.includes(store)) {
        issues.push(at(path('store'), `unknown store "${store}"${didYouMean(store, stores)}`))
      }
      // Given, even if wrongly: the schema reports what is wrong with the value itself.
      const hasRate = l.rate !== undefined
      const hasQuota = l.quota !== undefined
      if (hasRate === hasQuota) {
        issues.push(at(path(), 'give either rate (with an optional burst) or quota'))
      }
      if (l.burst !== undefined && !hasRate) {
        issues.push(at(path('burst'), 'burst goes with rate, not quota'))
      }
      if (hasRate && l.cost !== undefined && l.cost !== 1) {
        issues.push(at(path('cost'), 'a cost other than 1 goes with quota (rates count requests)'))
      }
      if (l.ipv6_prefix !== undefined && l.key !== 'ip' && l.missing !== 'ip') {
        issues.push(
          at(
            path('ipv6_prefix'),
            'only for key: ip or missing: ip (it says how addresses are counted)',
          ),
        )
      }
      const key = got(l.key)
      if (
        key !== undefined && /^(subject|client_id|api_key|claim:)/.test(key) &&
        got(route.auth) === undefined
      ) {
        issues.push(
          at(
            path('key'),
            `"${key}" needs an auth block on the route (there is no caller identity without one)`,
          ),
        )
      }
    })
  })
  return issues
}

const HEADER_EDITS = ['remove', 'rename', 'set', 'add'] as const

/** Transforms, plugins and async delivery: header edits, path patterns, and combinations that cannot work. */
function checkIntercepts (routes: ReadonlyArray<RouteParts | undefined>): CheckIssue[] {
  const issues: CheckIssue[] = []
  routes.forEach((route, i) => {
    if (route === undefined) return
    const t = got(route.transform)
    for (const side of ['request', 'response'] as const) {
      const edits = got(got(t?.[side])?.headers)
      if (edits === undefined) continue
      for (const op of HEADER_EDITS) {
        const names = op === 'remove'
          ? got(edits.remove) ?? []
          : [...Object.keys(got(edits[op]) ?? {}),
            ...(op === 'rename' ? Object.values(got(edits.rename) ?? {}) : [])]
        for (const entry of names) {
          const name = got(entry)
          if (name === undefined) continue
          const lower = name.toLowerCase()
          if (lower === 'content-type' && side === 'request') continue
          if (isReservedHeader(lower) && lower !== 'authorization' && lower !== 'cookie') {
            issues.push(
              at(
                ['routes', i, 'transform', side, 'headers', op],
                `"${name}" is a header the gateway sets or rewrites itself`,
              ),
            )
          }
        }
      }
    }
    const pattern = got(got(got(t?.request)?.path)?.pattern)
    if (pattern !== undefined) {
      const problem = regexProblem(pattern)
      if (problem !== null) {
        issues.push(at(['routes', i, 'transform', 'request', 'path', 'pattern'], problem))
      }
    }
    const response = got(t?.response)
    const cached = got(route.cache) !== undefined
    const readsResponse = got(response?.body) !== undefined || got(route.plugin) !== undefined
    if (cached && readsResponse) {
      // The cache stores the upstream's answer; a hit would skip the transform or plugin.
      issues.push(
        at(
          ['routes', i, 'cache'],
          'a cached route cannot also transform response bodies or run a plugin (a cache hit would skip them)',
        ),
      )
    }
    if (got(got(route.delivery)?.mode) === 'async') {
      if (cached) {
        issues.push(
          at(['routes', i, 'cache'], 'an async route answers 202 itself: it has nothing to cache'),
        )
      }
      // A plugin's onRequest runs before the request is stored; its onResponse never runs.
      if (
        got(response?.body) !== undefined || got(response?.events) !== undefined ||
        got(response?.headers) !== undefined || got(response?.status) !== undefined
      ) {
        issues.push(
          at(
            ['routes', i, 'transform', 'response'],
            'an async route answers 202 itself: the upstream\'s response never reaches the client',
          ),
        )
      }
    }
  })
  return issues
}

/**
 * A header name a route may not claim (identity headers, transform edits): the gateway drops,
 * sets or rewrites it itself, or it carries the caller's credentials.
 */
function isReservedHeader (name: string): boolean {
  const h = name.toLowerCase().replaceAll('_', '-')
  return h === 'authorization' || h === 'cookie' || isGatewayOwned(h)
}

/** Curves WebCrypto (jose) requires for each phantom-token algorithm. */
const ALG_CURVES: Partial<Record<PhantomTokenConfig['alg'], string>> = {
  ES256: 'prime256v1',
  ES384: 'secp384r1',
}

/** Phantom-token algorithms and the key types they need. */
const ALG_KEY_TYPES: Record<PhantomTokenConfig['alg'], string> = {
  ES256: 'ec',
  ES384: 'ec',
  RS256: 'rsa',
  PS256: 'rsa',
  EdDSA: 'ed25519',
}

/** Fields a webhook provider may set only with scheme: hmac (the named schemes fix them). */
const HMAC_ONLY = ['header', 'algorithm', 'encoding', 'prefix', 'signed', 'timestamp_header',
  'id_header'] as const

/** A Standard Webhooks secret: base64 key bytes after an optional whsec_ prefix. */
const STANDARD_SECRET =
  /^(?:whsec_)?(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{4}|[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)$/

const IDENTITY_HEADERS = ['subject', 'client_id', 'scopes', 'provider'] as const

/** Why the phantom-token key cannot sign `alg` (not judged when the schema refused `alg`), or null. */
function phantomKeyProblem (
  pem: string,
  alg: PhantomTokenConfig['alg'] | undefined,
): string | null {
  let key: KeyObject
  try {
    key = createPrivateKey(pem)
  } catch (err) {
    return `not a PEM private key: ${(err as Error).message}`
  }
  const want = alg === undefined ? undefined : ALG_KEY_TYPES[alg]
  const curve = key.asymmetricKeyDetails?.namedCurve
  const wantCurve = alg === undefined ? undefined : ALG_CURVES[alg]
  if (want !== undefined && key.asymmetricKeyType !== want) {
    return `a ${key.asymmetricKeyType} key cannot sign ${alg} (it needs ${want})`
  }
  if (wantCurve !== undefined && curve !== wantCurve) {
    return `${alg} needs a ${wantCurve} key, not ${curve}`
  }
  // WebCrypto imports PKCS#8 only; SEC1 ("EC PRIVATE KEY") and PKCS#1 ("RSA PRIVATE KEY") would fail at start.
  if (!pem.includes('-----BEGIN PRIVATE KEY-----')) {
    return 'must be a PKCS#8 PEM ("-----BEGIN PRIVATE KEY-----"); convert with `openssl pkcs8 -topk8 -nocrypt`'
  }
  return null
}

function checkIdentity (
  config: ConfigParts,
  routes: ReadonlyArray<RouteParts | undefined>,
): CheckIssue[] {
  const issues: CheckIssue[] = []
  const identity = got(config.identity)
  const providers = Object.entries(got(identity?.providers) ?? {}).map(([name, p]) =>
    [name, got(p)] as const
  )
  const providerNames = providers.map(([name]) => name)
  // Validated header names are lower-case, and x-api-key when not given.
  const credentialHeaders = new Set<string>()
  for (const [, p] of providers) {
    if (p?.kind === 'api_key') credentialHeaders.add((got(p.header) ?? 'x-api-key').toLowerCase())
  }
  for (const [name, p] of providers) {
    const header = p?.kind === 'api_key' ? got(p.header) : undefined
    // Authorization is allowed (keys as bearer tokens); the other reserved names are not.
    if (
      header !== undefined && header.toLowerCase() !== 'authorization' && isReservedHeader(header)
    ) {
      issues.push(
        at(
          ['identity', 'providers', name, 'header'],
          `"${header}" is a header the gateway sets or rewrites itself`,
        ),
      )
    }
  }
  for (const [name, p] of providers) {
    if (p?.kind !== 'webhook') continue
    const scheme = got(p.scheme)
    if (scheme === undefined) continue
    const path = (...k: PathKey[]): PathKey[] => ['identity', 'providers', name, ...k]
    if (scheme === 'hmac') {
      if (p.header === undefined) {
        issues.push(
          at(
            path('header'),
            'is required for scheme: hmac (the header that carries the signature)',
          ),
        )
      }
      const signed = got(p.signed) ?? '{body}'
      if (signed.includes('{timestamp}') && p.timestamp_header === undefined) {
        issues.push(at(path('timestamp_header'), 'is required when signed uses {timestamp}'))
      }
      if (signed.includes('{id}') && p.id_header === undefined) {
        issues.push(at(path('id_header'), 'is required when signed uses {id}'))
      }
      // A signature that does not cover the body would let anyone replay it with any body.
      if (!signed.includes('{body}')) issues.push(at(path('signed'), 'must include {body}'))
    } else {
      // The named schemes fix their own headers and layout: a field set here would be ignored.
      for (const f of HMAC_ONLY) {
        if (p[f] !== undefined) {
          issues.push(at(path(f), `only for scheme: hmac (scheme ${scheme} fixes it)`))
        }
      }
      // Standard Webhooks secrets are base64 key bytes; the message must not echo the secret.
      if (scheme === 'standard') {
        ;(got(p.secrets) ?? []).forEach((entry, j) => {
          const s = got(entry)
          if (s !== undefined && !STANDARD_SECRET.test(s)) {
            issues.push(
              at(path('secrets', j), 'must be base64 (after an optional "whsec_" prefix)'),
            )
          }
        })
      }
    }
  }
  const phantom = got(identity?.phantom_token)
  // A key given, even wrongly (a reference that failed), still has its header checked.
  if (phantom !== undefined && phantom.key !== undefined) {
    const key = got(phantom.key)
    const problem = key === undefined ? null : phantomKeyProblem(key, got(phantom.alg))
    if (problem !== null) issues.push(at(['identity', 'phantom_token', 'key'], problem))
    const header = got(phantom.header)
    const h = header?.toLowerCase()
    if (h !== undefined && h !== 'authorization' && isReservedHeader(h)) {
      issues.push(
        at(
          ['identity', 'phantom_token', 'header'],
          `"${header}" is a header the gateway sets or rewrites itself`,
        ),
      )
    } else if (h !== undefined && credentialHeaders.has(h)) {
      issues.push(
        at(
          ['identity', 'phantom_token', 'header'],
          `"${header}" carries API keys (identity.providers)`,
        ),
      )
    }
  }
  routes.forEach((route, i) => {
    if (route === undefined) return
    const auth = got(route.auth)
    if (auth !== undefined) {
      const anyOf = got(auth.any_of) ?? []
      anyOf.forEach((entry, j) => {
        const name = got(entry)
        if (name === undefined) return
        if (!providerNames.includes(name)) {
          issues.push(
            at(
              ['routes', i, 'auth', 'any_of', j],
              `unknown identity provider "${name}"${didYouMean(name, providerNames)}`,
            ),
          )
        } else if (anyOf.indexOf(name) !== j) {
          issues.push(at(['routes', i, 'auth', 'any_of', j], `provider "${name}" is listed twice`))
        }
      })
      if (auth.phantom_token === true && phantom === undefined) {
        issues.push(
          at(
            ['routes', i, 'auth', 'phantom_token'],
            'needs identity.phantom_token (the key the gateway signs with)',
          ),
        )
      }
      for (const [claim, m] of Object.entries(got(auth.claims) ?? {})) {
        // A matcher is a value, a list of values, or { pattern }.
        const matcher = got(m)
        const pattern = typeof matcher === 'object' && 'pattern' in matcher
          ? got(matcher.pattern)
          : undefined
        const problem = pattern === undefined ? null : regexProblem(pattern)
        if (problem !== null) {
          issues.push(at(['routes', i, 'auth', 'claims', claim, 'pattern'], problem))
        }
      }
    }
    const ip = got(route.ip)
    for (const key of ['allow', 'deny'] as const) {
      ;(got(ip?.[key]) ?? []).forEach((entry, j) => {
        const cidr = got(entry)
        const problem = cidr === undefined ? null : cidrProblem(cidr)
        if (problem !== null) issues.push(at(['routes', i, 'ip', key, j], problem))
      })
    }
    const ih = got(route.identity_headers)
    if (ih !== undefined) {
      if (auth === undefined) {
        issues.push(
          at(['routes', i, 'identity_headers'], 'identity headers need an auth block on the route'),
        )
      }
      const named: Array<[PathKey[], string | undefined]> = [
        ...IDENTITY_HEADERS.map((
          k,
        ): [PathKey[], string | undefined] => [['routes', i, 'identity_headers', k], got(ih[k])]),
        ...Object.entries(got(ih.claims) ?? {}).map((
          [k, v],
        ): [PathKey[], string | undefined] => [['routes', i, 'identity_headers', 'claims', k],
          got(v)]
        ),
      ]
      for (const [path, header] of named) {
        if (header === undefined) continue
        if (isReservedHeader(header)) {
          issues.push(at(path, `"${header}" is a header the gateway sets or rewrites itself`))
        } else if (credentialHeaders.has(header.toLowerCase().replaceAll('_', '-'))) {
          issues.push(at(path, `"${header}" carries API keys (identity.providers)`))
        }
      }
    }
  })
  return issues
}

/**
 * Valid, but probably not what was meant: said by `gatehouse check`, never refused. An
 * introspection provider without `audiences` accepts any active token its server knows,
 * including one issued for another API of the same IdP.
 */
export function configWarnings (config: Config): string[] {
  const out: string[] = []
  const providers = config.identity.providers
  for (const r of config.routes) {
    for (const name of r.auth?.any_of ?? []) {
      const p = providers[name]
      if (p?.kind === 'introspection' && p.audiences === undefined) {
        out.push(
          `route "${r.name}" accepts tokens from introspection provider "${name}", which checks ` +
            'no audience: an active token issued for another API is accepted too ' +
            `(set identity.providers.${name}.audiences)`,
        )
      }
    }
  }
  return out
}
