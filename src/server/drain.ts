import type { Socket } from 'node:net'
import type { Metrics } from '../observability/metrics.js'

/**
 * The work shutdown waits for: exchanges whose response is not over, and open tunnels
 * (WebSockets), which count as work in progress too.
 */
export class Drain {
  #inFlight = 0
  readonly #tunnels = new Set<Socket>()
  #drained: (() => void) | null = null
  readonly #metrics: Metrics

  constructor (metrics: Metrics) {
    this.#metrics = metrics
  }

  get inFlight (): number {
    return this.#inFlight
  }

  get tunnels (): number {
    return this.#tunnels.size
  }

  /** An exchange began. */
  begin (): void {
    this.#inFlight++
  }

  /** An exchange's response is over. */
  end (): void {
    this.#inFlight--
    this.#check()
  }

  /** A socket became a tunnel; it counts until it closes. */
  track (socket: Socket): void {
    this.#tunnels.add(socket)
    this.#metrics.upgrades.inc()
    socket.once('close', () => {
      this.#tunnels.delete(socket)
      this.#metrics.upgrades.dec()
      this.#check()
    })
  }

  /** Resolves true once nothing is in progress, or false when `grace` (ms) runs out first. */
  async wait (grace: number): Promise<boolean> {
    if (this.#idle()) return true
    const drained = new Promise<void>((resolve) => {
      this.#drained = resolve
    })
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, grace)
    })
    await Promise.race([drained, timeout])
    clearTimeout(timer)
    return this.#idle()
  }

  /**
   * End the open tunnels: FIN both ways, so each side sees an orderly close; a tunnel whose
   * peer does not close its side within a second is cut.
   */
  endTunnels (): void {
    for (const s of this.#tunnels) {
      s.end()
      setTimeout(() => s.destroy(), 1000).unref()
    }
  }

  #idle (): boolean {
    return this.#inFlight === 0 && this.#tunnels.size === 0
  }

  #check (): void {
    if (this.#idle() && this.#drained !== null) this.#drained()
  }
}
