import { createHmac, createSecretKey, timingSafeEqual, type KeyObject } from 'node:crypto'
import type { WebhookProviderConfig } from '../config/schema.js'
import { gatewayError, type GatewayError } from '../errors/index.js'
import type { ProviderDeps } from './common.js'
import type {
  AuthResult,
  CredentialSource,
  Identity,
  IdentityProvider,
  ProviderStatus,
} from './types.js'

const INVALID = 'The webhook signature is missing or invalid'
const OUTSIDE_TOLERANCE = 'The webhook signature timestamp is outside the allowed tolerance'

const HEX = /^[0-9a-fA-F]*$/
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/
const BASE64URL = /^[A-Za-z0-9_-]*={0,2}$/
/** Unix seconds as the senders write them; 15 digits keep Number() exact. */
const SECONDS = /^[0-9]{1,15}$/

type Encoding = 'hex' | 'base64' | 'base64url'

/** One piece of the signed payload: fixed bytes, or a value taken from the request. */
type Part = Buffer | 'timestamp' | 'id' | 'body'

/** What one scheme reads and signs, fixed at construction. */
interface Layout {
  /** The header with the signature(s). */
  signature: string
  /** Text before the signature in the header (slack, github, hmac). */
  prefix: string
  /** The header with the signed timestamp; null when there is none or it is inside `signature` (Stripe). */
  timestamp: string | null
  /** The header with the message id, and whether the id is part of what is signed. */
  id: string | null
  idSigned: boolean
  /** The timestamp is signed, so the tolerance applies. */
  timed: boolean
  parts: readonly Part[]
  encoding: Encoding
  algorithm: 'sha1' | 'sha256' | 'sha512'
}

const DIGEST_BYTES = { sha1: 20, sha256: 32, sha512: 64 } as const

/** The encoded signatures a header offered, and the timestamp it carried (Stripe only). */
interface Offered {
  signatures: string[]
  timestamp: string | null
}

/** Why a request is refused (the log reason); a class so it cannot be confused with a header value. */
class Refusal {
  constructor (readonly reason: string) {}
}

/**
 * Webhook senders, recognised by an HMAC over the raw request body (Slack, GitHub, Stripe,
 * Standard Webhooks, or a generic layout). There is no credential to cache: every delivery is
 * signed anew, so the policy calls `verify` with the body it read; `authenticate` only exists
 * to satisfy the interface. Every secret is tried, so a sender's secret can be rotated
 * without refusing its deliveries meanwhile.
 */
export class WebhookProvider implements IdentityProvider {
  readonly kind = 'webhook' as const
  readonly source: CredentialSource
  readonly name: string
  readonly fingerprint: string
  /** Every request header this scheme reads (lower-case), so the gateway can strip or forward them deliberately. */
  readonly headers: readonly string[]
  readonly #scheme: WebhookProviderConfig['scheme']
  readonly #layout: Layout
  readonly #keys: readonly KeyObject[]
  readonly #tolerance: number
  readonly #digestBytes: number
  readonly #challenge: string
  readonly #counts

