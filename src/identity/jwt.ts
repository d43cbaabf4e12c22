import type { JWTVerifyOptions } from 'jose'
import { LRUCache } from 'lru-cache'
import type { JwtProviderConfig } from '../config/schema.js'
import { formatDuration } from '../config/units.js'
import {
  clientIdOf,
  invalidCredentials,
  peekPayload,
  scopesOf,
  unavailable,
  type ProviderDeps,
} from './common.js'
import { loadJose, type Jose } from './jose.js'
import { KeySet, KeysUnavailableError } from './jwks.js'
import type {
  AuthResult,
  CredentialSource,
  Identity,
  IdentityProvider,
  ProviderStatus,
} from './types.js'

/**
 * OAuth2 access tokens as JWTs (RFC 9068), verified in-process with jose against the issuer's
 * JWKS. A verified token is cached (by digest) until it expires, so a client that reuses its
 * token pays for one signature check, not one per request.
 */
export class JwtProvider implements IdentityProvider {
  readonly kind = 'jwt' as const
  readonly source: CredentialSource = { kind: 'bearer' }
  readonly name: string
  readonly fingerprint: string
  readonly keys: KeySet
  readonly #cfg: JwtProviderConfig
  readonly #deps: ProviderDeps
  readonly #cache: LRUCache<string, Identity> | null
  readonly #verifyOptions: JWTVerifyOptions
  #jose: Jose | null = null
  readonly #types: ReadonlySet<string>
  readonly #counts

