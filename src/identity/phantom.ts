import { createPrivateKey, createPublicKey } from 'node:crypto'
import type { CryptoKey, JWK } from 'jose'
import { loadJose, type Jose } from './jose.js'
import type { PhantomTokenConfig } from '../config/schema.js'
import type { Identity } from './types.js'

/**
 * Registered claims the gateway sets itself; an identity's claims never override them. `scp` is
 * here too: the identity's scopes (read from `scope`, else `scp`) go out as one `scope` claim, and
 * an `scp` passed through could grant an upstream that reads it scopes the gateway never checked.
 */
const RESERVED = new Set(['iss', 'aud', 'exp', 'nbf', 'iat', 'jti', 'sub', 'client_id', 'scope',
  'scp'])
/** The claims a reissued token gets anew (client_id and scope are carried over; scp, see RESERVED). */
const REGISTERED = new Set(['iss', 'aud', 'exp', 'nbf', 'iat', 'jti', 'sub', 'scp'])

/**
 * Phantom tokens: the gateway signs a short-lived JWT carrying the verified identity, so
 * upstreams trust one issuer (the gateway, whose JWKS the admin port serves) whatever the
 * client presented: a JWT from any IdP, an opaque token or an API key. One token per identity
 * is reused until half its lifetime is gone.
 */
export class PhantomSigner {
  readonly fingerprint: string
  readonly header: string
  readonly #cfg: PhantomTokenConfig
  readonly #publicJwk: JWK
  #key:
    Promise<
      { key: CryptoKey, kid: string, SignJWT: Jose['SignJWT'], decodeJwt: Jose['decodeJwt'] }
    > |
    null = null

  constructor (cfg: PhantomTokenConfig) {
    this.#cfg = cfg
    this.fingerprint = JSON.stringify(cfg)
    this.header = cfg.header
    // Parsed now so that a bad key fails the config load, not the first request.
    const priv = createPrivateKey(cfg.key)
    this.#publicJwk = createPublicKey(priv).export({ format: 'jwk' }) as JWK
  }

  /** Import the key once (async in WebCrypto) and settle the kid. */
  start (): Promise<
    { key: CryptoKey, kid: string, SignJWT: Jose['SignJWT'], decodeJwt: Jose['decodeJwt'] }
  > {
    this.#key ??= (async () => {
      const jose = await loadJose()
      const key = await jose.importPKCS8(this.#cfg.key, this.#cfg.alg)
      const kid = this.#cfg.kid ?? await jose.calculateJwkThumbprint(this.#publicJwk)
      return { key, kid, SignJWT: jose.SignJWT, decodeJwt: jose.decodeJwt }
    })()
    return this.#key
  }

  /** The public half, for the admin port's /.well-known/jwks.json. */
  async jwks (): Promise<{ keys: JWK[] }> {
    const { kid } = await this.start()
    return { keys: [{ ...this.#publicJwk, kid, alg: this.#cfg.alg, use: 'sig' }] }
  }

  /** A cached token when one is fresh enough; null when a new one must be signed. */
  cached (identity: Identity, now: number): string | null {
    const p = identity.phantom
    // A token from another signer (the key changed on reload) would not verify upstream.
    return p !== null && p.signer === this && p.refreshAt > now ? p.token : null
  }

  /**
   * A new token with the claims of one this signer issued earlier, for a request delivered
   * later than it was accepted (async routes store the headers, token included): the gateway
   * authenticated and authorized the caller at acceptance, and each attempt needs a token the
   * upstream accepts now. Null (send the stored one) while it has half its lifetime left, or
   * when it is not this signer's: another issuer or audience, or not a JWT. The caller's own
   * credential may have expired since; the new token does not depend on it, like the request.
   */
  async reissue (token: string, now: number): Promise<string | null> {
    const { key, kid, SignJWT, decodeJwt } = await this.start()
    let claims: Record<string, unknown>
    try {
      claims = decodeJwt(token)
    } catch {
      return null
    }
    if (claims.iss !== this.#cfg.issuer || claims.aud !== this.#cfg.audience) return null
    const ttl = Math.max(1, Math.round(this.#cfg.ttl / 1000))
    if (typeof claims.exp === 'number' && claims.exp - now / 1000 > ttl / 2) return null
    const payload: Record<string, unknown> = {}
    for (const [k, v] of Object.entries(claims)) if (!REGISTERED.has(k)) payload[k] = v
    const iat = Math.floor(now / 1000)
    return await this.#signed(
      SignJWT,
      key,
      kid,
      payload,
      typeof claims.sub === 'string' ? claims.sub : null,
      iat,
      iat + ttl,
    )
  }

  #signed (
    SignJWT: Jose['SignJWT'],
    key: CryptoKey,
    kid: string,
    payload: Record<string, unknown>,
    sub: string | null,
    iat: number,
    exp: number,
  ): Promise<string> {
    const jwt = new SignJWT(payload)
      .setProtectedHeader({ alg: this.#cfg.alg, kid, typ: 'at+jwt' })
      .setIssuer(this.#cfg.issuer)
      .setAudience(this.#cfg.audience)
      .setIssuedAt(iat)
      .setExpirationTime(exp)
    if (sub !== null) jwt.setSubject(sub)
    return jwt.sign(key)
  }

  async sign (identity: Identity, now: number): Promise<string> {
    const { key, kid, SignJWT } = await this.start()
    const iat = Math.floor(now / 1000)
    const exp = Math.min(
      iat + Math.max(1, Math.round(this.#cfg.ttl / 1000)),
      Math.floor(identity.expiresAt / 1000),
    )
    const payload: Record<string, unknown> = {}
    for (const [k, v] of Object.entries(identity.claims)) if (!RESERVED.has(k)) payload[k] = v
    payload.gh_provider = identity.provider
    if (identity.clientId !== null) payload.client_id = identity.clientId
    if (identity.scopes.size > 0) payload.scope = [...identity.scopes].join(' ')
    const token = await this.#signed(SignJWT, key, kid, payload, identity.subject, iat, exp)
    identity.phantom = { token, refreshAt: now + (exp - iat) * 500, signer: this }
    return token
  }
}
