// Deep imports: the entry point loads more than the metric classes (src/types/prom-client-deep.d.ts).
import Counter from 'prom-client/lib/counter.js'
import collectDefaultMetrics from 'prom-client/lib/defaultMetrics.js'
import Gauge from 'prom-client/lib/gauge.js'
import Registry from 'prom-client/lib/registry.js'

const DURATION_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
  30, 60, 120]

/**
 * Metrics updated per request: every proxied request, credential check, cache lookup and async
 * delivery. prom-client's labelled children re-validate and re-hash their label set on every
 * inc()/observe() (about 1 µs each); these keep plain numbers per label set and are read by the
 * registry at scrape time, in the same exposition format. Label values are fixed when a cell is
 * made (once per route, method and status; per provider and result), never per request. Metrics
 * that move only on failures or reloads stay prom-client's own.
 */
interface PromMetric {
  readonly name: string
  readonly help: string
  readonly type: 'counter' | 'histogram'
  readonly aggregator: 'sum'
  get(): {
    name: string
    help: string
    type: string
    aggregator: string
    values: Array<{ labels: Record<string, string | number>, value: number, metricName?: string }>
  }
  reset(): void
}

export class CounterCell {
  value = 0
  constructor (readonly labels: Readonly<Record<string, string>>) {}
  inc (n = 1): void {
    this.value += n
  }
}

export class HistogramCell {
  /** Per-bucket (not cumulative) counts; the last is +Inf. */
  readonly counts: Float64Array
  sum = 0
  count = 0
  constructor (
    readonly labels: Readonly<Record<string, string>>,
    readonly bounds: readonly number[],
  ) {
    this.counts = new Float64Array(bounds.length + 1)
  }

  observe (v: number): void {
    const b = this.bounds
    let i = 0
    while (i < b.length && v > b[i]!) i++
    this.counts[i]!++
    this.sum += v
    this.count++
  }
}

class HotMetric<C extends CounterCell | HistogramCell> implements PromMetric {
  readonly aggregator = 'sum'
  readonly #cells = new Map<string, C>()

  constructor (
    readonly name: string,
    readonly help: string,
    readonly type: 'counter' | 'histogram',
    readonly labelNames: readonly string[],
    readonly make: (labels: Record<string, string>) => C,
    registry: Registry,
  ) {
    registry.registerMetric(this as unknown as Parameters<Registry['registerMetric']>[0])
  }

  /** The cell for these label values (in labelNames order); made on first use. Not for per-request use. */
  labels (...values: string[]): C {
    const key = values.join('\0')
    let c = this.#cells.get(key)
    if (c === undefined) {
      const labels: Record<string, string> = {}
      this.labelNames.forEach((n, i) => {
        labels[n] = values[i]!
      })
      c = this.make(labels)
      this.#cells.set(key, c)
    }
    return c
  }

  get (): ReturnType<PromMetric['get']> {
    const values: ReturnType<PromMetric['get']>['values'] = []
    for (const c of this.#cells.values()) {
      if (c instanceof CounterCell) {
        values.push({ labels: c.labels, value: c.value })
        continue
      }
      let acc = 0
      for (let i = 0; i <= c.bounds.length; i++) {
        acc += c.counts[i]!
        values.push({
          labels: { le: i === c.bounds.length ? '+Inf' : c.bounds[i]!, ...c.labels },
          value: acc,
          metricName: `${this.name}_bucket`,
        })
      }
      values.push({ labels: c.labels, value: c.sum, metricName: `${this.name}_sum` })
      values.push({ labels: c.labels, value: c.count, metricName: `${this.name}_count` })
    }
    return {
      name: this.name,
      help: this.help,
      type: this.type,
      aggregator: this.aggregator,
      values,
    }
  }

  reset (): void {
    this.#cells.clear()
  }
}

function hotCounter (
  registry: Registry,
  name: string,
  help: string,
  labelNames: readonly string[],
): HotMetric<CounterCell> {
  return new HotMetric(name, help, 'counter', labelNames, (l) => new CounterCell(l), registry)
}

