// Named imports (not the `z` namespace) let the CLI bundle drop zod's 250 KB of locales.
import { NEVER, array, boolean, enum as zenum, number, preprocess, record, strictObject, string, union, type input, type output } from 'zod'
import { parseDuration, parseSize } from './units.js'

/*
 * The shape of gatehouse.yaml. Defaults live here, in one place, and docs/configuration.md
 * documents each of them. Objects are strict: an unknown key is an error (with a "did you mean"),
 * because a typo in a gateway config usually means a policy silently not applied.
 */

const duration = (what = 'duration') => union([string(), number()]).transform((v, ctx) => {
  const ms = parseDuration(v)
  if (ms === null) {
    ctx.addIssue({ code: 'custom', message: `invalid ${what} ${JSON.stringify(v)} (use e.g. 500ms, 2s, 5m, 1h)` })
    return NEVER
  }
  return ms
})

const size = () => union([string(), number()]).transform((v, ctx) => {
  const bytes = parseSize(v)
  if (bytes === null) {
    ctx.addIssue({ code: 'custom', message: `invalid size ${JSON.stringify(v)} (use e.g. 512KiB, 10MiB, 1GiB)` })
    return NEVER
  }
  return bytes
})

/*
 * `${env:...}` references always produce strings, so numbers and booleans also accept their
 * string spelling ("8080", "true"); anything else is left for the schema to refuse.
 */
const int = () => preprocess((v) => typeof v === 'string' && /^\s*-?\d+\s*$/.test(v) ? Number(v) : v, number().int())
const bool = () => preprocess((v) => v === 'true' ? true : v === 'false' ? false : v, boolean())

const port = preprocess((v) => typeof v === 'string' && /^\s*\d+\s*$/.test(v) ? Number(v) : v, number().int().min(0).max(65535))
const nonEmpty = string().min(1, 'must not be empty')

/** CONNECT is absent: Node's server hands it to a separate event, and a gateway is no tunnel. */
export const HTTP_METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS', 'TRACE'] as const

const TlsSchema = strictObject({
  /** PEM text, or a path to a PEM file. */
  cert: nonEmpty,
  key: nonEmpty,
  ca: nonEmpty.optional(),
})

const ListenSchema = strictObject({
  host: string().default('0.0.0.0'),
  port: port.default(8080),
  tls: TlsSchema.optional(),
  timeouts: strictObject({
    /** Whole request head must arrive within this (slowloris). */
    headers: duration().default(10_000),
    /** Whole request (head and body) must arrive within this; 0 disables (multi-GB uploads). */
    request: duration().default(0),
    /**
     * A client connection with no bytes moving either way is closed after this; 0 (the
     * default) disables it. Off by default because Node refreshes the socket's timer on every
     * chunk, which cut streaming uploads to a third (BENCHMARKS.md); stalled clients are
     * still bounded by `headers`, `keep_alive`, `request` and the upstream's timeouts.
     */
    idle: duration().default(0),
    /** Idle keep-alive connections between requests are closed after this. */
    keep_alive: duration().default(5_000),
  }).prefault({}),
  /** Largest request head (request line and headers) accepted; larger → 431. */
  max_header_size: size().default(16 * 1024),
  /** Most header fields accepted in one request; more → 431. */
  max_headers: int().pipe(number().min(1).max(10_000)).default(100),
}).prefault({})

const AdminSchema = strictObject({
  host: string().default('127.0.0.1'),
  port: port.default(9901),
  enabled: bool().default(true),
}).prefault({})

const TargetSchema = strictObject({
  url: string().transform((v, ctx) => {
    let u: URL
    try {
      u = new URL(v)
    } catch {
      ctx.addIssue({ code: 'custom', message: `invalid URL ${JSON.stringify(v)}` })
      return NEVER
    }
    if (u.protocol !== 'http:' && u.protocol !== 'https:') {
      ctx.addIssue({ code: 'custom', message: `target URL must be http:// or https://, got ${JSON.stringify(u.protocol)}` })
      return NEVER
    }
    if (u.search !== '' || u.hash !== '' || u.username !== '' || u.password !== '') {
      ctx.addIssue({ code: 'custom', message: 'target URL must not carry a query, fragment or credentials' })
      return NEVER
    }
    return u.origin + (u.pathname === '/' ? '' : u.pathname.replace(/\/$/, ''))
  }),
  weight: int().pipe(number().min(1).max(1000)).default(1),
})

const UpstreamSchema = strictObject({
  targets: array(TargetSchema).min(1, 'an upstream needs at least one target'),
  balance: zenum(['round_robin', 'least_request']).default('least_request'),
  timeouts: strictObject({
    connect: duration().default(2_000),
    /** Time from sending the request until the response head arrives. */
    first_byte: duration().default(60_000),
    /** Longest gap between two chunks of the response body; 0 disables. */
    idle: duration().default(300_000),
  }).prefault({}),
  /** Most connections per target. */
  max_connections: int().pipe(number().min(1).max(100_000)).default(128),
  /** How long an idle upstream connection is kept for reuse. */
  keep_alive: duration().default(4_000),
  /** Passive health: a target failing to connect this many times in a row is ejected for `duration`. */
  ejection: strictObject({
    failures: int().pipe(number().min(1)).default(1),
    duration: duration().default(10_000),
  }).prefault({}),
})

const MatchSchema = strictObject({
  path: string().startsWith('/', 'must start with "/"').optional(),
  path_prefix: string().startsWith('/', 'must start with "/"').optional(),
  path_regex: string().optional(),
  methods: array(string().transform((m) => m.toUpperCase()).pipe(zenum(HTTP_METHODS))).min(1).optional(),
  host: string().optional(),
  headers: record(string(), string()).optional(),
}).prefault({})

const RouteSchema = strictObject({
  name: nonEmpty.regex(/^[A-Za-z0-9_.-]+$/, 'use letters, digits, "_", "-" and "." only'),
  match: MatchSchema,
  upstream: nonEmpty,
  strip_prefix: string().startsWith('/', 'must start with "/"').optional(),
  /** Forward the client's Host header (true) or the target's host (false). */
  preserve_host: bool().default(true),
  /** Allow WebSocket (and other) upgrades on this route. */
  websocket: bool().default(true),
  limits: strictObject({
    /** Largest request body; 0 means no limit (streams of any size). */
    max_body: size().default(0),
  }).prefault({}),
})

const LogSchema = strictObject({
  level: zenum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).default('info'),
  /** One JSON line per request. */
  access: bool().default(true),
}).prefault({})

export const ConfigSchema = strictObject({
  listen: ListenSchema,
  admin: AdminSchema,
  trusted_proxies: array(string()).default([]),
  log: LogSchema,
  shutdown: strictObject({ grace: duration().default(30_000) }).prefault({}),
  upstreams: record(string().regex(/^[A-Za-z0-9_.-]+$/, 'upstream names use letters, digits, "_", "-" and "."'), UpstreamSchema).default({}),
  routes: array(RouteSchema).default([]),
})

/** The validated configuration: defaults filled in, durations in ms, sizes in bytes. */
export type Config = output<typeof ConfigSchema>
/** What a user may write (the YAML's shape). */
export type ConfigInput = input<typeof ConfigSchema>
export type UpstreamConfig = Config['upstreams'][string]
export type RouteConfig = Config['routes'][number]
