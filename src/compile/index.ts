import { basename } from 'node:path'
import { pathToString } from '../config/refs.js'
import type { Config, RouteConfig, RouteDeliveryConfig } from '../config/schema.js'
import { formatSize } from '../config/units.js'
import { ConfigError } from '../errors/index.js'
import { CidrSet } from '../net/cidr.js'
import { compileIdentityHeaders, type IdentityHeader } from '../policies/auth/policy.js'
import type { IdentitySet } from '../identity/registry.js'
import type { StoreSet } from '../stores/registry.js'
import type { Metrics } from '../observability/metrics.js'
import { Upstream } from '../upstream/balancer.js'
import type { RequestTransform, ResponseTransform } from '../policies/transform/policy.js'
import type { PluginRef } from '../plugins/loader.js'
import { authPolicy, type AuthPolicy } from '../policies/auth/index.js'
import { ipPolicy } from '../policies/ip/index.js'
import { corsPolicy } from '../policies/cors/index.js'
import { rateLimitPolicy, type RateLimitPolicy } from '../policies/limits/index.js'
import { cachePolicy, type CachePolicy } from '../policies/cache/index.js'
import { requestBodyStep, requestTransform, responseTransform } from '../policies/transform/index.js'
import { pluginPolicy } from '../policies/plugin/index.js'
import type { PolicyDeps } from '../policies/deps.js'
import type { Step } from '../pipeline/step.js'
import { ReadBody } from '../pipeline/body.js'
import { proxy } from '../pipeline/proxy.js'
import { accept } from '../pipeline/accept.js'
import type { Target } from '../upstream/target.js'
import { compileChecks } from './checks.js'

/**
 * A route as the request path reads it: every decision that can be made from config alone is
 * made here, once, so that matching a request is a handful of comparisons.
 */
export interface CompiledRoute {
  readonly index: number
  readonly name: string
  /** null: any method. GET routes also answer HEAD. */
  readonly methods: ReadonlySet<string> | null
  /** Lower-case hostname, '*.example.com' wildcard, or null for any host. */
  readonly host: string | null
  readonly pathKind: 'any' | 'exact' | 'prefix' | 'regex'
  readonly path: string
  readonly pathRegex: RegExp | null
  /** Header conditions as [lower-case name, value] pairs; null when none. */
  readonly headers: ReadonlyArray<readonly [string, string]> | null
  readonly upstream: Upstream
  readonly stripPrefix: string | null
  readonly preserveHost: boolean
  readonly websocket: boolean
  /** Upgrade protocols (lower-case names) passed through as tunnels; empty: none. */
  readonly upgrade: readonly string[]
  /** Bytes; 0 = unlimited. */
  readonly maxBody: number
  /**
   * What runs for a request, in order: ip → cors → (body, when a signature needs it) → auth →
   * rate limits → (body) → transform → plugin → cache → terminal (proxy, or accept on async
   * routes). Built once; the runner (pipeline/run.ts) walks it.
   */
  readonly steps: readonly Step[]
  /** The checks a WebSocket (or other upgrade) handshake passes before its tunnel opens. */
  readonly tunnelSteps: readonly Step[]
  /** Read by the response side and the outgoing head (credentials to strip, identity headers). */
  readonly auth: AuthPolicy | null
  /** Headers set from the caller's identity (only on routes with `auth`). */
  readonly identityHeaders: readonly IdentityHeader[] | null
  readonly rateLimit: RateLimitPolicy | null
  readonly cache: CachePolicy | null
  readonly requestTransform: RequestTransform | null
  readonly responseTransform: ResponseTransform | null
  readonly plugin: PluginRef | null
  /** Set on async routes: persist, answer 202, deliver in the background. */
  readonly delivery: RouteDeliveryConfig | null
  /**
   * Set when the request body must be read whole before it goes on (webhook signatures, body
   * transforms, plugins, async delivery): `authFirst` says whether the credentials can be
   * checked before reading it (not for signatures over the body), `cap` bounds it (413).
   */
  readonly buffer: { readonly authFirst: boolean, readonly cap: number } | null
  /** Label for logs and metrics. */
  readonly describe: string
}

