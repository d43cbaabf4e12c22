import timers, { type FastTimer } from 'undici/lib/util/timers.js'

/*
 * undici times the three upstream timeouts with its "fast timers": `timeouts.first_byte`
 * (headersTimeout) and `timeouts.idle` (bodyTimeout) in dispatcher/client-h1.js, and
 * `timeouts.connect` in core/util.js (setupConnectTimeout). It asks for a fast timer whatever
 * the delay. A fast timer is an entry in a list that one shared Node timer scans every 499 ms,
 * and the scan that first sees an entry credits it with the whole tick before. So a fast timer
 * fires on a 499 ms grid, anywhere from about 499 ms early to 499 ms late: 200 ms and 60 ms
 * both fired after ~1 s (the gateway answered 504 at 0.8-1.0 s; an upstream answering at 500 ms
 * was served although first_byte was 60 ms). That is cheap and right for the defaults (60 s,
 * 5 min: one scan instead of a Node timer per request, armed and cleared twice per request),
 * and wrong for short values.
 *
 * Delays below PRECISE_BELOW get a native (unref'd) Node timer instead, which fires on time.
 * Longer ones keep the fast timer: ±0.5 s is within 5 % from 10 s up, which leaves the other
 * half of a 10 % budget to the event loop's lag. The call sites treat the result as opaque
 * (they only refresh() it and hand it back to clearTimeout/clearFastTimeout), and both calls
 * go through the module object at call time, so replacing the two functions is enough.
 */

/** Timeouts shorter than this (ms) get a precise timer; the rest keep undici's coarse clock. */
export const PRECISE_BELOW = 10_000

let installed = false

/** Give undici's short connect, first-byte and idle timeouts a precise timer. Idempotent. */
export function usePreciseTimers (): void {
  if (installed) return
  const fastSet = timers.setFastTimeout
  const fastClear = timers.clearFastTimeout
  const kFastTimer = timers.kFastTimer
  if (typeof fastSet !== 'function' || typeof fastClear !== 'function' || typeof kFastTimer !== 'symbol') {
    // The module is internal to undici (package.json pins 7.30.x): fail at start, not by
    // silently firing short timeouts a second late again.
    throw new Error('undici/lib/util/timers.js has changed shape; src/upstream/timers.ts needs updating')
  }
  timers.setFastTimeout = function setTimeoutPrecisely (callback, delay, arg) {
    if (delay >= PRECISE_BELOW) return fastSet(callback, delay, arg)
    const t = setTimeout(callback, delay, arg)
    // As undici's own fast-timer tick: a pending upstream timeout never keeps the process up.
    t.unref()
    return t
  }
  timers.clearFastTimeout = function clearEither (timeout) {
    // client-h1 clears through timers.clearTimeout, which already tells the two kinds apart;
    // the connect timeout clears through this one, which did not have to.
    if ((timeout as FastTimer)[kFastTimer] === true) fastClear(timeout)
    else clearTimeout(timeout as NodeJS.Timeout)
  }
  installed = true
}
