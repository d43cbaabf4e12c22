import { timingSafeEqual } from 'node:crypto'
import type { ApiKeyProviderConfig } from '../config/schema.js'
import { invalidCredentials, type ProviderDeps } from './common.js'
import type {
  AuthResult,
  CredentialSource,
  Identity,
  IdentityProvider,
  ProviderStatus,
} from './types.js'

const MAX_KEY = 1024

interface Entry {
  digest: Buffer
  identity: Identity
}

/**
 * Static API keys, configured only as SHA-256 digests. The presented key is hashed (the
 * policy already did, for its cache lookups) and looked up by digest: a lookup's timing can
 * at most tell an attacker about the digest of a guess, which does not help find a key; the
 * match is then confirmed with a constant-time comparison. A reload builds a new instance
 * when the key list changed, so a removed key stops working at once.
 */
export class ApiKeyProvider implements IdentityProvider {
  readonly kind = 'api_key' as const
  readonly source: CredentialSource
  readonly name: string
  readonly fingerprint: string
  readonly #byDigest = new Map<string, Entry>()
  readonly #counts

  constructor (name: string, cfg: ApiKeyProviderConfig, deps: ProviderDeps) {
    this.name = name
    this.fingerprint = JSON.stringify(cfg)
    // `header: authorization` takes keys as bearer tokens (Authorization: Bearer sk-...), the
    // convention of OpenAI-style model APIs.
    this.source = cfg.header === 'authorization'
      ? { kind: 'bearer' }
      : { kind: 'header', name: cfg.header }
    for (const k of cfg.keys) {
      const digest = Buffer.from(k.sha256, 'hex')
      const claims = Object.freeze({
        ...k.metadata,
        sub: k.id,
        client_id: k.id,
        scope: k.scopes.join(' '),
      })
      this.#byDigest.set(digest.toString('base64'), {
        digest,
        identity: {
          provider: name,
          kind: 'api_key',
          subject: k.id,
          clientId: k.id,
          scopes: new Set(k.scopes),
          claims,
          expiresAt: Infinity,
          phantom: null,
        },
      })
    }
    const m = deps.metrics.auth
    this.#counts = { verified: m.labels(name, 'verified'), invalid: m.labels(name, 'invalid') }
  }

  async start (): Promise<void> {}
  close (): void {}

  status (): ProviderStatus {
    return { status: 'ok', keys: this.#byDigest.size }
  }

  /** Nothing to cache: the lookup is as cheap as a cache would be. */
  cached (): Identity | null {
    return null
  }

  takes (): boolean {
    return true
  }

  authenticate (key: string, digest: string): AuthResult {
    const entry = key.length > MAX_KEY ? undefined : this.#byDigest.get(digest)
    if (entry === undefined || !timingSafeEqual(entry.digest, Buffer.from(digest, 'base64'))) {
      this.#counts.invalid.inc()
      return invalidCredentials(`${this.name}: unknown API key`)
    }
    this.#counts.verified.inc()
    return entry.identity
  }
}
