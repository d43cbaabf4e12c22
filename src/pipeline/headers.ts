import { randomUUID } from 'node:crypto'
import type { CompiledRoute, RouteTable, RouteExchange } from '../compile/table.js'
import { gatewayError, type GatewayError } from '../errors/index.js'
import { headerValue } from '../policies/auth/policy.js'
import { clientAddress } from '../net/client-ip.js'
import { dropHeaders, maybeSpecial, removeConnectionTokens } from '../net/fields.js'
import { requestHost } from './exchange.js'

/*
 * Header rewriting for both directions. RFC 9110 §7.6.1: Connection and the fields it names
 * are hop-by-hop, as are Keep-Alive, TE, Trailer, Transfer-Encoding, Upgrade and Proxy-*.
 *
 * Only names whose first letter could start a special header are lower-cased; the rest
 * (accept*, authorization, user-agent is a 'u'…) are copied as they are.
 */

const enum H {
  Host = 1,
  ContentLength,
  TransferEncoding,
  Connection,
  Drop,
  XForwardedFor,
  XForwardedProto,
  XForwardedHost,
  XForwardedPort,
  Forwarded,
  Via,
  RequestId,
  Authorization,
}

const REQUEST_SPECIAL: Record<string, H> = Object.assign(Object.create(null), {
  host: H.Host,
  'content-length': H.ContentLength,
  'transfer-encoding': H.TransferEncoding,
  connection: H.Connection,
  'keep-alive': H.Drop,
  te: H.Drop,
  trailer: H.Drop,
  upgrade: H.Drop,
  // The gateway answers Expect: 100-continue itself, once the route is known.
  expect: H.Drop,
  'http2-settings': H.Drop,
  'x-forwarded-for': H.XForwardedFor,
  'x-forwarded-proto': H.XForwardedProto,
  'x-forwarded-host': H.XForwardedHost,
  'x-forwarded-port': H.XForwardedPort,
  // Set by the gateway to the client address it resolved (see finishRequestHeaders).
  'x-real-ip': H.Drop,
  forwarded: H.Forwarded,
  via: H.Via,
  'x-request-id': H.RequestId,
  authorization: H.Authorization,
})

/**
 * X-Gatehouse-* in any spelling ('_' for '-', any case): the gateway's own headers, which a
 * client must never be able to send. Servers that map headers to CGI-style variables
 * (X_GATEHOUSE_SUBJECT) treat '_' and '-' alike, so both are stripped.
 */
function isGatehouseHeader (lower: string): boolean {
  if (lower.length < 13) return false
  const a = lower.charCodeAt(1)
  const b = lower.charCodeAt(11)
  return (a === 45 || a === 95) && (b === 45 || b === 95) && lower.startsWith('gatehouse', 2)
}

/**
 * One pass over the client's header fields: note the ones the gateway rewrites, copy the rest
 * to `ex.outHeaders`. Returns an error for requests that must be refused.
 */
