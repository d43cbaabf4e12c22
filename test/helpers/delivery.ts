import { createHash, randomBytes, randomUUID } from 'node:crypto'
import type { NewDelivery } from '../../src/delivery/store.js'

let seq = 0
/** A new request; the fingerprint follows method, target and body as the gateway computes it. */
export function message (route: string, extra: Partial<NewDelivery> = {}): NewDelivery {
  const n = ++seq
  const method = extra.method ?? 'POST'
  const target = extra.target ?? `/hook?n=${n}`
  const body = extra.body ?? randomBytes(64)
  const fingerprint = createHash('sha256').update(`${method} ${target}\n`).update(body).digest(
    'base64',
  )
  return {
    id: randomUUID(),
    route,
    method,
    target,
    headers: ['content-type', 'application/octet-stream', 'x-seq', String(n)],
    body,
    idempotencyKey: null,
    caller: 'caller-a',
    fingerprint,
    createdAt: Date.now(),
    ...extra,
  }
}
