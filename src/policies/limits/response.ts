import {
  isEventStream,
  type Exchange,
  type ResponseHandler,
  type ResponseWrapper,
} from '../../pipeline/exchange.js'
import { PassThrough } from '../../pipeline/response.js'
import { CostTap, type RateLimitPolicy } from './policy.js'

/**
 * The cost-tap wrapper, on routes with a quota charged by what the response says it cost
 * (`cost: response.usage.total_tokens`): it keeps just enough of the body, as it streams by,
 * to read that number once the response is over (Exchange.complete charges it). A request
 * with no such quota to charge goes past it.
 */
export function costTap (policy: RateLimitPolicy | null): ResponseWrapper | null {
  if (policy === null || !policy.limits.some((l) => typeof l.cost !== 'number')) return null
  return (ex, next) => ex.charges === null ? next : new CostTapHandler(ex, next)
}

class CostTapHandler extends PassThrough {
  readonly #ex: Exchange
  #tap: CostTap | null = null

  constructor (ex: Exchange, next: ResponseHandler) {
    super(next)
    this.#ex = ex
  }

  override onHead (status: number, headers: string[], bodiless: boolean): void {
    // An answer without a body has no cost in it: each quota is charged its default of 1.
    if (!bodiless) this.#ex.costTap = this.#tap = new CostTap(isEventStream(headers))
    this.next.onHead(status, headers, bodiless)
  }

  override onBody (chunk: Buffer): boolean {
    this.#tap?.push(chunk)
    return this.next.onBody(chunk)
  }
}
