// The benchmark upstream: a tiny node:http server with keep-alive.
//   GET  /small, /small/*   → 13-byte body
//   POST /echo16k           → reads the request body, answers a small JSON body
//   GET  /download?bytes=N  → streams N bytes from one preallocated 64 KiB buffer (backpressure respected)
//   POST /upload            → consumes the body, answers the byte count
// Usage: node bench/upstream.js [port]   (prints "READY <port>" once listening)
import http from 'node:http'

const CHUNK = Buffer.alloc(64 * 1024, 'a')
const SMALL = Buffer.from('hello, world\n')

const server = http.createServer({ keepAliveTimeout: 60_000 }, (req, res) => {
  const q = req.url.indexOf('?')
  const path = q === -1 ? req.url : req.url.slice(0, q)
  if (req.method === 'GET' && (path === '/small' || path.startsWith('/small/'))) {
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': SMALL.length })
    res.end(SMALL)
  } else if (req.method === 'POST' && (path === '/echo16k' || path === '/upload')) {
    let n = 0
    req.on('data', (chunk) => {
      n += chunk.length
    })
    req.on('end', () => {
      const body = path === '/upload' ? String(n) : `{"received":${n}}`
      res.writeHead(200, {
        'content-type': path === '/upload' ? 'text/plain' : 'application/json',
        'content-length': Buffer.byteLength(body),
      })
      res.end(body)
    })
  } else if (req.method === 'GET' && path === '/download') {
    const total = Number(new URLSearchParams(req.url.slice(q + 1)).get('bytes') ?? 0)
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': total })
    let left = total
    const pump = () => {
      while (left > 0) {
        const n = Math.min(left, CHUNK.length)
        left -= n
        const ok = res.write(n === CHUNK.length ? CHUNK : CHUNK.subarray(0, n))
        if (!ok) {
          res.once('drain', pump)
          return
        }
      }
      res.end()
    }
    res.on('close', () => {
      left = 0
    })
    pump()
  } else {
    res.writeHead(404, { 'content-length': 0 })
    res.end()
  }
})
server.keepAliveTimeout = 60_000
server.headersTimeout = 65_000
server.requestTimeout = 0

server.listen(Number(process.argv[2] ?? 0), '127.0.0.1', () => {
  process.stdout.write(`READY ${server.address().port}\n`)
})
process.on('SIGTERM', () => process.exit(0))
