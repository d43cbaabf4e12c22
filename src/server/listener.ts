import http from 'node:http'
import https from 'node:https'
import type { Config } from '../config/schema.js'

/** Per direction per connection (see highWaterMark below). */
const STREAM_HIGH_WATER_MARK = 128 * 1024

/** The proxy listener (HTTP or HTTPS) with the settings that can only be given at creation. */
export function createListener (config: Config): http.Server {
  const l = config.listen
  const serverOptions: http.ServerOptions = {
    maxHeaderSize: l.max_header_size,
    headersTimeout: l.timeouts.headers,
    requestTimeout: l.timeouts.request,
    keepAliveTimeout: l.timeouts.keep_alive,
    // Node checks header/request timeouts on this interval (30 s by default), which lets a
    // slowloris client hold a socket long past `headers`. A twentieth of the shorter one (at
    // most a second) keeps each within 10 % of its value; the check is a walk over the
    // open connections.
    connectionsCheckingInterval: checkingInterval(l.timeouts.headers, l.timeouts.request),
    noDelay: true,
    // Node corks each response write until the next tick, so with the default 16 KiB mark
    // every 64 KiB chunk from the upstream reported backpressure and paused the upstream
    // socket once per chunk. 128 KiB per direction per connection keeps streams flowing.
    highWaterMark: STREAM_HIGH_WATER_MARK,
    insecureHTTPParser: false,
    // A missing Host is refused by readHead as problem+json (Node's own 400 is bare).
    requireHostHeader: false,
    joinDuplicateHeaders: false,
  }
  return l.tls === undefined
    ? http.createServer(serverOptions)
    // validateConfig has replaced TLS paths with the PEM text they name.
    : https.createServer({
      ...serverOptions,
      cert: l.tls.cert,
      key: l.tls.key,
      ...(l.tls.ca === undefined ? {} : { ca: l.tls.ca }),
      minVersion: l.tls.min_version,
      ciphers: l.tls.ciphers,
      // The client chooses among the server's preferences, strongest first.
      honorCipherOrder: true,
      // A connection that never completes its handshake is held no longer than a head that
      // never completes (Node's default is 120 s).
      handshakeTimeout: l.timeouts.headers,
    })
}

/** Listener settings Node lets us change on a live server (also on reload). */
export function applyListenerSettings (server: http.Server, config: Config): void {
  const t = config.listen.timeouts
  server.headersTimeout = t.headers
  server.requestTimeout = t.request
  server.keepAliveTimeout = t.keep_alive
  server.timeout = t.idle
  // Node closes the connection after this many requests (Connection: close on the last).
  server.maxRequestsPerSocket = config.listen.limits.max_requests_per_connection
  // One more than the limit, so that "too many" is visible in rawHeaders (Node truncates silently).
  server.maxHeadersCount = config.listen.max_headers + 1
}

function checkingInterval (headers: number, request: number): number {
  const shortest = request > 0 ? Math.min(headers, request) : headers
  return Math.max(5, Math.min(1000, Math.floor(shortest / 20)))
}

const BIND_ERRORS: Readonly<Record<string, string>> = {
  EADDRINUSE: 'address already in use',
  EACCES: 'permission denied',
  EADDRNOTAVAIL: 'address not available',
  ENOTFOUND: 'host not found',
}

/**
 * Resolves once `server` listens. A bind error rejects with one line that names the listener
 * and its address, `listen 0.0.0.0:8080: address already in use`, with code GH_LISTEN_FAILED
 * and the system error as its cause.
 */
export function listening (
  server: http.Server,
  what: 'listen' | 'admin',
  host: string,
  port: number,
): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('listening', resolve)
    server.once('error', (err: NodeJS.ErrnoException) => {
      const reason = BIND_ERRORS[err.code ?? ''] ?? err.code ?? err.message
      const address = `${host.includes(':') ? `[${host}]` : host}:${port}`
      const failure = new Error(`${what} ${address}: ${reason}`, { cause: err })
      reject(Object.assign(failure, { code: 'GH_LISTEN_FAILED' }))
    })
  })
}