function hotHistogram (
  registry: Registry,
  name: string,
  help: string,
  labelNames: readonly string[],
  buckets: readonly number[],
): HotMetric<HistogramCell> {
  return new HotMetric(
    name,
    help,
    'histogram',
    labelNames,
    (l) => new HistogramCell(l, buckets),
    registry,
  )
}

export type CacheResult = 'hit' | 'miss' | 'coalesced' | 'bypass'

/** One async route's messages in the delivery store. */
export interface DeliveryRouteStats {
  pending: number
  dead: number
  oldestPendingAt: number | null
}

/** What the delivery gauges read at scrape time: the store's counts, by route name. */
export interface DeliveryStatsSource {
  deliveryStats(): Promise<Record<string, DeliveryRouteStats>>
}

/** The per-request metrics of one route, made once per route. */
export class RouteMetrics {
  readonly duration: HistogramCell
  readonly upstreamDuration: HistogramCell
  readonly bytesIn: CounterCell
  readonly bytesOut: CounterCell
  readonly #requests: HotMetric<CounterCell>
  readonly #cache: HotMetric<CounterCell>
  readonly #route: string
  /** requests_total cells by method, then status: no string keys built per request. */
  readonly #byMethod = new Map<string, Map<number, CounterCell>>()
  /** cache_requests_total cells, made on a cached route's first request of each result. */
  readonly #cacheCells: Partial<Record<CacheResult, CounterCell>> = {}

  constructor (m: Metrics, route: string, upstream: string) {
    this.#route = route
    this.#requests = m.requests
    this.#cache = m.cache
    this.duration = m.duration.labels(route)
    this.upstreamDuration = m.upstreamDuration.labels(route, upstream)
    this.bytesIn = m.bytesIn.labels(route)
    this.bytesOut = m.bytesOut.labels(route)
  }

