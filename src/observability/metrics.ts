import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'

const DURATION_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]

/** Children of labelled metrics bound to one route, made once per compiled route (no per-request label hashing). */
export interface RouteMetrics {
  duration: ReturnType<Histogram<'route'>['labels']>
  upstreamDuration: ReturnType<Histogram<'route' | 'upstream'>['labels']>
  bytesIn: ReturnType<Counter<'route'>['labels']>
  bytesOut: ReturnType<Counter<'route'>['labels']>
  /** requests_total children by `${method} ${status}`. */
  requests: Map<string, ReturnType<Counter<'route' | 'method' | 'status'>['labels']>>
}

/** One registry per gateway instance, so several gateways in one process (tests) do not collide. */
export class Metrics {
  readonly registry = new Registry()
  readonly requests = new Counter({ name: 'gatehouse_requests_total', help: 'Requests answered, by route, method and status', labelNames: ['route', 'method', 'status'] as const, registers: [this.registry] })
  readonly duration = new Histogram({ name: 'gatehouse_request_duration_seconds', help: 'Time from request head to response end', labelNames: ['route'] as const, buckets: DURATION_BUCKETS, registers: [this.registry] })
  readonly upstreamDuration = new Histogram({ name: 'gatehouse_upstream_header_duration_seconds', help: 'Time from dispatch to the upstream response head', labelNames: ['route', 'upstream'] as const, buckets: DURATION_BUCKETS, registers: [this.registry] })
  readonly inFlight = new Gauge({ name: 'gatehouse_in_flight_requests', help: 'Requests being handled', registers: [this.registry] })
  readonly bytesIn = new Counter({ name: 'gatehouse_request_body_bytes_total', help: 'Request body bytes forwarded upstream', labelNames: ['route'] as const, registers: [this.registry] })
  readonly bytesOut = new Counter({ name: 'gatehouse_response_body_bytes_total', help: 'Response body bytes sent to clients', labelNames: ['route'] as const, registers: [this.registry] })
  readonly clientErrors = new Counter({ name: 'gatehouse_client_errors_total', help: 'Requests refused before routing (malformed, oversized, timed out)', labelNames: ['code'] as const, registers: [this.registry] })
  readonly upstreamErrors = new Counter({ name: 'gatehouse_upstream_errors_total', help: 'Upstream failures by code', labelNames: ['upstream', 'code'] as const, registers: [this.registry] })
  readonly reloads = new Counter({ name: 'gatehouse_config_reloads_total', help: 'Configuration reloads by result', labelNames: ['result'] as const, registers: [this.registry] })
  readonly upgrades = new Gauge({ name: 'gatehouse_upgraded_connections', help: 'Open upgraded (WebSocket) connections', registers: [this.registry] })
  readonly #routeCache = new Map<string, RouteMetrics>()

  constructor (defaults = true) {
    if (defaults) collectDefaultMetrics({ register: this.registry, prefix: 'gatehouse_process_' })
  }

  forRoute (route: string, upstream: string): RouteMetrics {
    const key = `${route}\0${upstream}`
    let m = this.#routeCache.get(key)
    if (m === undefined) {
      m = {
        duration: this.duration.labels(route),
        upstreamDuration: this.upstreamDuration.labels(route, upstream),
        bytesIn: this.bytesIn.labels(route),
        bytesOut: this.bytesOut.labels(route),
        requests: new Map(),
      }
      this.#routeCache.set(key, m)
    }
    return m
  }

  countRequest (rm: RouteMetrics, route: string, method: string, status: number): void {
    const key = `${method} ${status}`
    let c = rm.requests.get(key)
    if (c === undefined) {
      c = this.requests.labels(route, method, String(status))
      rm.requests.set(key, c)
    }
    c.inc()
  }
}
