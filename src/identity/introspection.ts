import { LRUCache } from 'lru-cache'
import type { IntrospectionProviderConfig } from '../config/schema.js'
import type { GatewayError } from '../errors/index.js'
import {
  clientIdOf,
  invalidCredentials,
  scopesOf,
  unavailable,
  type ProviderDeps,
} from './common.js'
import { fetchJson } from './http.js'
import type {
  AuthResult,
  CredentialSource,
  Identity,
  IdentityProvider,
  ProviderStatus,
} from './types.js'

const MAX_TOKEN = 8 * 1024

/**
 * Opaque tokens checked with the authorization server's RFC 7662 introspection endpoint.
 * Answers are cached (active ones until min(exp, active_ttl), inactive ones for inactive_ttl)
 * and concurrent lookups of one token share one call. When the endpoint cannot answer, the
 * client gets 503: an outage must neither let requests in nor tell clients their token is bad.
 */
export class IntrospectionProvider implements IdentityProvider {
  readonly kind = 'introspection' as const
  readonly source: CredentialSource = { kind: 'bearer' }
  readonly name: string
  readonly fingerprint: string
  readonly #cfg: IntrospectionProviderConfig
  readonly #deps: ProviderDeps
  readonly #cache: LRUCache<string, Identity> | null
  /**
   * The 401s to repeat for inactive tokens, apart from the identities: a flood of junk tokens
   * (each a call to the endpoint once) must not push good identities out.
   */
  readonly #negative: LRUCache<string, GatewayError> | null
  readonly #inflight = new Map<string, Promise<AuthResult>>()
  readonly #headers: Record<string, string>
  readonly #counts
  #lastError: string | null = null
  #lastErrorAt = 0

