import { createCipheriv, createDecipheriv, hash, randomBytes } from 'node:crypto'
import type { DeliveryRoute, DeliveryTable } from './route.js'
import type { DeliveryConfig } from '../config/schema.js'
import type { PhantomSigner } from '../identity/phantom.js'

/*
 * What an async request keeps of its credentials while it waits in the store (for days, as
 * `retention` keeps dead letters, and in every backup of the store).
 *
 * - The caller's credentials for the gateway (the bearer token a jwt or introspection provider
 *   checked, an api_key provider's header) are never stored: the gateway checked them at
 *   acceptance, and the upstream learns who called from the identity headers or the phantom token.
 * - The phantom token is stored as its claims without a signature (and without `exp`): useless
 *   to whoever reads the store; each attempt signs a fresh token with them.
 * - A credential header the route's request transform sets (a static upstream token from the
 *   config) is stored as a reference: each attempt takes the value the config has then.
 * - Any other credential (Cookie, an Authorization no provider of the route reads, X-Api-Key,
 *   `delivery.secret_headers`) is stored encrypted under `delivery.encryption_key`
 *   (AES-256-GCM, bound to the delivery id and header name), or not at all without a key.
 *
 * A stored field whose value is not the header's own is marked by its name's prefix: ':' never
 * starts an HTTP field name, so no client can send one.
 */

/** `:enc:<name>`: `<kid>.<iv>.<ciphertext and tag>` (base64url). */
const ENCRYPTED = ':enc:'
/** `:phantom:<name>`: the phantom token's payload (base64url JSON) without `exp`, unsigned. */
const PHANTOM = ':phantom:'
/** `:config:<name>`: `set` or `add`, the route's request transform edit that supplies the value. */
const CONFIGURED = ':config:'

/** Header names whose values are credentials, on every route (besides api_key providers' headers and `secret_headers`). */
const SECRET_NAMES = ['authorization', 'cookie', 'x-api-key']

const IV_BYTES = 12
const TAG_BYTES = 16

/** The key that encrypts, and every key that may decrypt, by key id. */
export class DeliveryKeys {
  /** Same keys, same fingerprint: a reload that keeps them keeps this object. */
  readonly fingerprint: string
  readonly #current: { kid: string, key: Buffer } | null
  readonly #byKid = new Map<string, Buffer>()

