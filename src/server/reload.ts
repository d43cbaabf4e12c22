import { compile, type RouteTable } from '../compile/index.js'
import { compileChecks } from '../compile/checks.js'
import { validateConfig } from '../config/load.js'
import type { Config, ConfigInput } from '../config/schema.js'
import { DeliveryService } from '../delivery/service.js'
import { IdentityRegistry, type IdentitySet } from '../identity/registry.js'
import type { ProviderStatus } from '../identity/types.js'
import type { Logger } from '../observability/logger.js'
import type { Metrics } from '../observability/metrics.js'
import { StoreRegistry, type StoreSet } from '../stores/registry.js'
import { TargetRegistry } from '../upstream/target.js'
import type { TableSwitcher } from './switcher.js'

/**
 * What a reload reads: a config, or a function that reads one (a file), so that reading
 * errors are logged and counted like validation errors.
 */
export type ConfigSource = ConfigInput | Config | (() => Config)

/** What a reload asks of the server around it. */
export interface ReloadHooks {
  /** Whether the listeners are up: a new table's delivery workers start only then. */
  listening(): boolean
  /** Apply what takes effect at once (client timeouts, header limits, log settings). */
  apply(config: Config): void
}

type PreparedDelivery = Awaited<ReturnType<DeliveryService['prepare']>>

/** How long a start or reload waits for identity providers' first keys. */
const IDENTITY_START_TIMEOUT = 10_000

/**
 * How a config becomes the live route table, at start and on every reload.
 *
 * The registries here outlive any one table: a pool, identity provider or store whose config
 * did not change is carried into the next table with its connections, keys and counters
 * (a reload must not refetch every JWKS or reset every rate limit). What changed is built
 * and started before the swap (an identity provider's first keys waited for at most
 * IDENTITY_START_TIMEOUT); what the new table no longer uses is closed after it.
 */
export class Reloader {
  /** Where async routes' requests go; it keeps its store across reloads like the others. */
  readonly delivery: DeliveryService
  readonly #targets = new TargetRegistry()
  readonly #identity: IdentityRegistry
  readonly #stores: StoreRegistry
  readonly #logger: Logger
  readonly #metrics: Metrics
  readonly #hooks: ReloadHooks
  #reloads: Promise<void> = Promise.resolve()
  #storesStarting: Promise<void> = Promise.resolve()

  constructor (logger: Logger, metrics: Metrics, hooks: ReloadHooks) {
    this.#logger = logger
    this.#metrics = metrics
    this.#hooks = hooks
    this.#identity = new IdentityRegistry({ logger, metrics })
    this.delivery = new DeliveryService(logger, metrics)
    this.#stores = new StoreRegistry(logger)
  }

