import { createPrivateKey } from 'node:crypto'
import { existsSync } from 'node:fs'
import { dirname, resolve } from 'node:path'
import { isMap, isScalar, isSeq, LineCounter, parseDocument, type Document, type Node as YamlNode } from 'yaml'
import type { z } from 'zod'
import { ConfigError, type ConfigIssue } from '../errors/index.js'
import { cidrProblem } from '../net/cidr.js'
import { isGatewayOwned } from '../net/owned-headers.js'
import { pathToString, readRefFile, redactUrl, resolveRefs, type PathKey, type RefFills } from './refs.js'
import { ConfigSchema, DURATIONS, type Config } from './schema.js'
import { expressionProblem } from '../policies/transform/expression.js'

export interface LoadOptions {
  env?: NodeJS.ProcessEnv
  /** Directory for relative `${file:}` references and TLS paths; defaults to the file's own. */
  baseDir?: string
}

/** The largest config file read (a config of thousands of routes and keys is well under it). */
const MAX_CONFIG_FILE = 16 * 1024 * 1024

/** Read, resolve and validate a YAML config file. Throws ConfigError listing every problem. */
export function loadConfigFile (file: string, options: LoadOptions = {}): Config {
  const path = resolve(file)
  // A regular file of bounded size only: a config path swapped for a FIFO would block this
  // (synchronous) read, on a reload the whole gateway, and a device would never end.
  const text = readRefFile(path, MAX_CONFIG_FILE)
  if (typeof text !== 'string') throw new ConfigError([{ path: '', message: text.problem.replace(`cannot read ${path}`, 'cannot read config file') }], file)
  return parseConfig(text, { ...options, baseDir: options.baseDir ?? dirname(path) }, file)
}

/** Parse and validate YAML text. `file` only labels error messages. */
export function parseConfig (text: string, options: LoadOptions = {}, file: string | null = null): Config {
  const lineCounter = new LineCounter()
  const doc = parseDocument(text, { lineCounter, prettyErrors: false, uniqueKeys: true })
  if (doc.errors.length > 0) {
    throw new ConfigError(doc.errors.map((e) => {
      const pos = lineCounter.linePos(e.pos[0])
      return { path: '', message: e.message.split('\n')[0]!, line: pos.line, column: pos.col }
    }), file)
  }
  const raw = doc.toJS({ maxAliasCount: 100 }) ?? {}
  const locate = (path: readonly PathKey[]): Pick<ConfigIssue, 'line' | 'column'> => locateNode(doc, lineCounter, path)
  return validateConfig(raw, { ...options, locate }, file)
}

/** Configs this module produced: validating one again must not resolve `${...}` a second time. */
const validated = new WeakSet<object>()
/** Every object and list inside those configs (see withUnits). */
const validatedParts = new WeakSet<object>()

/**
 * Validate an already-parsed config object (the programmatic API takes these). A Config that
 * came out of this module is returned as it is.
 */
export function validateConfig (raw: unknown, options: LoadOptions & {
  locate?: (path: readonly PathKey[]) => Pick<ConfigIssue, 'line' | 'column'>
} = {}, file: string | null = null): Config {
  if (raw !== null && typeof raw === 'object' && validated.has(raw)) return raw as Config
  const locate = options.locate ?? (() => ({}))
  const refIssues: LocatedIssue[] = []
  const filled: RefFills = { paths: new Map(), values: new Set() }
  const resolved = resolveRefs(withUnits(raw, ConfigSchema, false), { env: options.env ?? process.env, baseDir: options.baseDir ?? process.cwd(), filled }, refIssues)
  const parsed = ConfigSchema.safeParse(resolved)
  const schemaIssues = parsed.success ? [] : parsed.error.issues.flatMap((issue) => describeZodIssue(issue, resolved, filled))
  // Cross-references are checked even when the schema failed, so one run lists every problem.
  const schemaPaths = new Set(schemaIssues.map((i) => i.path))
  const crossIssues = crossCheck(parsed.success ? parsed.data : resolved).filter((i) => !schemaPaths.has(i.path))
  // A reference that failed left '' behind; what the schema says about that '' is noise.
  const failedRefs = refIssues.map((i) => i.path)
  const followOn = (i: LocatedIssue): boolean => failedRefs.some((p) => i.path === p || i.path.startsWith(p + '.') || i.path.startsWith(p + '['))
  const fileIssues = parsed.success ? resolveFiles(parsed.data, options.baseDir ?? process.cwd()) : []
  const issues = [...refIssues, ...schemaIssues.filter((i) => !followOn(i)), ...crossIssues.filter((i) => !followOn(i)), ...fileIssues]
  if (issues.length > 0) {
    // Locate after the fact: the path names the YAML node, whose position the document kept.
    for (const issue of issues) {
      if (issue.line === undefined && issue.pathKeys !== undefined) Object.assign(issue, locate(issue.pathKeys))
    }
    throw new ConfigError(redactIssues(issues, filled).map(({ pathKeys: _, ...rest }) => rest), file)
  }
  const config = deepFreeze(parsed.data!)
  validated.add(config)
  return config
}

