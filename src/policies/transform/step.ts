import { isGatewayError } from '../../errors/index.js'
import { setBody, setBodyType } from '../../pipeline/body.js'
import type { Exchange } from '../../pipeline/exchange.js'
import type { Step, Verdict } from '../../pipeline/step.js'
import type { RequestTransform } from './policy.js'

/** The request body through the route's `transform.request.body` expression (body read whole before it). */
export class RequestBodyStep implements Step {
  readonly name = 'transform'
  readonly transform: RequestTransform

  constructor (transform: RequestTransform) {
    this.transform = transform
  }

  async run (ex: Exchange): Promise<Verdict> {
    const body = ex.bodyBuffer!
    // No body at all (none sent, no Content-Length): nothing to transform.
    if (body.length === 0 && ex.contentLength === null) return null
    const r = await this.transform.transformBody(body, ex.bodyType, ex)
    if (isGatewayError(r)) return r
    setBody(ex, r.body)
    if (r.contentType !== ex.bodyType) setBodyType(ex, r.contentType)
    return null
  }
}
