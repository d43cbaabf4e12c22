// Interleaved large uploads through Gatehouse, @fastify/http-proxy and the bare node:http +
// undici proxy, with each proxy's CPU per GB (utime + stime from /proc, so the kernel's share,
// page faults included, counts). A quick look at one question; `npm run bench` is the record.
//
//   npm run build && node bench/upload-ab.js [checkout]
//   BYTES=1073741824 REPS=5 TARGETS=gatehouse,fastify,bare GH_ARGS='--cpu-prof'
//
// Run it with MALLOC_TRIM_THRESHOLD_=16777216 in the environment to give every proxy the same
// C heap behaviour (see src/util/malloc.ts for why that decides upload speed on glibc).
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import http from 'node:http'
import path from 'node:path'
import { upload } from './transfer.js'
const root = process.argv[2] ?? path.join(path.dirname(new URL(import.meta.url).pathname), '..')
const BYTES = Number(process.env.BYTES ?? 512 * 1024 * 1024)
const REPS = Number(process.env.REPS ?? 4)
const extra = (process.env.GH_ARGS ?? '').split(' ').filter(Boolean)
function ready (proc) {
  return new Promise((resolve, reject) => {
    let buf = ''
    proc.stdout.on('data', (d) => {
      buf += d
      const m = /READY (\d+)/.exec(buf)
      if (m) resolve(Number(m[1]))
    })
    proc.on('exit', (c) => reject(new Error('exit ' + c)))
  })
}
function cpuMs (pid) {
  const f = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ')
  return (Number(f[11]) + Number(f[12])) * 10
}
const up = spawn(process.execPath, [path.join(root, 'bench/upstream.js'), '0'], {
  stdio: ['ignore', 'pipe', 'inherit'],
})
const upPort = await ready(up)
const procs = [up]
async function startProxy (name) {
  if (name === 'gatehouse') {
    const dir = fs.mkdtempSync('/tmp/upl-')
    const port = 20000 + Math.floor(Math.random() * 20000)
    fs.writeFileSync(
      path.join(dir, 'g.yaml'),
      `listen: { host: 127.0.0.1, port: ${port} }\nupstreams:\n  bench:\n    targets: [{ url: http://127.0.0.1:${upPort} }]\nroutes:\n  - name: bench\n    match: { path_prefix: / }\n    upstream: bench\n`,
    )
    const p = spawn(process.execPath, [...extra, path.join(root, 'bin/gatehouse.cjs'), 'start',
      '--config', path.join(dir, 'g.yaml')], { stdio: ['ignore', 'ignore', 'inherit'] })
    procs.push(p)
    for (let i = 0; i < 100; i++) {
      try {
        await new Promise((resolve, reject) =>
          http.get(`http://127.0.0.1:${port}/small`, (r) => {
            r.resume()
            r.on('end', resolve)
          }).on('error', reject)
        )
        break
      } catch {
        await new Promise((resolve) => setTimeout(resolve, 100))
      }
    }
    return { name, pid: p.pid, base: `http://127.0.0.1:${port}` }
  }
  const p = spawn(process.execPath, [path.join(root, `bench/${name}-proxy.js`), '0',
    `http://127.0.0.1:${upPort}`], { stdio: ['ignore', 'pipe', 'inherit'] })
  procs.push(p)
  const port = await ready(p)
  return { name, pid: p.pid, base: `http://127.0.0.1:${port}` }
}
const targets = []
for (const n of (process.env.TARGETS ?? 'gatehouse,fastify,bare').split(',')) {
  targets.push(await startProxy(n))
}
for (const t of targets) await upload(t.base, 256 * 1024 * 1024, 120_000)
const res = new Map(targets.map((t) => [t.name, []]))
for (let i = 0; i < REPS; i++) {
  for (const t of targets) {
    const c0 = cpuMs(t.pid)
    const { ms } = await upload(t.base, BYTES, 600_000)
    const c = cpuMs(t.pid) - c0
    res.get(t.name).push({ mbps: BYTES / 1e6 / (ms / 1000), cpuPerGB: c / (BYTES / 1e9) })
  }
}
for (const [n, r] of res) {
  const m = r.map((x) => x.mbps).sort((a, b) => a - b)
  const c = r.map((x) => x.cpuPerGB).sort((a, b) => a - b)
  console.log(
    n.padEnd(10),
    'MB/s',
    m.map((x) => x.toFixed(0)).join(' '),
    ' median',
    m[m.length >> 1].toFixed(0),
    ' proxy cpu ms/GB',
    c[c.length >> 1].toFixed(0),
  )
}
for (const p of procs) p.kill()
process.exit(0)