type LocatedIssue = ConfigIssue & { pathKeys?: PathKey[] }

/** Supplied values shorter than this are not hunted for in messages: "1" or "on" would mangle them. */
const MIN_REDACTED = 4

/**
 * Messages go to `gatehouse check`, the reload error log and whoever collects those, so they
 * never show what a reference supplied (usually a secret, put where it does not belong): at a
 * path a reference filled, the resolved string is shown as written (`${env:TOKEN}`); anywhere,
 * a supplied value of MIN_REDACTED characters or more is `***`. describeZodIssue already
 * describes such paths by their written text.
 */
function redactIssues (issues: LocatedIssue[], filled: RefFills): LocatedIssue[] {
  if (filled.values.size === 0) return issues
  const values = [...filled.values].filter((v) => v.length >= MIN_REDACTED).sort((a, b) => b.length - a.length)
  return issues.map((issue) => {
    let message = issue.message
    for (const [path, { written, resolved }] of filled.paths) {
      if (resolved !== '' && (issue.path === path || issue.path.startsWith(path + '.') || issue.path.startsWith(path + '['))) message = message.replaceAll(resolved, written)
    }
    for (const v of values) message = message.replaceAll(v, '***')
    return message === issue.message ? issue : { ...issue, message }
  })
}

/**
 * A copy of a validated config (`{ ...config, log: … }`) still holds parts of it, whose
 * durations are numbers of milliseconds, and the schema refuses a duration without a unit. Those
 * numbers get their unit back. Parts are recognised by identity (this module made and froze
 * them), never by shape: a number in any other object is the user's, and must have a unit.
 */
function withUnits (value: unknown, schema: z.core.$ZodType | undefined, inValidatedPart: boolean): unknown {
  const s = unwrap(schema, value)
  if (s === undefined) return value
  if (DURATIONS.has(s)) return inValidatedPart && typeof value === 'number' ? `${value}ms` : value
  if (value === null || typeof value !== 'object') return value
  const ours = validatedParts.has(value)
  const def: any = s._zod.def
  const from = value as Record<string, unknown>
  let out = from
  const visit = (key: string, child: z.core.$ZodType | undefined): void => {
    const v = withUnits(from[key], child, ours)
    if (v === from[key]) return
    // Copy on write: validated parts are frozen, and the caller's object is not ours to change.
    if (out === from) out = (Array.isArray(from) ? [...from] : { ...from }) as Record<string, unknown>
    out[key] = v
  }
  if (Array.isArray(from)) {
    if (def.type === 'array') for (let i = 0; i < from.length; i++) visit(String(i), def.element)
  } else if (def.type === 'object' || def.type === 'record') {
    for (const key of Object.keys(from)) visit(key, def.type === 'object' ? def.shape[key] : def.valueType)
  }
  return out
}

/** The schema that reads `value` at a place where `schema` is declared, wrappers removed. */
function unwrap (schema: z.core.$ZodType | undefined, value: unknown): z.core.$ZodType | undefined {
  let s = schema
  for (let guard = 0; s !== undefined && guard < 10 && !DURATIONS.has(s); guard++) {
    const def: any = s._zod.def
    if (def.type === 'optional' || def.type === 'default' || def.type === 'prefault' || def.type === 'nullable') s = def.innerType
    // preprocess() is a pipe from a transform; .pipe() and .transform() read with their input side.
    else if (def.type === 'pipe') s = def.in._zod.def.type === 'transform' ? def.out : def.in
    else if (def.type === 'union' && typeof def.discriminator === 'string') {
      s = def.options.find((o: any) => o._zod.def.shape?.[def.discriminator]?._zod.def.values?.includes((value as any)?.[def.discriminator]))
    } else break
  }
  return s
}