  constructor (name: string, cfg: WebhookProviderConfig, deps: ProviderDeps, realm = 'gatehouse') {
    this.name = name
    this.fingerprint = JSON.stringify(cfg)
    this.#scheme = cfg.scheme
    this.#tolerance = cfg.tolerance
    this.#layout = layoutOf(name, cfg)
    this.#digestBytes = DIGEST_BYTES[this.#layout.algorithm]
    // Standard Webhooks secrets are base64 key bytes (config validation checked that); the
    // other senders use the secret's text itself as the key.
    this.#keys = cfg.secrets.map((s) =>
      createSecretKey(
        cfg.scheme === 'standard'
          ? Buffer.from(s.startsWith('whsec_') ? s.slice(6) : s, 'base64')
          : Buffer.from(s, 'utf8'),
      )
    )
    const l = this.#layout
    this.source = { kind: 'signature', name: l.signature }
    this.headers = Object.freeze([
      ...new Set([l.signature, ...(l.timestamp === null ? [] : [l.timestamp]),
        ...(l.id === null ? [] : [l.id])]),
    ])
    this.#challenge = `Signature realm="${realm}", headers="${l.signature}"`
    const m = deps.metrics.auth
    this.#counts = { verified: m.labels(name, 'verified'), invalid: m.labels(name, 'invalid') }
  }

  async start (): Promise<void> {}
  close (): void {}

  status (): ProviderStatus {
    return { status: 'ok' }
  }

  /** Nothing to cache: a signature is only good for the body it came with. */
  cached (): Identity | null {
    return null
  }

  takes (): boolean {
    return true
  }

  /** Signatures cover the body, which a credential string does not carry: see `verify`. */
  authenticate (): AuthResult {
    return this.#refuse(
      'webhook signatures are checked over the request body (verify), not as a credential',
    )
  }

  /**
   * Check the request's signature over `body` (the raw bytes as received). `header(name)`
   * returns every value of a request header, [] when absent. Never throws.
   */
  verify (header: (lowerName: string) => readonly string[], body: Buffer, now: number): AuthResult {
    const l = this.#layout
    const sig = one(header, l.signature)
    if (sig instanceof Refusal) return this.#refuse(sig.reason)
    const offered = this.#offered(sig)
    if (offered instanceof Refusal) return this.#refuse(offered.reason)

    let timestamp: string | null = null
    if (l.timed) {
      const where = l.timestamp ?? `${l.signature} t=`
      if (l.timestamp !== null) {
        const ts = one(header, l.timestamp)
        if (ts instanceof Refusal) return this.#refuse(ts.reason)
        timestamp = ts
      } else {
        timestamp = offered.timestamp
        if (timestamp === null) return this.#refuse(`${l.signature} has no t= timestamp`)
      }
      if (!SECONDS.test(timestamp)) {
        return this.#refuse(`${where} is not a Unix time in whole seconds`)
      }
      // Checked before any HMAC: a stale delivery costs nothing, and the reason names the
      // replay rather than a signature mismatch.
      const skew = now / 1000 - Number(timestamp)
      if (Math.abs(skew) > this.#tolerance / 1000) {
        const by = Math.floor(Math.abs(skew))
        return this.#refuse(
          `${where} ${timestamp} is too ${skew > 0 ? 'old' : 'new'} by ${by} s (tolerance ${
            this.#tolerance / 1000
          } s)`,
          OUTSIDE_TOLERANCE,
        )
      }
    }

    let id: string | null = null
    if (l.id !== null) {
      const values = header(l.id)
      if (values.length > 1) return this.#refuse(`${l.id} header present ${values.length} times`)
      id = values[0] ?? null
      if (id === null && l.idSigned) return this.#refuse(`missing ${l.id} header`)
    }

    // Decode every offered signature once; a malformed one simply cannot match.
    const candidates: Buffer[] = []
    let problem: string | null = null
    for (const s of offered.signatures) {
      const bytes = decode(s, l.encoding)
      if (bytes === null) problem ??= `${l.signature} signature is not valid ${l.encoding}`
      else if (bytes.length !== this.#digestBytes) {
        problem ??=
          `${l.signature} signature is ${bytes.length} bytes, a ${l.algorithm} HMAC is ${this.#digestBytes}`
      } else candidates.push(bytes)
    }
    if (candidates.length === 0) {
      return this.#refuse(problem ?? `${l.signature} offers no signature`)
    }

    // Header values are latin1 strings of the bytes received, so latin1 gives those bytes back.
    const tsBytes = timestamp === null ? null : Buffer.from(timestamp, 'latin1')
    const idBytes = id === null ? null : Buffer.from(id, 'latin1')
    for (const key of this.#keys) {
      // Fed part by part: the same bytes as concatenating prefix and body, without copying the body.
      const mac = createHmac(l.algorithm, key)
      for (const p of l.parts) {
        if (p === 'body') mac.update(body)
        else if (p === 'timestamp') mac.update(tsBytes!)
        else if (p === 'id') mac.update(idBytes!)
        else mac.update(p)
      }
      const digest = mac.digest()
      for (const c of candidates) {
        if (timingSafeEqual(c, digest)) {
          this.#counts.verified.inc()
          const claims: { scheme: string, timestamp?: number, id?: string } = {
            scheme: this.#scheme,
          }
          if (timestamp !== null) claims.timestamp = Number(timestamp)
          if (id !== null) claims.id = id
          return {
            provider: this.name,
            kind: 'webhook',
            subject: null,
            clientId: null,
            scopes: new Set(),
            claims: Object.freeze(claims),
            expiresAt: Infinity,
            phantom: null,
          }
        }
      }
    }
    const n = this.#keys.length
    const secrets = `${n} secret${n === 1 ? '' : 's'}`
    const k = offered.signatures.length
    const what = k === 1
      ? `${l.signature} signature matched none of ${secrets}`
      : `none of ${k} ${l.signature} signatures matched any of ${secrets}`
    return this.#refuse(problem === null ? what : `${what}; another one: ${problem}`)
  }

  /** The encoded signatures in the signature header, or why it is malformed. */
  #offered (value: string): Offered | Refusal {
    const h = this.#layout.signature
    switch (this.#scheme) {
      case 'slack':
      case 'github':
        return prefixed(value, this.#layout.prefix, h)
      case 'stripe': {
        // t=<unix>,v1=<hex>,v1=<hex>,v0=<hex>: every v1 may match (Stripe sends one per
        // active secret while one is rolled); v0 and unknown keys are ignored.
        let timestamp: string | null = null
        const signatures: string[] = []
        for (const item of value.split(',')) {
          const eq = item.indexOf('=')
          if (eq === -1) continue
          const k = item.slice(0, eq)
          if (k === 't') {
            if (timestamp !== null) return new Refusal(`${h} has t= more than once`)
            timestamp = item.slice(eq + 1)
          } else if (k === 'v1') {
            signatures.push(item.slice(eq + 1))
          }
        }
        if (signatures.length === 0) return new Refusal(`${h} has no v1= signature`)
        return { signatures, timestamp }
      }
      case 'standard': {
        // Space-separated "v1,<base64>"; other versions (v1a: asymmetric) are not ours to check.
        const signatures: string[] = []
        for (const item of value.split(' ')) {
          if (item.startsWith('v1,')) signatures.push(item.slice(3))
        }
        if (signatures.length === 0) return new Refusal(`${h} has no v1 signature`)
        return { signatures, timestamp: null }
      }
      case 'hmac':
        return prefixed(value, this.#layout.prefix, h)
    }
  }

  #refuse (reason: string, detail = INVALID): GatewayError {
    this.#counts.invalid.inc()
    return gatewayError('GH_INVALID_SIGNATURE', detail, {
      reason: `${this.name}: ${reason}`,
      headers: { 'www-authenticate': this.#challenge },
    })
  }
}

