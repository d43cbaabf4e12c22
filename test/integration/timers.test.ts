import { after, describe, test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import http from 'node:http'
import net from 'node:net'
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import {
  simpleConfig,
  startGateway,
  startUpstream,
  type TestGateway,
  type Upstream,
} from '../helpers/index.js'

/*
 * Every upstream timeout fires on time: not before its value, and no later than
 * max(10 %, 20 ms) after it, measured from outside the gateway with performance.now().
 * Sub-second values are the ones undici's coarse 499 ms clock used to get wrong (first_byte
 * 200ms answered at ~1 s, 60ms as well). The reference points come before the timer can start
 * (the request is sent, the upstream's last bytes are written).
 *
 * Each case runs once unchecked, then SAMPLES times. Every sample must not come early. The
 * fastest sample must not come late, less the machine's own delay: the fastest round trip of a
 * request of the same shape answered at once (by the upstream, or by the gateway where the case
 * has no upstream to answer), measured between the samples. On a quiet machine that is a
 * millisecond or two; on a loaded one (the whole suite with other work beside it on two cores)
 * every wake-up waits for a CPU, and a sample gains 20-100 ms that are not the timer's. A timer
 * on a coarse clock is late by far more, in every sample.
 */

const SAMPLES = 7
/**
 * Node timers count whole milliseconds of a loop clock read when the loop woke up, so a timer
 * armed a fraction of a millisecond after our reference point can fire that fraction early.
 */
const CLOCK_SLACK = 1

function assertOnTime (
  t: TestContext,
  what: string,
  value: number,
  samples: number[],
  roundTrips: number[],
): void {
  const late = Math.max(value * 0.1, 20)
  const machine = Math.min(...roundTrips)
  t.diagnostic(
    `${what}: ${samples.map((ms) => ms.toFixed(1)).join(', ')} ms (round trips from ${
      machine.toFixed(1)
    } ms)`,
  )
  for (const ms of samples) {
    assert.ok(
      ms >= value - CLOCK_SLACK,
      `${what}: answered after ${ms.toFixed(1)} ms, before the ${value} ms timeout`,
    )
  }
  const best = Math.min(...samples)
  assert.ok(
    best - machine <= value + late,
    `${what}: answered after ${best.toFixed(1)} ms at best (a round trip took ${
      machine.toFixed(1)
    } ms), more than ${late} ms after the ${value} ms timeout`,
  )
}

/** GET over a keep-alive agent (no client connect inside the measurement after the first). */
function get (
  agent: http.Agent,
  url: string,
): Promise<{ status: number, headers: http.IncomingHttpHeaders, body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { agent }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on(
        'end',
        () =>
          resolve({
            status: res.statusCode!,
            headers: res.headers,
            body: Buffer.concat(chunks).toString(),
          }),
      )
      res.on('error', reject)
    })
    req.on('error', reject)
  })
}

async function timed (agent: http.Agent, url: string) {
  const t0 = performance.now()
  const res = await get(agent, url)
  return { ...res, elapsed: performance.now() - t0 }
}

function problemCode (body: string): string {
  return (JSON.parse(body) as { code: string }).code
}

