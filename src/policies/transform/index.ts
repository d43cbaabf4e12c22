import type { RouteConfig } from '../../config/schema.js'
import { RequestTransform, ResponseTransform } from './policy.js'
import { RequestBodyStep } from './step.js'

export { RequestTransform, ResponseTransform, RequestBodyStep }
export { transformResponse } from './response.js'

/** `transform.request` → header, path and query rewrites, and the body step when it has one. */
export function requestTransform (route: RouteConfig): RequestTransform | null {
  return route.transform?.request === undefined
    ? null
    : new RequestTransform(route.transform.request)
}

/** `transform.response` → applied to the upstream's answer (headers, status, body, events). */
export function responseTransform (route: RouteConfig): ResponseTransform | null {
  return route.transform?.response === undefined
    ? null
    : new ResponseTransform(route.transform.response)
}

/** The request-body step of a request transform, when it changes the body. */
export function requestBodyStep (t: RequestTransform | null): RequestBodyStep | null {
  return t === null || !t.needsBody ? null : new RequestBodyStep(t)
}
