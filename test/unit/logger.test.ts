import { describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { Counter, Histogram, Registry } from 'prom-client'
import { Metrics } from '../../src/observability/metrics.js'

const logger = fileURLToPath(new URL('../../src/observability/logger.ts', import.meta.url))

/** Runs a script in a child process with the default (batched, asynchronous) destination on stdout. */
function runChild (body: string): { lines: Array<Record<string, any>>, status: number | null } {
  const script = `import { createLogger } from ${JSON.stringify(logger)}\nimport { AccessLog } from ${JSON.stringify(logger.replace('logger.ts', 'access-log.ts'))}\n${body}`
  const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { encoding: 'utf8', timeout: 30_000, maxBuffer: 64 * 1024 * 1024 })
  assert.equal(r.stderr, '')
  return { lines: r.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l)), status: r.status }
}

const entry = "{ id: 'i', route: 'r', method: 'GET', path: '/p', status: 200, target: null, attempts: 1, bytesIn: 0, bytesOut: 1, ms: 1, upstreamMs: null, code: null, reason: null, provider: null, subject: null }"

describe('batched log destination', () => {
  test('every line reaches stdout, in the order logged, when the process ends on its own', () => {
    // 20,000 access lines are several batches; the info lines between them must keep their place.
    const { lines, status } = runChild(`
      const log = createLogger('info')
      const access = new AccessLog(log)
      for (let i = 0; i < 20000; i++) {
        access.write({ ...${entry}, id: 'r' + i })
        if (i % 5000 === 0) log.info({ msg: 'mark', i })
      }
      setTimeout(() => log.info({ msg: 'last' }), 50)
    `)
    assert.equal(status, 0)
    assert.equal(lines.length, 20000 + 4 + 1)
    assert.deepEqual(lines.filter((l) => l.msg === 'mark').map((l) => l.i), [0, 5000, 10000, 15000])
    let n = 0
    for (const l of lines) {
      // The mark logged right after request i comes right after it in the output.
      if (l.msg === 'mark') assert.equal(l.i, n - 1)
      if (l.msg === 'request') assert.equal(l.id, `r${n++}`)
    }
    assert.equal(lines.at(-1)!.msg, 'last')
  })

  test('lines still gathered are written, whole and in order, when the process calls process.exit()', () => {
    const { lines, status } = runChild(`
      const log = createLogger('info')
      const access = new AccessLog(log)
      for (let i = 0; i < 20000; i++) access.write({ ...${entry}, id: 'x' + i })
      log.warn({ msg: 'bye' })
      process.exit(3)
    `)
    assert.equal(status, 3)
    assert.equal(lines.length, 20001)
    lines.slice(0, -1).forEach((l, i) => assert.equal(l.id, `x${i}`))
    assert.equal(lines[20000]!.msg, 'bye')
  })
})

describe('per-request metrics', () => {
  test('expose the same text as prom-client metrics fed the same values', async () => {
    const ours = new Metrics(false)
    const theirs = new Registry()
    const requests = new Counter({ name: 'gatehouse_requests_total', help: 'Requests answered, by route, method and status', labelNames: ['route', 'method', 'status'], registers: [theirs] })
    const buckets = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]
    const duration = new Histogram({ name: 'gatehouse_request_duration_seconds', help: 'Time from request head to response end', labelNames: ['route'], buckets, registers: [theirs] })
    const rm = ours.forRoute(null, 'r"1', 'up')
    // Values on, below and above bucket bounds, and past the last one.
    for (const v of [0, 0.001, 0.0011, 0.3, 0.5, 7, 121, 1e6]) {
      rm.duration.observe(v)
      duration.labels('r"1').observe(v)
    }
    for (const [method, status] of [['GET', 200], ['GET', 200], ['POST', 499]] as const) {
      rm.countRequest(method, status)
      requests.labels('r"1', method, String(status)).inc()
    }
    const text = await ours.registry.metrics()
    for (const block of (await theirs.metrics()).trim().split('\n\n')) assert.ok(text.includes(block), `missing:\n${block}\n\nin:\n${text}`)
  })
})