function issueAt (path: PathKey[], message: string): LocatedIssue {
  return { path: pathToString(path), message, pathKeys: path }
}

function describeZodIssue (issue: z.core.$ZodIssue, input: unknown, filled: RefFills): LocatedIssue[] {
  const path = issue.path as PathKey[]
  // A value a reference supplied is described as written in the config, never as resolved.
  const written = filled.paths.get(pathToString(path))?.written
  const describe = (v: unknown): string => written === undefined ? describeValue(v) : `string ${JSON.stringify(written)} (its value is not shown)`
  if (issue.code === 'unrecognized_keys') {
    const known = knownKeys(ConfigSchema, path, input)
    return issue.keys.map((key) => {
      const hint = suggest(key, known)
      return issueAt([...path, key], `unknown key "${key}"${hint === null ? '' : ` (did you mean "${hint}"?)`}`)
    })
  }
  if (issue.code === 'invalid_type') {
    const got = valueAt(input, path)
    if (got === undefined) return [issueAt(path, 'is required')]
    return [issueAt(path, `expected ${issue.expected}, got ${describe(got)}`)]
  }
  if (issue.code === 'invalid_value') {
    return [issueAt(path, `must be one of ${issue.values.map((v) => JSON.stringify(v)).join(', ')}`)]
  }
  if (issue.code === 'invalid_key') {
    // A record key that broke its rule: the rule's own message is nested one level down.
    return [issueAt(path, issue.issues[0]?.message ?? issue.message)]
  }
  if (issue.code === 'invalid_union' && (issue as { discriminator?: string }).discriminator !== undefined) {
    const options = (issue as { options?: unknown[] }).options ?? []
    const got = valueAt(input, path)
    return [issueAt(path, `${got === undefined ? 'is required' : `unknown ${JSON.stringify(got)}`}: must be one of ${options.map((v) => JSON.stringify(v)).join(', ')}`)]
  }
  if (issue.code === 'invalid_union') {
    // Our unions are "string or number" for durations and sizes.
    const got = valueAt(input, path)
    if (got === undefined) return [issueAt(path, 'is required')]
    return [issueAt(path, `expected a string or a number, got ${describe(got)}`)]
  }
  return [issueAt(path, issue.message)]
}

/**
 * Checks that span several parts of the config (names that refer to each other, regexes).
 * Written against unvalidated input too (every field is checked before use), because it also
 * runs when the schema failed.
 */
function crossCheck (config: any): LocatedIssue[] {
  const issues: LocatedIssue[] = []
  const upstreams: Record<string, unknown> = isObject(config?.upstreams) ? config.upstreams : {}
  const routes: unknown[] = Array.isArray(config?.routes) ? config.routes : []
  const upstreamNames = Object.keys(upstreams)
  const seen = new Map<string, number>()
  routes.forEach((route: any, i) => {
    if (!isObject(route)) return
    if (typeof route.name === 'string') {
      const first = seen.get(route.name)
      if (first !== undefined) issues.push(issueAt(['routes', i, 'name'], `duplicate route name "${route.name}" (first used by routes[${first}])`))
      else seen.set(route.name, i)
    }
    if (typeof route.upstream === 'string' && route.upstream !== '' && !Object.hasOwn(upstreams, route.upstream)) {
      const hint = suggest(route.upstream, upstreamNames)
      issues.push(issueAt(['routes', i, 'upstream'], `unknown upstream "${route.upstream}"${hint === null ? '' : ` (did you mean "${hint}"?)`}`))
    }
    const match: Record<string, any> = isObject(route.match) ? route.match : {}
    const kinds = ['path', 'path_prefix', 'path_regex'].filter((k) => match[k] !== undefined)
    if (kinds.length > 1) issues.push(issueAt(['routes', i, 'match'], `use only one of path, path_prefix and path_regex (got ${kinds.join(', ')})`))
    if (typeof match.path_regex === 'string') {
      try {
        RegExp(match.path_regex)
      } catch (err) {
        issues.push(issueAt(['routes', i, 'match', 'path_regex'], `invalid regular expression: ${(err as Error).message}`))
      }
    }
    for (const name of Object.keys(isObject(match.headers) ? match.headers : {})) {
      if (!/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(name)) issues.push(issueAt(['routes', i, 'match', 'headers', name], 'not a valid header name'))
    }
    const strip = route.strip_prefix
    const prefix = match.path_prefix
    // Whole segments, as upstreamPath() strips them: /api is a prefix of /api/v1, not of /apiv1.
    if (typeof strip === 'string' && typeof prefix === 'string' &&
        !(prefix === strip || prefix.startsWith(strip.endsWith('/') ? strip : strip + '/'))) {
      issues.push(issueAt(['routes', i, 'strip_prefix'], `"${route.strip_prefix}" is not a prefix of match.path_prefix "${match.path_prefix}"`))
    }
  })
  issues.push(...checkIdentity(config, routes))
  issues.push(...checkLimits(config, routes))
  issues.push(...checkIntercepts(routes))
  const t = config?.listen?.timeouts
  if (typeof t?.request === 'number' && typeof t?.headers === 'number' && t.request > 0 && t.request < t.headers) {
    // Node refuses to start a server with requestTimeout < headersTimeout.
    issues.push(issueAt(['listen', 'timeouts', 'request'], 'must be 0 (off) or at least listen.timeouts.headers'))
  }
  const proxies: unknown[] = Array.isArray(config?.trusted_proxies) ? config.trusted_proxies : []
  proxies.forEach((cidr, i) => {
    const problem = typeof cidr === 'string' ? cidrProblem(cidr) : null
    if (problem !== null) issues.push(issueAt(['trusted_proxies', i], problem))
  })
  return issues
}

