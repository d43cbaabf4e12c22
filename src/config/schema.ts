// Named imports (not the `z` namespace) let the CLI bundle drop zod's 250 KB of locales.
import {
  NEVER,
  array,
  boolean,
  discriminatedUnion,
  enum as zenum,
  literal,
  number,
  preprocess,
  record,
  strictObject,
  string,
  union,
  unknown,
  type input,
  type output,
} from 'zod'
import { isUnitlessDuration, parseDuration, parseSize } from './units.js'

/*
 * The shape of gatehouse.yaml. Defaults live here, in one place, and docs/configuration.md
 * documents each of them. Objects are strict: an unknown key is an error (with a "did you mean"),
 * because a typo in a gateway config usually means a policy silently not applied.
 */

/** Durations this schema declares, so validateConfig can find them in a copy of a validated config. */
export const DURATIONS = new WeakSet<object>()

const duration = () => {
  const schema = union([string(), number()]).transform((v, ctx) => {
    const ms = parseDuration(v)
    if (ms === null) {
      ctx.addIssue({
        code: 'custom',
        message: isUnitlessDuration(v)
          ? `invalid duration ${JSON.stringify(v)}: a duration needs a unit (use e.g. 60s or 500ms)`
          : `invalid duration ${JSON.stringify(v)} (use e.g. 500ms, 2s, 5m, 1h)`,
      })
      return NEVER
    }
    return ms
  })
  DURATIONS.add(schema)
  return schema
}

const size = () => union([string(), number()]).transform((v, ctx) => {
  const bytes = parseSize(v)
  if (bytes === null) {
    ctx.addIssue({
      code: 'custom',
      message: `invalid size ${JSON.stringify(v)} (use e.g. 512KiB, 10MiB, 1GiB)`,
    })
    return NEVER
  }
  return bytes
})

/*
 * `${env:...}` references always produce strings, so numbers and booleans also accept their
 * string spelling ("8080", "true"); anything else is left for the schema to refuse.
 */
const int = () =>
  preprocess(
    (v) => typeof v === 'string' && /^\s*-?\d+\s*$/.test(v) ? Number(v) : v,
    number().int(),
  )
const bool = () => preprocess((v) => v === 'true' ? true : v === 'false' ? false : v, boolean())

const port = preprocess(
  (v) => typeof v === 'string' && /^\s*\d+\s*$/.test(v) ? Number(v) : v,
  number().int().min(0).max(65535),
)
const nonEmpty = string().min(1, 'must not be empty')

/** CONNECT is absent: Node's server hands it to a separate event, and a gateway is no tunnel. */
export const HTTP_METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS',
  'TRACE'] as const

/**
 * Mozilla's "intermediate" TLS 1.2 suites: forward secrecy and AEAD only (no CBC, no SHA-1, no
 * RSA key exchange). TLS 1.3 suites are separate in OpenSSL and all of them are modern.
 */
export const DEFAULT_TLS_CIPHERS = [
  'TLS_AES_128_GCM_SHA256',
  'TLS_AES_256_GCM_SHA384',
  'TLS_CHACHA20_POLY1305_SHA256',
  'ECDHE-ECDSA-AES128-GCM-SHA256',
  'ECDHE-RSA-AES128-GCM-SHA256',
  'ECDHE-ECDSA-AES256-GCM-SHA384',
  'ECDHE-RSA-AES256-GCM-SHA384',
  'ECDHE-ECDSA-CHACHA20-POLY1305',
  'ECDHE-RSA-CHACHA20-POLY1305',
].join(':')

