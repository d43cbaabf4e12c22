import { Agent } from 'undici'
import { preciseConnector } from '../upstream/timeouts.js'

/*
 * Calls to identity services (discovery, JWKS, introspection) go through their own agent,
 * never through an upstream's pool: an IdP is not a model server and must not share its limits.
 * Its connect timeout is precise, as the upstreams' are.
 */
const agent = new Agent({
  keepAliveTimeout: 10_000,
  connections: 32,
  connect: preciseConnector(5_000),
})

export interface JsonRequest {
  method?: 'GET' | 'POST'
  headers?: Record<string, string>
  body?: string
  /** Whole exchange (connect, head and body) must finish within this. */
  timeout: number
  /** Larger responses are refused: a JWKS or an introspection answer is a few KiB. */
  maxBytes?: number
}

export class IdentityHttpError extends Error {
  /** 'unreachable' | 'timeout' | 'status' | 'too_large' | 'not_json' */
  readonly kind: string
  constructor (kind: string, message: string, cause?: unknown) {
    super(message, cause === undefined ? undefined : { cause })
    this.name = 'IdentityHttpError'
    this.kind = kind
  }
}

/** GET or POST, expect 200 with a JSON body; everything else is an IdentityHttpError. */
export async function fetchJson (url: string, opts: JsonRequest): Promise<unknown> {
  const signal = AbortSignal.timeout(opts.timeout)
  const maxBytes = opts.maxBytes ?? 1024 * 1024
  const u = new URL(url)
  let res
  try {
    res = await agent.request({
      origin: u.origin,
      path: u.pathname + u.search,
      method: opts.method ?? 'GET',
      headers: { accept: 'application/json', ...opts.headers },
      body: opts.body,
      // `signal` bounds the whole exchange on a precise timer. undici's own head and body
      // timers run on a ~0.5 s grid (see upstream/timeouts.ts) and could fire before it,
      // turning a timeout into 'unreachable'.
      signal,
      headersTimeout: 0,
      bodyTimeout: 0,
    })
  } catch (err) {
    throw signal.aborted
      ? new IdentityHttpError('timeout', `no answer from ${url} within ${opts.timeout} ms`, err)
      : new IdentityHttpError(
        'unreachable',
        `${url}: ${(err as { code?: string }).code ?? (err as Error).message}`,
        err,
      )
  }
  const chunks: Buffer[] = []
  let size = 0
  try {
    for await (const chunk of res.body) {
      size += (chunk as Buffer).length
      if (size > maxBytes) {
        res.body.destroy()
        throw new IdentityHttpError('too_large', `${url} answered more than ${maxBytes} bytes`)
      }
      chunks.push(chunk as Buffer)
    }
  } catch (err) {
    if (err instanceof IdentityHttpError) throw err
    throw signal.aborted
      ? new IdentityHttpError('timeout', `no answer from ${url} within ${opts.timeout} ms`, err)
      : new IdentityHttpError(
        'unreachable',
        `${url}: reading the answer failed: ${(err as Error).message}`,
        err,
      )
  }
  if (res.statusCode !== 200) {
    throw new IdentityHttpError('status', `${url} answered ${res.statusCode}`)
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'))
  } catch {
    throw new IdentityHttpError('not_json', `${url} did not answer JSON`)
  }
}
