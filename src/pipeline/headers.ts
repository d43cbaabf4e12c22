import { randomUUID } from 'node:crypto'
import type { CompiledRoute, RouteTable } from '../compile/index.js'
import { gatewayError, type GatewayError } from '../errors/index.js'
import { headerValue } from '../identity/policy.js'
import type { Exchange } from './exchange.js'

/*
 * Header rewriting for both directions. RFC 9110 §7.6.1: Connection and the fields it names
 * are hop-by-hop, as are Keep-Alive, TE, Trailer, Transfer-Encoding, Upgrade and Proxy-*.
 *
 * Only names whose first letter could start a special header are lower-cased; the rest
 * (accept*, authorization, user-agent is a 'u'…) are copied as they are.
 */

const enum H {
  Host = 1, ContentLength, TransferEncoding, Connection, Drop, XForwardedFor, XForwardedProto,
  XForwardedHost, Forwarded, Via, RequestId, Authorization,
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
  forwarded: H.Forwarded,
  via: H.Via,
  'x-request-id': H.RequestId,
  authorization: H.Authorization,
})

/**
 * First letters (lower-cased) of every special name above, plus 'p' for Proxy-*. Of the
 * a-names only Authorization (13 characters) is special: Accept* stays on the fast path.
 */
function maybeSpecial (c: number, length: number): boolean {
  c |= 0x20
  return c === 0x68 || c === 0x63 || c === 0x74 || c === 0x6b || c === 0x75 || c === 0x65 ||
    c === 0x78 || c === 0x66 || c === 0x76 || c === 0x70 || (c === 0x61 && length === 13)
}

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
export function scanRequestHeaders (ex: Exchange, raw: readonly string[], table: RouteTable): GatewayError | null {
  const out = ex.outHeaders
  const roles = table.headerRoles
  const initials = table.headerRoleInitials
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!
    const value = raw[i + 1]!
    const c = name.charCodeAt(0)
    if (maybeSpecial(c, name.length) || initials[c] === 1) {
      const lower = name.toLowerCase()
      const kind = REQUEST_SPECIAL[lower]
      if (kind !== undefined) {
        switch (kind) {
          case H.Host: ex.hostHeader = value; ex.hostCount++; break
          case H.ContentLength: ex.contentLength = value; break
          case H.TransferEncoding: ex.transferEncoding = ex.transferEncoding === null ? value : `${ex.transferEncoding}, ${value}`; break
          case H.Connection: ex.connection = ex.connection === null ? value : `${ex.connection}, ${value}`; break
          case H.XForwardedFor: ex.xForwardedFor = ex.xForwardedFor === null ? value : `${ex.xForwardedFor}, ${value}`; break
          case H.XForwardedProto: ex.xForwardedProto ??= value; break
          case H.XForwardedHost: ex.xForwardedHost ??= value; break
          case H.Forwarded: ex.forwarded = ex.forwarded === null ? value : `${ex.forwarded}, ${value}`; break
          case H.Via: ex.via = ex.via === null ? value : `${ex.via}, ${value}`; break
          case H.RequestId: if (ex.requestId === '' && isValidRequestId(value)) ex.requestId = value; break
          case H.Authorization:
            // Noted for the auth policy, forwarded unless the route strips credentials.
            if (ex.authorizationCount++ === 0) ex.authorization = value
            out.push(name, value)
            break
        }
        continue
      }
      if (lower.startsWith('proxy-')) continue
      if ((c | 0x20) === 0x78 && isGatehouseHeader(lower)) continue
      if (roles.size > 0) {
        const role = roles.get(lower)
        if (role === 'credential') {
          ;(ex.credHeaders ??= []).push(lower, value)
        } else if (role === 'strip' || (role === undefined && lower.includes('_') && roles.get(lower.replaceAll('_', '-')) === 'strip')) {
          continue
        }
      }
    }
    out.push(name, value)
  }
  if (ex.requestId === '') ex.requestId = randomUUID()
  if (ex.connection !== null) removeConnectionTokens(out, ex.connection)
  if (ex.hostCount > 1) return gatewayError('GH_DUPLICATE_HOST', 'The request has more than one Host header')
  if (ex.transferEncoding !== null && ex.transferEncoding.trim().toLowerCase() !== 'chunked') {
    // Node's parser accepts codings such as "gzip, chunked"; forwarding them re-framed would
    // silently change the body's meaning. RFC 9112 §6.1: answer 501.
    return gatewayError('GH_TRANSFER_CODING_UNSUPPORTED', `Transfer-Encoding "${ex.transferEncoding}" is not supported; use chunked`)
  }
  return null
}

/**
 * Add the headers that depend on the route, on who the peer is and on who the caller turned
 * out to be. Host goes last (see dispatchTo).
 */
export function finishRequestHeaders (ex: Exchange, route: CompiledRoute, encrypted: boolean): void {
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
  const peer = ex.req.socket.remoteAddress ?? ''
  const trusted = ex.table.trustedProxies.has(peer)
  if (ex.contentLength !== null) out.push('content-length', ex.contentLength)
  // From an untrusted peer, X-Forwarded-* and Forwarded are replaced, never extended: a client
  // must not be able to choose the address or scheme the upstream believes.
  out.push('x-forwarded-for', trusted && ex.xForwardedFor !== null ? `${ex.xForwardedFor}, ${peer}` : peer)
  out.push('x-forwarded-proto', trusted && ex.xForwardedProto !== null ? ex.xForwardedProto : (encrypted ? 'https' : 'http'))
  const host = ex.hostHeader ?? route.upstream.targets[0]!.authority
  out.push('x-forwarded-host', trusted && ex.xForwardedHost !== null ? ex.xForwardedHost : host)
  if (trusted && ex.forwarded !== null) out.push('forwarded', ex.forwarded)
  const via = `${ex.req.httpVersion} gatehouse`
  out.push('via', ex.via === null ? via : `${ex.via}, ${via}`)
  out.push('x-request-id', ex.requestId)
  out.push('host', host)
}