/** Immutable, matched in order: the first route whose every condition holds wins. */
export class RouteTable {
  readonly routes: readonly CompiledRoute[]
  readonly upstreams: ReadonlyMap<string, Upstream>
  readonly trustedProxies: CidrSet
  readonly config: Config
  readonly targetKeys: ReadonlySet<string>
  readonly identity: IdentitySet
  /**
   * Request headers the header scan treats specially because of this config, by lower-case
   * name: 'strip' (identity headers the gateway sets; matched also with '_' for '-') or
   * 'credential' (API-key headers, noted for the auth policy and forwarded unless stripped).
   */
  readonly headerRoles: ReadonlyMap<string, 'strip' | 'credential'>
  /** headerRoles' first letters (lower-case char codes), so most names skip the lookup. */
  readonly headerRoleInitials: Uint8Array

  constructor (config: Config, routes: CompiledRoute[], upstreams: Map<string, Upstream>, targetKeys: Set<string>, identity: IdentitySet) {
    this.config = config
    this.routes = routes
    this.upstreams = upstreams
    this.targetKeys = targetKeys
    this.identity = identity
    this.trustedProxies = new CidrSet(config.trusted_proxies)
    const roles = new Map<string, 'strip' | 'credential'>()
    // Every identity header of every route is stripped on every route: an upstream shared by
    // two routes must not believe an x-user-id a client sent through the route without auth.
    for (const r of routes) {
      for (const [name] of r.identityHeaders ?? []) roles.set(name.replaceAll('_', '-'), 'strip')
    }
    const phantom = identity.phantom
    if (phantom !== null && phantom.header !== 'authorization') roles.set(phantom.header.replaceAll('_', '-'), 'strip')
    for (const p of identity.providers.values()) {
      if (p.source.kind === 'header' && !roles.has(p.source.name)) roles.set(p.source.name, 'credential')
    }
    this.headerRoles = roles
    this.headerRoleInitials = new Uint8Array(128)
    for (const name of roles.keys()) {
      const c = name.charCodeAt(0)
      this.headerRoleInitials[c] = 1
      // Names may arrive in any case.
      if (c >= 0x61 && c <= 0x7a) this.headerRoleInitials[c - 0x20] = 1
    }
    Object.freeze(this)
  }

  /**
   * `host` is the Host header without port, lower-cased; `rawHeaders` is Node's flat array,
   * searched only when a route has header conditions.
   */
  match (method: string, host: string, path: string, rawHeaders: readonly string[]): CompiledRoute | null {
    const routes = this.routes
    for (let i = 0; i < routes.length; i++) {
      const r = routes[i]!
      if (r.methods !== null && !r.methods.has(method)) continue
      switch (r.pathKind) {
        case 'exact':
          if (path !== r.path) continue
          break
        case 'prefix':
          // Whole segments only: /v1/search matches /v1/search and /v1/search/x, not /v1/searchx.
          if (!path.startsWith(r.path) ||
              (path.length > r.path.length && r.path.charCodeAt(r.path.length - 1) !== 47 && path.charCodeAt(r.path.length) !== 47)) continue
          break
      }
      if (r.host !== null && !hostMatches(r.host, host)) continue
      if (r.headers !== null && !headersMatch(r.headers, rawHeaders)) continue
      // Last: the one condition whose cost grows with the path (a path may be 8 KiB).
      if (r.pathRegex !== null && !r.pathRegex.test(path)) continue
      return r
    }
    return null
  }
}

function hostMatches (pattern: string, host: string): boolean {
  if (pattern.charCodeAt(0) === 42 /* * */) {
    // '*.example.com' matches one or more labels before example.com, not example.com itself.
    return host.length > pattern.length - 1 && host.endsWith(pattern.slice(1))
  }
  return pattern === host
}

