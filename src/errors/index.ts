/**
 * One error base for everything the gateway answers on its own behalf.
 *
 * Every error a client can see carries a stable `code` (documented in docs/errors.md) and the
 * HTTP status it maps to. Clients and tests match on `code`, never on the message text.
 */

/** Stable error codes and the HTTP status each one is answered with. */
export const ERRORS = {
  GH_ROUTE_NOT_FOUND: { status: 404, title: 'No route matches this request' },
  GH_BAD_REQUEST: { status: 400, title: 'Malformed request' },
  GH_BAD_PATH: { status: 400, title: 'Request path is not allowed' },
  GH_DUPLICATE_HOST: { status: 400, title: 'Duplicate Host header' },
  GH_BAD_HOST: { status: 400, title: 'Invalid Host header' },
  GH_METHOD_NOT_ALLOWED: { status: 405, title: 'Method not allowed' },
  GH_URI_TOO_LONG: { status: 414, title: 'Request target too long' },
  GH_EXPECTATION_FAILED: { status: 417, title: 'Expectation failed' },
  GH_HTTP_VERSION_NOT_SUPPORTED: { status: 505, title: 'HTTP version not supported' },
  GH_AMBIGUOUS_LENGTH: { status: 400, title: 'Ambiguous message length' },
  GH_HEADERS_TOO_LARGE: { status: 431, title: 'Request header fields too large' },
  GH_TRANSFER_CODING_UNSUPPORTED: { status: 501, title: 'Transfer coding not supported' },
  GH_BODY_TOO_LARGE: { status: 413, title: 'Request body too large' },
  GH_REQUEST_TIMEOUT: { status: 408, title: 'Request timeout' },
  GH_UPSTREAM_UNREACHABLE: { status: 502, title: 'Upstream unreachable' },
  GH_UPSTREAM_CONNECT_TIMEOUT: { status: 502, title: 'Upstream connect timeout' },
  GH_UPSTREAM_BAD_RESPONSE: { status: 502, title: 'Upstream sent an invalid response' },
  GH_UPSTREAM_RESET: { status: 502, title: 'Upstream closed the connection' },
  GH_UPSTREAM_TIMEOUT: { status: 504, title: 'Upstream did not answer in time' },
  GH_UPSTREAM_BUSY: { status: 503, title: 'Upstream busy' },
  GH_NO_HEALTHY_UPSTREAM: { status: 503, title: 'No healthy upstream target' },
  GH_SHUTTING_DOWN: { status: 503, title: 'Gateway is shutting down' },
  GH_AUTH_REQUIRED: { status: 401, title: 'Authentication required' },
  GH_INVALID_CREDENTIALS: { status: 401, title: 'Invalid credentials' },
  GH_INVALID_AUTH_REQUEST: { status: 400, title: 'Malformed credentials' },
  GH_INSUFFICIENT_SCOPE: { status: 403, title: 'Insufficient scope' },
  GH_FORBIDDEN: { status: 403, title: 'Access denied' },
  GH_IP_FORBIDDEN: { status: 403, title: 'Client address not allowed' },
  GH_CORS_REJECTED: { status: 403, title: 'Cross-origin request not allowed' },
  GH_AUTH_UNAVAILABLE: { status: 503, title: 'Authentication service unavailable' },
  GH_RATE_LIMITED: { status: 429, title: 'Too many requests' },
  GH_LIMIT_KEY_MISSING: { status: 403, title: 'Request cannot be counted' },
  GH_LIMIT_STORE_UNAVAILABLE: { status: 503, title: 'Rate-limit store unavailable' },
  GH_INVALID_SIGNATURE: { status: 401, title: 'Invalid webhook signature' },
  GH_INVALID_BODY: { status: 400, title: 'Request body cannot be transformed' },
  GH_TRANSFORM_FAILED: { status: 502, title: 'Response cannot be transformed' },
  GH_TRANSFORM_LIMIT: { status: 502, title: 'Transform exceeded its limits' },
  GH_RESPONSE_TOO_LARGE: { status: 502, title: 'Upstream response too large to transform' },
  GH_PLUGIN_FAILED: { status: 502, title: 'Plugin failed' },
  GH_PLUGIN_TIMEOUT: { status: 502, title: 'Plugin did not finish in time' },
  GH_PLUGIN_INVALID_RESULT: { status: 502, title: 'Plugin returned an invalid result' },
  GH_IDEMPOTENCY_KEY_REQUIRED: { status: 400, title: 'Idempotency-Key required' },
  GH_IDEMPOTENCY_CONFLICT: {
    status: 422,
    title: 'Idempotency-Key reused with a different request',
  },
  GH_DELIVERY_STORE_UNAVAILABLE: { status: 503, title: 'Delivery store unavailable' },
  GH_DELIVERY_NOT_FOUND: { status: 404, title: 'No such delivery' },
  GH_UPGRADE_NOT_ALLOWED: { status: 400, title: 'Protocol upgrade not allowed' },
  GH_INTERNAL: { status: 500, title: 'Internal gateway error' },
  /** Never sent (the client is gone): the access log's status and code for a request it abandoned. */
  GH_CLIENT_CLOSED: { status: 499, title: 'Client closed the request' },
} as const satisfies Record<string, { status: number, title: string }>

