import type { Config, RouteDeliveryConfig } from '../config/schema.js'
import { CidrSet } from '../net/cidr.js'
import type { IdentitySet } from '../identity/registry.js'
import type { Upstream } from '../upstream/balancer.js'
import type { Exchange, ResponseHandler, Step } from '../pipeline/exchange.js'
import type { AuthPolicy, IdentityHeader } from '../policies/auth/policy.js'
import type { RateLimitPolicy } from '../policies/limits/policy.js'
import type { CachePolicy } from '../policies/cache/policy.js'
import type { RequestTransform, ResponseTransform } from '../policies/transform/policy.js'
import type { PluginRef } from '../plugins/loader.js'

/*
 * The route table as the request path reads it: built by compile() (compile/index.ts), then
 * only read. Its matchers are here; each route's policies are its compiled steps.
 */

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
  /** The answer's way back: the route's response wrappers composed (pipeline/response.ts), or null. */
  readonly responseChain: ((ex: Exchange) => ResponseHandler) | null
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

  constructor (
    config: Config,
    routes: CompiledRoute[],
    upstreams: Map<string, Upstream>,
    targetKeys: Set<string>,
    identity: IdentitySet,
  ) {
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
    if (phantom !== null && phantom.header !== 'authorization') {
      roles.set(phantom.header.replaceAll('_', '-'), 'strip')
    }
    for (const p of identity.providers.values()) {
      if (p.source.kind === 'header' && !roles.has(p.source.name)) {
        roles.set(p.source.name, 'credential')
      }
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
  match (
    method: string,
    host: string,
    path: string,
    rawHeaders: readonly string[],
  ): CompiledRoute | null {
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
          if (
            !path.startsWith(r.path) ||
            (path.length > r.path.length && r.path.charCodeAt(r.path.length - 1) !== 47 &&
              path.charCodeAt(r.path.length) !== 47)
          ) continue
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

function headersMatch (
  conditions: ReadonlyArray<readonly [string, string]>,
  raw: readonly string[],
): boolean {
  for (const [name, value] of conditions) {
    let found = false
    for (let i = 0; i < raw.length; i += 2) {
      if (
        raw[i]!.length === name.length && raw[i]!.toLowerCase() === name && raw[i + 1] === value
      ) {
        found = true
        break
      }
    }
    if (!found) return false
  }
  return true
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
  const dotRun = source.charCodeAt(0) === 46 /* . */ &&
    (source.charCodeAt(1) === 42 /* * */ || source.charCodeAt(1) === 43 /* + */)
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

export { upstreamPath } from '../pipeline/exchange.js'

/** An exchange on a compiled route: what the request path above the policies works with. */
export type RouteExchange = Exchange<CompiledRoute>
