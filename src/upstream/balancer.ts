import type { UpstreamConfig } from '../config/schema.js'
import type { Target } from './target.js'

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
  readonly #entries: Entry[]
  #cursor = 0

  constructor (name: string, config: UpstreamConfig, targets: Target[]) {
    this.name = name
    this.balance = config.balance
    this.firstByteTimeout = config.timeouts.first_byte
    this.idleTimeout = config.timeouts.idle
    this.ejectAfter = config.ejection.failures
    this.ejectFor = config.ejection.duration
    this.#entries = targets.map((target, i) => ({ target, weight: config.targets[i]!.weight, current: 0 }))
  }

  get targets (): Target[] {
    return this.#entries.map((e) => e.target)
  }

  /** Choose a healthy target, or null when every target is ejected. `skip` excludes a target (retry). */
  pick (now: number, skip: Target | null = null): Target | null {
    const entries = this.#entries
    if (entries.length === 1) {
      const t = entries[0]!.target
      return t !== skip && t.isHealthy(now) ? t : null
    }
    return this.balance === 'round_robin' ? this.#roundRobin(now, skip) : this.#leastRequest(now, skip)
  }

  #roundRobin (now: number, skip: Target | null): Target | null {
    let best: Entry | null = null
    let total = 0
    for (const e of this.#entries) {
      if (e.target === skip || !e.target.isHealthy(now)) continue
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
      if (e.target === skip || !e.target.isHealthy(now)) continue
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