describe('upstream timeouts fire on time', () => {
  const cleanups: Array<() => unknown> = []
  after(async () => {
    for (const c of cleanups.reverse()) await c()
  })

  async function setup (
    upstreamUrl: string,
    upstream: Record<string, unknown>,
  ): Promise<{ gw: TestGateway, agent: http.Agent }> {
    const gw = await startGateway(simpleConfig(upstreamUrl, {}, upstream))
    cleanups.push(() => gw.close())
    const agent = new http.Agent({ keepAlive: true, maxSockets: 4 })
    cleanups.push(() => agent.destroy())
    return { gw, agent }
  }

  /** A GET the upstream answers at once: gateway and upstream, without a timeout. */
  function viaUpstream (
    { gw, agent }: { gw: TestGateway, agent: http.Agent },
  ): () => Promise<number> {
    return async () => {
      const res = await timed(agent, `${gw.url}/ok`)
      assert.equal(res.status, 200)
      return res.elapsed
    }
  }

  /** A GET the gateway answers at once (400, malformed path): for cases with no upstream to ask. */
  function viaGateway (
    { gw, agent }: { gw: TestGateway, agent: http.Agent },
  ): () => Promise<number> {
    return async () => {
      const res = await timed(agent, `${gw.url}/%zz`)
      assert.equal(res.status, 400)
      return res.elapsed
    }
  }

  /** An upstream that answers only /ok; `next()` resolves when the next request arrives. */
  async function silentUpstream (): Promise<Upstream & { next: () => Promise<void> }> {
    let notify: (() => void) | null = null
    const up = await startUpstream((req, res) => {
      if (req.url === '/ok') res.end('ok')
      notify?.()
    })
    cleanups.push(() => up.close())
    return {
      ...up,
      next: () =>
        new Promise<void>((resolve) => {
          notify = resolve
        }),
    }
  }

  /**
   * One unchecked run first: the first timeout a gateway answers pays for lazy loading and JIT
   * of the error path (30-70 ms here). Then SAMPLES runs, each after a round trip, checked
   * together.
   */
  async function eachOnTime (
    t: TestContext,
    what: string,
    value: number,
    roundTrip: () => Promise<number>,
    run: () => Promise<number>,
  ): Promise<void> {
    t.diagnostic(`${what}, warm-up: ${(await run()).toFixed(1)} ms`)
    const samples: number[] = []
    const roundTrips: number[] = []
    for (let i = 0; i < SAMPLES; i++) {
      roundTrips.push(await roundTrip())
      samples.push(await run())
    }
    assertOnTime(t, what, value, samples, roundTrips)
  }

  for (const value of [60, 200]) {
    test(`first_byte ${value}ms → 504 GH_UPSTREAM_TIMEOUT after ${value} ms`, async (t) => {
      const up = await silentUpstream()
      const { gw, agent } = await setup(up.url, { timeouts: { first_byte: `${value}ms` } })
      await eachOnTime(t, `first_byte ${value}ms`, value, viaUpstream({ gw, agent }), async () => {
        const res = await timed(agent, `${gw.url}/hang`)
        assert.equal(res.status, 504)
        assert.equal(res.headers['content-type'], 'application/problem+json')
        assert.equal(problemCode(res.body), 'GH_UPSTREAM_TIMEOUT')
        return res.elapsed
      })
    })
  }

  test('idle 150ms → the response is cut 150 ms after the last body bytes', async (t) => {
    const value = 150
    let wroteAt = 0
    const up = await startUpstream((req, res) => {
      if (req.url === '/ok') return res.end('ok')
      res.writeHead(200, { 'content-length': 10 })
      // Runs once the bytes are handed to the kernel: before the gateway can have read them
      // and armed its timer.
      res.write('12345', () => {
        wroteAt = performance.now()
      })
    })
    cleanups.push(() => up.close())
    const { gw, agent } = await setup(up.url, { timeouts: { idle: `${value}ms` } })
    await eachOnTime(t, `idle ${value}ms`, value, viaUpstream({ gw, agent }), async () => {
      // A raw socket: the head and five of ten bytes arrive, then the gateway closes the
      // connection (a truncated body, never a complete-looking response).
      const socket = net.connect(gw.port, '127.0.0.1')
      await once(socket, 'connect')
      let received = ''
      socket.setEncoding('latin1')
      socket.on('data', (c: string) => {
        received += c
      })
      socket.write('GET /stall HTTP/1.1\r\nHost: a\r\n\r\n')
      await once(socket, 'close')
      const elapsed = performance.now() - wroteAt
      assert.match(received, /^HTTP\/1\.1 200 /)
      assert.ok(
        received.endsWith('\r\n\r\n12345'),
        `expected the head and 5 body bytes, got ${JSON.stringify(received.slice(-40))}`,
      )
      return elapsed
    })
    const line = await gw.logs.waitFor((l) =>
      l.msg === 'request' && l.code === 'GH_UPSTREAM_TIMEOUT'
    )
    assert.equal(line.status, 200)
  })

  test('connect 200ms → 502 GH_UPSTREAM_CONNECT_TIMEOUT after 200 ms (a listener that never accepts)', async (t) => {
    const value = 200
    const blackhole = await unacceptingListener()
    cleanups.push(blackhole.close)
    // Failures high enough that the target is never ejected: each run must connect again.
    const { gw, agent } = await setup(`http://127.0.0.1:${blackhole.port}`, {
      timeouts: { connect: `${value}ms` },
      ejection: { failures: 1000 },
    })
    await eachOnTime(t, `connect ${value}ms`, value, viaGateway({ gw, agent }), async () => {
      const res = await timed(agent, `${gw.url}/hang`)
      assert.equal(res.status, 502)
      assert.equal(problemCode(res.body), 'GH_UPSTREAM_CONNECT_TIMEOUT')
      return res.elapsed
    })
  })

  test('queue.timeout 100ms (max_in_flight 1) → 503 GH_UPSTREAM_BUSY after 100 ms', async (t) => {
    const value = 100
    const up = await silentUpstream()
    const { gw, agent } = await setup(up.url, {
      max_in_flight: 1,
      queue: { size: 10, timeout: `${value}ms` },
    })
    // One request takes the only slot and keeps it (the upstream never answers).
    const arrived = up.next()
    const holder = http.get(`${gw.url}/hold`, { agent: false })
    holder.on('error', () => {})
    cleanups.push(() => holder.destroy())
    await arrived
    await eachOnTime(t, `queue.timeout ${value}ms`, value, viaGateway({ gw, agent }), async () => {
      const res = await timed(agent, `${gw.url}/queued`)
      assert.equal(res.status, 503)
      assert.equal(res.headers['retry-after'], '1')
      assert.equal(problemCode(res.body), 'GH_UPSTREAM_BUSY')
      return res.elapsed
    })
  })

  test('keep_alive 150ms → an idle upstream connection is closed after 150 ms', async (t) => {
    const value = 150
    // Node's server advertises Keep-Alive: timeout=5; keep_alive is shorter and must win.
    let last: { finishedAt: number, closed: Promise<number> } | null = null
    const up = await startUpstream((_req, res) => {
      const closed = once(res.socket!, 'close').then(() => performance.now())
      res.on('finish', () => {
        last = { finishedAt: performance.now(), closed }
      })
      res.end('ok')
    })
    cleanups.push(() => up.close())
    const { gw, agent } = await setup(up.url, { keep_alive: `${value}ms` })
    // Each run waits for its connection to close, so the next request opens a new one.
    await eachOnTime(t, `keep_alive ${value}ms`, value, viaGateway({ gw, agent }), async () => {
      last = null
      assert.equal((await get(agent, `${gw.url}/ok`)).status, 200)
      const { finishedAt, closed } = last!
      return await closed - finishedAt
    })
  })
})