  constructor (cfg: Pick<DeliveryConfig, 'encryption_key' | 'previous_encryption_keys'>) {
    const keys = [...(cfg.encryption_key === undefined ? [] : [cfg.encryption_key]),
      ...(cfg.previous_encryption_keys ?? [])].map(keyBytes)
    for (const key of keys) this.#byKid.set(kidOf(key), key)
    this.#current = cfg.encryption_key === undefined
      ? null
      : { kid: kidOf(keys[0]!), key: keys[0]! }
    this.fingerprint = [...this.#byKid.keys()].join(',') +
      (this.#current === null ? '' : `:${this.#current.kid}`)
  }

  get canEncrypt (): boolean {
    return this.#current !== null
  }

  encrypt (plain: string, aad: string): string {
    const { kid, key } = this.#current!
    const iv = randomBytes(IV_BYTES)
    const c = createCipheriv('aes-256-gcm', key, iv)
    c.setAAD(Buffer.from(aad))
    const body = Buffer.concat([c.update(plain, 'utf8'), c.final(), c.getAuthTag()])
    return `${kid}.${iv.toString('base64url')}.${body.toString('base64url')}`
  }

  /** The plaintext, or why not (an unknown key id, or a value that fails authentication). */
  decrypt (stored: string, aad: string): { value: string } | { error: string } {
    const [kid = '', iv = '', body = ''] = stored.split('.')
    const key = this.#byKid.get(kid)
    if (key === undefined) {
      return {
        error:
          `it was encrypted under key ${kid}, which is not in delivery.encryption_key or previous_encryption_keys`,
      }
    }
    try {
      const data = Buffer.from(body, 'base64url')
      const d = createDecipheriv('aes-256-gcm', key, Buffer.from(iv, 'base64url'))
      d.setAAD(Buffer.from(aad))
      d.setAuthTag(data.subarray(data.length - TAG_BYTES))
      return {
        value: Buffer.concat([d.update(data.subarray(0, data.length - TAG_BYTES)), d.final()])
          .toString('utf8'),
      }
    } catch {
      return {
        error: `it does not decrypt under key ${kid} (altered, or moved from another record)`,
      }
    }
  }
}

function keyBytes (text: string): Buffer {
  return /^[0-9a-fA-F]{64}$/.test(text) ? Buffer.from(text, 'hex') : Buffer.from(text, 'base64')
}

/** 8 hex digits of the key's SHA-256: names the key in stored values without revealing it. */
function kidOf (key: Buffer): string {
  return hash('sha256', key, 'hex').slice(0, 8)
}

/** How one compiled route's forwarded headers are stored; built once per route. */
export interface StoragePlan {
  /** The route's own credentials (lower-case names): never stored. */
  readonly drop: ReadonlySet<string>
  /** Other credential headers: encrypted, or not stored. */
  readonly secret: ReadonlySet<string>
  /** Credential values the route's request transform sets, by name: stored as a reference. */
  readonly configured: ReadonlyMap<string, { readonly set?: string, readonly add?: string }>
  /** The phantom token's header on this route, or null. */
  readonly phantom: PhantomSigner | null
}

export function storagePlan (route: DeliveryRoute, table: DeliveryTable): StoragePlan {
  const drop = new Set<string>()
  const auth = route.auth
  if (auth !== null) {
    for (const p of auth.providers) {
      if (p.source.kind === 'bearer') drop.add('authorization')
      else if (p.source.kind === 'header') drop.add(p.source.name)
    }
  }
  const secret = new Set([...SECRET_NAMES, ...(table.config.delivery.secret_headers ?? [])])
  for (const [name, role] of table.headerRoles) if (role === 'credential') secret.add(name)
  const edits = table.config.routes.find((r) => r.name === route.name)?.transform?.request?.headers
  const configured = new Map<string, { set?: string, add?: string }>()
  for (const [name, value] of Object.entries(edits?.set ?? {})) {
    if (secret.has(name) || drop.has(name)) configured.set(name, { set: value })
  }
  for (const [name, value] of Object.entries(edits?.add ?? {})) {
    if (secret.has(name) || drop.has(name)) {
      configured.set(name, { ...configured.get(name), add: value })
    }
  }
  return { drop, secret, configured, phantom: auth?.phantom ?? null }
}

/**
 * The forwarded headers (flat [name, value, …]) as they are stored, per the plan above.
 * `unkept`: credential header names left out for want of an encryption key.
 */
export function sealHeaders (
  headers: readonly string[],
  plan: StoragePlan,
  id: string,
  phantomToken: string | null,
  keys: DeliveryKeys,
): { headers: string[], unkept: string[] | null } {
  const out: string[] = []
  let unkept: string[] | null = null
  const phantomName = plan.phantom?.header ?? null
  for (let i = 0; i < headers.length; i += 2) {
    const name = headers[i]!
    const value = headers[i + 1]!
    const lower = name.toLowerCase()
    if (
      lower === phantomName && phantomToken !== null &&
      (value === phantomToken || value === 'Bearer ' + phantomToken)
    ) {
      const claims = unsignedClaims(phantomToken)
      if (claims !== null) out.push(PHANTOM + name, claims)
      continue
    }
    const edit = plan.configured.get(lower)
    if (edit !== undefined && (value === edit.set || value === edit.add)) {
      out.push(CONFIGURED + name, value === edit.set ? 'set' : 'add')
      continue
    }
    if (plan.drop.has(lower)) continue
    if (plan.secret.has(lower)) {
      if (keys.canEncrypt) out.push(ENCRYPTED + name, keys.encrypt(value, `${id}\n${lower}`))
      else (unkept ??= []).push(lower)
      continue
    }
    out.push(name, value)
  }
  return { headers: out, unkept }
}

/** What an attempt needs to turn stored headers back into the ones sent. */
export interface OpenContext {
  readonly id: string
  readonly keys: DeliveryKeys
  readonly plan: StoragePlan
  readonly now: number
}

/**
 * The headers to send, from those stored: credentials decrypted, the phantom token signed anew,
 * configured values taken from the current config. An error (a value that cannot be decrypted)
 * means the request cannot be sent as it was accepted.
 */
export async function openHeaders (
  stored: readonly string[],
  ctx: OpenContext,
): Promise<string[] | { error: string }> {
  const out: string[] = []
  for (let i = 0; i < stored.length; i += 2) {
    const name = stored[i]!
    const value = stored[i + 1]!
    if (name.charCodeAt(0) !== 58) {
      // A token stored whole (by a version before tokens were stored unsigned): a new one once
      // it has used half its lifetime (the signer answers null before that).
      const signer = ctx.plan.phantom
      if (
        signer !== null && name.length === signer.header.length &&
        name.toLowerCase() === signer.header
      ) {
        const bearer = signer.header === 'authorization'
        if (!bearer || /^bearer /i.test(value)) {
          const fresh = await signer.reissue(bearer ? value.slice(7) : value, ctx.now)
          if (fresh !== null) {
            out.push(name, bearer ? 'Bearer ' + fresh : fresh)
            continue
          }
        }
      }
      out.push(name, value)
      continue
    }
    if (name.startsWith(ENCRYPTED)) {
      const real = name.slice(ENCRYPTED.length)
      const r = ctx.keys.decrypt(value, `${ctx.id}\n${real.toLowerCase()}`)
      if ('error' in r) {
        return { error: `the stored ${real.toLowerCase()} header cannot be decrypted: ${r.error}` }
      }
      out.push(real, r.value)
    } else if (name.startsWith(PHANTOM)) {
      // Signed for this attempt; gone when the route no longer signs phantom tokens, or with
      // another issuer or audience (the claims are not this signer's to vouch for).
      const real = name.slice(PHANTOM.length)
      const signer = ctx.plan.phantom
      if (signer === null || signer.header !== real.toLowerCase()) continue
      const token = await signer.reissue(`e30.${value}.`, ctx.now)
      if (token !== null) {
        out.push(real, real.toLowerCase() === 'authorization' ? 'Bearer ' + token : token)
      }
    } else if (name.startsWith(CONFIGURED)) {
      const real = name.slice(CONFIGURED.length)
      const edit = ctx.plan.configured.get(real.toLowerCase())
      const v = value === 'set' ? edit?.set : edit?.add
      if (v !== undefined) out.push(real, v)
    }
  }
  return out
}

/** The token's payload without `exp` (base64url JSON), or null for what is not a JWT. */
function unsignedClaims (token: string): string | null {
  const payload = token.split('.')[1]
  if (payload === undefined) return null
  try {
    const claims = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8')) as Record<
      string,
      unknown
    >
    delete claims.exp
    return Buffer.from(JSON.stringify(claims)).toString('base64url')
  } catch {
    return null
  }
}
