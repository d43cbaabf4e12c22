// @fastify/http-proxy in front of the benchmark upstream, default plugin settings, logger off.
// Usage: node bench/fastify-proxy.js <port> <upstream-url>   (prints "READY <port>")
import Fastify from 'fastify'
import proxy from '@fastify/http-proxy'

const port = Number(process.argv[2] ?? 0)
const upstream = process.argv[3]
const app = Fastify({ logger: false })
await app.register(proxy, { upstream })
await app.listen({ port, host: '127.0.0.1' })
process.stdout.write(`READY ${app.server.address().port}\n`)
process.on('SIGTERM', () => process.exit(0))
