import { gatewayError, isGatewayError, type GatewayError } from '../errors/index.js'
import type { Upstream } from './balancer.js'

/*
 * The one place where upstream failures become HTTP statuses (Traefik's ComputeStatusCode,
 * reply-from's error map). Everything else asks this module.
 */

const CONNECT_FAILURES = new Set(['ECONNREFUSED', 'UND_ERR_CONNECT_TIMEOUT', 'EHOSTUNREACH',
  'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN', 'EADDRNOTAVAIL'])

/** The request never reached the upstream: safe to retry elsewhere, and a sign the target is down. */
export function isConnectFailure (err: unknown): boolean {
  const code = (err as { code?: string } | null)?.code
  return code !== undefined && CONNECT_FAILURES.has(code)
}

/** Map an error raised while talking to the upstream (before response headers) to an answer. */
export function upstreamError (err: unknown, upstream: string): GatewayError {
  if (isGatewayError(err)) return err
  const e = err as { code?: string, message?: string } | null
  const code = e?.code ?? ''
  const reason = `${upstream}: ${code !== '' ? code + ' ' : ''}${e?.message ?? String(err)}`
  switch (code) {
    case 'UND_ERR_CONNECT_TIMEOUT':
      return gatewayError(
        'GH_UPSTREAM_CONNECT_TIMEOUT',
        'The upstream did not accept a connection in time',
        { reason },
      )
    case 'UND_ERR_HEADERS_TIMEOUT':
    case 'UND_ERR_BODY_TIMEOUT':
      return gatewayError('GH_UPSTREAM_TIMEOUT', 'The upstream did not answer in time', { reason })
    case 'UND_ERR_SOCKET':
    case 'ECONNRESET':
    case 'EPIPE':
      return gatewayError(
        'GH_UPSTREAM_RESET',
        'The upstream closed the connection before answering',
        { reason },
      )
    case 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH':
    case 'UND_ERR_RESPONSE_EXCEEDED_MAX_SIZE':
    case 'UND_ERR_INFO':
      return gatewayError('GH_UPSTREAM_BAD_RESPONSE', 'The upstream sent an invalid response', {
        reason,
      })
  }
  if (isConnectFailure(err)) {
    return gatewayError('GH_UPSTREAM_UNREACHABLE', 'The upstream could not be reached', { reason })
  }
  if (code.startsWith('HPE_')) {
    return gatewayError('GH_UPSTREAM_BAD_RESPONSE', 'The upstream sent an invalid response', {
      reason,
    })
  }
  return gatewayError('GH_UPSTREAM_BAD_RESPONSE', 'The upstream request failed', { reason })
}

/**
 * Whether a mapped failure left the upstream untouched (no connection, so nothing was sent):
 * async delivery's `connect_error`, as opposed to a `timeout` after which the upstream may
 * have acted.
 */
export function neverSent (err: GatewayError): boolean {
  return err.code === 'GH_UPSTREAM_UNREACHABLE' || err.code === 'GH_UPSTREAM_CONNECT_TIMEOUT'
}

/** Every target is at max_in_flight and no slot came (queue full, or the wait timed out). */
export function upstreamBusy (upstream: string, reason: string): GatewayError {
  return gatewayError(
    'GH_UPSTREAM_BUSY',
    `Upstream "${upstream}" is at capacity; try again shortly`,
    { reason, headers: { 'retry-after': '1' } },
  )
}

/** Every target is ejected: come back when the first ejection may have ended. */
export function noHealthyTarget (upstream: Upstream): GatewayError {
  return gatewayError(
    'GH_NO_HEALTHY_UPSTREAM',
    `Every target of upstream "${upstream.name}" is failing; try again shortly`,
    { headers: { 'retry-after': String(Math.ceil(upstream.ejectFor / 1000)) } },
  )
}