  constructor (name: string, cfg: JwtProviderConfig, deps: ProviderDeps) {
    this.name = name
    this.#cfg = cfg
    this.#deps = deps
    this.fingerprint = JSON.stringify(cfg)
    this.#cache = cfg.cache.max_entries === 0 ? null : new LRUCache({ max: cfg.cache.max_entries })
    this.#types = new Set(cfg.token_types.map(normalizeTyp))
    const required = new Set([...cfg.required_claims, 'exp'])
    this.#verifyOptions = {
      issuer: cfg.issuer,
      audience: cfg.audiences as string[],
      algorithms: cfg.algorithms as string[],
      clockTolerance: Math.round(cfg.clock_skew / 1000),
      requiredClaims: [...required],
    }
    const m = deps.metrics.auth
    this.#counts = {
      cached: m.labels(name, 'cached'),
      verified: m.labels(name, 'verified'),
      invalid: m.labels(name, 'invalid'),
      unavailable: m.labels(name, 'unavailable'),
    }
    this.keys = new KeySet({
      issuer: cfg.issuer,
      jwksUri: cfg.jwks_uri,
      timeout: cfg.timeout,
      maxAge: cfg.key_max_age,
      cooldown: cfg.refetch_cooldown,
      onFetch: (result, detail) => {
        deps.metrics.keyFetches.labels(name, result).inc()
        if (result === 'success') {
          deps.logger.info({ msg: 'signing keys fetched', provider: name, detail })
        } else {
          deps.logger.warn({
            msg: 'signing key fetch failed; keeping the last good keys',
            provider: name,
            err: detail,
          })
        }
      },
      // A retired key must stop vouching at once, also for tokens verified with it before.
      onKeysRemoved: (kids) => {
        deps.logger.info({ msg: 'signing keys retired', provider: name, kids })
        this.#cache?.clear()
      },
    })
  }

  async start (): Promise<void> {
    this.#jose = await loadJose()
    await this.keys.start()
  }

  close (): void {
    this.keys.close()
  }

  status (): ProviderStatus {
    const k = this.keys
    return {
      status: !k.loaded ? 'unavailable' : k.lastError !== null ? 'stale' : 'ok',
      keys: k.keyCount,
      keys_age_s: k.fetchedAt === 0 ? null : Math.round((Date.now() - k.fetchedAt) / 1000),
      last_error: k.lastError,
    }
  }

  cached (digest: string, now: number): Identity | null {
    const hit = this.#cache?.get(digest)
    if (hit === undefined || hit.expiresAt <= now) return null
    this.#counts.cached.inc()
    return hit
  }

  /** Tokens that look like a JWS whose (unverified) issuer is this provider's. */
  takes (token: string): boolean {
    return peekPayload(token)?.iss === this.#cfg.issuer
  }

  async authenticate (token: string, digest: string, now: number): Promise<AuthResult> {
    if (token.length > this.#cfg.max_token_size) {
      return this.#invalid(
        `token is ${token.length} bytes, over the ${this.#cfg.max_token_size}-byte limit`,
      )
    }
    let payload, protectedHeader
    const generation = this.keys.generation
    try {
      const jose = this.#jose ?? await loadJose()
      ;({ payload, protectedHeader } = await jose.jwtVerify(
        token,
        this.keys.getKey,
        this.#verifyOptions,
      ))
    } catch (err) {
      if (err instanceof KeysUnavailableError) {
        this.#counts.unavailable.inc()
        return unavailable(`${this.name}: ${err.message}`)
      }
      return this.#invalid(describeJoseError(err))
    }
    const typ = protectedHeader.typ === undefined ? 'jwt' : normalizeTyp(protectedHeader.typ)
    if (!this.#types.has(typ)) return this.#invalid(`typ "${protectedHeader.typ}" is not allowed`)
    // jose checks iat only with maxTokenAge; a token issued in the future is a clock or forgery problem.
    const cfg = this.#cfg
    const iat = typeof payload.iat === 'number' ? payload.iat * 1000 : null
    if (iat !== null && iat > now + cfg.clock_skew) return this.#invalid('iat is in the future')
    // Bounds of our own on how old and how long-lived a token may be: a signature proves who
    // issued it, not that its exp is sane (a year-33658 exp is a valid number).
    if (iat !== null && now - iat > cfg.max_age + cfg.clock_skew) {
      return this.#invalid(
        `issued ${roughly(now - iat)} ago, over max_age ${formatDuration(cfg.max_age)}`,
        `The token was issued more than ${formatDuration(cfg.max_age)} ago; get a new one`,
      )
    }
    const lifetime = payload.exp! * 1000 - (iat ?? now)
    if (lifetime > cfg.max_lifetime + cfg.clock_skew) {
      return this.#invalid(
        `valid for ${roughly(lifetime)} (exp - ${
          iat === null ? 'now' : 'iat'
        }), over max_lifetime ${formatDuration(cfg.max_lifetime)}`,
        `The token is valid for longer than ${
          formatDuration(cfg.max_lifetime)
        }, which this API does not accept`,
      )
    }
    const claims = payload as Record<string, unknown>
    const identity: Identity = {
      provider: this.name,
      kind: 'jwt',
      subject: typeof payload.sub === 'string' ? payload.sub : null,
      clientId: clientIdOf(claims),
      scopes: scopesOf(claims),
      claims,
      expiresAt: payload.exp! * 1000,
      phantom: null,
    }
    this.#counts.verified.inc()
    const ttl = identity.expiresAt - now
    // A refresh that retired a key while this verification ran cleared the cache; the result
    // (verified against keys that may be gone) must not repopulate it.
    if (this.#cache !== null && ttl > 0 && generation === this.keys.generation) {
      this.#cache.set(digest, identity, { ttl })
    }
    return identity
  }

  #invalid (reason: string, description?: string): AuthResult {
    this.#counts.invalid.inc()
    return invalidCredentials(`${this.name}: ${reason}`, description)
  }
}

/** A span for a log line, in whole units, the largest of which there are two or more (25 h). */
function roughly (ms: number): string {
  for (const [unit, size] of [['d', 86_400_000], ['h', 3_600_000], ['min', 60_000]] as const) {
    if (ms >= 2 * size) return `${Math.floor(ms / size)} ${unit}`
  }
  return `${Math.floor(ms / 1000)} s`
}

/** RFC 8725 §3.11 / RFC 7515 §4.1.9: case-insensitive, "application/" optional. */
function normalizeTyp (typ: string): string {
  const t = typ.toLowerCase()
  return t.startsWith('application/') ? t.slice(12) : t
}

/** jose's errors by their stable codes (the classes live in the lazily loaded module). */
function describeJoseError (err: unknown): string {
  const e = err as { code?: string, claim?: string, reason?: string, message: string }
  if (e.code === 'ERR_JWT_CLAIM_VALIDATION_FAILED') {
    return `claim "${e.claim}" check failed (${e.reason}): ${e.message}`
  }
  if (e.code === 'ERR_JWT_EXPIRED') return `token expired: ${e.message}`
  if (typeof e.code === 'string' && e.code.startsWith('ERR_J')) return `${e.code}: ${e.message}`
  return `unexpected error: ${e.message}`
}
