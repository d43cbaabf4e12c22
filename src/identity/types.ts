import type { GatewayError } from '../errors/index.js'

/** Who called, as the gateway established it. Immutable once built; shared by cached lookups. */
export interface Identity {
  /** Name of the provider (from config) that vouched for the caller. */
  readonly provider: string
  readonly kind: ProviderKind
  readonly subject: string | null
  readonly clientId: string | null
  readonly scopes: ReadonlySet<string>
  /** Every claim the provider returned (for API keys: the key's metadata plus `sub`). */
  readonly claims: Readonly<Record<string, unknown>>
  /** Epoch ms after which the identity must not be used (Infinity for API keys). */
  readonly expiresAt: number
  /** The gateway's own token for this identity, once signed (see PhantomSigner). */
  phantom: { token: string, refreshAt: number, signer: object } | null
}

export type ProviderKind = 'jwt' | 'introspection' | 'api_key' | 'webhook'

/** An authentication outcome: the identity, or the error to answer (401, 503...). */
export type AuthResult = Identity | GatewayError

/** Where a provider finds its credential. */
export type CredentialSource = { kind: 'bearer' } | { kind: 'header', name: string } | {
  kind: 'signature'
  name: string
}

export interface ProviderStatus {
  status: 'ok' | 'stale' | 'unavailable'
  [key: string]: unknown
}

/**
 * One configured identity provider. Instances are long-lived: a reload that leaves a
 * provider's config unchanged keeps the instance, with its keys and caches.
 */
export interface IdentityProvider {
  readonly name: string
  readonly kind: ProviderKind
  readonly source: CredentialSource
  /** Canonical JSON of the provider's config; the registry reuses an instance when it is equal. */
  readonly fingerprint: string
  /**
   * A cached answer for this credential (digest = SHA-256 of it, base64), without any work:
   * the fast path for a token seen before.
   */
  cached(digest: string, now: number): Identity | null
  /**
   * Whether this provider is the one to ask about `credential` (e.g. a JWT provider takes only
   * tokens whose unverified `iss` is its issuer). Cheap; no I/O.
   */
  takes(credential: string): boolean
  /** Verify a credential. Never throws: failures are returned as GatewayErrors. */
  authenticate(credential: string, digest: string, now: number): AuthResult | Promise<AuthResult>
  /** Start background work (key fetching); resolves once the first attempt is over. */
  start(): Promise<void>
  status(): ProviderStatus
  close(): void
}

export function isIdentity (r: AuthResult): r is Identity {
  return (r as Identity).provider !== undefined && (r as GatewayError).code === undefined
}
