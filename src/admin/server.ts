import http from 'node:http'
import type { RouteTable } from '../compile/index.js'
import type { ProviderStatus } from '../identity/types.js'
import type { Metrics } from '../observability/metrics.js'

interface AdminHost {
  readonly table: RouteTable
  readonly metrics: Metrics
  readonly ready: boolean
  identityStatus (): Record<string, ProviderStatus>
  storeStatus (): Record<string, { status: string, kind: string }>
}

/**
 * The admin listener (127.0.0.1 by default): health, readiness, Prometheus metrics and the
 * compiled route table. It is separate from the proxy port so it is never exposed by a route.
 */
export function createAdminServer (host: AdminHost): http.Server {
  return http.createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0]
    if (req.method !== 'GET' && req.method !== 'HEAD') return send(res, 405, { error: 'method not allowed' }, { allow: 'GET, HEAD' })
    switch (path) {
      case '/healthz':
        return send(res, 200, { status: 'ok' })
      case '/readyz': {
        // Ready while every provider can admit callers; a JWT provider serving its last good
        // keys because the IdP is down is 'stale': still ready, and reported.
        const ready = host.ready
        // A limit store that cannot answer also degrades (routes apply on_store_error), but
        // never makes the gateway unready: taking it out of the load balancer would not help.
        const identity = host.identityStatus()
        const stores = host.storeStatus()
        const degraded = [...Object.values(identity), ...Object.values(stores)].some((s) => s.status !== 'ok')
        return send(res, ready ? 200 : 503, {
          status: !ready ? 'not ready' : degraded ? 'degraded' : 'ready',
          routes: host.table.routes.length,
          ...(Object.keys(identity).length === 0 ? {} : { identity }),
          ...(Object.keys(stores).length === 0 ? {} : { stores }),
        })
      }
      case '/.well-known/jwks.json': {
        // The phantom-token signer's public key, for upstreams that verify the gateway's tokens.
        const phantom = host.table.identity.phantom
        if (phantom === null) return send(res, 404, { error: 'no phantom_token key is configured' })
        phantom.jwks().then((jwks) => send(res, 200, jwks, { 'cache-control': 'max-age=300' }), (err: Error) => send(res, 500, { error: err.message }))
        return
      }
      case '/metrics':
        host.metrics.registry.metrics().then((text) => {
          res.writeHead(200, { 'content-type': host.metrics.registry.contentType })
          res.end(text)
        }, (err: Error) => send(res, 500, { error: err.message }))
        return
      case '/routes':
        return send(res, 200, {
          routes: host.table.routes.map((r) => ({
            index: r.index,
            name: r.name,
            match: r.describe,
            upstream: r.upstream.name,
            targets: r.upstream.targets.map((t) => ({ url: t.origin + t.basePath, in_flight: t.inFlight, ejected: !t.isHealthy(Date.now()) })),
          })),
        })
      default:
        return send(res, 404, { error: 'not found' })
    }
  })
}

function send (res: http.ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body)
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store', ...headers })
  res.end(text)
}