  countCache (result: CacheResult): void {
    ;(this.#cacheCells[result] ??= this.#cache.labels(this.#route, result)).value++
  }

  countRequest (method: string, status: number): void {
    let byStatus = this.#byMethod.get(method)
    if (byStatus === undefined) {
      byStatus = new Map()
      this.#byMethod.set(method, byStatus)
    }
    let c = byStatus.get(status)
    if (c === undefined) {
      c = this.#requests.labels(this.#route, method, String(status))
      byStatus.set(status, c)
    }
    c.value++
  }
}

/** One registry per gateway instance, so several gateways in one process (tests) do not collide. */
export class Metrics {
  readonly registry = new Registry()
  readonly requests = hotCounter(
    this.registry,
    'gatehouse_requests_total',
    'Requests answered, by route, method and status',
    ['route', 'method', 'status'],
  )
  readonly duration = hotHistogram(
    this.registry,
    'gatehouse_request_duration_seconds',
    'Time from request head to response end',
    ['route'],
    DURATION_BUCKETS,
  )
  readonly upstreamDuration = hotHistogram(
    this.registry,
    'gatehouse_upstream_header_duration_seconds',
    'Time from dispatch to the upstream response head',
    ['route', 'upstream'],
    DURATION_BUCKETS,
  )
  readonly bytesIn = hotCounter(
    this.registry,
    'gatehouse_request_body_bytes_total',
    'Request body bytes forwarded upstream',
    ['route'],
  )
  readonly bytesOut = hotCounter(
    this.registry,
    'gatehouse_response_body_bytes_total',
    'Response body bytes sent to clients',
    ['route'],
  )
  readonly refused = new Counter({
    name: 'gatehouse_refused_requests_total',
    help:
      'Requests the gateway refused itself, before any upstream call (malformed, no route, too large, timed out, no healthy target)',
    labelNames: ['code'] as const,
    registers: [this.registry],
  })
  readonly upstreamErrors = new Counter({
    name: 'gatehouse_upstream_errors_total',
    help: 'Upstream failures by code',
    labelNames: ['upstream', 'code'] as const,
    registers: [this.registry],
  })
  readonly reloads = new Counter({
    name: 'gatehouse_config_reloads_total',
    help: 'Configuration reloads by result',
    labelNames: ['result'] as const,
    registers: [this.registry],
  })
  readonly uncaughtErrors = new Counter({
    name: 'gatehouse_uncaught_errors_total',
    help:
      'Errors no code handled (counted by gatehouse start): a promise rejected with no handler (rejection), an exception thrown from a callback (exception)',
    labelNames: ['kind'] as const,
    registers: [this.registry],
  })
  readonly upgrades = new Gauge({
    name: 'gatehouse_upgraded_connections',
    help: 'Open upgraded (WebSocket) connections',
    registers: [this.registry],
  })
  readonly connectionsRefused = new Counter({
    name: 'gatehouse_connections_refused_total',
    help:
      'Connections closed at once because a listener limit was reached (max_connections, max_connections_per_ip) or a pipelining flood',
    labelNames: ['reason'] as const,
    registers: [this.registry],
  })
  readonly clientTimeouts = new Counter({
    name: 'gatehouse_client_timeouts_total',
    help:
      'Client connections cut for being too slow: body_idle, body_min_rate (request body) or send_idle (response)',
    labelNames: ['timeout'] as const,
    registers: [this.registry],
  })
  /** Set by the gateway: open client connections, read at scrape time. */
  openConnections: () => number = () => 0
  readonly auth = hotCounter(
    this.registry,
    'gatehouse_auth_total',
    'Credential checks by provider and result (cached, verified, invalid, unavailable)',
    ['provider', 'result'],
  )
  readonly keyFetches = new Counter({
    name: 'gatehouse_jwks_fetches_total',
    help: 'JWKS (and discovery) fetches by provider and result',
    labelNames: ['provider', 'result'] as const,
    registers: [this.registry],
  })
  readonly introspections = new Counter({
    name: 'gatehouse_introspection_requests_total',
    help: 'Calls to introspection endpoints by provider and result (active, inactive, error)',
    labelNames: ['provider', 'result'] as const,
    registers: [this.registry],
  })
  readonly rateLimited = new Counter({
    name: 'gatehouse_rate_limited_total',
    help: 'Requests refused with 429, by route and limit',
    labelNames: ['route', 'limit'] as const,
    registers: [this.registry],
  })
  readonly quotaCost = new Counter({
    name: 'gatehouse_quota_cost_total',
    help:
      'Cost units (tokens) charged to quotas from what responses said they cost, by route and limit',
    labelNames: ['route', 'limit'] as const,
    registers: [this.registry],
  })
  readonly limitStoreErrors = new Counter({
    name: 'gatehouse_limit_store_errors_total',
    help: 'Limit-store failures by store and what was done (allow, deny, charge)',
    labelNames: ['store', 'action'] as const,
    registers: [this.registry],
  })
  readonly limitEvictions = new Counter({
    name: 'gatehouse_limit_evictions_total',
    help:
      'Buckets a memory store dropped for room while they still counted (their callers start afresh), by store and limit',
    labelNames: ['store', 'limit'] as const,
    registers: [this.registry],
  })
  readonly queued = new Counter({
    name: 'gatehouse_upstream_queued_total',
    help:
      'Requests that waited for a slot on a full upstream (max_in_flight), by outcome: granted, timeout, full',
    labelNames: ['upstream', 'result'] as const,
    registers: [this.registry],
  })
  readonly cache = hotCounter(
    this.registry,
    'gatehouse_cache_requests_total',
    'Requests on cached routes by result: hit, miss, coalesced (served from a concurrent miss), bypass',
    ['route', 'result'],
  )
  readonly deliveryEnqueued = hotCounter(
    this.registry,
    'gatehouse_delivery_enqueued_total',
    'Async requests accepted (persisted, answered 202), by route',
    ['route'],
  )
  readonly deliveryDelivered = hotCounter(
    this.registry,
    'gatehouse_delivery_delivered_total',
    'Async requests delivered upstream, by route',
    ['route'],
  )
  readonly deliveryRetried = hotCounter(
    this.registry,
    'gatehouse_delivery_retried_total',
    'Delivery attempts that failed and were scheduled again, by route',
    ['route'],
  )
  readonly deliveryDead = hotCounter(
    this.registry,
    'gatehouse_delivery_dead_total',
    'Async requests dead-lettered (final 4xx, max_attempts or max_age), by route',
    ['route'],
  )
  readonly deliveryLatency = hotHistogram(
    this.registry,
    'gatehouse_delivery_latency_seconds',
    'Time from accepting an async request to its delivery',
    ['route'],
    [0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 1800, 3600],
  )
  /** Where the delivery gauges read the store's per-route counts (the delivery service). */
  #deliveries: DeliveryStatsSource | null = null
  readonly #routeCache = new WeakMap<object, RouteMetrics>()
  readonly #byName = new Map<string, RouteMetrics>()