/** The one value of a header, or why there is not exactly one (a repeated header is ambiguous). */
function one (header: (lowerName: string) => readonly string[], name: string): string | Refusal {
  const values = header(name)
  if (values.length === 1) return values[0]!
  return new Refusal(
    values.length === 0
      ? `missing ${name} header`
      : `${name} header present ${values.length} times`,
  )
}

/** A single signature after a fixed prefix ("v0=", "sha256=", or the configured one). */
function prefixed (value: string, prefix: string, header: string): Offered | Refusal {
  if (!value.startsWith(prefix)) return new Refusal(`${header} does not start with "${prefix}"`)
  return { signatures: [value.slice(prefix.length)], timestamp: null }
}

/**
 * The signature's bytes, or null when it is not well-formed. Buffer.from() skips what it
 * cannot decode (and stops at an odd hex digit), so garbage is refused by syntax first.
 */
function decode (s: string, encoding: Encoding): Buffer | null {
  if (s === '') return null
  if (encoding === 'hex') return s.length % 2 === 0 && HEX.test(s) ? Buffer.from(s, 'hex') : null
  if (!(encoding === 'base64' ? BASE64 : BASE64URL).test(s) || s.length % 4 === 1) return null
  // base64 is written padded (as every standard encoder does); base64url often is not, and
  // padding, when present, must complete the last group.
  if ((encoding === 'base64' || s.endsWith('=')) && s.length % 4 !== 0) return null
  return Buffer.from(s, encoding)
}

