import { test } from 'node:test'
import assert from 'node:assert/strict'
import { PassThrough } from 'node:stream'
import { setTimeout as sleep } from 'node:timers/promises'
import { errors, type Dispatcher } from 'undici'
import { PRECISE_BELOW, PreciseTimeouts, upstreamTimeouts } from '../../src/upstream/timeouts.js'

// The timing through a gateway is in test/integration/timers.test.ts; this checks which
// timeouts are left to undici's coarse clock, and the rules the precise ones follow.

test('timeouts below PRECISE_BELOW are timed by the gateway; from PRECISE_BELOW up undici times them', () => {
  assert.deepEqual(upstreamTimeouts(200, PRECISE_BELOW - 1), {
    headersTimeout: 0,
    bodyTimeout: 0,
    firstByte: 200,
    idle: PRECISE_BELOW - 1,
    deadline: 0,
    precise: true,
  })
  assert.deepEqual(upstreamTimeouts(PRECISE_BELOW, 300_000), {
    headersTimeout: PRECISE_BELOW,
    bodyTimeout: 300_000,
    firstByte: 0,
    idle: 0,
    deadline: 0,
    precise: false,
  })
  // 0 means no timeout, to undici as in the config.
  assert.equal(upstreamTimeouts(0, 0).precise, false)
  assert.equal(upstreamTimeouts(60_000, 300_000, 30_000).precise, true)
})

/** A PreciseTimeouts around a handler that records when and how the request failed. */
function timed (timeouts: ReturnType<typeof upstreamTimeouts>, body: unknown = null) {
  const t0 = performance.now()
  let failure: { err: Error, after: number } | null = null
  const inner: Dispatcher.DispatchHandler = {
    onHeaders: () => true,
    onData: () => true,
    onComplete: () => {},
    onError: (err) => {
      failure = { err, after: performance.now() - t0 }
    },
  }
  const h = new PreciseTimeouts(inner, timeouts, body)
  // The abort undici hands over: the request fails with the error given.
  h.onConnect((err) => h.onError(err!))
  return { h, failure: () => failure as { err: Error, after: number } | null }
}

test('a short first_byte fires once its delay has passed, with undici\'s error', async () => {
  const { h, failure } = timed(upstreamTimeouts(30, 0))
  h.onRequestSent()
  // The timers are unref'd (as undici's own): something else keeps the loop running meanwhile.
  const keepAlive = setInterval(() => {}, 1000)
  while (failure() === null) await sleep(5)
  clearInterval(keepAlive)
  const f = failure()!
  assert.ok(f.err instanceof errors.HeadersTimeoutError)
  assert.ok(f.after >= 29, `fired after ${f.after.toFixed(1)} ms`)
  assert.ok(
    f.after < 400,
    `fired after ${f.after.toFixed(1)} ms (undici's own clock has a ~500 ms grid)`,
  )
})

test('first_byte does not fire while the request body keeps moving, and does when undici paused it', async () => {
  const body = new PassThrough()
  const { h, failure } = timed(upstreamTimeouts(40, 0), body)
  for (let i = 0; i < 4; i++) {
    await sleep(25)
    h.onBodySent(Buffer.from('x'))
  }
  await sleep(60)
  assert.equal(failure(), null, 'a slow upload is no late answer')
  // undici pauses the body when the upstream stops reading it: the upload is stuck.
  body.pause()
  h.onBodySent(Buffer.from('x'))
  await sleep(80)
  assert.ok(failure()?.err instanceof errors.HeadersTimeoutError)
})

test('idle restarts with each chunk, waits while the response is paused, and fires after', async () => {
  const { h, failure } = timed(upstreamTimeouts(0, 200))
  h.onRequestSent()
  let resume = (): void => {}
  h.onHeaders(200, [], () => {}, 'OK')
  for (let i = 0; i < 8; i++) {
    await sleep(40)
    h.onData(Buffer.from('x'))
  }
  assert.equal(failure(), null, 'each chunk restarts idle')
  // The client reads slowly: the handler holds the upstream paused.
  const paused = new PreciseTimeouts(
    {
      onHeaders: (_s, _h, r) => {
        resume = r
        return true
      },
      onData: () => false,
      onComplete: () => {},
      onError: () => {},
    },
    upstreamTimeouts(0, 40),
    null,
  )
  let err: Error | null = null
  paused.onConnect((e) => {
    err = e!
  })
  paused.onRequestSent()
  paused.onHeaders(200, [], () => {}, 'OK')
  paused.onData(Buffer.from('x'))
  await sleep(80)
  assert.equal(err, null, 'no idle timeout while paused')
  resume()
  await sleep(80)
  assert.ok((err as Error | null) instanceof errors.BodyTimeoutError)
  h.onComplete(null)
})

test('the deadline bounds the whole attempt, also when it passes before the request went out', async () => {
  let err: Error | null = null
  const h = new PreciseTimeouts(
    { onHeaders: () => true, onData: () => true, onComplete: () => {}, onError: () => {} },
    upstreamTimeouts(0, 0, 30),
    null,
  )
  await sleep(60)
  // Connected late: the request is aborted at once.
  h.onConnect((e) => {
    err = e!
  })
  assert.ok((err as Error | null) instanceof errors.HeadersTimeoutError)
})
