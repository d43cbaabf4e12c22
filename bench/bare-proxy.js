// The floor for any proxy built on node:http and undici, as a reference row: no routing, no
// header rules, no limits, no access log, no metrics, no error pages. Gatehouse and
// @fastify/http-proxy are both this plus their features, so "bare / fastify" in the same run says
// how far above fastify a node:http + undici gateway can get on the machine at hand.
// Usage: node bench/bare-proxy.js <port> <upstream-url>   (prints "READY <port>")
import http from 'node:http'
import { Pool } from 'undici'

const port = Number(process.argv[2] ?? 0)
const pool = new Pool(process.argv[3], { connections: 128 })
// undici refuses the hop-by-hop fields a client sends; everything else goes as is.
const HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'upgrade', 'expect', 'te',
  'trailer', 'proxy-connection'])

const server = http.createServer((req, res) => {
  const headers = {}
  for (const [k, v] of Object.entries(req.headers)) if (!HOP.has(k)) headers[k] = v
  const body = req.method === 'GET' || req.method === 'HEAD' ? null : req
  pool.stream({ path: req.url, method: req.method, headers, body }, ({ statusCode, headers }) => {
    delete headers.connection
    delete headers['keep-alive']
    res.writeHead(statusCode, headers)
    return res
  }, (err) => {
    if (err === null) return
    if (res.headersSent) res.destroy()
    else res.writeHead(502).end()
  })
})
server.keepAliveTimeout = 60_000
server.listen(port, '127.0.0.1', () => process.stdout.write(`READY ${server.address().port}\n`))
process.on('SIGTERM', () => process.exit(0))