/** What each scheme reads and signs. */
function layoutOf (name: string, cfg: WebhookProviderConfig): Layout {
  const lit = (s: string): Buffer => Buffer.from(s, 'utf8')
  switch (cfg.scheme) {
    case 'slack':
      // v0:<timestamp>:<body>
      return {
        signature: 'x-slack-signature',
        prefix: 'v0=',
        timestamp: 'x-slack-request-timestamp',
        id: null,
        idSigned: false,
        timed: true,
        parts: [lit('v0:'), 'timestamp', lit(':'), 'body'],
        encoding: 'hex',
        algorithm: 'sha256',
      }
    case 'github':
      // GitHub signs the body only: no timestamp, so no replay protection beyond the
      // X-GitHub-Delivery id (unsigned; reported as claims.id for the upstream to deduplicate).
      return {
        signature: 'x-hub-signature-256',
        prefix: 'sha256=',
        timestamp: null,
        id: 'x-github-delivery',
        idSigned: false,
        timed: false,
        parts: ['body'],
        encoding: 'hex',
        algorithm: 'sha256',
      }
    case 'stripe':
      // <t>.<body>, t taken from the signature header itself.
      return {
        signature: 'stripe-signature',
        prefix: '',
        timestamp: null,
        id: null,
        idSigned: false,
        timed: true,
        parts: ['timestamp', lit('.'), 'body'],
        encoding: 'hex',
        algorithm: 'sha256',
      }
    case 'standard':
      // <webhook-id>.<webhook-timestamp>.<body> (standardwebhooks.com).
      return {
        signature: 'webhook-signature',
        prefix: '',
        timestamp: 'webhook-timestamp',
        id: 'webhook-id',
        idSigned: true,
        timed: true,
        parts: ['id', lit('.'), 'timestamp', lit('.'), 'body'],
        encoding: 'base64',
        algorithm: 'sha256',
      }
    case 'hmac': {
      // Config validation refuses these; a config built in code gets a plain error (naming no secret).
      if (cfg.header === undefined) {
        throw new Error(`webhook provider ${name}: scheme hmac needs header`)
      }
      // split() with a capturing group alternates literal text and placeholder names.
      const pieces = (cfg.signed ?? '{body}').split(/\{(timestamp|id|body)\}/)
      const parts: Part[] = []
      pieces.forEach((piece, i) => {
        if (i % 2 === 1) parts.push(piece as 'timestamp' | 'id' | 'body')
        else if (piece !== '') parts.push(lit(piece))
      })
      const timed = parts.includes('timestamp')
      const idSigned = parts.includes('id')
      if (timed && cfg.timestamp_header === undefined) {
        throw new Error(`webhook provider ${name}: {timestamp} in signed needs timestamp_header`)
      }
      if (idSigned && cfg.id_header === undefined) {
        throw new Error(`webhook provider ${name}: {id} in signed needs id_header`)
      }
      return {
        signature: cfg.header,
        prefix: cfg.prefix ?? '',
        // An unsigned timestamp proves nothing about freshness: it is read only when signed.
        timestamp: timed ? cfg.timestamp_header! : null,
        // The id is reported (claims.id) even when it is not signed, like GitHub's delivery id.
        id: cfg.id_header ?? null,
        idSigned,
        timed,
        parts,
        encoding: cfg.encoding ?? 'hex',
        algorithm: cfg.algorithm ?? 'sha256',
      }
    }
  }
}
