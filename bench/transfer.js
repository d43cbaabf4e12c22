// Transfers shared by the bench scripts (run.js, upload-ab.js).
import http from 'node:http'

const CHUNK = Buffer.alloc(64 * 1024, 'b')

/** POST /upload with a Content-Length body of `bytes`, written from one 64 KiB buffer with backpressure. */
export function upload (base, bytes, timeoutMs) {
  return new Promise((resolve, reject) => {
    const t0 = performance.now()
    const req = http.request(`${base}/upload`, {
      method: 'POST',
      agent: false,
      headers: { 'content-type': 'application/octet-stream', 'content-length': bytes },
    }, (res) => {
      const parts = []
      res.on('data', (c) => parts.push(c))
      res.on('end', () => {
        clearTimeout(timer)
        const ms = performance.now() - t0
        const echoed = Number(Buffer.concat(parts).toString())
        if (res.statusCode !== 200) reject(new Error(`upload: status ${res.statusCode}`))
        else if (echoed !== bytes) {
          reject(new Error(`upload: upstream counted ${echoed} of ${bytes} bytes`))
        } else resolve({ bytes, ms, mbps: bytes / 1e6 / (ms / 1000) })
      })
      res.on('error', reject)
    })
    const timer = setTimeout(
      () => req.destroy(new Error(`upload: not done after ${timeoutMs} ms`)),
      timeoutMs,
    )
    req.on('error', (err) => {
      clearTimeout(timer)
      reject(err)
    })
    let left = bytes
    const pump = () => {
      while (left > 0) {
        const n = Math.min(left, CHUNK.length)
        left -= n
        if (!req.write(n === CHUNK.length ? CHUNK : CHUNK.subarray(0, n))) {
          req.once('drain', pump)
          return
        }
      }
      req.end()
    }
    pump()
  })
}
