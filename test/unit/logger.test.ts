import { describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn, spawnSync } from 'node:child_process'
import { openSync, closeSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { Counter, Histogram, Registry } from 'prom-client'
import { Metrics } from '../../src/observability/metrics.js'

const logger = fileURLToPath(new URL('../../src/observability/logger.ts', import.meta.url))

/** Runs a script in a child process with the default (batched, asynchronous) destination on stdout. */
function runChild (body: string): { lines: Array<Record<string, any>>, status: number | null } {
  const script = `import { createLogger } from ${
    JSON.stringify(logger)
  }\nimport { AccessLog } from ${
    JSON.stringify(logger.replace('logger.ts', 'access-log.ts'))
  }\n${body}`
  const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
    encoding: 'utf8',
    timeout: 30_000,
    maxBuffer: 64 * 1024 * 1024,
  })
  assert.equal(r.stderr, '')
  return { lines: r.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l)), status: r.status }
}

const entry =
  '{ id: \'i\', route: \'r\', method: \'GET\', path: \'/p\', status: 200, target: null, attempts: 1, bytesIn: 0, bytesOut: 1, ms: 1, upstreamMs: null, code: null, reason: null, provider: null, subject: null }'

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

/**
 * Runs a child whose stdout is a pipe made non-blocking (it touches process.stdout, as a
 * plugin's console.log would), and reads nothing until the child says on stderr that it has
 * logged everything: a reader slower than the gateway.
 */
async function runChildSlowReader (
  body: string,
): Promise<
  { lines: Array<Record<string, any>>, raw: string, stderr: string, status: number | null }
> {
  const script = `process.stdout\nimport { createLogger } from ${
    JSON.stringify(logger)
  }\nimport { AccessLog } from ${
    JSON.stringify(logger.replace('logger.ts', 'access-log.ts'))
  }\n${body}\nprocess.stderr.write('logged\\n')`
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  child.stdout.pause()
  const out: Buffer[] = []
  let stderr = ''
  child.stderr.setEncoding('utf8')
  child.stderr.on('data', (c: string) => {
    stderr += c
    if (stderr.includes('logged\n')) child.stdout.resume()
  })
  child.stdout.on('data', (c: Buffer) => out.push(c))
  const status = await new Promise<number | null>((resolve) => child.once('close', resolve))
  const raw = Buffer.concat(out).toString('utf8')
  // Whole lines only: output given up on at exit may end part-way through one.
  const lines = raw.slice(0, raw.lastIndexOf('\n') + 1).split('\n').filter(Boolean).map((l) =>
    JSON.parse(l)
  )
  return { lines, raw, stderr: stderr.replace('logged\n', ''), status }
}

describe('log output that is full or broken', () => {
  test('a full non-blocking pipe (EAGAIN): lines wait, then arrive whole and in order', async () => {
    // ~2.5 MB: far more than a pipe holds (64 KiB), less than the 4 MiB kept for it.
    const { lines, stderr, status } = await runChildSlowReader(`
      const access = new AccessLog(createLogger('info'))
      for (let i = 0; i < 10000; i++) access.write({ ...${entry}, id: 'r' + i })
    `)
    assert.equal(status, 0)
    assert.equal(stderr, '')
    assert.equal(lines.length, 10000)
    lines.forEach((l, i) => assert.equal(l.id, `r${i}`))
  })

  test('past 4 MiB waiting for a full pipe, later lines are dropped and counted; the process still ends', async () => {
    const { lines, raw, stderr, status } = await runChildSlowReader(`
      const access = new AccessLog(createLogger('info'))
      for (let i = 0; i < 40000; i++) access.write({ ...${entry}, id: 'r' + i })
    `)
    assert.equal(status, 0)
    // Reported when it starts, and with the count when the pipe takes lines again (or, on a
    // machine so slow that the reader is not back within a second of exit, at exit).
    const m =
      /^gatehouse: log output to fd 1 failed \(EAGAIN\); log lines are dropped until it recovers\ngatehouse: (?:log output recovered; )?(\d+) bytes of log lines were dropped (?:while it failed )?\(EAGAIN\)\n$/
        .exec(stderr)
    assert.ok(m, stderr)
    // What arrived is whole lines in the order logged: the beginning, then, past the batches
    // dropped while the pipe was full, what was logged once it had room again...
    assert.ok(lines.length > 10000 && lines.length < 40000, `${lines.length} lines`)
    const ids = lines.map((l) => Number(String(l.id).slice(1)))
    ids.slice(0, 10000).forEach((id, i) => assert.equal(id, i))
    ids.forEach((id, i) => assert.ok(i === 0 || id > ids[i - 1]!, `r${id} after r${ids[i - 1]}`))
    // ...and every byte of the rest is counted. Lines differ only in their id's length.
    const fixed = raw.indexOf('\n') + 1 - 'r0'.length
    let rest = 0
    for (let i = 0; i < 40000; i++) rest += fixed + `r${i}`.length
    assert.equal(Number(m[1]), rest - Buffer.byteLength(raw))
  })

  test('a device that is full (ENOSPC): lines are dropped, reported once, and the process exits', () => {
    const full = openSync('/dev/full', 'w')
    try {
      const script = `import { createLogger } from ${JSON.stringify(logger)}
        const log = createLogger('info')
        for (let i = 0; i < 2000; i++) log.info({ msg: 'x'.repeat(100), i })
        setTimeout(() => { log.info({ msg: 'later' }); process.exit(7) }, 1100)`
      const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e',
        script], { stdio: ['ignore', full, 'pipe'], encoding: 'utf8', timeout: 30_000 })
      assert.equal(r.signal, null)
      assert.equal(r.status, 7)
      assert.match(
        r.stderr,
        /^gatehouse: log output to fd 1 failed \(ENOSPC\); log lines are dropped until it recovers\ngatehouse: \d+ bytes of log lines were dropped \(ENOSPC\)\n$/,
      )
    } finally {
      closeSync(full)
    }
  })
})

describe('per-request metrics', () => {
  test('expose the same text as prom-client metrics fed the same values', async () => {
    const ours = new Metrics(false)
    const theirs = new Registry()
    const requests = new Counter({
      name: 'gatehouse_requests_total',
      help: 'Requests answered, by route, method and status',
      labelNames: ['route', 'method', 'status'],
      registers: [theirs],
    })
    const buckets = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
      120]
    const duration = new Histogram({
      name: 'gatehouse_request_duration_seconds',
      help: 'Time from request head to response end',
      labelNames: ['route'],
      buckets,
      registers: [theirs],
    })
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
    for (const block of (await theirs.metrics()).trim().split('\n\n')) {
      assert.ok(text.includes(block), `missing:\n${block}\n\nin:\n${text}`)
    }
  })
})
