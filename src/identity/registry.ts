import type { IdentityConfig, ProviderConfig } from '../config/schema.js'
import { ApiKeyProvider } from './api-key.js'
import type { ProviderDeps } from './common.js'
import { IntrospectionProvider } from './introspection.js'
import { JwtProvider } from './jwt.js'
import { PhantomSigner } from './phantom.js'
import type { IdentityProvider, ProviderStatus } from './types.js'
import { WebhookProvider } from './webhook.js'

/** The providers (and phantom-token signer) one compiled config uses. */
export interface IdentitySet {
  readonly realm: string
  readonly providers: ReadonlyMap<string, IdentityProvider>
  readonly phantom: PhantomSigner | null
  /** Instances this set created (not reused from the running config): they must be started. */
  readonly created: readonly IdentityProvider[]
}

/**
 * Keeps identity providers across reloads. A provider whose config did not change is reused
 * with its keys and caches (a reload must not refetch every JWKS or forget every verified
 * token); a changed one is replaced, so a removed API key or a new audience applies at once.
 */
export class IdentityRegistry {
  readonly #deps: ProviderDeps
  #current: IdentitySet | null = null

  constructor (deps: ProviderDeps) {
    this.#deps = deps
  }

  /** Build the set for a config without touching the running one. */
  prepare (cfg: IdentityConfig): IdentitySet {
    const providers = new Map<string, IdentityProvider>()
    const created: IdentityProvider[] = []
    for (const [name, pc] of Object.entries(cfg.providers)) {
      const old = this.#current?.providers.get(name)
      if (old !== undefined && old.fingerprint === JSON.stringify(pc)) {
        providers.set(name, old)
        continue
      }
      const p = createProvider(name, pc, this.#deps)
      providers.set(name, p)
      created.push(p)
    }
    const oldPhantom = this.#current?.phantom ?? null
    const phantom = cfg.phantom_token === undefined
      ? null
      : oldPhantom !== null && oldPhantom.fingerprint === JSON.stringify(cfg.phantom_token)
      ? oldPhantom
      : new PhantomSigner(cfg.phantom_token)
    return { realm: cfg.realm, providers, phantom, created }
  }

  /**
   * Start what `set` created: resolves when every first key fetch is over (or after
   * `timeout`, so that an unreachable IdP delays start-up by at most that much).
   */
  async start (set: IdentitySet, timeout: number): Promise<void> {
    const starts: Array<Promise<unknown>> = set.created.map((p) => p.start())
    if (set.phantom !== null) starts.push(set.phantom.start())
    if (starts.length === 0) return
    let timer: NodeJS.Timeout | undefined
    await Promise.race([
      Promise.all(starts),
      new Promise<void>((resolve) => {
        timer = setTimeout(resolve, timeout)
      }),
    ])
    clearTimeout(timer)
  }

  /** Make `set` the running one; close providers it no longer uses. */
  commit (set: IdentitySet): void {
    const prev = this.#current
    this.#current = set
    if (prev === null) return
    for (const [name, p] of prev.providers) {
      if (set.providers.get(name) !== p) p.close()
    }
  }

  /** Discard a prepared set that will not run (a reload that failed later). */
  discard (set: IdentitySet): void {
    for (const p of set.created) p.close()
  }

  status (): Record<string, ProviderStatus> {
    const out: Record<string, ProviderStatus> = {}
    for (const [name, p] of this.#current?.providers ?? []) out[name] = p.status()
    return out
  }

  close (): void {
    if (this.#current !== null) { for (const p of this.#current.providers.values()) p.close() }
  }
}

/** A provider for one config entry; it does nothing (no key fetch, no request) until started. */
export function createProvider (
  name: string,
  cfg: ProviderConfig,
  deps: ProviderDeps,
): IdentityProvider {
  switch (cfg.kind) {
    case 'jwt':
      return new JwtProvider(name, cfg, deps)
    case 'introspection':
      return new IntrospectionProvider(name, cfg, deps)
    case 'api_key':
      return new ApiKeyProvider(name, cfg, deps)
    case 'webhook':
      return new WebhookProvider(name, cfg, deps)
  }
}