function checkLimits (config: any, routes: unknown[]): LocatedIssue[] {
  const issues: LocatedIssue[] = []
  const stores = ['default', ...Object.keys(isObject(config?.stores) ? config.stores : {})]
  // A limit `name` is one bucket wherever it is used, so every use must define it the same way.
  const named = new Map<string, { at: string, def: string }>()
  routes.forEach((route: any, i) => {
    const cacheStore = route?.cache?.store
    if (typeof cacheStore === 'string' && !stores.includes(cacheStore)) {
      const hint = suggest(cacheStore, stores)
      issues.push(issueAt(['routes', i, 'cache', 'store'], `unknown store "${cacheStore}"${hint === null ? '' : ` (did you mean "${hint}"?)`}`))
    }
  })
  routes.forEach((route: any, i) => {
    if (!isObject(route) || !Array.isArray(route.rate_limit)) return
    const onRoute = new Set<string>()
    route.rate_limit.forEach((l: any, j: number) => {
      if (!isObject(l)) return
      const at = (...k: PathKey[]): PathKey[] => ['routes', i, 'rate_limit', j, ...k]
      if (typeof l.name === 'string') {
        if (onRoute.has(l.name)) issues.push(issueAt(at('name'), `limit "${l.name}" is listed twice on this route (each request would count twice)`))
        onRoute.add(l.name)
        const def = JSON.stringify([l.key, l.rate, l.burst, l.quota, l.cost, l.store ?? 'default', l.ipv6_prefix ?? 64])
        const first = named.get(l.name)
        if (first === undefined) named.set(l.name, { at: `routes[${i}].rate_limit[${j}]`, def })
        else if (first.def !== def) issues.push(issueAt(at('name'), `limit "${l.name}" is defined differently at ${first.at}; a shared name means one bucket, so key, rate, burst, quota, cost, store and ipv6_prefix must match`))
      }
      if (isObject(l.quota) && !Number.isInteger(l.quota.count)) issues.push(issueAt(at('quota'), 'a quota counts whole requests or units: use a whole number'))
      else if (typeof l.quota === 'string' && /^\s*\d+\.\d+/.test(l.quota)) issues.push(issueAt(at('quota'), 'a quota counts whole requests or units: use a whole number'))
      if (typeof l.store === 'string' && !stores.includes(l.store)) {
        const hint = suggest(l.store, stores)
        issues.push(issueAt(at('store'), `unknown store "${l.store}"${hint === null ? '' : ` (did you mean "${hint}"?)`}`))
      }
      const hasRate = l.rate !== undefined
      const hasQuota = l.quota !== undefined
      if (hasRate === hasQuota) issues.push(issueAt(at(), 'give either rate (with an optional burst) or quota'))
      if (l.burst !== undefined && !hasRate) issues.push(issueAt(at('burst'), 'burst goes with rate, not quota'))
      if (hasRate && l.cost !== undefined && l.cost !== 1) issues.push(issueAt(at('cost'), 'a cost other than 1 goes with quota (rates count requests)'))
      if (l.ipv6_prefix !== undefined && l.key !== 'ip' && l.missing !== 'ip') issues.push(issueAt(at('ipv6_prefix'), 'only for key: ip or missing: ip (it says how addresses are counted)'))
      if (typeof l.key === 'string' && /^(subject|client_id|api_key|claim:)/.test(l.key) && !isObject(route.auth)) {
        issues.push(issueAt(at('key'), `"${l.key}" needs an auth block on the route (there is no caller identity without one)`))
      }
    })
  })
  return issues
}

