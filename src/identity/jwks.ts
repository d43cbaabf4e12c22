import type { JSONWebKeySet, JWK, JWTVerifyGetKey } from 'jose'
import { loadJose } from './jose.js'
import { fetchJson } from './http.js'

export interface KeySetOptions {
  issuer: string
  /** Skips discovery when set. */
  jwksUri: string | undefined
  timeout: number
  /** Refetch in the background once the keys are this old. */
  maxAge: number
  /** Shortest gap between two fetches started by unknown `kid`s. */
  cooldown: number
  /** Reports each fetch (for logs and metrics). */
  onFetch: (result: 'success' | 'failure', detail: string) => void
  /** Called when a refresh dropped keys: tokens verified with them must be forgotten. */
  onKeysRemoved: (kids: string[]) => void
}

/** Thrown by the key resolver when no key set was ever fetched: the answer is 503, not 401. */
export class KeysUnavailableError extends Error {
  readonly code = 'GH_KEYS_UNAVAILABLE'
}

/**
 * The keys of one issuer, fetched from its JWKS (found by OIDC discovery unless configured).
 *
 * - Fetched at start-up, refreshed in the background every `maxAge` (IdPs that rotate without
 *   changing `kid`s are covered too).
 * - A token with an unknown `kid` may trigger a refetch, but at most one is in flight and a new
 *   one starts at most once per `cooldown`: a flood of forged `kid`s costs the IdP nothing.
 * - When a fetch fails, the last good keys keep serving (stale-if-error); `status()` says so.
 * - `jku`, `x5u`, `jwk` and `x5c` headers are never looked at: keys come only from the JWKS.
 *
 * jose's createRemoteJWKSet has the cooldown but fails verification when a refresh fails;
 * here only the JWKS document handling and key selection are jose's (createLocalJWKSet).
 */
export class KeySet {
  readonly #opts: KeySetOptions
  #local: JWTVerifyGetKey | null = null
  /** One fingerprint per key (kid and public parameters): a key replaced under its kid counts as removed. */
  #prints = new Set<string>()
  /** Bumped whenever a refresh removed a key; verifications started before must not be cached. */
  generation = 0
  #jwksUri: string | null
  #inflight: Promise<boolean> | null = null
  #timer: NodeJS.Timeout | null = null
  #closed = false
  /** Epoch ms of the last fetch an unknown `kid` started (the cooldown runs from here). */
  #kidFetchAt = -Infinity
  /** Epoch ms of the last successful fetch (0: never). */
  fetchedAt = 0
  /** Epoch ms when the last fetch started. */
  attemptedAt = 0
  lastError: string | null = null
  keyCount = 0

  constructor (opts: KeySetOptions) {
    this.#opts = opts
    this.#jwksUri = opts.jwksUri ?? null
  }

  get loaded (): boolean {
    return this.#local !== null
  }

  /** First fetch; resolves when it is over, successful or not. Then keeps the keys fresh. */
  async start (): Promise<void> {
    await this.refresh()
    this.#schedule()
  }

  close (): void {
    this.#closed = true
    if (this.#timer !== null) clearTimeout(this.#timer)
  }

  #schedule (): void {
    if (this.#closed) return
    // After a failure, try again sooner than maxAge (but never faster than the cooldown).
    const delay = this.lastError === null
      ? this.#opts.maxAge
      : Math.min(this.#opts.maxAge, Math.max(this.#opts.cooldown, 1000))
    this.#timer = setTimeout(() => {
      this.refresh().finally(() => this.#schedule())
    }, delay)
    this.#timer.unref()
  }

  /** Fetch now, or join the fetch in flight. Resolves true when the keys were replaced. */
  refresh (): Promise<boolean> {
    if (this.#inflight !== null) return this.#inflight
    this.attemptedAt = Date.now()
    this.#inflight = this.#fetch().finally(() => {
      this.#inflight = null
    })
    return this.#inflight
  }

