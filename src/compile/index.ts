import { basename } from 'node:path'
import { pathToString } from '../config/refs.js'
import type { Config, RouteConfig } from '../config/schema.js'
import { formatSize } from '../config/units.js'
import { ConfigError } from '../errors/index.js'
import { compileIdentityHeaders } from '../policies/auth/policy.js'
import type { IdentitySet } from '../identity/registry.js'
import type { StoreSet } from '../stores/registry.js'
import type { Metrics } from '../observability/metrics.js'
import { Upstream } from '../upstream/balancer.js'
import { authPolicy } from '../policies/auth/index.js'
import { ipPolicy } from '../policies/ip/index.js'
import { corsPolicy } from '../policies/cors/index.js'
import { costTap, rateLimitPolicy } from '../policies/limits/index.js'
import { cachePolicy, cacheTee } from '../policies/cache/index.js'
import {
  requestBodyStep,
  requestTransform,
  responseTransform,
  transformResponse,
} from '../policies/transform/index.js'
import { pluginPolicy } from '../policies/plugin/index.js'
import type { PolicyDeps } from '../policies/deps.js'
import type { Step } from '../pipeline/step.js'
import { ReadBody } from '../pipeline/body.js'
import { proxy } from '../pipeline/proxy.js'
import { accept, requireIdempotencyKey } from '../pipeline/accept.js'
import { captureResponse } from '../pipeline/intercept.js'
import { composeResponse } from '../pipeline/response.js'
import type { Target } from '../upstream/target.js'
import { compileChecks } from './checks.js'
import { pathRegex, RouteTable, type CompiledRoute } from './table.js'

export { pathRegex, RouteTable, upstreamPath, type CompiledRoute } from './table.js'

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
    if (targets === undefined) {
      throw new Error(`compile: no targets were prepared for upstream "${name}"`)
    }
    for (const t of targets) targetKeys.add(t.key)
    upstreams.set(name, new Upstream(name, u, targets))
  }
  let routes: CompiledRoute[]
  try {
    routes = config.routes.map((r, index) =>
      compileRoute(r, index, upstreams.get(r.upstream)!, deps.identity, deps)
    )
  } catch (err) {
    // A policy refused its options. A config validated with compileChecks never gets here (its
    // problems were reported with their lines); one that skipped them still learns the path.
    const issues = compileChecks(config)
    if (issues.length === 0) throw err
    throw new ConfigError(issues.map((i) => ({ path: pathToString(i.path), message: i.message })))
  }
  return new RouteTable(config, routes, upstreams, targetKeys, deps.identity)
}

function compileRoute (
  r: RouteConfig,
  index: number,
  upstream: Upstream,
  identity: IdentitySet,
  limits: { stores: StoreSet, metrics: Metrics },
): CompiledRoute {
  let methods: Set<string> | null = null
  if (r.match.methods !== undefined) {
    methods = new Set(r.match.methods)
    if (methods.has('GET')) methods.add('HEAD')
    // Browsers ask before a cross-origin call with an OPTIONS preflight (the cors step answers it).
    if (r.cors !== undefined) methods.add('OPTIONS')
  }
  const m = r.match
  const pathKind = m.path !== undefined
    ? 'exact'
    : m.path_prefix !== undefined
    ? 'prefix'
    : m.path_regex !== undefined
    ? 'regex'
    : 'any'
  const path = m.path ?? m.path_prefix ?? ''
  const headers = m.headers === undefined
    ? null
    : Object.entries(m.headers).map(([k, v]) => [k.toLowerCase(), v] as const)
  const describe = [
    methods === null ? '*' : [...r.match.methods!].join(','),
    m.host ?? '*',
    pathKind === 'exact'
      ? `= ${path}`
      : pathKind === 'prefix'
      ? `${path}*`
      : pathKind === 'regex'
      ? `~ ${m.path_regex}`
      : '*',
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
  const needsBody = auth?.needsBody === true || bodyStep !== null || plugin !== null ||
    delivery !== null
  const tunnelSteps = present([ip, auth, rateLimit])
  let steps: Step[]
  if (!needsBody) {
    steps = present([ip, cors, auth, rateLimit, cache, proxy])
  } else {
    const body = new ReadBody(bufferCap(r))
    // An async route that requires an Idempotency-Key refuses a request without one before
    // its body is read.
    const keyed = delivery?.idempotency === 'required' ? requireIdempotencyKey : null
    // A signature over the body is the credential: the body is read first (the address is
    // checked before it, so a refused address never gets to upload).
    const admission = auth?.needsBody === true
      ? [ip, cors, keyed, body, auth, rateLimit]
      : [ip, cors, auth, rateLimit, keyed, body]
    steps = present([...admission, bodyStep, plugin,
      ...(delivery !== null ? [accept] : [cache, proxy])])
  }
  const resTransform = responseTransform(r)
  // The answer's way back, outermost first (pipeline/response.ts); null when none applies.
  const responseChain = composeResponse([
    (resTransform !== null && resTransform.body !== null) || plugin !== null
      ? captureResponse
      : null,
    costTap(rateLimit),
    transformResponse(resTransform),
    cacheTee(cache),
  ])
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
    responseTransform: resTransform,
    responseChain,
    plugin: plugin === null ? null : plugin.ref,
    delivery,
    buffer: needsBody ? { authFirst: auth === null || !auth.needsBody, cap: bufferCap(r) } : null,
    describe,
  })
}

