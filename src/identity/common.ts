import type { Logger } from '../observability/logger.js'
import type { Metrics } from '../observability/metrics.js'
import { gatewayError, type GatewayError } from '../errors/index.js'

export interface ProviderDeps {
  readonly logger: Logger
  readonly metrics: Metrics
}

/** A bad credential. `reason` goes to the log line only; the client sees the generic detail. */
export function invalidCredentials (reason: string, description?: string): GatewayError {
  return gatewayError('GH_INVALID_CREDENTIALS', description ?? INVALID_DETAIL, { reason })
}

/**
 * What a refused credential is told by default: nothing about why (the reason is logged).
 * A provider passes a description of its own only where the caller can act on it and it
 * helps no guesser (a token too old: get a new one); it goes out as RFC 6750 error_description.
 */
export const INVALID_DETAIL = 'The credentials are missing, expired or invalid'

/** The provider cannot decide (IdP down, no keys, garbage answer): 503, never 401, never access. */
export function unavailable (reason: string): GatewayError {
  return gatewayError(
    'GH_AUTH_UNAVAILABLE',
    'The authentication service is unavailable; try again shortly',
    { reason, headers: { 'retry-after': '1' } },
  )
}

/**
 * Scopes from the usual claims: `scope` (RFC 8693/9068, space-separated), or `scp` (Okta,
 * Azure AD: a list or a space-separated string). A list item with a space in it is no scope
 * token (RFC 6749 §3.3) and is left out: the phantom token writes the scopes space-separated,
 * where it would read as two.
 */
export function scopesOf (claims: Record<string, unknown>): Set<string> {
  const raw = claims.scope ?? claims.scp
  const out = new Set<string>()
  if (typeof raw === 'string') {
    for (const s of raw.split(' ')) if (s !== '') out.add(s)
  } else if (Array.isArray(raw)) {
    for (const s of raw) if (typeof s === 'string' && s !== '' && !s.includes(' ')) out.add(s)
  }
  return out
}

/** `client_id` (RFC 9068), else `azp` (OIDC), else `cid` (Okta). */
export function clientIdOf (claims: Record<string, unknown>): string | null {
  const v = claims.client_id ?? claims.azp ?? claims.cid
  return typeof v === 'string' ? v : null
}

/** Decode a JWS compact payload without verifying it (to route a token to its issuer). */
export function peekPayload (token: string): Record<string, unknown> | null {
  const a = token.indexOf('.')
  const b = a === -1 ? -1 : token.indexOf('.', a + 1)
  if (b === -1 || token.indexOf('.', b + 1) !== -1) return null
  try {
    const v = JSON.parse(Buffer.from(token.slice(a + 1, b), 'base64url').toString('utf8'))
    return v !== null && typeof v === 'object' && !Array.isArray(v) ? v : null
  } catch {
    return null
  }
}
