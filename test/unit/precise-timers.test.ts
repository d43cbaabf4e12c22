import { test } from 'node:test'
import assert from 'node:assert/strict'
import timers, { type FastTimer } from 'undici/lib/util/timers.js'
import '../../src/upstream/target.js'
import { PRECISE_BELOW } from '../../src/upstream/timers.js'

// The timing itself is in test/integration/timers.test.ts; this checks the hook into undici's
// internal timer module, which an undici update could move (package.json pins 7.30.x).

test('undici timeouts below PRECISE_BELOW get an unref\'d Node timer; longer ones the fast timer', () => {
  const fired: number[] = []
  const short = timers.setFastTimeout(() => fired.push(1), 200)
  assert.equal((short as FastTimer)[timers.kFastTimer], undefined)
  assert.equal((short as NodeJS.Timeout).hasRef(), false)
  const edge = timers.setFastTimeout(() => fired.push(2), PRECISE_BELOW - 1)
  assert.equal((edge as FastTimer)[timers.kFastTimer], undefined)
  const long = timers.setFastTimeout(() => fired.push(3), PRECISE_BELOW)
  assert.equal((long as FastTimer)[timers.kFastTimer], true)
  for (const t of [short, edge, long]) timers.clearFastTimeout(t)
  // client-h1 clears its parser timers through clearTimeout, which handles both kinds.
  const again = timers.setFastTimeout(() => fired.push(4), 1)
  timers.clearTimeout(again)
  assert.deepEqual(fired, [])
})

test('a short undici timeout fires once its delay has passed', async () => {
  // The timer is unref'd (as undici's own): something else has to keep the loop running.
  const keepAlive = setInterval(() => {}, 1000)
  const t0 = performance.now()
  const at = await new Promise<number>((resolve) => timers.setFastTimeout(() => resolve(performance.now()), 30))
  clearInterval(keepAlive)
  assert.ok(at - t0 >= 29, `fired after ${(at - t0).toFixed(1)} ms`)
  assert.ok(at - t0 < 400, `fired after ${(at - t0).toFixed(1)} ms (the fast timer's grid is ~500 ms)`)
})