  async #fetch (): Promise<boolean> {
    try {
      const uri = this.#jwksUri ?? await this.#discover()
      const doc = await fetchJson(uri, { timeout: this.#opts.timeout })
      const keys = usableKeys(doc)
      if (keys.length === 0) throw new Error(`${uri} holds no usable signing keys`)
      const prints = new Map(keys.map((k) => [keyPrint(k), k.kid ?? '(no kid)']))
      const { createLocalJWKSet } = await loadJose()
      this.#local = createLocalJWKSet({ keys })
      const removed = [...this.#prints.keys()].filter((p) => !prints.has(p)).map((p) =>
        JSON.parse(p).kid ?? '(no kid)'
      )
      this.#prints = new Set(prints.keys())
      if (removed.length > 0) this.generation++
      this.keyCount = keys.length
      this.fetchedAt = Date.now()
      this.lastError = null
      this.#opts.onFetch('success', `${keys.length} keys from ${uri}`)
      if (removed.length > 0) this.#opts.onKeysRemoved(removed)
      return true
    } catch (err) {
      this.lastError = (err as Error).message
      this.#opts.onFetch('failure', this.lastError)
      return false
    }
  }

  /** OpenID Connect Discovery 1.0 §4: the document's `issuer` must be the one configured. */
  async #discover (): Promise<string> {
    const base = this.#opts.issuer.endsWith('/')
      ? this.#opts.issuer.slice(0, -1)
      : this.#opts.issuer
    const doc = await fetchJson(`${base}/.well-known/openid-configuration`, {
      timeout: this.#opts.timeout,
    }) as Record<string, unknown>
    if (doc === null || typeof doc !== 'object') {
      throw new Error('discovery document is not a JSON object')
    }
    if (doc.issuer !== this.#opts.issuer) {
      throw new Error(
        `discovery document names issuer ${JSON.stringify(doc.issuer)}, expected ${
          JSON.stringify(this.#opts.issuer)
        }`,
      )
    }
    if (typeof doc.jwks_uri !== 'string') throw new Error('discovery document has no jwks_uri')
    this.#jwksUri = doc.jwks_uri
    return doc.jwks_uri
  }

  /**
   * An unknown kid while the IdP cannot be reached may be a key rotated during the outage:
   * that is "cannot decide" (503), not "invalid" (401). With fresh keys it is invalid.
   */
  #unknownKey (err: unknown, kid: string | undefined): unknown {
    return this.lastError === null
      ? err
      : new KeysUnavailableError(
        `kid ${
          JSON.stringify(kid ?? null)
        } is unknown and the key set cannot be refreshed: ${this.lastError}`,
      )
  }

  /** jose's key resolver, with one refetch (under the cooldown) for a key it does not know. */
  readonly getKey: JWTVerifyGetKey = async (header, token) => {
    const local = this.#local
    if (local === null) {
      throw new KeysUnavailableError('no signing keys have been fetched from the issuer yet')
    }
    try {
      return await local(header, token)
    } catch (err) {
      if ((err as { code?: string }).code !== 'ERR_JWKS_NO_MATCHING_KEY') throw err
      // Join a fetch in flight; start one only when the last kid-triggered fetch is a cooldown ago.
      if (this.#inflight === null) {
        const now = Date.now()
        if (now - this.#kidFetchAt < this.#opts.cooldown) throw this.#unknownKey(err, header.kid)
        this.#kidFetchAt = now
      }
      if (!await this.refresh()) throw this.#unknownKey(err, header.kid)
      return await this.#local!(header, token)
    }
  }
}

/** A key's identity: its kid and public parameters (RSA n/e, EC/OKP crv/x/y). */
function keyPrint (k: JWK): string {
  return JSON.stringify({ kid: k.kid, kty: k.kty, n: k.n, e: k.e, crv: k.crv, x: k.x, y: k.y })
}

/**
 * Signing keys only. Symmetric (`oct`) keys are dropped: a key published in a JWKS is public,
 * so an HMAC key from one would let anyone sign tokens.
 */
function usableKeys (doc: unknown): JWK[] {
  if (doc === null || typeof doc !== 'object' || !Array.isArray((doc as JSONWebKeySet).keys)) {
    throw new Error('JWKS document has no "keys" list')
  }
  return (doc as JSONWebKeySet).keys.filter((k) =>
    k !== null && typeof k === 'object' && typeof k.kty === 'string' && k.kty !== 'oct' &&
    (k.use === undefined || k.use === 'sig')
  )
}