  constructor (name: string, cfg: IntrospectionProviderConfig, deps: ProviderDeps) {
    this.name = name
    this.#cfg = cfg
    this.#deps = deps
    this.fingerprint = JSON.stringify(cfg)
    this.#cache = cfg.cache.max_entries === 0 ? null : new LRUCache({ max: cfg.cache.max_entries })
    this.#negative = cfg.cache.max_entries === 0 || cfg.cache.inactive_ttl === 0
      ? null
      : new LRUCache({ max: Math.max(100, Math.ceil(cfg.cache.max_entries / 4)) })
    this.#headers = { 'content-type': 'application/x-www-form-urlencoded' }
    if (cfg.auth_method === 'basic') {
      // RFC 6749 §2.3.1: id and secret are form-urlencoded before the Basic encoding.
      const id = encodeURIComponent(cfg.client_id)
      const secret = encodeURIComponent(cfg.client_secret)
      this.#headers.authorization = 'Basic ' + Buffer.from(`${id}:${secret}`).toString('base64')
    }
    const m = deps.metrics.auth
    this.#counts = {
      cached: m.labels(name, 'cached'),
      verified: m.labels(name, 'verified'),
      invalid: m.labels(name, 'invalid'),
      unavailable: m.labels(name, 'unavailable'),
    }
  }

  async start (): Promise<void> {}
  close (): void {}

  status (): ProviderStatus {
    const recent = this.#lastError !== null && Date.now() - this.#lastErrorAt < 60_000
    return { status: 'ok', last_error: recent ? this.#lastError : null }
  }

  cached (digest: string, now: number): Identity | null {
    const hit = this.#cache?.get(digest)
    if (hit === undefined || hit.expiresAt <= now) return null
    this.#counts.cached.inc()
    return hit
  }

  /** Opaque tokens are anyone's: this provider takes every bearer token it is offered. */
  takes (): boolean {
    return true
  }

  authenticate (token: string, digest: string, now: number): AuthResult | Promise<AuthResult> {
    if (token.length > MAX_TOKEN) {
      this.#counts.invalid.inc()
      return invalidCredentials(
        `${this.name}: token is ${token.length} bytes, over the ${MAX_TOKEN}-byte limit`,
      )
    }
    const hit = this.#negative?.get(digest)
    if (hit !== undefined) {
      this.#counts.invalid.inc()
      return hit
    }
    let p = this.#inflight.get(digest)
    if (p === undefined) {
      p = this.#introspect(token, digest, now).finally(() => this.#inflight.delete(digest))
      this.#inflight.set(digest, p)
    }
    return p
  }

  async #introspect (token: string, digest: string, now: number): Promise<AuthResult> {
    const form = new URLSearchParams({ token, token_type_hint: 'access_token' })
    if (this.#cfg.auth_method === 'post') {
      form.set('client_id', this.#cfg.client_id)
      form.set('client_secret', this.#cfg.client_secret)
    }
    let doc: unknown
    try {
      doc = await fetchJson(this.#cfg.endpoint, {
        method: 'POST',
        headers: this.#headers,
        body: form.toString(),
        timeout: this.#cfg.timeout,
        maxBytes: 256 * 1024,
      })
    } catch (err) {
      return this.#unavailable(`introspection failed: ${(err as Error).message}`)
    }
    if (
      doc === null || typeof doc !== 'object' || Array.isArray(doc) ||
      typeof (doc as { active?: unknown }).active !== 'boolean'
    ) {
      return this.#unavailable(
        'introspection answer is not an RFC 7662 response (no boolean "active")',
      )
    }
    const claims = doc as Record<string, unknown>
    this.#deps.metrics.introspections.labels(
      this.name,
      claims.active === true ? 'active' : 'inactive',
    ).inc()
    const refusal = claims.active !== true ? 'token is not active' : this.#check(claims, now)
    if (refusal !== null) {
      const err = invalidCredentials(`${this.name}: ${refusal}`)
      this.#counts.invalid.inc()
      this.#negative?.set(digest, err, { ttl: this.#cfg.cache.inactive_ttl })
      return err
    }
    const exp = typeof claims.exp === 'number' ? claims.exp * 1000 : Infinity
    const identity: Identity = {
      provider: this.name,
      kind: 'introspection',
      // Client-credentials tokens often carry no sub: the client is the subject (as RFC 9068 has it).
      subject: typeof claims.sub === 'string'
        ? claims.sub
        : typeof claims.username === 'string'
        ? claims.username
        : clientIdOf(claims),
      clientId: clientIdOf(claims),
      scopes: scopesOf(claims),
      claims,
      expiresAt: exp,
      phantom: null,
    }
    this.#counts.verified.inc()
    const ttl = Math.min(this.#cfg.cache.active_ttl, exp - now)
    if (this.#cache !== null && ttl > 0) this.#cache.set(digest, identity, { ttl })
    return identity
  }

  /** What an active answer must also satisfy; null when it does. */
  #check (claims: Record<string, unknown>, now: number): string | null {
    if (typeof claims.exp === 'number' && claims.exp * 1000 <= now) {
      return 'token expired (exp in the past)'
    }
    if (typeof claims.nbf === 'number' && claims.nbf * 1000 > now + 30_000) {
      return 'token not yet valid (nbf in the future)'
    }
    const auds = this.#cfg.audiences
    if (auds !== undefined) {
      const aud = claims.aud
      const got = typeof aud === 'string' ? [aud] : Array.isArray(aud) ? aud : []
      if (!got.some((a) => auds.includes(a))) {
        return `aud ${JSON.stringify(aud)} is not an accepted audience`
      }
    }
    if (
      this.#cfg.issuer !== undefined && claims.iss !== undefined && claims.iss !== this.#cfg.issuer
    ) return `iss ${JSON.stringify(claims.iss)} is not the expected issuer`
    return null
  }

  #unavailable (reason: string): AuthResult {
    this.#counts.unavailable.inc()
    this.#deps.metrics.introspections.labels(this.name, 'error').inc()
    this.#lastError = reason
    this.#lastErrorAt = Date.now()
    return unavailable(`${this.name}: ${reason}`)
  }
}
