/**
 * The request header fields the gateway owns: it drops, sets or rewrites them itself, so a
 * client (or a plugin, a transform, a route's identity header) can never set them as they are.
 * One list for every place that asks (the header scan, plugin results, config checks).
 *
 * - hop-by-hop fields (RFC 9110 §7.6.1) and framing: the gateway frames each hop itself;
 * - `Expect`: answered by the gateway once the route is known;
 * - `Via`, `X-Request-Id`: extended or validated by the gateway;
 * - `Forwarded`, `X-Real-IP` and every `X-Forwarded-*`: who the client is and how it came in,
 *   replaced from an untrusted peer (see docs/configuration.md, trusted_proxies);
 * - `X-Gatehouse-*` (identity) and `Proxy-*`.
 *
 * Names are compared lower-case with '_' read as '-': CGI-style servers map both to the same
 * variable (X_Forwarded_For is X-Forwarded-For to them).
 */
const OWNED = new Set([
  'host',
  'content-length',
  'transfer-encoding',
  'connection',
  'keep-alive',
  'te',
  'trailer',
  'upgrade',
  'expect',
  'http2-settings',
  'via',
  'x-request-id',
  'forwarded',
  'x-real-ip',
])

export function isGatewayOwned (lowerName: string): boolean {
  const h = lowerName.indexOf('_') === -1 ? lowerName : lowerName.replaceAll('_', '-')
  return OWNED.has(h) || h.startsWith('x-forwarded-') || h.startsWith('x-gatehouse-') ||
    h.startsWith('proxy-')
}
