import { randomUUID } from 'node:crypto'
import type { RouteTable, RouteExchange } from '../compile/table.js'
import type { DeliveryService } from '../delivery/service.js'
import { gatewayError, type GatewayError } from '../errors/index.js'
import { BodyLimit } from './body.js'
import { readHead } from './headers.js'
import { internalError, refuse } from './run.js'

/** Validate the request line and head, pick the route, set up the body. */
export function prepare (ex: RouteExchange, table: RouteTable): GatewayError | null {
  const headErr = readHead(ex, table)
  if (headErr !== null) return headErr
  const req = ex.req
  const route = ex.route!

  const te = ex.transferEncoding !== null
  if (ex.contentLength !== null) {
    const declared = Number(ex.contentLength)
    if (route.maxBody > 0 && declared > route.maxBody) {
      return gatewayError(
        'GH_BODY_TOO_LARGE',
        `The request body (${declared} bytes) exceeds this route's limit of ${route.maxBody} bytes`,
      )
    }
    if (declared > 0) ex.body = req
  } else if (te) {
    ex.body = new BodyLimit(req, route.maxBody)
  }
  return null
}

/** GET <status_path>/<id>: an async request's state (the 202's Location). */
export function deliveryStatus (ex: RouteExchange, delivery: DeliveryService, id: string): void {
  ex.requestId = ex.header('x-request-id') ?? randomUUID()
  const method = ex.req.method
  if (method !== 'GET' && method !== 'HEAD') {
    return refuse(ex, gatewayError('GH_BAD_REQUEST', 'Delivery status is read with GET'))
  }
  delivery.publicStatus(id).then((view) => {
    if (ex.finished) return
    if (view === null) {
      return refuse(
        ex,
        gatewayError('GH_DELIVERY_NOT_FOUND', 'No delivery with this id (it may have expired)'),
      )
    }
    const text = JSON.stringify(view)
    ex.status = 200
    ex.res.writeHead(200, {
      'content-type': 'application/json',
      'content-length': Buffer.byteLength(text),
      'cache-control': 'no-store',
      'x-request-id': ex.requestId,
    })
    ex.res.end(method === 'HEAD' ? undefined : text)
  }).catch((err: unknown) => internalError(ex, err))
}