function present (steps: ReadonlyArray<Step | null>): Step[] {
  return steps.filter((s): s is Step => s !== null)
}

/** The most of a request body a buffering route reads (async routes have their own limit). */
function bufferCap (r: RouteConfig): number {
  const cap = r.delivery?.mode === 'async' ? r.delivery.max_body : r.limits.max_buffered_body
  return r.limits.max_body > 0 ? Math.min(cap, r.limits.max_body) : cap
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
    else if (r.upgrade.length !== 1 || r.upgrade[0] !== 'websocket') {
      policies.push(`upgrade=${r.upgrade.join(',')}`)
    }
    const auth = table.config.routes[r.index]!.auth
    if (auth !== undefined) {
      const scopes = [...(auth.scopes?.all ?? []), ...(auth.scopes?.any ?? []).map((s) => `${s}?`)]
      policies.push(
        `auth=${auth.any_of.join('|')}${scopes.length > 0 ? `[${scopes.join(' ')}]` : ''}${
          auth.claims === undefined ? '' : `+claims(${Object.keys(auth.claims).join(',')})`
        }`,
      )
    }
    if (r.cache !== null) {
      policies.push(`cache(${formatDurationShort(r.cache.ttlMs)}@${r.cache.storeName})`)
    }
    if (r.rateLimit !== null) {
      policies.push(
        `rate_limit(${r.rateLimit.limits.map((l) => `${l.name}@${l.storeName}`).join(',')})`,
      )
    }
    const ip = table.config.routes[r.index]!.ip
    if (ip !== undefined) {
      policies.push(
        `ip(${ip.allow === undefined ? '' : `allow ${ip.allow.length}`}${
          ip.allow !== undefined && ip.deny.length > 0 ? ', ' : ''
        }${ip.deny.length > 0 ? `deny ${ip.deny.length}` : ''})`,
      )
    }
    const transform = table.config.routes[r.index]!.transform
    if (transform !== undefined) {
      const parts = [
        ...(transform.request === undefined ? [] : ['request']),
        ...(transform.response === undefined
          ? []
          : [transform.response.events === undefined ? 'response' : 'response+events']),
      ]
      policies.push(`transform(${parts.join(',')})`)
    }
    if (r.plugin !== null) policies.push(`plugin(${basename(r.plugin.path)})`)
    if (r.delivery !== null) {
      policies.push(`async(${r.delivery.max_attempts} attempts, ${r.delivery.concurrency} workers)`)
    }
    // From config, which names each target as its Target does (origin and base path): a table
    // compiled only to be described has no Targets.
    const targets = table.config.upstreams[r.upstream.name]!.targets.map((t) => t.url).join(' ')
    rows.push([String(r.index), r.name, r.describe,
      `${r.upstream.name} (${r.upstream.balance}: ${targets})`, policies.join(' ') || '-'])
  }
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((row) => row[c]!.length)))
  return rows.map((row) => row.map((cell, c) => cell.padEnd(widths[c]!)).join('  ').trimEnd()).join(
    '\n',
  )
}

function formatDurationShort (ms: number): string {
  return ms % 1000 === 0 ? `${ms / 1000}s` : `${ms}ms`
}