export function scanRequestHeaders (
  ex: RouteExchange,
  raw: readonly string[],
  table: RouteTable,
): GatewayError | null {
  const out = ex.outHeaders
  const roles = table.headerRoles
  const initials = table.headerRoleInitials
  const dropUnderscores = !table.config.listen.underscores_in_headers
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!
    const value = raw[i + 1]!
    const c = name.charCodeAt(0)
    if (dropUnderscores && name.indexOf('_') !== -1) {
      // Transfer_Encoding, X_Forwarded_For: CGI-style servers read them as the real thing.
      // Dropped, as nginx and gunicorn do, unless the config names it as a credential header.
      if (roles.size > 0 && roles.get(name.toLowerCase()) === 'credential') {
        ;(ex.credHeaders ??= []).push(name.toLowerCase(), value)
        out.push(name, value)
      }
      continue
    }
    if (maybeSpecial(c, name.length) || initials[c] === 1) {
      const lower = name.toLowerCase()
      const kind = REQUEST_SPECIAL[lower]
      if (kind !== undefined) {
        switch (kind) {
          case H.Host:
            ex.hostHeader = value
            ex.hostCount++
            break
          case H.ContentLength:
            ex.contentLength = value
            break
          case H.TransferEncoding:
            ex.transferEncoding = ex.transferEncoding === null
              ? value
              : `${ex.transferEncoding}, ${value}`
            break
          case H.Connection:
            ex.connection = ex.connection === null ? value : `${ex.connection}, ${value}`
            break
          case H.XForwardedFor:
            ex.xForwardedFor = ex.xForwardedFor === null ? value : `${ex.xForwardedFor}, ${value}`
            break
          case H.XForwardedProto:
            ex.xForwardedProto ??= value
            break
          case H.XForwardedHost:
            ex.xForwardedHost ??= value
            break
          case H.XForwardedPort:
            ex.xForwardedPort ??= value
            break
          case H.Forwarded:
            ex.forwarded = ex.forwarded === null ? value : `${ex.forwarded}, ${value}`
            break
          case H.Via:
            ex.via = ex.via === null ? value : `${ex.via}, ${value}`
            break
          case H.RequestId:
            if (ex.requestId === '' && isValidRequestId(value)) ex.requestId = value
            break
          case H.Authorization:
            // Noted for the auth policy, forwarded unless the route strips credentials.
            if (ex.authorizationCount++ === 0) ex.authorization = value
            out.push(name, value)
            break
        }
        continue
      }
      if (lower.startsWith('proxy-')) continue
      if ((c | 0x20) === 0x78) {
        if (isGatehouseHeader(lower)) continue
        if (lower.startsWith('x-forwarded-')) {
          // -Prefix, -Uri, -Method, -Ssl, …: passed on only from a trusted proxy (decided
          // once the peer is known, in finishRequestHeaders).
          ;(ex.xForwardedOther ??= []).push(name, value)
          continue
        }
      }
      if (roles.size > 0) {
        const role = roles.get(lower)
        if (role === 'credential') {
          ;(ex.credHeaders ??= []).push(lower, value)
        } else if (
          role === 'strip' ||
          (role === undefined && lower.includes('_') &&
            roles.get(lower.replaceAll('_', '-')) === 'strip')
        ) {
          continue
        }
      }
    }
    out.push(name, value)
  }
  if (ex.requestId === '') ex.requestId = randomUUID()
  if (ex.connection !== null) removeConnectionTokens(out, ex.connection)
  if (ex.hostCount > 1) {
    return gatewayError('GH_DUPLICATE_HOST', 'The request has more than one Host header')
  }
  if (ex.transferEncoding !== null && ex.transferEncoding.trim().toLowerCase() !== 'chunked') {
    // Node's parser accepts codings such as "gzip, chunked"; forwarding them re-framed would
    // silently change the body's meaning. RFC 9112 §6.1: answer 501.
    return gatewayError(
      'GH_TRANSFER_CODING_UNSUPPORTED',
      `Transfer-Encoding "${ex.transferEncoding}" is not supported; use chunked`,
    )
  }
  return null
}

/**
 * Add the headers that depend on the route, on who the peer is and on who the caller turned
 * out to be. Host is not one of them (see the end).
 */