/** Transforms, plugins and async delivery: expressions that must parse, and combinations that cannot work. */
function checkIntercepts (routes: unknown[]): LocatedIssue[] {
  const issues: LocatedIssue[] = []
  routes.forEach((route: any, i) => {
    if (!isObject(route)) return
    const t = isObject(route.transform) ? route.transform : {}
    for (const side of ['request', 'response'] as const) {
      const block = isObject(t[side]) ? t[side] : {}
      for (const key of ['body', 'events']) {
        if (typeof block[key] !== 'string') continue
        const problem = expressionProblem(block[key])
        if (problem !== null) issues.push(issueAt(['routes', i, 'transform', side, key], problem))
      }
      const edits = isObject(block.headers) ? block.headers : {}
      for (const op of ['remove', 'rename', 'set', 'add']) {
        const names: unknown[] = Array.isArray(edits[op]) ? edits[op] : isObject(edits[op]) ? [...Object.keys(edits[op]), ...(op === 'rename' ? Object.values(edits[op]) : [])] : []
        for (const name of names) {
          if (typeof name !== 'string') continue
          const lower = name.toLowerCase()
          if (lower === 'content-type' && side === 'request') continue
          if (isReservedHeader(lower) && lower !== 'authorization' && lower !== 'cookie') {
            issues.push(issueAt(['routes', i, 'transform', side, 'headers', op], `"${name}" is a header the gateway sets or rewrites itself`))
          }
        }
      }
    }
    const path = isObject(t.request) && isObject(t.request.path) ? t.request.path : null
    if (path !== null && typeof path.pattern === 'string') {
      try {
        RegExp(path.pattern)
      } catch (err) {
        issues.push(issueAt(['routes', i, 'transform', 'request', 'path', 'pattern'], `invalid regular expression: ${(err as Error).message}`))
      }
    }
    const response = isObject(t.response) ? t.response : {}
    const readsResponse = typeof response.body === 'string' || isObject(route.plugin)
    if (isObject(route.cache) && readsResponse) {
      // The cache stores the upstream's answer; a hit would skip the transform or plugin.
      issues.push(issueAt(['routes', i, 'cache'], 'a cached route cannot also transform response bodies or run a plugin (a cache hit would skip them)'))
    }
    const delivery = isObject(route.delivery) ? route.delivery : {}
    if (delivery.mode === 'async') {
      if (isObject(route.cache)) issues.push(issueAt(['routes', i, 'cache'], 'an async route answers 202 itself: it has nothing to cache'))
      // A plugin's onRequest runs before the request is stored; its onResponse never runs.
      if (typeof response.body === 'string' || typeof response.events === 'string' || isObject(response.headers) || isObject(response.status)) {
        issues.push(issueAt(['routes', i, 'transform', 'response'], 'an async route answers 202 itself: the upstream\'s response never reaches the client'))
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
const ALG_CURVES: Record<string, string> = { ES256: 'prime256v1', ES384: 'secp384r1' }

/** Phantom-token algorithms and the key types they need. */
const ALG_KEY_TYPES: Record<string, string> = { ES256: 'ec', ES384: 'ec', RS256: 'rsa', PS256: 'rsa', EdDSA: 'ed25519' }

function checkIdentity (config: any, routes: unknown[]): LocatedIssue[] {
  const issues: LocatedIssue[] = []
  const identity: Record<string, any> = isObject(config?.identity) ? config.identity : {}
  const providers: Record<string, any> = isObject(identity.providers) ? identity.providers : {}
  const providerNames = Object.keys(providers)
  const credentialHeaders = new Set(Object.values(providers).filter((p) => p?.kind === 'api_key').map((p) => String(p.header ?? 'x-api-key').toLowerCase()))
  for (const [name, p] of Object.entries(providers)) {
    if (p?.kind !== 'api_key' || typeof p.header !== 'string') continue
    const h = p.header.toLowerCase()
    // Authorization is allowed (keys as bearer tokens); the other reserved names are not.
    if (h !== 'authorization' && isReservedHeader(h)) {
      issues.push(issueAt(['identity', 'providers', name, 'header'], `"${p.header}" is a header the gateway sets or rewrites itself`))
    }
  }
  for (const [name, p] of Object.entries(providers)) {
    if (p?.kind !== 'webhook' || typeof p.scheme !== 'string') continue
    const at = (...k: PathKey[]): PathKey[] => ['identity', 'providers', name, ...k]
    if (p.scheme === 'hmac') {
      if (p.header === undefined) issues.push(issueAt(at('header'), 'is required for scheme: hmac (the header that carries the signature)'))
      const signed = typeof p.signed === 'string' ? p.signed : '{body}'
      if (signed.includes('{timestamp}') && p.timestamp_header === undefined) issues.push(issueAt(at('timestamp_header'), 'is required when signed uses {timestamp}'))
      if (signed.includes('{id}') && p.id_header === undefined) issues.push(issueAt(at('id_header'), 'is required when signed uses {id}'))
      // A signature that does not cover the body would let anyone replay it with any body.
      if (!signed.includes('{body}')) issues.push(issueAt(at('signed'), 'must include {body}'))
    } else {
      // The named schemes fix their own headers and layout: a field set here would be ignored.
      for (const f of ['header', 'algorithm', 'encoding', 'prefix', 'signed', 'timestamp_header', 'id_header']) {
        if (p[f] !== undefined) issues.push(issueAt(at(f), `only for scheme: hmac (scheme ${p.scheme} fixes it)`))
      }
      // Standard Webhooks secrets are base64 key bytes; the message must not echo the secret.
      const secrets: unknown[] = p.scheme === 'standard' && Array.isArray(p.secrets) ? p.secrets : []
      secrets.forEach((s, j) => {
        if (typeof s === 'string' && !/^(?:whsec_)?(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{4}|[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)$/.test(s)) {
          issues.push(issueAt(at('secrets', j), 'must be base64 (after an optional "whsec_" prefix)'))
        }
      })
    }
  }
  const phantom = identity.phantom_token
  if (isObject(phantom) && typeof phantom.key === 'string') {
    const alg = String(phantom.alg ?? 'ES256')
    try {
      const key = createPrivateKey(phantom.key)
      const want = ALG_KEY_TYPES[alg]
      const curve = key.asymmetricKeyDetails?.namedCurve
      if (want !== undefined && key.asymmetricKeyType !== want) {
        issues.push(issueAt(['identity', 'phantom_token', 'key'], `a ${key.asymmetricKeyType} key cannot sign ${alg} (it needs ${want})`))
      } else if (ALG_CURVES[alg] !== undefined && curve !== ALG_CURVES[alg]) {
        issues.push(issueAt(['identity', 'phantom_token', 'key'], `${alg} needs a ${ALG_CURVES[alg]} key, not ${curve}`))
      } else if (!phantom.key.includes('-----BEGIN PRIVATE KEY-----')) {
        // WebCrypto imports PKCS#8 only; SEC1 ("EC PRIVATE KEY") and PKCS#1 ("RSA PRIVATE KEY") would fail at start.
        issues.push(issueAt(['identity', 'phantom_token', 'key'], 'must be a PKCS#8 PEM ("-----BEGIN PRIVATE KEY-----"); convert with `openssl pkcs8 -topk8 -nocrypt`'))
      }
    } catch (err) {
      issues.push(issueAt(['identity', 'phantom_token', 'key'], `not a PEM private key: ${(err as Error).message}`))
    }
    if (typeof phantom.header === 'string') {
      const h = phantom.header.toLowerCase()
      if (h !== 'authorization' && isReservedHeader(h)) issues.push(issueAt(['identity', 'phantom_token', 'header'], `"${phantom.header}" is a header the gateway sets or rewrites itself`))
      else if (credentialHeaders.has(h)) issues.push(issueAt(['identity', 'phantom_token', 'header'], `"${phantom.header}" carries API keys (identity.providers)`))
    }
  }
  routes.forEach((route: any, i) => {
    if (!isObject(route)) return
    const auth = route.auth
    if (isObject(auth)) {
      const anyOf: unknown[] = Array.isArray(auth.any_of) ? auth.any_of : []
      anyOf.forEach((name, j) => {
        if (typeof name !== 'string' || name === '') return
        if (!Object.hasOwn(providers, name)) {
          const hint = suggest(name, providerNames)
          issues.push(issueAt(['routes', i, 'auth', 'any_of', j], `unknown identity provider "${name}"${hint === null ? '' : ` (did you mean "${hint}"?)`}`))
        } else if (anyOf.indexOf(name) !== j) {
          issues.push(issueAt(['routes', i, 'auth', 'any_of', j], `provider "${name}" is listed twice`))
        }
      })
      if (auth.phantom_token === true && !isObject(phantom)) {
        issues.push(issueAt(['routes', i, 'auth', 'phantom_token'], 'needs identity.phantom_token (the key the gateway signs with)'))
      }
      for (const [claim, m] of Object.entries(isObject(auth.claims) ? auth.claims : {})) {
        if (isObject(m) && typeof m.pattern === 'string') {
          try {
            RegExp(m.pattern)
          } catch (err) {
            issues.push(issueAt(['routes', i, 'auth', 'claims', claim, 'pattern'], `invalid regular expression: ${(err as Error).message}`))
          }
        }
      }
    }
    const ip = route.ip
    if (isObject(ip)) {
      for (const key of ['allow', 'deny']) {
        const list: unknown[] = Array.isArray(ip[key]) ? ip[key] : []
        list.forEach((cidr, j) => {
          const problem = typeof cidr === 'string' ? cidrProblem(cidr) : null
          if (problem !== null) issues.push(issueAt(['routes', i, 'ip', key, j], problem))
        })
      }
    }
    const ih = route.identity_headers
    if (isObject(ih)) {
      if (!isObject(auth)) issues.push(issueAt(['routes', i, 'identity_headers'], 'identity headers need an auth block on the route'))
      const named: Array<[PathKey[], unknown]> = [
        ...['subject', 'client_id', 'scopes', 'provider'].map((k): [PathKey[], unknown] => [['routes', i, 'identity_headers', k], ih[k]]),
        ...Object.entries(isObject(ih.claims) ? ih.claims : {}).map(([k, v]): [PathKey[], unknown] => [['routes', i, 'identity_headers', 'claims', k], v]),
      ]
      for (const [path, header] of named) {
        if (typeof header !== 'string') continue
        if (isReservedHeader(header)) issues.push(issueAt(path, `"${header}" is a header the gateway sets or rewrites itself`))
        else if (credentialHeaders.has(header.toLowerCase().replaceAll('_', '-'))) issues.push(issueAt(path, `"${header}" carries API keys (identity.providers)`))
      }
    }
  })
  return issues
}

function isObject (v: unknown): v is Record<string, any> {
  return v !== null && typeof v === 'object' && !Array.isArray(v)
}

/**
 * TLS material given as paths is resolved against the config file's directory (not the
 * working directory) and read now, so `gatehouse check` catches a missing key file.
 */
function resolveFiles (config: Config, baseDir: string): LocatedIssue[] {
  const issues: LocatedIssue[] = []
  // Plugins and the delivery database, like TLS files, are relative to the config file.
  config.routes.forEach((route, i) => {
    if (route.plugin === undefined) return
    const path = resolve(baseDir, route.plugin.path)
    ;(route.plugin as { path: string }).path = path
    if (!existsSync(path)) issues.push(issueAt(['routes', i, 'plugin', 'path'], `cannot read ${path}: no such file`))
  })
  if (config.delivery.store.kind === 'sqlite') (config.delivery.store as { path: string }).path = resolve(baseDir, config.delivery.store.path)
  const tls = config.listen.tls as Record<string, string | undefined> | undefined
  if (tls === undefined) return issues
  for (const key of ['cert', 'key', 'ca'] as const) {
    const value = tls[key]
    if (value === undefined || value.includes('-----BEGIN')) continue
    const path = resolve(baseDir, value)
    const text = readRefFile(path)
    if (typeof text !== 'string') {
      issues.push(issueAt(['listen', 'tls', key], text.problem))
      continue
    }
    tls[key] = text
    if (!tls[key]!.includes('-----BEGIN')) issues.push(issueAt(['listen', 'tls', key], `${path} is not a PEM file`))
  }
  // A cipher list OpenSSL cannot use would otherwise fail only when the listener is made.
  // (node:tls is loaded here, not at start-up, which most configs never need.)
  try {
    process.getBuiltinModule('node:tls').createSecureContext({ ciphers: tls.ciphers })
  } catch (err) {
    issues.push(issueAt(['listen', 'tls', 'ciphers'], `OpenSSL accepts none of these ciphers (${(err as Error).message})`))
  }
  return issues
}

/** The keys an object schema at `path` accepts, for "did you mean" hints. */
function knownKeys (schema: z.core.$ZodType, path: readonly PathKey[], input: unknown): string[] {
  let s: z.core.$ZodType | undefined = schema
  let here: any = input
  for (const key of [...path, null]) {
    // A discriminated union (identity providers by `kind`): follow the option the input chose.
    const u: any = s?._zod.def
    if (u?.type === 'union' && typeof u.discriminator === 'string') {
      s = u.options.find((o: any) => o._zod.def.shape?.[u.discriminator]?._zod.def.values?.includes(here?.[u.discriminator]))
    }
    // Unwrap wrappers until we reach something that has structure.
    for (let guard = 0; s !== undefined && guard < 10; guard++) {
      const def: any = s._zod.def
      if (def.type === 'optional' || def.type === 'default' || def.type === 'prefault' || def.type === 'nullable') s = def.innerType
      else if (def.type === 'pipe') s = def.in
      else break
    }
    if (s === undefined) return []
    const def: any = s._zod.def
    if (key === null) return def.type === 'object' ? Object.keys(def.shape) : []
    here = here?.[key]
    if (def.type === 'object') s = def.shape[key]
    else if (def.type === 'array') s = def.element
    else if (def.type === 'record') s = def.valueType
    else return []
  }
  return []
}

/** The closest candidate by edit distance, if it is close enough to be a likely typo. */
export function suggest (word: string, candidates: readonly string[]): string | null {
  let best: string | null = null
  let bestDistance = Infinity
  for (const c of candidates) {
    const d = editDistance(word.toLowerCase(), c.toLowerCase())
    if (d < bestDistance) {
      best = c
      bestDistance = d
    }
  }
  return best !== null && bestDistance <= Math.max(2, Math.floor(word.length / 3)) ? best : null
}

function editDistance (a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, j) => j)
  for (let i = 1; i <= a.length; i++) {
    let prev = row[0]!
    row[0] = i
    for (let j = 1; j <= b.length; j++) {
      const tmp = row[j]!
      row[j] = Math.min(row[j]! + 1, row[j - 1]! + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1))
      prev = tmp
    }
  }
  return row[b.length]!
}

function valueAt (value: unknown, path: readonly PathKey[]): unknown {
  let v: any = value
  for (const k of path) {
    if (v === null || typeof v !== 'object') return undefined
    v = v[k]
  }
  return v
}

function describeValue (v: unknown): string {
  if (v === null) return 'null'
  if (Array.isArray(v)) return 'a list'
  if (typeof v === 'object') return 'a mapping'
  if (typeof v === 'string') {
    // A URL written in place (redis://:secret@host) where a number was expected.
    const s = v.includes('://') && v.includes('@') ? redactUrl(v) : v
    return `string ${JSON.stringify(s.length > 40 ? s.slice(0, 40) + '…' : s)}`
  }
  return `${typeof v} ${String(v)}`
}

function locateNode (doc: Document, lineCounter: LineCounter, path: readonly PathKey[]): Pick<ConfigIssue, 'line' | 'column'> {
  // Walk as deep as the document goes: a missing key is reported at its parent.
  let node: unknown = doc.contents
  let keyNode: YamlNode | null = null
  for (const key of path) {
    if (isMap(node)) {
      const pair = node.items.find((p) => isScalar(p.key) && String(p.key.value) === String(key))
      if (pair === undefined) break
      keyNode = pair.key as YamlNode
      node = pair.value
    } else if (isSeq(node) && typeof key === 'number' && key < node.items.length) {
      keyNode = null
      node = node.items[key]
    } else {
      break
    }
  }
  const target = (node as YamlNode | null)?.range ? node as YamlNode : keyNode
  const offset = target?.range?.[0]
  if (offset === undefined) return {}
  const pos = lineCounter.linePos(offset)
  return { line: pos.line, column: pos.col }
}

function deepFreeze<T> (value: T): T {
  if (value !== null && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value)
    validatedParts.add(value)
    for (const v of Object.values(value)) deepFreeze(v)
  }
  return value
}
