import http from 'node:http'
import type { RouteTable } from '../compile/index.js'
import type { ProviderStatus } from '../identity/types.js'
import type { Metrics } from '../observability/metrics.js'
import type { DeliveryService } from '../delivery/service.js'

/** The gateway as the admin listener reads it. */
interface AdminHost {
  readonly table: RouteTable
  readonly metrics: Metrics
  readonly ready: boolean
}

/** What outlives one table: providers, stores, the delivery log (server/reload.ts Reloader). */
interface AdminRegistries {
  identityStatus(): Record<string, ProviderStatus>
  storeStatus(): Record<string, { status: string, kind: string }>
  readonly delivery: DeliveryService
}

/**
 * The admin listener (127.0.0.1 by default): health, readiness, Prometheus metrics and the
 * compiled route table. It is separate from the proxy port so it is never exposed by a route.
 */
export function createAdminServer (host: AdminHost, registries: AdminRegistries): http.Server {
  return http.createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0]!
    if (path === '/deliveries' || path.startsWith('/deliveries/')) {
      deliveries(
        registries.delivery,
        req,
        path,
        new URL(req.url ?? '/', 'http://admin').searchParams,
      ).then(
        ([status, body]) => send(res, status, body),
        (err: Error) => send(res, 503, { error: `delivery store: ${err.message}` }),
      )
      return
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      return send(res, 405, { error: 'method not allowed' }, { allow: 'GET, HEAD' })
    }
    switch (path) {
      case '/healthz':
        return send(res, 200, { status: 'ok' })
      case '/readyz': {
        // Ready while every provider can admit callers; a JWT provider serving its last good
        // keys because the IdP is down is 'stale': still ready, and reported.
        const ready = host.ready
        // A limit store that cannot answer also degrades (routes apply on_store_error), but
        // never makes the gateway unready: taking it out of the load balancer would not help.
        const identity = registries.identityStatus()
        const stores = registries.storeStatus()
        const degraded = [...Object.values(identity), ...Object.values(stores)].some((s) =>
          s.status !== 'ok'
        )
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
        phantom.jwks().then(
          (jwks) => send(res, 200, jwks, { 'cache-control': 'max-age=300' }),
          (err: Error) => send(res, 500, { error: err.message }),
        )
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
            targets: r.upstream.targets.map((t) => ({
              url: t.origin + t.basePath,
              in_flight: t.inFlight,
              ejected: !t.isHealthy(Date.now()),
            })),
          })),
        })
      default:
        return send(res, 404, { error: 'not found' })
    }
  })
}

/**
 * The delivery log: GET /deliveries?state=&route=&limit=, GET /deliveries/{id},
 * POST /deliveries/{id}/replay, POST /deliveries/replay?route= (every dead letter),
 * DELETE /deliveries?state=dead|delivered&route=.
 */
async function deliveries (
  d: DeliveryService,
  req: http.IncomingMessage,
  path: string,
  q: URLSearchParams,
): Promise<[number, unknown]> {
  req.resume()
  const method = req.method ?? 'GET'
  const route = q.get('route') ?? undefined
  const parts = path.split('/').filter(Boolean)
  if (d.store === null) return [404, { error: 'no route is async: there is no delivery store' }]
  if (parts.length === 1) {
    const state = q.get('state') ?? undefined
    if (state !== undefined && state !== 'pending' && state !== 'delivered' && state !== 'dead') {
      return [400, { error: 'state must be pending, delivered or dead' }]
    }
    if (method === 'GET') {
      const limit = Number(q.get('limit') ?? 100)
      if (!Number.isInteger(limit) || limit < 1 || limit > 10_000) {
        return [400, { error: 'limit must be 1 to 10000' }]
      }
      return [200, { deliveries: await d.list(state, route, limit) }]
    }
    if (method === 'DELETE') {
      if (state !== 'dead' && state !== 'delivered') {
        return [400, { error: 'purge needs state=dead or state=delivered' }]
      }
      return [200, { purged: await d.purge(state, route) }]
    }
    return [405, { error: 'use GET or DELETE' }]
  }
  if (parts.length === 2 && parts[1] === 'replay') {
    if (method !== 'POST') return [405, { error: 'use POST' }]
    return [200, {
      replayed: await d.replay(route === undefined ? { dead: true } : { dead: true, route }),
    }]
  }
  const id = decodeURIComponent(parts[1]!)
  if (parts.length === 2 && method === 'GET') {
    const v = await d.get(id)
    return v === null ? [404, { error: `no delivery ${id}` }] : [200, v]
  }
  if (parts.length === 3 && parts[2] === 'replay' && method === 'POST') {
    const n = await d.replay({ ids: [id] })
    if (n === 0) {
      const v = await d.get(id)
      return v === null
        ? [404, { error: `no delivery ${id}` }]
        : [409, { error: `delivery ${id} is ${v.state}; only dead deliveries are replayed` }]
    }
    return [200, { replayed: n }]
  }
  return [404, { error: 'not found' }]
}

function send (
  res: http.ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): void {
  const text = JSON.stringify(body)
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
    'cache-control': 'no-store',
    ...headers,
  })
  res.end(text)
}