  /**
   * The first table, built at once (createGateway is synchronous). Its stores start
   * connecting now; keys, plugins and the delivery store wait for start().
   */
  first (config: Config): RouteTable {
    const identity = this.#identity.prepare(config.identity)
    const stores = this.#stores.prepare(config)
    const targets = this.#targets.prepare(config.upstreams)
    const table = compile(config, { targets, identity, stores, metrics: this.#metrics })
    this.#identity.commit(identity)
    this.#stores.commit(stores)
    this.#storesStarting = this.#stores.start(stores)
    return table
  }

  /** Start what the live table needs before the listeners bind. */
  async start (switcher: TableSwitcher): Promise<void> {
    const table = switcher.table
    // Keys first, so the first request with a token does not find an empty key set. An IdP
    // that does not answer delays start-up by at most IDENTITY_START_TIMEOUT; the gateway then
    // starts, reports not ready, and keeps trying in the background.
    const [, , , delivery] = await Promise.all([
      this.#identity.start(table.identity, IDENTITY_START_TIMEOUT),
      this.#storesStarting,
      loadPlugins(table),
      this.delivery.prepare(table.config),
    ])
    // Workers start with the listeners: what the store holds from before a restart goes out now.
    this.delivery.commit(switcher.table, delivery)
  }

  /**
   * Validate, compile and swap a new config into `switcher`. Rejects, and keeps the live
   * table, if the config is invalid or what it needs does not start.
   */
  reload (input: ConfigSource, switcher: TableSwitcher): Promise<void> {
    // One reload at a time, in the order asked: a reload that waits for a slow IdP must not
    // commit its (older) config after a later one, nor build on providers a later one closed.
    const run = this.#reloads.then(() => this.#reload(input, switcher))
    this.#reloads = run.catch(() => {})
    return run
  }

  async #reload (input: ConfigSource, switcher: TableSwitcher): Promise<void> {
    let next: RouteTable
    let identity: IdentitySet | null = null
    let stores: StoreSet | null = null
    let delivery: PreparedDelivery | null = null
    try {
      const config = validateConfig(typeof input === 'function' ? input() : input, {
        checks: compileChecks,
      })
      identity = this.#identity.prepare(config.identity)
      stores = this.#stores.prepare(config)
      const targets = this.#targets.prepare(config.upstreams)
      next = compile(config, { targets, identity, stores, metrics: this.#metrics })
      const started = await Promise.allSettled([
        this.#identity.start(identity, IDENTITY_START_TIMEOUT),
        this.#stores.start(stores),
        loadPlugins(next),
        this.delivery.prepare(config),
      ])
      if (started[3].status === 'fulfilled') delivery = started[3].value
      for (const r of started) if (r.status === 'rejected') throw r.reason
    } catch (err) {
      if (delivery !== null) this.delivery.discard(delivery)
      // Providers and stores this attempt created must not keep running in the background.
      if (identity !== null) this.#identity.discard(identity)
      if (stores !== null) this.#stores.discard(stores)
      this.#metrics.reloads.labels('failure').inc()
      this.#logger.error({
        msg: 'config reload failed; keeping the running config',
        err: (err as Error).message,
      })
      throw err
    }
    // The swap: requests that already hold the old table finish on it.
    const prev = switcher.swap(next)
    this.#identity.commit(next.identity)
    this.#stores.commit(stores)
    if (this.#hooks.listening()) this.delivery.commit(next, delivery!)
    else this.delivery.discard(delivery!)
    this.#hooks.apply(next.config)
    this.#metrics.reloads.labels('success').inc()
    this.#logger.info({ msg: 'config reloaded', routes: next.routes.length })
    if (needsRestart(prev.config, next.config)) {
      this.#logger.warn({
        msg: 'changes to the listen address, TLS, max_header_size or admin take effect on restart',
      })
    }
    // Pools no longer referenced close once their in-flight requests end; reload() does not
    // wait for that (a long SSE stream on the old table may run for minutes).
    this.#targets.retain(next.targetKeys).catch(() => {})
  }

  /** False while an identity provider never got keys: it cannot admit anyone (stale keys can). */
  get identityReady (): boolean {
    for (const s of Object.values(this.#identity.status())) {
      if (s.status === 'unavailable') return false
    }
    return true
  }

  identityStatus (): Record<string, ProviderStatus> {
    return this.#identity.status()
  }

  storeStatus (): Record<string, { status: string, kind: string }> {
    return { ...this.#stores.status(), ...this.delivery.status() }
  }

  /**
   * Close pools, providers and stores, once no request can use them. The delivery service is
   * not closed here: shutdown closes it earlier, with the grace period (`delivery.close`).
   */
  async close (): Promise<void> {
    await this.#targets.closeAll(true)
    this.#identity.close()
    await this.#stores.close()
  }
}

/** Whether `next` changes what the listeners were created with (only a restart applies it). */
function needsRestart (prev: Config, next: Config): boolean {
  const p = prev.listen
  const n = next.listen
  return p.host !== n.host || p.port !== n.port ||
    JSON.stringify(p.tls) !== JSON.stringify(n.tls) || p.max_header_size !== n.max_header_size ||
    JSON.stringify(prev.admin) !== JSON.stringify(next.admin)
}

/** Load every plugin a table names (each route its own instance), before the table serves. */
async function loadPlugins (table: RouteTable): Promise<void> {
  await Promise.all(table.routes.map((r) => r.plugin?.load()))
}