export function finishRequestHeaders (
  ex: RouteExchange,
  route: CompiledRoute,
  encrypted: boolean,
): void {
  const out = ex.outHeaders
  const auth = route.auth
  if (auth !== null) {
    if (auth.stripCredentials) removeHeaders(out, auth.credentialNames)
    const token = ex.phantomToken
    if (token !== null) {
      const h = auth.phantom!.header
      if (h === 'authorization') {
        removeHeaders(out, ['authorization'])
        out.push('authorization', 'Bearer ' + token)
      } else {
        out.push(h, token)
      }
    }
    const identity = ex.identity
    if (identity !== null) {
      for (const [h, get] of route.identityHeaders!) {
        const v = headerValue(get(identity))
        if (v !== null) out.push(h, v)
      }
    }
  }
  const t = route.requestTransform
  if (t !== null) {
    if (t.headers !== null) t.headers.apply(out)
    ex.query = t.rewriteQuery(ex.query)
  }
  // A response that will be transformed must come back readable: no content coding.
  if (ex.captureLimit > 0) {
    dropHeaders(out, isAcceptEncoding)
    out.push('accept-encoding', 'identity')
  }
  const socket = ex.req.socket
  const peer = socket.remoteAddress ?? ''
  const trustedProxies = ex.table.trustedProxies
  const trusted = trustedProxies.size > 0 && trustedProxies.has(peer)
  if (ex.contentLength !== null) out.push('content-length', ex.contentLength)
  // From an untrusted peer, X-Forwarded-*, Forwarded and X-Real-IP are replaced, never
  // extended: a client must not be able to choose the address or scheme the upstream believes.
  out.push(
    'x-forwarded-for',
    trusted && ex.xForwardedFor !== null ? `${ex.xForwardedFor}, ${peer}` : peer,
  )
  out.push(
    'x-forwarded-proto',
    trusted && ex.xForwardedProto !== null ? ex.xForwardedProto : (encrypted ? 'https' : 'http'),
  )
  out.push(
    'x-forwarded-host',
    trusted && ex.xForwardedHost !== null ? ex.xForwardedHost : requestHost(ex),
  )
  out.push(
    'x-forwarded-port',
    trusted && ex.xForwardedPort !== null ? ex.xForwardedPort : String(socket.localPort ?? ''),
  )
  if (ex.clientIp === '') {
    ex.clientIp = trusted ? clientAddress(peer, ex.xForwardedFor, trustedProxies) : peer
  }
  out.push('x-real-ip', ex.clientIp)
  if (trusted) {
    if (ex.forwarded !== null) out.push('forwarded', ex.forwarded)
    const other = ex.xForwardedOther
    if (other !== null) { for (let i = 0; i < other.length; i++) out.push(other[i]!) }
  }
  const via = `${ex.req.httpVersion} gatehouse`
  out.push('via', ex.via === null ? via : `${ex.via}, ${via}`)
  out.push('x-request-id', ex.requestId)
  // Host is not among them: it is dispatch's `host` option (upstream/dispatch.ts), the
  // client's with preserve_host (requestHost), else that of the target each attempt goes to.
}

function isAcceptEncoding (lower: string): boolean {
  return lower === 'accept-encoding'
}

/** Drop every field named in `names` (lower-case). */
function removeHeaders (out: string[], names: readonly string[]): void {
  dropHeaders(out, (n) => names.includes(n))
}

/** Accept a client's request id only if it is short and printable (it ends up in logs). */
function isValidRequestId (v: string): boolean {
  if (v.length === 0 || v.length > 200) return false
  for (let i = 0; i < v.length; i++) {
    const c = v.charCodeAt(i)
    if (c < 0x21 || c > 0x7e) return false
  }
  return true
}

/**
 * Dot segments ("/a/../admin", also percent-encoded, and "/a/..;/admin", which Tomcat, Jetty
 * and Spring resolve to "/admin") are refused: the upstream would resolve them after the
 * gateway matched the unresolved path, and a route's checks could be skipped.
 */
export function hasDotSegment (path: string): boolean {
  if (!hasSlashDot(path) && path.indexOf('%') === -1 && path.indexOf('\\') === -1) return false
  const decoded = path.replace(/%2e/gi, '.').replace(/%2f/gi, '/').replace(/%5c/gi, '/').replace(
    /\\/g,
    '/',
  )
  for (const seg of decoded.split('/')) {
    if (seg === '.' || seg === '..') return true
    // Servlet containers drop ";params" from each segment before resolving dots.
    if (seg.charCodeAt(0) === 46 /* . */ && seg.indexOf(';') !== -1) {
      const name = seg.slice(0, seg.indexOf(';'))
      if (name === '.' || name === '..') return true
    }
  }
  return false
}

/**
 * Whether "/." occurs, found from the dots, which most paths have few of: V8's two-character
 * indexOf restarts its scan at every '/' (5 µs for an 8 KiB path of 16-byte segments, 65 µs
 * for "/a/a/a…"), a one-character one runs at memchr speed.
 */
function hasSlashDot (path: string): boolean {
  for (let i = path.indexOf('.'); i !== -1; i = path.indexOf('.', i + 1)) {
    if (i > 0 && path.charCodeAt(i - 1) === 47 /* / */) return true
  }
  return false
}