function headersMatch (conditions: ReadonlyArray<readonly [string, string]>, raw: readonly string[]): boolean {
  for (const [name, value] of conditions) {
    let found = false
    for (let i = 0; i < raw.length; i += 2) {
      if (raw[i]!.length === name.length && raw[i]!.toLowerCase() === name && raw[i + 1] === value) {
        found = true
        break
      }
    }
    if (!found) return false
  }
  return true
}

/**
 * What compile() builds on, prepared by its caller (the gateway from its registries, `gatehouse
 * routes` from config alone): compile itself opens no connection, creates no pool and starts
 * nothing, so compiling a config has no effect beyond the table it returns.
 */
export interface CompileDeps {
  /**
   * Each upstream's targets, in the order its config lists them (TargetRegistry.prepare). An
   * empty list describes an upstream without serving it (`gatehouse routes`).
   */
  readonly targets: ReadonlyMap<string, Target[]>
  /** The providers prepared for this config (IdentityRegistry.prepare). */
  readonly identity: IdentitySet
  readonly stores: StoreSet
  readonly metrics: Metrics
}

/** config → RouteTable, from collaborators the caller prepared (see CompileDeps). */
export function compile (config: Config, deps: CompileDeps): RouteTable {
  const upstreams = new Map<string, Upstream>()
  const targetKeys = new Set<string>()
  for (const [name, u] of Object.entries(config.upstreams)) {
    const targets = deps.targets.get(name)
    if (targets === undefined) throw new Error(`compile: no targets were prepared for upstream "${name}"`)
    for (const t of targets) targetKeys.add(t.key)
    upstreams.set(name, new Upstream(name, u, targets))
  }
  let routes: CompiledRoute[]
  try {
    routes = config.routes.map((r, index) => compileRoute(r, index, upstreams.get(r.upstream)!, deps.identity, deps))
  } catch (err) {
    // A policy refused its options. A config validated with compileChecks never gets here (its
    // problems were reported with their lines); one that skipped them still learns the path.
    const issues = compileChecks(config)
    if (issues.length === 0) throw err
    throw new ConfigError(issues.map((i) => ({ path: pathToString(i.path), message: i.message })))
  }
  return new RouteTable(config, routes, upstreams, targetKeys, deps.identity)
}

function compileRoute (r: RouteConfig, index: number, upstream: Upstream, identity: IdentitySet, limits: { stores: StoreSet, metrics: Metrics }): CompiledRoute {
  let methods: Set<string> | null = null
  if (r.match.methods !== undefined) {
    methods = new Set(r.match.methods)
    if (methods.has('GET')) methods.add('HEAD')
    // Browsers ask before a cross-origin call with an OPTIONS preflight (the cors step answers it).
    if (r.cors !== undefined) methods.add('OPTIONS')
  }
  const m = r.match
  const pathKind = m.path !== undefined ? 'exact' : m.path_prefix !== undefined ? 'prefix' : m.path_regex !== undefined ? 'regex' : 'any'
  const path = m.path ?? m.path_prefix ?? ''
  const headers = m.headers === undefined
    ? null
    : Object.entries(m.headers).map(([k, v]) => [k.toLowerCase(), v] as const)
  const describe = [
    methods === null ? '*' : [...r.match.methods!].join(','),
    m.host ?? '*',
    pathKind === 'exact' ? `= ${path}` : pathKind === 'prefix' ? `${path}*` : pathKind === 'regex' ? `~ ${m.path_regex}` : '*',
    headers === null ? '' : headers.map(([k, v]) => `[${k}=${showHeaderValue(v)}]`).join(''),
  ].filter(Boolean).join(' ')
  const deps: PolicyDeps = { identity, stores: limits.stores, metrics: limits.metrics }
  const ip = ipPolicy(r)
  const cors = corsPolicy(r)
  const auth = authPolicy(r, deps)
  const rateLimit = rateLimitPolicy(r, deps)
  const cache = cachePolicy(r, deps)
  const reqTransform = requestTransform(r)
  const plugin = pluginPolicy(r)
  const delivery = r.delivery?.mode === 'async' ? r.delivery : null
  // A plugin gets the body whole whether or not it has onRequest: which hooks it has is known
  // only once it is loaded, and a plugin route is an intercepted route anyway.
  const bodyStep = requestBodyStep(reqTransform)
  const needsBody = auth?.needsBody === true || bodyStep !== null || plugin !== null || delivery !== null
  const tunnelSteps = present([ip, auth, rateLimit])
  let steps: Step[]
  if (!needsBody) {
    steps = present([ip, cors, auth, rateLimit, cache, proxy])
  } else {
    const body = new ReadBody(bufferCap(r))
    // A signature over the body is the credential: the body is read first (the address is
    // checked before it, so a refused address never gets to upload).
    const admission = auth?.needsBody === true ? [ip, cors, body, auth, rateLimit] : [ip, cors, auth, rateLimit, body]
    steps = present([...admission, bodyStep, plugin, ...(delivery !== null ? [accept] : [cache, proxy])])
  }
  return Object.freeze({
    index,
    name: r.name,
    methods,
    host: m.host === undefined ? null : m.host.toLowerCase(),
    pathKind,
    path,
    pathRegex: m.path_regex === undefined ? null : pathRegex(m.path_regex),
    headers: headers === null || headers.length === 0 ? null : headers,
    upstream,
    stripPrefix: r.strip_prefix ?? null,
    preserveHost: r.preserve_host,
    websocket: r.websocket,
    upgrade: r.websocket ? r.upgrade : [],
    maxBody: r.limits.max_body,
    steps: Object.freeze(steps),
    tunnelSteps: Object.freeze(tunnelSteps),
    auth,
    identityHeaders: r.auth === undefined ? null : compileIdentityHeaders(r.identity_headers),
    rateLimit,
    cache: cache === null ? null : cache.policy,
    requestTransform: reqTransform,
    responseTransform: responseTransform(r),
    plugin: plugin === null ? null : plugin.ref,
    delivery,
    buffer: needsBody ? { authFirst: auth === null || !auth.needsBody, cap: bufferCap(r) } : null,
    describe,
  })
}

