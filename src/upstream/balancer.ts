import type { UpstreamConfig } from '../config/schema.js'
import type { Target } from './target.js'
import { upstreamTimeouts, type UpstreamTimeouts } from './timeouts.js'

/** A request waiting for a slot (the Exchange). */
export interface SlotWaiter {
  /** A slot on `target` is this request's now (the caller dispatches to it). */
  granted(target: Target): void
  /** No slot within the queue timeout. */
  timedOut(): void
  queueTimer: NodeJS.Timeout | null
}

interface Entry {
  target: Target
  weight: number
  /** Smooth weighted round robin state (nginx's algorithm). */
  current: number
}

/**
 * An upstream as one compiled config sees it: its targets with weights, the balancing rule and
 * the per-request timeouts. Immutable apart from balancing state; rebuilt on every reload.
 */
export class Upstream {
  readonly name: string
  readonly balance: 'round_robin' | 'least_request'
  readonly firstByteTimeout: number
  readonly idleTimeout: number
  readonly ejectAfter: number
  readonly ejectFor: number
  /** Per target; 0 = unlimited. */
  readonly maxInFlight: number
  readonly queueSize: number
  readonly queueTimeout: number
  /** first_byte and idle as every request to this upstream is timed (see timeouts.ts). */
  readonly timeouts: UpstreamTimeouts
  readonly #entries: Entry[]
  #cursor = 0
  /** FIFO of requests waiting for a slot (max_in_flight). */
  readonly #queue: SlotWaiter[] = []

  constructor (name: string, config: UpstreamConfig, targets: Target[]) {
    this.name = name
    this.balance = config.balance
    this.firstByteTimeout = config.timeouts.first_byte
    this.idleTimeout = config.timeouts.idle
    this.ejectAfter = config.ejection.failures
    this.ejectFor = config.ejection.duration
    this.maxInFlight = config.max_in_flight
    this.queueSize = config.queue.size
    this.queueTimeout = config.queue.timeout
    this.timeouts = upstreamTimeouts(this.firstByteTimeout, this.idleTimeout)
    this.#entries = targets.map((target, i) => ({
      target,
      weight: config.targets[i]!.weight,
      current: 0,
    }))
  }

  get targets (): Target[] {
    return this.#entries.map((e) => e.target)
  }

  /** How many targets (without building the array `targets` returns). */
  get size (): number {
    return this.#entries.length
  }

  /**
   * Choose a healthy target with a free slot, or null when every target is ejected or full.
   * `skip` excludes a target (retry).
   */
  pick (now: number, skip: Target | null = null): Target | null {
    const entries = this.#entries
    if (entries.length === 1) {
      const t = entries[0]!.target
      return t !== skip && t.isHealthy(now) && this.#hasSlot(t) ? t : null
    }
    return this.balance === 'round_robin'
      ? this.#roundRobin(now, skip)
      : this.#leastRequest(now, skip)
  }

  #hasSlot (t: Target): boolean {
    return this.maxInFlight === 0 || t.inFlight < this.maxInFlight
  }

  /** Requests waiting for a slot now. */
  get queueLength (): number {
    return this.#queue.length
  }

  /** Whether some healthy target exists (full or not): tells "busy" from "down". */
  anyHealthy (now: number): boolean {
    for (const e of this.#entries) if (e.target.isHealthy(now)) return true
    return false
  }

  /**
   * Every healthy target is at max_in_flight: wait in the queue. Returns false when the queue
   * is full (the caller answers 503 at once).
   */
  enqueue (w: SlotWaiter): boolean {
    if (this.#queue.length >= this.queueSize) return false
    this.#queue.push(w)
    if (this.#queue.length === 1) { for (const e of this.#entries) e.target.waiting.add(this) }
    w.queueTimer = setTimeout(() => {
      w.queueTimer = null
      this.#remove(w)
      w.timedOut()
    }, this.queueTimeout)
    return true
  }

  /** The waiter left (client went away). */
  cancel (w: SlotWaiter): void {
    if (w.queueTimer !== null) {
      clearTimeout(w.queueTimer)
      w.queueTimer = null
    }
    this.#remove(w)
  }

  #remove (w: SlotWaiter): void {
    const i = this.#queue.indexOf(w)
    if (i !== -1) this.#queue.splice(i, 1)
    if (this.#queue.length === 0) { for (const e of this.#entries) e.target.waiting.delete(this) }
  }

  /** A slot was freed on `target`: hand slots to waiters, oldest first, while there are any. */
  release (_target: Target): void {
    const now = Date.now()
    while (this.#queue.length > 0) {
      const t = this.pick(now)
      if (t === null) return
      const w = this.#queue.shift()!
      if (this.#queue.length === 0) { for (const e of this.#entries) e.target.waiting.delete(this) }
      clearTimeout(w.queueTimer!)
      w.queueTimer = null
      w.granted(t)
    }
  }

  #roundRobin (now: number, skip: Target | null): Target | null {
    let best: Entry | null = null
    let total = 0
    for (const e of this.#entries) {
      if (e.target === skip || !e.target.isHealthy(now) || !this.#hasSlot(e.target)) continue
      e.current += e.weight
      total += e.weight
      if (best === null || e.current > best.current) best = e
    }
    if (best === null) return null
    best.current -= total
    return best.target
  }

  #leastRequest (now: number, skip: Target | null): Target | null {
    // Scan from a rotating start so ties spread across targets instead of piling on the first.
    const entries = this.#entries
    const n = entries.length
    const start = this.#cursor++ % n
    let best: Entry | null = null
    let bestLoad = Infinity
    for (let i = 0; i < n; i++) {
      const e = entries[(start + i) % n]!
      if (e.target === skip || !e.target.isHealthy(now) || !this.#hasSlot(e.target)) continue
      const load = (e.target.inFlight + 1) / e.weight
      if (load < bestLoad) {
        best = e
        bestLoad = load
      }
    }
    return best === null ? null : best.target
  }

  /** Passive health: count a failed connect; eject after `ejectAfter` in a row. */
  recordConnectFailure (target: Target, now: number): void {
    if (++target.consecutiveFailures >= this.ejectAfter) {
      target.ejectedUntil = now + this.ejectFor
      // Back from ejection, a target gets the full `failures` allowance again.
      target.consecutiveFailures = 0
    }
  }

  recordSuccess (target: Target): void {
    target.consecutiveFailures = 0
  }
}