const TlsSchema = strictObject({
  /** PEM text, or a path to a PEM file. */
  cert: nonEmpty,
  key: nonEmpty,
  ca: nonEmpty.optional(),
  /** Oldest protocol version accepted. */
  min_version: zenum(['TLSv1.2', 'TLSv1.3']).default('TLSv1.2'),
  /** OpenSSL cipher list (TLS 1.2 suites and TLS 1.3 suite names, ':'-separated). */
  ciphers: nonEmpty.default(DEFAULT_TLS_CIPHERS),
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
    /**
     * A request body that the gateway is reading and that brings no byte for this long is
     * answered 408 and the connection closed (nginx's client_body_timeout).
     */
    body_idle: duration().default(30_000),
    /**
     * After its first `body_idle`, a body must average at least this many bytes per second
     * (0 disables): a client trickling one byte at a time never trips `body_idle` but would
     * hold an upstream connection forever. A deadline that grows with each byte (Apache's
     * mod_reqtimeout MinRate) bounds it without cutting slow but honest multi-GB uploads.
     */
    body_min_rate: size().default(1024),
    /**
     * A client that accepts no byte of its response for this long is cut off and the upstream
     * request cancelled (nginx's send_timeout).
     */
    send_idle: duration().default(60_000),
    /**
     * After an early answer (413, 401, …) to a request whose body is still arriving, the
     * gateway half-closes and reads and discards for at most this long, so the client reads
     * the answer instead of a reset (nginx's lingering_close, RFC 9112 §9.6).
     */
    linger: duration().default(5_000),
  }).prefault({}),
  limits: strictObject({
    /** Open connections on the listener; more are closed at once (0: no limit). */
    max_connections: int().pipe(number().min(0).max(10_000_000)).default(10_000),
    /** Open connections from one client address (0: no limit). */
    max_connections_per_ip: int().pipe(number().min(0).max(10_000_000)).default(256),
    /** Requests served on one keep-alive connection before it is closed (nginx keepalive_requests). */
    max_requests_per_connection: int().pipe(number().min(0).max(100_000_000)).default(10_000),
    /**
     * Requests one connection may have in progress at once (HTTP/1.1 pipelining); past it the
     * gateway stops reading the connection until responses are delivered.
     */
    max_pipelined: int().pipe(number().min(1).max(1024)).default(16),
    /** Longest request target (path and query); longer → 414. */
    max_uri: size().pipe(number().min(64, 'must be at least 64B')).default(8 * 1024),
  }).prefault({}),
  /**
   * Forward request headers whose names contain '_' (dropped by default, as nginx's
   * underscores_in_headers off and gunicorn do: X_Forwarded_For and Transfer_Encoding read as
   * the real thing by CGI-style servers).
   */
  underscores_in_headers: bool().default(false),
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
      ctx.addIssue({
        code: 'custom',
        message: `target URL must be http:// or https://, got ${JSON.stringify(u.protocol)}`,
      })
      return NEVER
    }
    if (u.search !== '' || u.hash !== '' || u.username !== '' || u.password !== '') {
      ctx.addIssue({
        code: 'custom',
        message: 'target URL must not carry a query, fragment or credentials',
      })
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
  /**
   * Most requests in flight per target (0: no limit), for backends that slow down when
   * overloaded (GPU model servers). Requests over it wait in `queue`.
   */
  max_in_flight: int().pipe(number().min(0).max(100_000)).default(0),
  queue: strictObject({
    /** Most requests waiting for a slot, across the upstream's targets; more → 503. */
    size: int().pipe(number().min(0).max(1_000_000)).default(100),
    /** Longest wait for a slot; then 503 with Retry-After. */
    timeout: duration().default(10_000),
  }).prefault({}),
  /** How long an idle upstream connection is kept for reuse. */
  keep_alive: duration().default(4_000),
  /** Passive health: a target failing to connect this many times in a row is ejected for `duration`. */
  ejection: strictObject({
    failures: int().pipe(number().min(1)).default(1),
    duration: duration().default(10_000),
  }).prefault({}),
})

/** RFC 9110 token: what a header name may contain. */
const headerName = nonEmpty.regex(/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/, 'not a valid header name')
  .transform((h) => h.toLowerCase())

const httpUrl = (what: string) =>
  string().refine((v) => {
    try {
      const u = new URL(v)
      return u.protocol === 'http:' || u.protocol === 'https:'
    } catch {
      return false
    }
  }, `${what} must be an http:// or https:// URL`)

/**
 * Asymmetric JWS algorithms only: keys come from a published JWKS, and an HMAC "key" taken from
 * a JWKS is public, so HS256 would let anyone mint tokens (the classic key-confusion attack).
 */
export const JWT_ALGORITHMS = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256',
  'ES384', 'ES512', 'EdDSA', 'Ed25519'] as const