/**
 * Response head from undici's raw Buffers to Node's flat [name, value, …] array, hop-by-hop
 * fields removed, Via and X-Request-Id added. latin1 keeps header bytes exactly as sent.
 */
export function filterResponseHeaders (raw: Buffer[], requestId: string): string[] {
  const out: string[] = []
  let via: string | null = null
  let connection: string | null = null
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!.toString('latin1')
    const value = raw[i + 1]!.toString('latin1')
    if (maybeSpecial(name.charCodeAt(0), 0)) {
      switch (name.toLowerCase()) {
        case 'connection': connection = connection === null ? value : `${connection}, ${value}`; continue
        case 'keep-alive': case 'transfer-encoding': case 'te': case 'trailer': case 'upgrade':
        case 'x-request-id':
          continue
        case 'via': via = via === null ? value : `${via}, ${value}`; continue
      }
      if ((name.charCodeAt(0) | 0x20) === 0x70 && name.toLowerCase().startsWith('proxy-')) continue
    }
    out.push(name, value)
  }
  if (connection !== null) removeConnectionTokens(out, connection)
  out.push('via', via === null ? '1.1 gatehouse' : `${via}, 1.1 gatehouse`)
  out.push('x-request-id', requestId)
  return out
}

/** Drop, in place, every field of a flat [name, value, …] list whose lower-case name `drop` picks. */
export function dropHeaders (out: string[], drop: (lowerName: string) => boolean): void {
  let w = 0
  for (let r = 0; r < out.length; r += 2) {
    if (drop(out[r]!.toLowerCase())) continue
    out[w++] = out[r]!
    out[w++] = out[r + 1]!
  }
  out.length = w
}

/** Framing fields: dropped wherever the gateway sends a body it holds whole (it sets the length). */
export function isLengthField (lower: string): boolean {
  return lower === 'content-length' || lower === 'transfer-encoding'
}

function isAcceptEncoding (lower: string): boolean {
  return lower === 'accept-encoding'
}

/** Drop every field named in `names` (lower-case). */
function removeHeaders (out: string[], names: readonly string[]): void {
  dropHeaders(out, (n) => names.includes(n))
}

/** Drop the fields a Connection header names (other than the standard tokens). */
export function removeConnectionTokens (out: string[], connection: string): void {
  // The common values name no other field (every response of a keep-alive upstream says so).
  if (connection.length <= 10 && isStandardConnectionToken(connection.toLowerCase())) return
  let names: Set<string> | null = null
  for (const token of connection.split(',')) {
    const t = token.trim().toLowerCase()
    if (t === '' || isStandardConnectionToken(t)) continue
    ;(names ??= new Set()).add(t)
  }
  if (names === null) return
  const named = names
  dropHeaders(out, (n) => named.has(n))
}

function isStandardConnectionToken (t: string): boolean {
  return t === 'keep-alive' || t === 'close' || t === 'upgrade'
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
 * Dot segments ("/a/../admin", also percent-encoded) are refused: the upstream would resolve
 * them after the gateway matched the unresolved path, and a route's checks could be skipped.
 */
export function hasDotSegment (path: string): boolean {
  if (path.indexOf('/.') === -1 && path.indexOf('%') === -1 && path.indexOf('\\') === -1) return false
  const decoded = path.replace(/%2e/gi, '.').replace(/%2f/gi, '/').replace(/%5c/gi, '/').replace(/\\/g, '/')
  for (const seg of decoded.split('/')) {
    if (seg === '.' || seg === '..') return true
  }
  return false
}

/**
 * Everything both entry paths (plain requests and upgrades) check before a route is known:
 * request target, header fields, dot segments, then the route. Sets `ex.path`, `ex.query`,
 * `ex.host`, `ex.route` and the scanned header fields. The scan comes first so that every
 * answer, refusals included, carries a request id.
 */
export function readHead (ex: Exchange, table: RouteTable): GatewayError | null {
  const req = ex.req
  const url = req.url ?? ''
  const q = url.indexOf('?')
  ex.path = q === -1 ? url : url.slice(0, q)
  ex.query = q === -1 ? '' : url.slice(q)
  const raw = req.rawHeaders
  const headerErr = scanRequestHeaders(ex, raw, table)
  const maxHeaders = table.config.listen.max_headers
  if (raw.length > maxHeaders * 2) return gatewayError('GH_HEADERS_TOO_LARGE', `The request has more than ${maxHeaders} header fields`)
  if (headerErr !== null) return headerErr
  if (url.charCodeAt(0) !== 47 /* / */) {
    // Absolute-form (a forward-proxy request) and asterisk-form are not for a gateway; taking
    // the authority from the target instead of Host would be a second source of truth.
    return gatewayError('GH_BAD_REQUEST', 'The request target must be an absolute path (origin-form)')
  }
  if (ex.path.indexOf('%') !== -1 || ex.path.indexOf('//') !== -1) {
    const normal = normalizePath(ex.path)
    if (normal === null) return gatewayError('GH_BAD_PATH', 'The request path has a malformed percent-encoding')
    ex.path = normal
  }
  if (hasDotSegment(ex.path)) return gatewayError('GH_BAD_PATH', 'The request path must not contain "." or ".." segments')
  ex.host = ex.hostHeader === null ? '' : hostname(ex.hostHeader)
  ex.route = table.match(req.method!, ex.host, ex.path, raw)
  if (ex.route === null) return gatewayError('GH_ROUTE_NOT_FOUND', `No route for ${req.method} ${ex.path}`)
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