  /**
   * @param inFlight read when /metrics is scraped, so the request path never touches the gauge.
   */
  constructor (
    defaults = true,
    inFlight: () => number = () => 0,
    queues: () => Iterable<[string, number]> = () => [],
  ) {
    const stats = async (): Promise<Record<string, DeliveryRouteStats>> => {
      try {
        return this.#deliveries === null ? {} : await this.#deliveries.deliveryStats()
      } catch {
        return {}
      }
    }
    // eslint-disable-next-line no-new
    new Gauge({
      name: 'gatehouse_delivery_pending',
      help: 'Async requests waiting for delivery, by route',
      labelNames: ['route'] as const,
      registers: [this.registry],
      async collect () {
        this.reset()
        for (const [route, s] of Object.entries(await stats())) this.labels(route).set(s.pending)
      },
    })
    // eslint-disable-next-line no-new
    new Gauge({
      name: 'gatehouse_delivery_oldest_pending_seconds',
      help: 'Age of the oldest async request still waiting for delivery, by route',
      labelNames: ['route'] as const,
      registers: [this.registry],
      async collect () {
        this.reset()
        const now = Date.now()
        for (const [route, s] of Object.entries(await stats())) {
          this.labels(route).set(s.oldestPendingAt === null ? 0 : (now - s.oldestPendingAt) / 1000)
        }
      },
    })
    // eslint-disable-next-line no-new
    new Gauge({
      name: 'gatehouse_in_flight_requests',
      help: 'Requests being handled',
      registers: [this.registry],
      collect () {
        this.set(inFlight())
      },
    })
    const open = (): number => this.openConnections()
    // eslint-disable-next-line no-new
    new Gauge({
      name: 'gatehouse_open_connections',
      help: 'Open client connections on the proxy listener',
      registers: [this.registry],
      collect () {
        this.set(open())
      },
    })
    // eslint-disable-next-line no-new
    new Gauge({
      name: 'gatehouse_upstream_queue_depth',
      help: 'Requests waiting for a slot on a full upstream (max_in_flight)',
      labelNames: ['upstream'] as const,
      registers: [this.registry],
      collect () {
        this.reset()
        for (const [name, depth] of queues()) this.labels(name).set(depth)
      },
    })
    if (defaults) {
      collectDefaultMetrics({ register: this.registry, prefix: 'gatehouse_' })
      // prom-client's nodejs_active_*_total are gauges, and only counters may end in _total
      // (`promtool check metrics` fails the scrape). Each is the sum of its gauge by type:
      // sum(gatehouse_nodejs_active_handles) is the same number.
      for (const what of ['handles', 'requests', 'resources']) {
        this.registry.removeSingleMetric(`gatehouse_nodejs_active_${what}_total`)
      }
    }
  }

  /** The delivery gauges (pending, oldest pending) read `source` when /metrics is scraped. */
  readDeliveriesFrom (source: DeliveryStatsSource): void {
    this.#deliveries = source
  }

  /** Bound metrics for a route object; keyed by identity, so a lookup builds no strings. */
  forRoute (route: object | null, name: string, upstream: string): RouteMetrics {
    const key = route ?? this
    let m = this.#routeCache.get(key)
    if (m === undefined) {
      // A reload compiles new route objects; reuse the bound children of a same-named route.
      m = this.#byName.get(`${name}\0${upstream}`) ?? new RouteMetrics(this, name, upstream)
      this.#byName.set(`${name}\0${upstream}`, m)
      this.#routeCache.set(key, m)
    }
    return m
  }
}
