import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { createInterface } from 'node:readline'
import { randomBytes } from 'node:crypto'
import {
  deleteNatsStreams,
  request,
  serviceAvailable,
  startUpstream,
  waitUntil,
} from '../helpers/index.js'

const BIN = fileURLToPath(new URL('../../bin/gatehouse.cjs', import.meta.url))

/** Start `gatehouse start` as a child process; resolves with its port once it listens. */
async function startChild (config: string): Promise<{ child: ChildProcess, port: number }> {
  const child = spawn(process.execPath, [BIN, 'start', '--config', config], {
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  const lines = createInterface({ input: child.stdout! })
  const port = await new Promise<number>((resolve, reject) => {
    child.once('exit', (code) => reject(new Error(`gateway exited with ${code}`)))
    lines.on('line', (line) => {
      const l = JSON.parse(line)
      if (l.msg === 'listening') resolve(l.port)
    })
  })
  return { child, port }
}

for (const backend of ['sqlite', 'nats'] as const) {
  test(`${backend}: SIGKILL mid-stream: every request that got a 202 is delivered at least once after restart`, async (t) => {
    if (backend === 'nats' && !await serviceAvailable(4222)) {
      return t.skip('NATS is not answering on 127.0.0.1:4222')
    }
    const stream = `GHCRASH_${randomBytes(4).toString('hex')}`
    const store = backend === 'sqlite'
      ? '{ kind: sqlite, path: ./delivery.db }'
      : `{ kind: nats, url: "nats://127.0.0.1:4222", stream: ${stream} }`
    const dir = mkdtempSync(join(tmpdir(), 'gh-crash-'))
    const seen = new Map<string, number>()
    // A slow upstream, so that a backlog of accepted but undelivered requests exists at the kill.
    const up = await startUpstream((req, res) => {
      req.resume()
      req.on('end', () => {
        const id = String(req.headers['x-gatehouse-delivery-id'])
        seen.set(id, (seen.get(id) ?? 0) + 1)
        setTimeout(() => res.end(), 20)
      })
    })
    const config = join(dir, 'gatehouse.yaml')
    writeFileSync(
      config,
      `
listen: { host: 127.0.0.1, port: 0 }
admin: { enabled: false }
log: { level: info, access: false }
delivery: { store: ${store} }
upstreams: { work: { targets: [{ url: "${up.url}" }] } }
routes:
  - name: jobs
    match: { path: /jobs }
    upstream: work
    delivery: { mode: async, concurrency: 2, timeout: 2s, backoff: { initial: 50ms, max: 200ms } }
`,
    )
    let gw = await startChild(config)
    const acked: string[] = []
    let attempted = 0
    const run = { stop: false }
    const sender = async (n: number): Promise<void> => {
      for (let i = 0; !run.stop; i++) {
        attempted++
        try {
          const res = await request(`http://127.0.0.1:${gw.port}/jobs`, {
            method: 'POST',
            body: JSON.stringify({ sender: n, i }),
          })
          if (res.status === 202) acked.push(JSON.parse(res.body).delivery_id)
        } catch {
          // The gateway died mid-request: no 202, so no promise was made.
        }
      }
    }
    const senders = [1, 2, 3, 4, 5, 6, 7, 8].map(sender)
    await waitUntil(() => acked.length >= 300, 20_000)
    gw.child.kill('SIGKILL')
    await new Promise((resolve) => gw.child.once('exit', resolve))
    run.stop = true
    await Promise.all(senders)
    const pendingAtKill = acked.filter((id) => !seen.has(id)).length
    t.diagnostic(
      `acked ${acked.length} of ${attempted} attempted; ${pendingAtKill} not yet delivered at the kill`,
    )
    assert.ok(pendingAtKill > 0, 'the kill happened with a backlog')

    gw = await startChild(config)
    try {
      await waitUntil(() => acked.every((id) => seen.has(id)), 30_000)
      const lost = acked.filter((id) => !seen.has(id))
      const duplicates = acked.filter((id) => seen.get(id)! > 1).length
      t.diagnostic(`lost ${lost.length}, delivered more than once ${duplicates}`)
      assert.equal(lost.length, 0)
    } finally {
      gw.child.kill('SIGTERM')
      await new Promise((resolve) => gw.child.once('exit', resolve))
      await up.close()
      rmSync(dir, { recursive: true, force: true })
      if (backend === 'nats') await deleteNatsStreams([stream])
    }
  })
}