/**
 * The path routes are matched on when it carries matrix parameters: "/v1/admin;x=1/y" is
 * "/v1/admin/y". Servlet containers (Tomcat, Jetty, Spring) drop each segment's ";params"
 * before routing, other servers (Python, Go, Node) treat ';' as an ordinary character; matching
 * on the reduced path makes the gateway pick the route the servlet reading would reach, which
 * is also the stricter one for the literal reading (that upstream answers 404 for a segment
 * it does not know). The path is forwarded unchanged.
 */
export function withoutMatrixParams (path: string): string {
  let out = ''
  let last = 0
  for (let i = path.indexOf(';'); i !== -1; i = path.indexOf(';', last)) {
    out += path.slice(last, i)
    const next = path.indexOf('/', i)
    last = next === -1 ? path.length : next
  }
  return out + path.slice(last)
}

/**
 * The Host header as RFC 9110 §7.2 and RFC 3986 §3.2.2 allow it for a gateway: a DNS name or
 * IPv4 address (letters, digits, '-', '.', '_'), or a bracketed IPv6 literal, and an optional
 * port. Refused: userinfo ("user@host"), lists ("a, b"), spaces, percent-escapes and anything
 * else an upstream or a route's host match could read differently.
 */
export function isValidHost (host: string): boolean {
  const n = host.length
  if (n === 0 || n > 255 + 6) return false
  let i = 0
  if (host.charCodeAt(0) === 91 /* [ */) {
    const close = host.indexOf(']')
    if (close < 3) return false
    for (i = 1; i < close; i++) {
      const c = host.charCodeAt(i)
      if (!(isHex(c) || c === 58 /* : */ || c === 46 /* . */)) return false
    }
    i = close + 1
  } else {
    for (; i < n; i++) {
      const c = host.charCodeAt(i)
      if (c === 58 /* : */) break
      if (
        !((c >= 97 && c <= 122) || (c >= 65 && c <= 90) || (c >= 48 && c <= 57) || c === 45 ||
          c === 46 || c === 95)
      ) return false
    }
    if (i === 0) return false
  }
  if (i === n) return true
  if (host.charCodeAt(i) !== 58 || i + 1 === n || n - i - 1 > 5) return false
  for (i++; i < n; i++) {
    const c = host.charCodeAt(i)
    if (c < 48 || c > 57) return false
  }
  return true
}

function isHex (c: number): boolean {
  return (c >= 48 && c <= 57) || (c >= 97 && c <= 102) || (c >= 65 && c <= 70)
}

/**
 * Everything both entry paths (plain requests and upgrades) check before a route is known:
 * request target, header fields, dot segments, then the route. Sets `ex.path`, `ex.query`,
 * `ex.host`, `ex.route` and the scanned header fields. The scan comes first so that every
 * answer, refusals included, carries a request id.
 */