/**
 * `path_regex` matches anywhere in the path (RegExp.test), so V8 tries the pattern from every
 * position in turn. One that starts with `.*` or `.+` then runs to the end of the path from
 * each: quadratic, 0.29 s of CPU for one 8 KiB path against `.*\.(png|jpg)$`. Anchored at the
 * start it matches the same paths, in linear time: a match found at position i extends back to
 * 0, since `.` matches every character a path can hold (only line terminators are excluded:
 * Node refuses CR and LF in a request target, and U+2028/U+2029 are not latin1). A top-level
 * `|` would put the anchor on the first alternative only; such patterns are left as written.
 */
export function pathRegex (source: string): RegExp {
  const dotRun = source.charCodeAt(0) === 46 /* . */ && (source.charCodeAt(1) === 42 /* * */ || source.charCodeAt(1) === 43 /* + */)
  return new RegExp(dotRun && !hasTopLevelAlternation(source) ? `^(?:${source})` : source)
}

/** Whether a regex source has a `|` outside every group and character class. */
function hasTopLevelAlternation (source: string): boolean {
  let depth = 0
  for (let i = 0; i < source.length; i++) {
    const c = source[i]
    if (c === '\\') {
      i++
    } else if (c === '[') {
      // To the class's closing bracket, past escaped ones ('[]' and '[^]' close at once in JS).
      for (i++; i < source.length && source[i] !== ']'; i++) if (source[i] === '\\') i++
    } else if (c === '(') {
      depth++
    } else if (c === ')') {
      depth--
    } else if (c === '|' && depth === 0) {
      return true
    }
  }
  return false
}

function present (steps: ReadonlyArray<Step | null>): Step[] {
  return steps.filter((s): s is Step => s !== null)
}

/** The most of a request body a buffering route reads (async routes have their own limit). */
function bufferCap (r: RouteConfig): number {
  const cap = r.delivery?.mode === 'async' ? r.delivery.max_body : r.limits.max_buffered_body
  return r.limits.max_body > 0 ? Math.min(cap, r.limits.max_body) : cap
}

