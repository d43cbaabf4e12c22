import type { RouteExchange } from '../compile/table.js'
import { finishRequestHeaders } from './headers.js'
import { HANDLED, type Step, type Verdict } from './step.js'

/** The terminal of an async route: persist the request in the delivery log, answer 202. */
export const accept: Step = {
  name: 'accept',
  async run (ex: RouteExchange): Promise<Verdict> {
    const err = await ex.rt.delivery.accept(ex, ex.rt.encrypted, finishRequestHeaders)
    return err ?? HANDLED
  },
}