const JwtProviderSchema = strictObject({
  kind: literal('jwt'),
  /** Expected `iss`; also where discovery looks (`{issuer}/.well-known/openid-configuration`). */
  issuer: httpUrl('issuer'),
  /** Skip discovery and fetch keys from here. */
  jwks_uri: httpUrl('jwks_uri').optional(),
  /** Accepted `aud` values (any one must be present). Required: a token minted for another API must not work here. */
  audiences: array(nonEmpty).min(1, 'list at least one audience'),
  algorithms: array(zenum(JWT_ALGORITHMS)).min(1).default(['RS256', 'PS256', 'ES256', 'EdDSA']),
  clock_skew: duration().default(30_000),
  /** Keys are refetched in the background once they are this old. */
  key_max_age: duration().default(600_000),
  /** Shortest time between two fetches caused by unknown `kid`s. */
  refetch_cooldown: duration().default(30_000),
  /** Claims that must be present (`exp` is always required). */
  required_claims: array(nonEmpty).default(['sub', 'exp']),
  /** Allowed `typ` header values, compared as RFC 8725 says; a token without `typ` counts as "JWT". */
  token_types: array(nonEmpty).min(1).default(['at+jwt', 'JWT']),
  /** Timeout for discovery and JWKS requests. */
  timeout: duration().default(5_000),
  /** Tokens longer than this are refused without being parsed. */
  max_token_size: size().default(8 * 1024),
  /** Verified tokens kept (by SHA-256 of the token) so a repeated token is not verified again. */
  cache: strictObject({ max_entries: int().pipe(number().min(0)).default(10_000) }).prefault({}),
  /** A token issued (`iat`) longer ago than this is refused, whatever its `exp` says. */
  max_age: duration().default(86_400_000),
  /**
   * A token valid for longer than this (`exp - iat`; without `iat`, `exp` - now) is refused:
   * an IdP misconfigured, or a token minted to outlive its keys.
   */
  max_lifetime: duration().default(86_400_000),
})

const IntrospectionProviderSchema = strictObject({
  kind: literal('introspection'),
  endpoint: httpUrl('endpoint'),
  client_id: nonEmpty,
  client_secret: nonEmpty,
  /** client_secret_basic (Authorization: Basic) or client_secret_post (in the form body). */
  auth_method: zenum(['basic', 'post']).default('basic'),
  timeout: duration().default(2_000),
  /** When set, an active token's `aud` must include one of these. */
  audiences: array(nonEmpty).min(1).optional(),
  /** When set, an active token's `iss` (if present) must equal this. */
  issuer: nonEmpty.optional(),
  cache: strictObject({
    active_ttl: duration().default(60_000),
    inactive_ttl: duration().default(5_000),
    max_entries: int().pipe(number().min(0)).default(10_000),
  }).prefault({}),
})

const ApiKeySchema = strictObject({
  id: nonEmpty.regex(/^[A-Za-z0-9_.:@-]+$/, 'use letters, digits and "_.:@-" only'),
  /** Hex SHA-256 of the key: the key itself never appears in config. */
  sha256: string().regex(/^[0-9a-fA-F]{64}$/, 'must be the 64-hex-digit SHA-256 of the key')
    .transform((h) => h.toLowerCase()),
  /** Scopes travel space-separated (the phantom token's `scope`, x-gatehouse-scopes). */
  scopes: array(
    nonEmpty.regex(/^[^\s]+$/, 'a scope cannot contain whitespace (scopes are space-separated)'),
  ).default([]),
  /** Free-form claims for authorization and identity headers (e.g. tier, org). */
  metadata: record(string(), unknown()).default({}),
})

const ApiKeyProviderSchema = strictObject({
  kind: literal('api_key'),
  header: headerName.default('x-api-key'),
  keys: array(ApiKeySchema).default([]),
})

/**
 * A webhook sender, recognised by its HMAC signature over the raw request body. The schemes
 * name the header layouts of Slack (v0), GitHub (X-Hub-Signature-256), Stripe, Standard Webhooks
 * (webhook-id/-timestamp/-signature) and a generic `hmac` described field by field.
 */
export const WEBHOOK_SCHEMES = ['slack', 'github', 'stripe', 'standard', 'hmac'] as const

const WebhookProviderSchema = strictObject({
  kind: literal('webhook'),
  scheme: zenum(WEBHOOK_SCHEMES),
  /** Every secret is tried, so a secret can be rotated without refusing the sender meanwhile. */
  secrets: array(nonEmpty).min(1, 'list at least one secret'),
  /** Signed timestamps further than this from the gateway's clock are refused (replays). */
  tolerance: duration().default(300_000),
  /** hmac only: the header that carries the signature. */
  header: headerName.optional(),
  /** hmac only. */
  algorithm: zenum(['sha1', 'sha256', 'sha512']).optional(),
  /** hmac only: how the signature is written. */
  encoding: zenum(['hex', 'base64', 'base64url']).optional(),
  /** hmac only: text before the signature in the header, e.g. "sha256=". */
  prefix: string().optional(),
  /** hmac only: what is signed; {body}, {timestamp} and {id} are replaced. */
  signed: nonEmpty.optional(),
  /** hmac only: the header with the signed Unix timestamp (seconds); needed for {timestamp}. */
  timestamp_header: headerName.optional(),
  /** hmac only: the header with the message id; needed for {id}. */
  id_header: headerName.optional(),
})

