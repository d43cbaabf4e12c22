import type { Exchange } from '../../pipeline/exchange.js'
import { addFields } from '../../net/fields.js'
import { readWhole } from '../../pipeline/body.js'
import { HANDLED, type Step, type Verdict } from '../../pipeline/step.js'
import { CacheCapture, parseCacheControl, type CacheEntry, type CachePolicy } from './policy.js'

/**
 * The cache as a step, just before the terminal: look the request up; serve a hit, wait for a
 * concurrent miss of the same key, or go on upstream as the leader of a miss (its response is
 * captured while it streams, see CacheCapture). Requests the cache cannot key (a method not
 * listed, Cache-Control: no-store, a body over key.body.max_size or sent chunked) go on with
 * X-Cache: BYPASS.
 */
export class CacheStep implements Step {
  readonly name = 'cache'
  readonly policy: CachePolicy

  constructor (policy: CachePolicy) {
    this.policy = policy
  }

  async run (ex: Exchange): Promise<Verdict> {
    const cache = this.policy
    const req = ex.req
    const method = req.method!
    const route = ex.route!
    const rm = ex.rt.metrics.forRoute(route, route.name, route.upstream.name)
    const cc = ex.header('cache-control')
    const directives = cc === null ? null : parseCacheControl(cc)
    let bypass = !cache.methods.has(method) || directives?.has('no-store') === true
    // An intercepted route has read (and maybe transformed) the body already.
    let body: Buffer | null = ex.bodyBuffer
    if (!bypass && ex.body !== null) {
      const declared = ex.contentLength === null ? NaN : Number(ex.contentLength)
      if (!(declared <= cache.bodyMax)) {
        bypass = true
      } else {
        const whole = await readWhole(ex, cache.bodyMax)
        if (!Buffer.isBuffer(whole)) return whole
        ex.bodyBuffer = body = whole
      }
    }
    if (bypass) {
      rm.countCache('bypass')
      ex.cacheStatus = 'BYPASS'
      return null
    }
    const key = cache.key(ex, body)
    // Cache-Control: no-cache from the client: skip the lookup, but the fresh answer may be stored.
    if (directives?.has('no-cache') !== true) {
      let hit: CacheEntry | null = null
      try {
        // A memory store answers at once: no await, no turn of the event loop.
        const r = cache.lookup(key)
        hit = r instanceof Promise ? await r : r
      } catch (err) {
        ex.rt.metrics.limitStoreErrors.labels(cache.storeName, 'cache').inc()
        ex.rt.logger.debug({
          msg: 'cache lookup failed',
          id: ex.requestId,
          err: (err as Error).message,
        })
      }
      if (ex.finished) return HANDLED
      if (hit !== null) {
        rm.countCache('hit')
        serveCached(ex, hit, 'HIT')
        return HANDLED
      }
      const leader = cache.follower(key)
      if (leader !== null) {
        // null: the leader's answer is not stored, failed, or took longer than coalesce_timeout.
        const entry = await leader
        if (ex.finished) return HANDLED
        if (entry !== null) {
          rm.countCache('coalesced')
          serveCached(ex, entry, 'HIT')
          return HANDLED
        }
      }
    }
    rm.countCache('miss')
    ex.cacheStatus = 'MISS'
    // HEAD answers have no body: they may be served from a GET entry but never make one.
    if (method !== 'HEAD') {
      const done = cache.lead(key)
      if (done !== null) ex.cacheCapture = new CacheCapture(cache, key, done, cache.shared(ex))
    }
    return null
  }
}

function serveCached (ex: Exchange, entry: CacheEntry, status: string): void {
  const res = ex.res
  const headers = [...entry.headers, 'age',
    String(Math.max(0, Math.floor((Date.now() - entry.storedAt) / 1000))), 'x-cache', status,
    'x-request-id', ex.requestId]
  ex.pushRateLimitFields(headers)
  if (ex.responseFields !== null) addFields(headers, ex.responseFields)
  if (ex.rt.closing) res.shouldKeepAlive = false
  ex.status = entry.status
  const head = ex.req.method === 'HEAD'
  ex.bytesOut = head ? 0 : entry.body.length
  res.writeHead(entry.status, headers as unknown as string[])
  res.end(head ? undefined : entry.body)
}