/**
 * A TCP listener whose connections never complete: a child process listens with a backlog of
 * 1 and is stopped before anyone connects, and two connections fill its accept queue. Linux
 * then drops further SYNs, so a connect hangs (retransmitting) until the caller gives up.
 * More reliable than a "non-routable" address, which fails at once (ENETUNREACH) on a host
 * without a default route and reaches a real network on others.
 */
async function unacceptingListener (): Promise<{ port: number, close: () => void }> {
  const child: ChildProcess = spawn(process.execPath, ['-e', `
    const s = require('node:net').createServer()
    s.listen({ port: 0, host: '127.0.0.1', backlog: 1 }, () => process.stdout.write(s.address().port + '\\n'))
  `], { stdio: ['ignore', 'pipe', 'inherit'] })
  const [chunk] = await once(child.stdout!, 'data') as [Buffer]
  const port = Number(chunk.toString().trim())
  // Queued before kill() returns: the child cannot run (and accept) again before it stops.
  child.kill('SIGSTOP')
  const fillers: net.Socket[] = []
  // backlog 1 holds two established connections (Linux: full when more than backlog queued).
  for (let i = 0; i < 2; i++) {
    const s = net.connect(port, '127.0.0.1')
    s.on('error', () => {})
    fillers.push(s)
    await once(s, 'connect')
  }
  return {
    port,
    close: () => {
      for (const s of fillers) s.destroy()
      child.kill('SIGKILL')
    },
  }
}