export function readHead (ex: RouteExchange, table: RouteTable): GatewayError | null {
  const req = ex.req
  const url = req.url ?? ''
  const q = url.indexOf('?')
  ex.path = q === -1 ? url : url.slice(0, q)
  ex.query = q === -1 ? '' : url.slice(q)
  const raw = req.rawHeaders
  const headerErr = scanRequestHeaders(ex, raw, table)
  // After the scan, so that the answer knows whether a body follows (and closes if so).
  const maxUri = table.config.listen.limits.max_uri
  if (url.length > maxUri) {
    return gatewayError(
      'GH_URI_TOO_LONG',
      `The request target is longer than the ${maxUri} bytes this gateway accepts`,
    )
  }
  const maxHeaders = table.config.listen.max_headers
  if (raw.length > maxHeaders * 2) {
    return gatewayError(
      'GH_HEADERS_TOO_LARGE',
      `The request has more than ${maxHeaders} header fields`,
    )
  }
  if (headerErr !== null) return headerErr
  // RFC 9112 §2.3: HTTP/1.0 and 1.1 only (Node's parser also takes 0.9 with header fields, and
  // 2.0, which another hop may frame differently).
  if (req.httpVersionMajor !== 1 || req.httpVersionMinor > 1) {
    return gatewayError(
      'GH_HTTP_VERSION_NOT_SUPPORTED',
      `HTTP/${req.httpVersion} is not supported; use HTTP/1.1`,
    )
  }
  // RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing (a 1.0 hop
  // reads the body to the close); refused, and the connection closed after the answer.
  if (ex.transferEncoding !== null && req.httpVersionMinor === 0) {
    return gatewayError('GH_AMBIGUOUS_LENGTH', 'An HTTP/1.0 request cannot use Transfer-Encoding')
  }
  if (url.charCodeAt(0) !== 47 /* / */) {
    // Absolute-form (a forward-proxy request) and asterisk-form are not for a gateway; taking
    // the authority from the target instead of Host would be a second source of truth.
    return gatewayError(
      'GH_BAD_REQUEST',
      'The request target must be an absolute path (origin-form)',
    )
  }
  // RFC 9112 §3.2: a fragment is never sent. A server that drops it would serve /v1/admin for
  // "/v1/admin#x", which the gateway would otherwise have matched as something else.
  if (url.indexOf('#') !== -1) {
    return gatewayError('GH_BAD_REQUEST', 'The request target must not contain a fragment ("#")')
  }
  const hostHeader = ex.hostHeader
  if (hostHeader !== null ? !isValidHost(hostHeader) : req.httpVersionMinor === 1) {
    return gatewayError(
      'GH_BAD_HOST',
      hostHeader === null
        ? 'An HTTP/1.1 request needs a Host header'
        : 'The Host header is not a valid host[:port]',
    )
  }
  if (ex.path.indexOf('%') !== -1 || ex.path.indexOf('//') !== -1) {
    const normal = normalizePath(ex.path)
    if (normal === null) {
      return gatewayError('GH_BAD_PATH', 'The request path has a malformed percent-encoding')
    }
    ex.path = normal
  }
  if (hasDotSegment(ex.path)) {
    return gatewayError('GH_BAD_PATH', 'The request path must not contain "." or ".." segments')
  }
  ex.host = hostHeader === null ? '' : hostname(hostHeader)
  const method = req.method!
  const matchPath = ex.path.indexOf(';') === -1 ? ex.path : withoutMatrixParams(ex.path)
  const route = ex.route = table.match(method, ex.host, matchPath, raw)
  // TRACE echoes the request (credentials and cookies included) back: only where a route lists it.
  if (method === 'TRACE' && (route === null || route.methods === null)) {
    ex.route = null
    return gatewayError('GH_METHOD_NOT_ALLOWED', 'TRACE is not allowed here', {
      headers: { allow: 'GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS' },
    })
  }
  if (route === null) return gatewayError('GH_ROUTE_NOT_FOUND', `No route for ${method} ${ex.path}`)
  return null
}

/**
 * RFC 3986 §6.2.2 normalisation, so that a route's checks cannot be side-stepped by spelling
 * its path differently (/%61dmin for /admin, //admin): percent-encoded unreserved characters
 * are decoded, the remaining escapes upper-cased, and runs of '/' merged (as nginx does; many
 * upstream frameworks merge them too). The normalised path is also the one forwarded.
 * null: a '%' not followed by two hex digits.
 */
export function normalizePath (path: string): string | null {
  let out = ''
  let last = 0
  for (let i = 0; i < path.length; i++) {
    const c = path.charCodeAt(i)
    if (c === 37 /* % */) {
      const hex = path.slice(i + 1, i + 3)
      if (!/^[0-9A-Fa-f]{2}$/.test(hex)) return null
      const code = parseInt(hex, 16)
      const ch = String.fromCharCode(code)
      out += path.slice(last, i) + (/[A-Za-z0-9\-._~]/.test(ch) ? ch : '%' + hex.toUpperCase())
      i += 2
      last = i + 1
    } else if (c === 47 /* / */ && path.charCodeAt(i + 1) === 47) {
      out += path.slice(last, i + 1)
      while (path.charCodeAt(i + 1) === 47) i++
      last = i + 1
    }
  }
  return out + path.slice(last)
}

/** "[::1]:8080" → "[::1]", "API.example.com:443" → "api.example.com". */
function hostname (host: string): string {
  let end = host.length
  if (host.charCodeAt(0) === 91 /* [ */) {
    const close = host.indexOf(']')
    end = close === -1 ? end : close + 1
  } else {
    const colon = host.lastIndexOf(':')
    if (colon !== -1) end = colon
  }
  return (end === host.length ? host : host.slice(0, end)).toLowerCase()
}
