import http from 'node:http'
import { once } from 'node:events'
import type { AddressInfo } from 'node:net'
import Provider from 'oidc-provider'
import { exportJWK, generateKeyPair, type CryptoKey, type JWK } from 'jose'

/** A signing key of the test IdP. */
export interface IdpKey {
  kid: string
  privateKey: CryptoKey
  jwk: JWK
}

export interface TestIdp {
  issuer: string
  /** Client-credentials token from the real token endpoint (a JWT for resource urn:ml-api). */
  token(opts?: { client?: string, scope?: string, resource?: string }): Promise<string>
  /** The key that signs new tokens. */
  readonly signingKey: IdpKey
  /** Publish a new key (new kid) that signs from now on; the old one stays published. */
  rotate(): Promise<IdpKey>
  /** Stop publishing every key but the signing one. */
  retireOld(): void
  /** Requests per path, e.g. counts['/jwks']. */
  readonly counts: Record<string, number>
  /** While true the IdP answers 503 to everything (an outage). */
  down: boolean
  close(): Promise<void>
}

export const CLIENTS = {
  batch: { secret: 'batch-secret', scope: 'predict read' },
  reader: { secret: 'reader-secret', scope: 'read' },
  gatehouse: { secret: 'gatehouse-secret', scope: '' },
} as const

/**
 * oidc-provider (a certified OpenID Provider) on port 0, as the real IdP of the identity tests:
 * discovery, JWKS, client-credentials grant, RFC 7662 introspection. Resource urn:ml-api gets
 * JWT access tokens (aud ml-api); urn:opaque gets opaque ones (introspection only).
 */
export async function startIdp (): Promise<TestIdp> {
  const server = http.createServer()
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const issuer = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  let keys: IdpKey[] = [await newKey('key-1')]
  let serial = 1
  let callback: ReturnType<Provider['callback']>
  const build = (): void => {
    const provider = new Provider(issuer, {
      clients: Object.entries(CLIENTS).map(([id, c]) => ({
        client_id: id,
        client_secret: c.secret,
        grant_types: ['client_credentials'],
        redirect_uris: [],
        response_types: [],
        ...(c.scope === '' ? {} : { scope: c.scope }),
      })),
      // The first key signs; the rest are published for tokens signed before a rotation.
      jwks: { keys: keys.map((k) => k.jwk) as any },
      scopes: ['predict', 'read'],
      ttl: { ClientCredentials: 300 },
      features: {
        devInteractions: { enabled: false },
        clientCredentials: { enabled: true },
        introspection: { enabled: true, allowedPolicy: async () => true },
        resourceIndicators: {
          enabled: true,
          defaultResource: () => 'urn:ml-api',
          useGrantedResource: () => true,
          getResourceServerInfo: (_ctx: unknown, resource: string) =>
            resource === 'urn:opaque'
              ? {
                scope: 'predict read',
                audience: 'ml-api',
                accessTokenFormat: 'opaque',
                accessTokenTTL: 300,
              }
              : {
                scope: 'predict read',
                audience: 'ml-api',
                accessTokenFormat: 'jwt',
                accessTokenTTL: 300,
                jwt: { sign: { alg: 'RS256' } },
              },
        },
      },
    } as any)
    callback = provider.callback()
  }
  build()
  const counts: Record<string, number> = {}
  const idp: TestIdp = {
    issuer,
    counts,
    down: false,
    get signingKey () {
      return keys[0]!
    },
    async token (opts = {}) {
      const client = opts.client ?? 'batch'
      const secret = CLIENTS[client as keyof typeof CLIENTS].secret
      const form = new URLSearchParams({ grant_type: 'client_credentials' })
      if (opts.scope !== undefined) form.set('scope', opts.scope)
      if (opts.resource !== undefined) form.set('resource', opts.resource)
      const res = await fetch(`${issuer}/token`, {
        method: 'POST',
        headers: {
          authorization: 'Basic ' + Buffer.from(`${client}:${secret}`).toString('base64'),
          'content-type': 'application/x-www-form-urlencoded',
        },
        body: form,
      })
      const body = await res.json() as { access_token?: string }
      if (res.status !== 200 || body.access_token === undefined) {
        throw new Error(`token endpoint: ${res.status} ${JSON.stringify(body)}`)
      }
      return body.access_token
    },
    async rotate () {
      const k = await newKey(`key-${++serial}`)
      keys = [k, ...keys]
      build()
      return k
    },
    retireOld () {
      keys = [keys[0]!]
      build()
    },
    async close () {
      server.closeAllConnections()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    },
  }
  server.on('request', (req: http.IncomingMessage, res: http.ServerResponse) => {
    const path = (req.url ?? '/').split('?')[0]!
    counts[path] = (counts[path] ?? 0) + 1
    if (idp.down) {
      res.writeHead(503).end()
      return
    }
    callback(req, res)
  })
  return idp
}

async function newKey (kid: string): Promise<IdpKey> {
  const { privateKey } = await generateKeyPair('RS256', { extractable: true })
  const jwk = { ...(await exportJWK(privateKey)), kid, alg: 'RS256', use: 'sig' }
  return { kid, privateKey, jwk }
}
