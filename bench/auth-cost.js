// The CPU cost of the credential check on the cached path, measured in-process (no sockets, no
// other processes): what a JWT route adds per request before any bytes move. Prints one line
// "AUTHCOST {json}". Run by bench/run.js; also usable alone: node bench/auth-cost.js
import http from 'node:http'
import { exportJWK, generateKeyPair, SignJWT } from 'jose'
import { createGateway } from '../dist/index.js'
import { finishRequestHeaders } from '../dist/pipeline/headers.js'

const { privateKey, publicKey } = await generateKeyPair('RS256')
const jwk = { ...(await exportJWK(publicKey)), kid: 'k', alg: 'RS256' }
const idp = http.createServer((_req, res) => {
  res.setHeader('content-type', 'application/json')
  res.end(JSON.stringify({ keys: [jwk] }))
})
await new Promise((resolve) => idp.listen(0, '127.0.0.1', resolve))
const iss = `http://127.0.0.1:${idp.address().port}`
const now = Math.floor(Date.now() / 1000)
const token = await new SignJWT({ sub: 'c', client_id: 'c', scope: 'predict' })
  .setProtectedHeader({ alg: 'RS256', kid: 'k', typ: 'at+jwt' })
  .setIssuer(iss).setAudience('ml-api').setIssuedAt(now).setExpirationTime(now + 3600).sign(
    privateKey,
  )
const gw = createGateway(
  {
    listen: { port: 0 },
    admin: { enabled: false },
    log: { level: 'silent' },
    identity: {
      providers: {
        sso: { kind: 'jwt', issuer: iss, jwks_uri: `${iss}/jwks`, audiences: ['ml-api'] },
      },
    },
    upstreams: { b: { targets: [{ url: 'http://127.0.0.1:1' }] } },
    routes: [{
      name: 'jwt',
      match: {},
      upstream: 'b',
      auth: { any_of: ['sso'], scopes: { all: ['predict'] } },
    }],
  },
  { processMetrics: false },
)
await gw.listen()
const route = gw.table.routes[0]
const open = { ...route, auth: null }
// The fields of an Exchange that the check and the header step read.
const exchange = () => ({
  authorization: 'Bearer ' + token,
  authorizationCount: 1,
  credHeaders: null,
  identity: null,
  phantomToken: null,
  outHeaders: [],
  req: { socket: { remoteAddress: '127.0.0.1' }, httpVersion: '1.1' },
  table: gw.table,
  xForwardedFor: null,
  xForwardedProto: null,
  xForwardedHost: null,
  forwarded: null,
  via: null,
  contentLength: null,
  hostHeader: 'x',
  requestId: 'r',
})
if (await route.auth.check(exchange(), Date.now()) !== null) throw new Error('token refused')

function ns (fn, n = 200_000) {
  for (let i = 0; i < 20_000; i++) fn()
  const t = process.hrtime.bigint()
  for (let i = 0; i < n; i++) fn()
  return Number(process.hrtime.bigint() - t) / n
}
const results = []
for (let rep = 0; rep < 5; rep++) {
  const withAuth = ns(() => {
    const ex = exchange()
    route.auth.check(ex, Date.now())
    finishRequestHeaders(ex, route, false)
  })
  const without = ns(() => finishRequestHeaders(exchange(), open, false))
  results.push(withAuth - without)
}
results.sort((a, b) => a - b)
process.stdout.write(
  `AUTHCOST ${
    JSON.stringify({ jwtCachedNsPerRequest: Math.round(results[2]), reps: results.map(Math.round) })
  }\n`,
)
await gw.close()
idp.close()