/**
 * The path sent upstream: `strip_prefix` removed when it covers whole segments (so
 * strip_prefix /v1 turns /v1/x into /x and /v1 into /, but leaves /v1x alone).
 */
export function upstreamPath (route: CompiledRoute, path: string): string {
  const prefix = route.stripPrefix
  const t = route.requestTransform
  if (prefix === null || !path.startsWith(prefix)) return t === null ? path : t.rewritePath(path)
  let out: string
  if (path.length === prefix.length) out = '/'
  else if (prefix.charCodeAt(prefix.length - 1) === 47) out = path.slice(prefix.length - 1)
  else out = path.charCodeAt(prefix.length) === 47 ? path.slice(prefix.length) : path
  return t === null ? out : t.rewritePath(out)
}

/** Header-match values may be credentials: show short plain tokens, mask the rest. */
function showHeaderValue (v: string): string {
  return /^[A-Za-z0-9._-]{1,16}$/.test(v) ? v : '***'
}

/** Human-readable table for `gatehouse routes`. */
export function describeTable (table: RouteTable): string {
  const rows = [['#', 'route', 'match', 'upstream', 'policies']]
  for (const r of table.routes) {
    const policies: string[] = []
    if (r.stripPrefix !== null) policies.push(`strip_prefix=${r.stripPrefix}`)
    if (r.maxBody > 0) policies.push(`max_body=${formatSize(r.maxBody)}`)
    if (!r.preserveHost) policies.push('host=upstream')
    if (r.upgrade.length === 0) policies.push('no-upgrade')
    else if (r.upgrade.length !== 1 || r.upgrade[0] !== 'websocket') policies.push(`upgrade=${r.upgrade.join(',')}`)
    const auth = table.config.routes[r.index]!.auth
    if (auth !== undefined) {
      const scopes = [...(auth.scopes?.all ?? []), ...(auth.scopes?.any ?? []).map((s) => `${s}?`)]
      policies.push(`auth=${auth.any_of.join('|')}${scopes.length > 0 ? `[${scopes.join(' ')}]` : ''}${auth.claims === undefined ? '' : `+claims(${Object.keys(auth.claims).join(',')})`}`)
    }
    if (r.cache !== null) policies.push(`cache(${formatDurationShort(r.cache.ttlMs)}@${r.cache.storeName})`)
    if (r.rateLimit !== null) policies.push(`rate_limit(${r.rateLimit.limits.map((l) => `${l.name}@${l.storeName}`).join(',')})`)
    const ip = table.config.routes[r.index]!.ip
    if (ip !== undefined) policies.push(`ip(${ip.allow === undefined ? '' : `allow ${ip.allow.length}`}${ip.allow !== undefined && ip.deny.length > 0 ? ', ' : ''}${ip.deny.length > 0 ? `deny ${ip.deny.length}` : ''})`)
    const transform = table.config.routes[r.index]!.transform
    if (transform !== undefined) {
      const parts = [
        ...(transform.request === undefined ? [] : ['request']),
        ...(transform.response === undefined ? [] : [transform.response.events === undefined ? 'response' : 'response+events']),
      ]
      policies.push(`transform(${parts.join(',')})`)
    }
    if (r.plugin !== null) policies.push(`plugin(${basename(r.plugin.path)})`)
    if (r.delivery !== null) policies.push(`async(${r.delivery.max_attempts} attempts, ${r.delivery.concurrency} workers)`)
    // From config, which names each target as its Target does (origin and base path): a table
    // compiled only to be described has no Targets.
    const targets = table.config.upstreams[r.upstream.name]!.targets.map((t) => t.url).join(' ')
    rows.push([String(r.index), r.name, r.describe, `${r.upstream.name} (${r.upstream.balance}: ${targets})`, policies.join(' ') || '-'])
  }
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((row) => row[c]!.length)))
  return rows.map((row) => row.map((cell, c) => cell.padEnd(widths[c]!)).join('  ').trimEnd()).join('\n')
}

function formatDurationShort (ms: number): string {
  return ms % 1000 === 0 ? `${ms / 1000}s` : `${ms}ms`
}