export type ErrorCode = keyof typeof ERRORS

/**
 * An error the gateway answers with a problem+json body. `detail` is safe to show clients;
 * `reason` is for the log line only (it may name internals a client must not learn).
 */
export class GatewayError extends Error {
  readonly code: ErrorCode
  readonly status: number
  readonly title: string
  readonly detail: string
  /** Extra response headers (Retry-After, WWW-Authenticate, ...). */
  readonly headers: Record<string, string> | null
  readonly reason: string | null

  constructor (code: ErrorCode, detail?: string, options?: {
    reason?: string
    headers?: Record<string, string>
    cause?: unknown
  }) {
    const def = ERRORS[code]
    super(detail ?? def.title, options?.cause === undefined ? undefined : { cause: options.cause })
    this.name = 'GatewayError'
    this.code = code
    this.status = def.status
    this.title = def.title
    this.detail = detail ?? def.title
    this.headers = options?.headers ?? null
    this.reason = options?.reason ?? null
  }
}

/**
 * Build an expected error without paying for a stack trace (undici does the same in its
 * response-error interceptor): these are answers to clients, not bugs.
 */
export function gatewayError (
  code: ErrorCode,
  detail?: string,
  options?: ConstructorParameters<typeof GatewayError>[2],
): GatewayError {
  const limit = Error.stackTraceLimit
  Error.stackTraceLimit = 0
  try {
    return new GatewayError(code, detail, options)
  } finally {
    Error.stackTraceLimit = limit
  }
}

export function isGatewayError (err: unknown): err is GatewayError {
  return err instanceof GatewayError
}

/** RFC 9457 problem document for an error; `instance` is the request id so logs can be joined. */
export function problemBody (err: GatewayError, requestId: string | null): string {
  return JSON.stringify({
    type: `https://gatehouse.dev/errors/${err.code}`,
    title: err.title,
    status: err.status,
    detail: err.detail,
    code: err.code,
    ...(requestId === null ? {} : { instance: `urn:request:${requestId}` }),
  })
}

/**
 * A complete HTTP/1.1 error response, for answers written straight on a socket (parser errors,
 * upgrade refusals) where there is no ServerResponse. The connection is closed after it.
 */
export function rawProblemResponse (
  err: GatewayError,
  requestId: string | null,
  statusText: string | undefined,
  headRequest = false,
): string {
  const body = problemBody(err, requestId)
  let head = `HTTP/1.1 ${err.status} ${
    statusText ?? ''
  }\r\ncontent-type: application/problem+json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n`
  if (requestId !== null) head += `x-request-id: ${requestId}\r\n`
  if (err.headers !== null) {
    for (const [k, v] of Object.entries(err.headers)) head += `${k}: ${v}\r\n`
  }
  // An answer to HEAD has no body (RFC 9110 §9.3.2): the client would read one as the next response.
  return `${head}connection: close\r\n\r\n${headRequest ? '' : body}`
}

/** A configuration problem, located at a YAML path (and line, when the source is known). */
export interface ConfigIssue {
  path: string
  message: string
  line?: number
  column?: number
}

export class ConfigError extends Error {
  readonly code = 'GH_CONFIG_INVALID'
  readonly issues: ConfigIssue[]
  readonly file: string | null

  constructor (issues: ConfigIssue[], file: string | null = null) {
    super(formatIssues(issues, file))
    this.name = 'ConfigError'
    this.issues = issues
    this.file = file
  }
}

export function formatIssue (issue: ConfigIssue, file: string | null): string {
  const where = issue.line === undefined
    ? (file ?? 'config')
    : `${file ?? 'config'}:${issue.line}:${issue.column ?? 1}`
  return `${where}: ${issue.path === '' ? '(root)' : issue.path}: ${issue.message}`
}

function formatIssues (issues: ConfigIssue[], file: string | null): string {
  return issues.map((i) => formatIssue(i, file)).join('\n')
}