export const PHANTOM_ALGORITHMS = ['ES256', 'ES384', 'RS256', 'PS256', 'EdDSA'] as const

/** A quoted-string's content without escapes: no quote, backslash or control character. */
// eslint-disable-next-line no-control-regex
const REALM = /^[^"\\\x00-\x1f]+$/

const IdentitySchema = strictObject({
  /** `realm` in WWW-Authenticate challenges. */
  realm: nonEmpty.regex(REALM, 'must not contain quotes, backslashes or control characters')
    .default('gatehouse'),
  providers: record(
    string().regex(/^[A-Za-z0-9_.-]+$/, 'provider names use letters, digits, "_", "-" and "."'),
    discriminatedUnion('kind', [JwtProviderSchema, IntrospectionProviderSchema,
      ApiKeyProviderSchema, WebhookProviderSchema]),
  ).default({}),
  /** The gateway's own short-lived JWT for upstreams (routes opt in with auth.phantom_token). */
  phantom_token: strictObject({
    /** PEM private key (PKCS#8), usually `${file:...}`. */
    key: nonEmpty,
    alg: zenum(PHANTOM_ALGORITHMS).default('ES256'),
    /** Defaults to the key's RFC 7638 thumbprint. */
    kid: nonEmpty.optional(),
    issuer: nonEmpty,
    audience: nonEmpty,
    ttl: duration().default(60_000),
    /** Header that carries it; `authorization` sends `Bearer <token>`. */
    header: headerName.default('authorization'),
  }).optional(),
}).prefault({})

/** A claim condition: a value, a list of accepted values, or { pattern } (a regular expression). */
const ClaimScalar = union([string(), number(), boolean()])
const ClaimMatcher = union([ClaimScalar, array(ClaimScalar).min(1),
  strictObject({ pattern: nonEmpty })])

const AuthSchema = strictObject({
  /** Providers tried in order; the first that takes the credential decides. */
  any_of: array(nonEmpty).min(1, 'name at least one provider'),
  scopes: strictObject({
    all: array(nonEmpty).optional(),
    any: array(nonEmpty).min(1).optional(),
  }).optional(),
  /** Claim name (dots for nested claims) → matcher. A claim holding a list matches if any item does. */
  claims: record(nonEmpty, ClaimMatcher).optional(),
  /** Remove the credential (Authorization, the API-key header) before forwarding. */
  strip_credentials: bool().default(false),
  /** Replace the credential with the gateway's own JWT (identity.phantom_token). */
  phantom_token: bool().default(false),
})

const IpSchema = strictObject({
  allow: array(nonEmpty).min(1).optional(),
  deny: array(nonEmpty).default([]),
})

const IdentityHeadersSchema = strictObject({
  subject: headerName.optional(),
  client_id: headerName.optional(),
  scopes: headerName.optional(),
  provider: headerName.optional(),
  /** Claim name (dots for nested claims) → header name. */
  claims: record(nonEmpty, headerName).default({}),
})

/** "10/s", "100/min", "5000/h", "100000/day": a count per unit of time. */
export const RATE_UNITS: Record<string, number> = {
  s: 1000,
  sec: 1000,
  second: 1000,
  m: 60_000,
  min: 60_000,
  minute: 60_000,
  h: 3_600_000,
  hour: 3_600_000,
  d: 86_400_000,
  day: 86_400_000,
}
const perPeriod = (what: string, units: Record<string, number>) => string().transform((v, ctx) => {
  const m = /^\s*(\d+(?:\.\d+)?)\s*\/\s*([a-z]+)\s*$/.exec(v)
  const period = m === null ? undefined : units[m[2]!]
  if (m === null || period === undefined || Number(m[1]) <= 0) {
    ctx.addIssue({
      code: 'custom',
      message: `invalid ${what} ${JSON.stringify(v)} (use e.g. ${
        what === 'quota' ? '100000/day, 5000/h, 600/min' : '10/s, 100/min, 5000/h'
      })`,
    })
    return NEVER
  }
  return { count: Number(m[1]), periodMs: period }
})
const QUOTA_UNITS: Record<string, number> = {
  m: 60_000,
  min: 60_000,
  minute: 60_000,
  h: 3_600_000,
  hour: 3_600_000,
  d: 86_400_000,
  day: 86_400_000,
}

const StoreSchema = discriminatedUnion('kind', [
  strictObject({
    kind: literal('memory'),
    max_keys: int().pipe(number().min(1).max(10_000_000)).default(100_000),
    /** Bytes of cached responses kept (least recently used go first). */
    max_bytes: size().default(64 * 1024 * 1024),
  }),
  strictObject({
    kind: literal('redis'),
    url: string().regex(/^rediss?:\/\//, 'must be a redis:// or rediss:// URL'),
    /** Prepended to every key, so several deployments can share one Redis. */
    prefix: string().default('gatehouse:'),
    /** A command not answered within this counts as a store error (on_store_error applies). */
    timeout: duration().pipe(
      number().min(10, 'must be at least 10ms (a limit check needs a bound)'),
    ).default(250),
  }),
])

/**
 * What a limit counts by: the caller (subject, client_id, api_key: need `auth`), the client
 * address, a request header, or a claim of the caller's identity.
 */
const LimitKey = string().regex(
  /^(subject|client_id|api_key|ip|header:[!#$%&'*+.^_`|~0-9A-Za-z-]+|claim:.+)$/,
  'use subject, client_id, api_key, ip, header:<name> or claim:<name>',
)

const RateLimitSchema = strictObject({
  /** Shown in RateLimit headers and metrics; defaults to the key. */
  name: string().regex(/^[A-Za-z0-9_.:-]+$/, 'use letters, digits and "_.:-" only').optional(),
  key: LimitKey,
  /** GCRA: the sustained rate. */
  rate: perPeriod('rate', RATE_UNITS).optional(),
  /** GCRA: the most requests allowed at once from a full bucket (default: the rate's count). */
  burst: int().pipe(number().min(1)).optional(),
  /** A fixed-window quota (per minute, hour or day, windows aligned to UTC). */
  quota: perPeriod('quota', QUOTA_UNITS).optional(),
  /** What a request costs against a quota: 1, or a number read from the response when it ends. */
  cost: union([int().pipe(number().min(1)),
    string().regex(
      /^response\.[A-Za-z0-9_.]+$/,
      'use a number or response.<json path>, e.g. response.usage.total_tokens',
    )]).default(1),
  store: nonEmpty.default('default'),
  /** When the key is absent (no such header or claim): refuse (403), or count by client address. */
  missing: zenum(['deny', 'ip']).default('deny'),
  /**
   * Counting by address: IPv6 clients count by their first this-many bits (default 64, applied
   * in compile: a /64 is what one subscriber gets, so any smaller unit is free to multiply).
   */
  ipv6_prefix: int().pipe(number().min(1).max(128)).optional(),
})

const CacheSchema = strictObject({
  ttl: duration(),
  /** POST is opt-in, for deterministic inference. */
  methods: array(string().transform((m) => m.toUpperCase()).pipe(zenum(['GET', 'HEAD', 'POST'])))
    .min(1).default(['GET', 'HEAD']),
  key: strictObject({
    query: bool().default(true),
    headers: array(headerName).default([]),
    body: strictObject({
      /** Canonicalise JSON bodies (sorted keys, `ignore` dropped) so equal requests share an entry. */
      json: bool().default(true),
      /** Top-level fields left out of the key (e.g. user, stream). */
      ignore: array(nonEmpty).default([]),
      /** Larger request bodies are not read for a key: the request bypasses the cache. */
      max_size: size().default(64 * 1024),
    }).prefault({}),
  }).prefault({}),
  store: nonEmpty.default('default'),
  /** Larger responses are streamed and not stored. */
  max_entry: size().default(1024 * 1024),
  /**
   * Longest a request waits for a concurrent miss of the same key before going upstream itself
   * (a leader whose client stops reading holds its response back). 0: misses never wait.
   */
  coalesce_timeout: duration().default(10_000),
  /** Statuses stored (RFC 9111 heuristically cacheable ones by default, errors not). */
  statuses: array(int().pipe(number().min(200).max(599))).default([200, 203, 204, 300, 301, 404,
    405, 410, 414, 501]),
})

/** Header edits, applied in the order remove, rename, set, add. */
const HeaderEditsSchema = strictObject({
  remove: array(headerName).optional(),
  /** Old name → new name (the value is kept). */
  rename: record(headerName, headerName).optional(),
  /** Replace (or create) the header. */
  set: record(headerName, string()).optional(),
  /** Append a value, keeping any the message had. */
  add: record(headerName, string()).optional(),
})

/** A JSONata expression (https://jsonata.org), compiled when the config loads. */
const expression = nonEmpty

const TransformSchema = strictObject({
  request: strictObject({
    /** application/x-www-form-urlencoded bodies become a JSON object (repeated names: arrays). */
    form_to_json: bool().default(false),
    /** JSONata expression mapping the JSON body to the body sent upstream. */
    body: expression.optional(),
    /** Longest one evaluation of `body` may run; then 502 (GH_TRANSFORM_LIMIT). */
    timeout: duration().default(1_000),
    headers: HeaderEditsSchema.optional(),
    /** Rewrite of the upstream path (after strip_prefix): a regular expression and its replacement ($1…). */
    path: strictObject({ pattern: nonEmpty, replace: string() }).optional(),
    query: strictObject({
      set: record(nonEmpty, string()).optional(),
      remove: array(nonEmpty).optional(),
    }).optional(),
  }).optional(),
  response: strictObject({
    /** JSONata expression mapping the upstream's JSON body to the body sent to the client. */
    body: expression.optional(),
    /** JSONata expression applied to the JSON of each server-sent `data:` event, as it passes. */
    events: expression.optional(),
    /** Longest one evaluation of `body` (or of `events`, per event) may run; then 502 (GH_TRANSFORM_LIMIT). */
    timeout: duration().default(5_000),
    headers: HeaderEditsSchema.optional(),
    /** Upstream status → status sent to the client, e.g. { "404": 200 }. */
    status: record(
      string().regex(/^[1-5]\d\d$/, 'use a three-digit status'),
      int().pipe(number().min(200).max(599)),
    ).optional(),
    /** Largest upstream body read for a body transform; larger → 502. */
    max_body: size().default(10 * 1024 * 1024),
  }).optional(),
})

const PluginSchema = strictObject({
  /** A TypeScript or JavaScript module whose default export is definePlugin({...}); relative to the config file. */
  path: nonEmpty,
  /** Handed to the plugin as ctx.options. */
  options: record(string(), unknown()).default({}),
  /** Longest a hook may run; then 502 (GH_PLUGIN_TIMEOUT). */
  timeout: duration().default(5_000),
  /** Largest upstream body read for onResponse; larger → 502. */
  max_response_body: size().default(10 * 1024 * 1024),
})

/** `retry_on` items: a connect failure, a timeout, or a response status. */
const RetryOn = union([literal('connect_error'), literal('timeout'),
  int().pipe(number().min(300).max(599))])

const RouteDeliverySchema = strictObject({
  /** async: persist, answer 202, deliver in the background. sync (default): proxy as usual. */
  mode: zenum(['sync', 'async']).default('sync'),
  /** Attempts before a message is dead-lettered. */
  max_attempts: int().pipe(number().min(1).max(1000)).default(8),
  backoff: strictObject({
    initial: duration().default(1_000),
    factor: number().min(1).max(100).default(2),
    max: duration().default(60_000),
    /** Each delay is moved by up to this fraction either way ("20%" or 0.2). */
    jitter: union([number().min(0).max(1),
      string().regex(/^\d+(\.\d+)?%$/, 'use a percentage such as 20%').transform((v) =>
        Number(v.slice(0, -1)) / 100
      ).pipe(number().max(1, 'at most 100%'))]).default(0.2),
  }).prefault({}),
  retry_on: array(RetryOn).default(['connect_error', 'timeout', 408, 425, 429, 500, 502, 503, 504]),
  /** Deliveries in flight at once for this route (per gateway process). */
  concurrency: int().pipe(number().min(1).max(10_000)).default(16),
  /** Largest request body accepted for async delivery; larger → 413. */
  max_body: size().default(1024 * 1024),
  /** A message still undelivered after this is dead-lettered. */
  max_age: duration().default(86_400_000),
  /** One attempt's limit: connect, send and the whole response. */
  timeout: duration().default(30_000),
  /**
   * Status of the acknowledgement: 202 Accepted, or 200 for senders that insist on it (Slack
   * slash commands and events expect 200 within 3 s).
   */
  ack_status: union([literal(200), literal(202)]).default(202),
  /**
   * required: a request without an Idempotency-Key is refused (400) before its body is read, so
   * no sender can enqueue a request it could not safely retry. optional (default): a key, when
   * sent, makes a retry within delivery.idempotency_window return the first delivery.
   */
  idempotency: zenum(['optional', 'required']).default('optional'),
})

const DeliveryStoreSchema = discriminatedUnion('kind', [
  strictObject({
    kind: literal('sqlite'),
    /** Relative to the config file. */
    path: nonEmpty.default('./data/delivery.db'),
    /** The database may not grow past this; then new requests get 503 until space is freed. */
    max_size: size().default(1024 * 1024 * 1024),
  }),
  strictObject({
    kind: literal('nats'),
    url: string().regex(/^(nats|tls|wss?):\/\//, 'must be a nats://, tls:// or ws:// URL'),
    stream: nonEmpty.regex(/^[A-Za-z0-9_-]+$/, 'stream names use letters, digits, "_" and "-"')
      .default('GATEHOUSE'),
    /** Stream size limit; when full, new requests get 503. */
    max_bytes: size().default(1024 * 1024 * 1024),
    /** A publish or lookup not answered within this fails (503 for new requests). */
    timeout: duration().default(5_000),
    replicas: int().pipe(number().min(1).max(5)).default(1),
  }),
])

/** 32 bytes as base64 (`openssl rand -base64 32`) or 64 hex digits; the message never repeats the value. */
const aesKey = string().regex(
  /^(?:[0-9a-fA-F]{64}|[A-Za-z0-9+/]{43}=?|[A-Za-z0-9_-]{43})$/,
  'must be 32 bytes as base64 (openssl rand -base64 32) or 64 hex digits',
)

const DeliverySchema = strictObject({
  store: DeliveryStoreSchema.prefault({ kind: 'sqlite' }),
  /** Delivered and dead records are kept this long for status lookups and replay. */
  retention: duration().default(7 * 86_400_000),
  /** An Idempotency-Key seen within this returns the first delivery. */
  idempotency_window: duration().default(86_400_000),
  /** Where clients read a delivery's status (on the proxy port): `<status_path>/<id>`, the 202's Location. */
  status_path: string().regex(
    /^\/[A-Za-z0-9._~/-]*[^/]$/,
    'must start with "/" and not end with "/"',
  ).default('/_gatehouse/deliveries'),
  /**
   * AES-256-GCM key for the credentials an async request carries to its upstream (Cookie, an
   * Authorization the route does not check, ...): they are stored encrypted under it, and not
   * stored at all without it.
   */
  encryption_key: aesKey.optional(),
  /** Keys of before a rotation: records encrypted under them are still read, never written. */
  previous_encryption_keys: array(aesKey).optional(),
  /** Header names holding credentials besides Authorization, Cookie, X-Api-Key and api_key providers' headers. */
  secret_headers: array(headerName).optional(),
}).prefault({})

const MatchSchema = strictObject({
  path: string().startsWith('/', 'must start with "/"').optional(),
  path_prefix: string().startsWith('/', 'must start with "/"').optional(),
  path_regex: string().optional(),
  methods: array(string().transform((m) => m.toUpperCase()).pipe(zenum(HTTP_METHODS))).min(1)
    .optional(),
  host: string().optional(),
  headers: record(string(), string()).optional(),
}).prefault({})

/**
 * An origin as browsers send it (RFC 6454 §6.2): scheme "://" host [":" port], lower-case, no
 * path. Compared exactly; "*" alone means any origin (answered with `*`, never reflected).
 */
const OriginSchema = string().transform((o) => o.toLowerCase()).refine(
  (o) =>
    o === '*' || /^[a-z][a-z0-9+.-]*:\/\/(?:\[[0-9a-f:.]+\]|[a-z0-9.-]+)(?::\d{1,5})?$/.test(o),
  'use an origin such as https://app.example.com (scheme, host and port only; no path, no trailing "/") or "*"',
)

const CorsSchema = strictObject({
  /** Origins allowed to call this route from a browser, matched exactly; "*": any. */
  origins: array(OriginSchema).min(1),
  /** Methods a preflight may ask for; default: the route's match.methods, else the usual six. */
  methods: array(string().transform((m) => m.toUpperCase()).pipe(zenum(HTTP_METHODS))).min(1)
    .optional(),
  /** Request headers a preflight may ask for (case-insensitive); "*": any. */
  headers: array(
    string().regex(/^(?:\*|[!#$%&'*+.^_`|~0-9A-Za-z-]+)$/, 'use a header name').transform((h) =>
      h.toLowerCase()
    ),
  ).default(['authorization', 'content-type']),
  /** Response headers scripts may read besides the CORS-safelisted ones. */
  expose_headers: array(
    string().regex(/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/, 'use a header name').transform((h) =>
      h.toLowerCase()
    ),
  ).default(['x-request-id', 'retry-after', 'ratelimit', 'ratelimit-policy']),
  /** Let browsers send cookies and Authorization cross-origin (Access-Control-Allow-Credentials). */
  credentials: bool().default(false),
  /** How long a browser may reuse a preflight's answer (Access-Control-Max-Age). */
  max_age: duration().default(600_000),
}).refine((c) => !(c.credentials && c.origins.includes('*')), {
  message:
    'credentials: true needs explicit origins: browsers refuse "*" with credentials (Fetch §3.2.5)',
  path: ['origins'],
})

const RouteSchema = strictObject({
  name: nonEmpty.regex(/^[A-Za-z0-9_.-]+$/, 'use letters, digits, "_", "-" and "." only'),
  match: MatchSchema,
  upstream: nonEmpty,
  strip_prefix: string().startsWith('/', 'must start with "/"').optional(),
  /** Forward the client's Host header (true) or the target's host (false). */
  preserve_host: bool().default(true),
  /** Shorthand: `websocket: false` is `upgrade: []`. */
  websocket: bool().default(true),
  /**
   * Protocols this route may be upgraded to (Upgrade header tokens, compared case-insensitively
   * without their /version). h2c is never passed: it would tunnel HTTP/2 past every policy.
   */
  upgrade: array(
    string().regex(/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/, 'use a protocol name such as websocket')
      .transform((p) => p.toLowerCase())
      .refine(
        (p) => p !== 'h2c',
        'h2c is never upgraded (RFC 9113 §3.1 deprecates it; it would tunnel HTTP/2 past every policy)',
      ),
  ).default(['websocket']),
  limits: strictObject({
    /** Largest request body; 0 means no limit (streams of any size). */
    max_body: size().default(0),
    /**
     * Largest body read into memory by a route that needs it whole (webhook signatures, body
     * transforms, plugins); larger → 413. Async routes use delivery.max_body instead.
     */
    max_buffered_body: size().default(1024 * 1024),
  }).prefault({}),
  auth: AuthSchema.optional(),
  rate_limit: array(RateLimitSchema).optional(),
  cache: CacheSchema.optional(),
  /** When a limit's store cannot answer: let the request through (allow) or refuse it with 503 (deny). */
  on_store_error: zenum(['allow', 'deny']).default('allow'),
  /** Client-address rules, checked before authentication (deny wins over allow). */
  ip: IpSchema.optional(),
  /** Cross-origin browser calls: preflights answered here, allowed origins marked on answers. */
  cors: CorsSchema.optional(),
  identity_headers: IdentityHeadersSchema.optional(),
  transform: TransformSchema.optional(),
  plugin: PluginSchema.optional(),
  delivery: RouteDeliverySchema.optional(),
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
  identity: IdentitySchema,
  /** Shared state for limits (and, later, caches). `default` is an in-process memory store. */
  stores: record(
    string().regex(/^[A-Za-z0-9_.-]+$/, 'store names use letters, digits, "_", "-" and "."'),
    StoreSchema,
  ).default({}),
  /** Where async routes keep their requests until delivered. */
  delivery: DeliverySchema,
  shutdown: strictObject({ grace: duration().default(30_000) }).prefault({}),
  upstreams: record(
    string().regex(/^[A-Za-z0-9_.-]+$/, 'upstream names use letters, digits, "_", "-" and "."'),
    UpstreamSchema,
  ).default({}),
  routes: array(RouteSchema).default([]),
})

/** The validated configuration: defaults filled in, durations in ms, sizes in bytes. */
export type Config = output<typeof ConfigSchema>
/** What a user may write (the YAML's shape). */
export type ConfigInput = input<typeof ConfigSchema>
export type UpstreamConfig = Config['upstreams'][string]
export type CorsConfig = output<typeof CorsSchema>
export type RouteConfig = Config['routes'][number]
export type IdentityConfig = Config['identity']
export type ProviderConfig = IdentityConfig['providers'][string]
export type JwtProviderConfig = Extract<ProviderConfig, { kind: 'jwt' }>
export type IntrospectionProviderConfig = Extract<ProviderConfig, { kind: 'introspection' }>
export type ApiKeyProviderConfig = Extract<ProviderConfig, { kind: 'api_key' }>
export type PhantomTokenConfig = NonNullable<IdentityConfig['phantom_token']>
export type StoreConfig = Config['stores'][string]
export type RateLimitConfig = NonNullable<RouteConfig['rate_limit']>[number]
export type CacheConfig = NonNullable<RouteConfig['cache']>
export type WebhookProviderConfig = Extract<ProviderConfig, { kind: 'webhook' }>
export type TransformConfig = NonNullable<RouteConfig['transform']>
export type HeaderEditsConfig = NonNullable<NonNullable<TransformConfig['request']>['headers']>
export type PluginConfig = NonNullable<RouteConfig['plugin']>
export type RouteDeliveryConfig = NonNullable<RouteConfig['delivery']>
export type DeliveryConfig = Config['delivery']
export type DeliveryStoreConfig = DeliveryConfig['store']
