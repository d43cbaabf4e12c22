import { Pool } from 'undici'
import type { UpstreamConfig } from '../config/schema.js'
import { preciseConnector } from './timeouts.js'

/** Pool-level options: two targets with the same URL and these share one pool. */
export interface PoolOptions {
  connectTimeout: number
  maxConnections: number
  keepAlive: number
}

/**
 * One upstream server: its connection pool and the live counts the balancer reads. Targets are
 * owned by the TargetRegistry and outlive a config reload, so keep-alive connections, in-flight
 * counts and ejections carry over when the route table is swapped.
 */
export class Target {
  readonly key: string
  /** scheme://host:port */
  readonly origin: string
  /** Path prefix from the target URL ('' or '/base', no trailing slash). */
  readonly basePath: string
  /** host[:port] of the target, for routes that do not preserve the client's Host. */
  readonly authority: string
  readonly pool: Pool
  inFlight = 0
  consecutiveFailures = 0
  ejectedUntil = 0
  /**
   * Upstreams with requests queued for a slot (max_in_flight). Targets outlive reloads, so a
   * slot freed by a request on the old route table still wakes a waiter queued on the new one.
   */
  readonly waiting = new Set<{ release(target: Target): void }>()

  constructor (key: string, url: string, opts: PoolOptions) {
    const u = new URL(url)
    this.key = key
    this.origin = u.origin
    this.basePath = u.pathname === '/' ? '' : u.pathname
    this.authority = u.host
    this.pool = new Pool(this.origin, {
      connections: opts.maxConnections,
      pipelining: 1,
      // undici keeps an idle connection for min(the upstream's `Keep-Alive: timeout` less 2 s,
      // keepAliveMaxTimeout), or for keepAliveTimeout when the upstream sends no hint, so the
      // max must be keep_alive itself: with a 1 s floor here, keep_alive 200ms kept
      // connections for 1 s behind any Node upstream (which sends timeout=5).
      // undici refuses 0; `keep_alive: 0` means no idle connection is kept, and 1 ms is that.
      keepAliveTimeout: Math.max(opts.keepAlive, 1),
      keepAliveMaxTimeout: Math.max(opts.keepAlive, 1),
      // Short connect timeouts on a precise timer (see timeouts.ts), long ones on undici's own.
      connect: preciseConnector(opts.connectTimeout),
      // Per-request values override these; they only matter for requests we forget to time.
      headersTimeout: 300_000,
      bodyTimeout: 300_000,
      allowH2: false,
    })
    // A pool emits 'connectionError' for failed connects; the request's own error is what we act on.
    this.pool.on('connectionError', noop)
  }

  isHealthy (now: number): boolean {
    return this.ejectedUntil <= now
  }
}

/** A request finished with `target`: give its slot back and let a queued request have it. */
export function releaseSlot (target: Target): void {
  target.inFlight--
  if (target.waiting.size > 0) { for (const u of target.waiting) u.release(target) }
}

function noop (): void {}

/** Owns Targets across reloads; targets no longer referenced are closed after their requests end. */
export class TargetRegistry {
  readonly #targets = new Map<string, Target>()

  acquire (url: string, opts: PoolOptions): Target {
    const key = `${url}|${opts.connectTimeout}|${opts.maxConnections}|${opts.keepAlive}`
    let t = this.#targets.get(key)
    if (t === undefined) {
      t = new Target(key, url, opts)
      this.#targets.set(key, t)
    }
    return t
  }

  /**
   * The targets of each upstream of a config, in config order, for compile(). Targets already
   * held (same URL and pool options) are reused with their connections and counts.
   */
  prepare (upstreams: Readonly<Record<string, UpstreamConfig>>): Map<string, Target[]> {
    const out = new Map<string, Target[]>()
    for (const [name, u] of Object.entries(upstreams)) {
      const opts = poolOptions(u)
      out.set(name, u.targets.map((t) => this.acquire(t.url, opts)))
    }
    return out
  }

  /** Close every target whose key is not in `keep`. Pool.close() lets in-flight requests finish. */
  async retain (keep: ReadonlySet<string>): Promise<void> {
    const closing: Promise<void>[] = []
    for (const [key, t] of this.#targets) {
      if (!keep.has(key)) {
        this.#targets.delete(key)
        closing.push(t.pool.close().catch(noop))
      }
    }
    await Promise.all(closing)
  }

  async closeAll (force = false): Promise<void> {
    const all = [...this.#targets.values()]
    this.#targets.clear()
    await Promise.all(all.map((t) => (force ? t.pool.destroy() : t.pool.close()).catch(noop)))
  }
}

export function poolOptions (u: UpstreamConfig): PoolOptions {
  return {
    connectTimeout: u.timeouts.connect,
    maxConnections: u.max_connections,
    keepAlive: u.keep_alive,
  }
}
