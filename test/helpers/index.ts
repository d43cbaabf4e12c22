import http from 'node:http'
import net, { type AddressInfo } from 'node:net'
import { once } from 'node:events'
import { Writable } from 'node:stream'
import { createGateway, type Gateway } from '../../src/index.js'
import type { ConfigInput } from '../../src/config/schema.js'

/** A real upstream HTTP server on port 0. */
export interface Upstream {
  server: http.Server
  port: number
  url: string
  close(): Promise<void>
}

export async function startUpstream (
  handler: http.RequestListener,
  options: http.ServerOptions = {},
): Promise<Upstream> {
  const server = http.createServer(options, handler)
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const port = (server.address() as AddressInfo).port
  return {
    server,
    port,
    url: `http://127.0.0.1:${port}`,
    async close () {
      server.closeAllConnections()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    },
  }
}

/** Collects the gateway's JSON log lines in memory. */
export class LogCapture extends Writable {
  readonly lines: Array<Record<string, any>> = []
  #waiters: Array<
    { pred: (l: Record<string, any>) => boolean, resolve: (l: Record<string, any>) => void }
  > = []

  override _write (chunk: Buffer, _enc: BufferEncoding, cb: () => void): void {
    for (const text of chunk.toString('utf8').split('\n')) {
      if (text === '') continue
      const line = JSON.parse(text)
      this.lines.push(line)
      this.#waiters = this.#waiters.filter((w) => {
        if (!w.pred(line)) return true
        w.resolve(line)
        return false
      })
    }
    cb()
  }

  /** Resolves with the first line (already logged or to come) that matches. */
  waitFor (pred: (l: Record<string, any>) => boolean): Promise<Record<string, any>> {
    const found = this.lines.find(pred)
    if (found !== undefined) return Promise.resolve(found)
    return new Promise((resolve) => this.#waiters.push({ pred, resolve }))
  }

  requests (): Array<Record<string, any>> {
    return this.lines.filter((l) => l.msg === 'request')
  }
}

export interface TestGateway {
  gateway: Gateway
  port: number
  adminPort: number | null
  url: string
  logs: LogCapture
  close(): Promise<void>
}

/** Start a gateway on port 0 (admin too) with logs captured. `config` is the YAML shape. */
export async function startGateway (config: ConfigInput): Promise<TestGateway> {
  const logs = new LogCapture()
  const full: ConfigInput = {
    ...config,
    listen: { host: '127.0.0.1', port: 0, ...(config.listen ?? {}) },
    admin: { host: '127.0.0.1', port: 0, ...(config.admin ?? {}) },
    log: { level: 'debug', ...(config.log ?? {}) },
  }
  const gateway = createGateway(full, { logDestination: logs, processMetrics: false })
  const info = await gateway.listen()
  return {
    gateway,
    port: info.port,
    adminPort: info.adminPort,
    url: `http://127.0.0.1:${info.port}`,
    logs,
    close: () => gateway.close(),
  }
}

/** A one-route, one-upstream config: the common case in tests. */
export function simpleConfig (
  upstreamUrl: string | string[],
  route: Record<string, unknown> = {},
  upstream: Record<string, unknown> = {},
): ConfigInput {
  const urls = Array.isArray(upstreamUrl) ? upstreamUrl : [upstreamUrl]
  return {
    upstreams: { up: { targets: urls.map((url) => ({ url })), ...upstream } },
    routes: [{ name: 'all', match: {}, upstream: 'up', ...route }],
  } as ConfigInput
}

export interface RawResponse {
  raw: string
  status: number
  headers: Record<string, string>
  body: string
}

/**
 * Send bytes exactly as given (for malformed requests that no HTTP client would produce) and
 * read until the server closes the connection or `idleMs` passes without data once data came
 * (the first byte may take up to 5 s: a loaded test machine is not a silent server).
 */
export async function rawRequest (
  port: number,
  data: string | Buffer,
  idleMs = 1000,
): Promise<RawResponse> {
  const socket = net.connect(port, '127.0.0.1')
  await once(socket, 'connect')
  socket.write(data)
  const chunks: Buffer[] = []
  await new Promise<void>((resolve) => {
    let timer = setTimeout(done, Math.max(idleMs, 5000))
    function done (): void {
      clearTimeout(timer)
      socket.destroy()
      resolve()
    }
    socket.on('data', (c: Buffer) => {
      chunks.push(c)
      clearTimeout(timer)
      timer = setTimeout(done, idleMs)
    })
    socket.on('close', done)
    socket.on('error', done)
  })
  return parseRaw(Buffer.concat(chunks).toString('latin1'))
}

export function parseRaw (raw: string): RawResponse {
  const end = raw.indexOf('\r\n\r\n')
  const head = end === -1 ? raw : raw.slice(0, end)
  const [statusLine, ...lines] = head.split('\r\n')
  const headers: Record<string, string> = {}
  for (const l of lines) {
    const i = l.indexOf(':')
    if (i > 0) headers[l.slice(0, i).toLowerCase()] = l.slice(i + 1).trim()
  }
  return {
    raw,
    status: Number(statusLine?.split(' ')[1] ?? 0),
    headers,
    body: end === -1 ? '' : raw.slice(end + 4),
  }
}

/** Read an HTTP response body fully as text. */
export async function text (res: http.IncomingMessage): Promise<string> {
  const chunks: Buffer[] = []
  for await (const c of res) chunks.push(c as Buffer)
  return Buffer.concat(chunks).toString('utf8')
}

/** A plain node:http request through an agent-less socket (no keep-alive surprises). */
export function request (
  url: string,
  options: http.RequestOptions & { body?: string | Buffer } = {},
): Promise<
  { status: number, headers: http.IncomingHttpHeaders, body: string, trailers: NodeJS.Dict<string> }
> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { agent: false, ...options }, (res) => {
      text(res).then(
        (body) =>
          resolve({ status: res.statusCode!, headers: res.headers, body, trailers: res.trailers }),
        reject,
      )
    })
    req.on('error', reject)
    req.end(options.body)
  })
}

export async function metricsText (adminPort: number): Promise<string> {
  const res = await request(`http://127.0.0.1:${adminPort}/metrics`)
  return res.body
}

/** Poll `cond` until it holds; fails the test after `deadlineMs` rather than hanging. */
export async function waitUntil (cond: () => boolean, deadlineMs = 5000): Promise<void> {
  const end = Date.now() + deadlineMs
  while (!cond()) {
    if (Date.now() > end) throw new Error(`condition not met within ${deadlineMs} ms`)
    await new Promise((resolve) => setTimeout(resolve, 5))
  }
}

/** Like waitUntil, for conditions that need I/O to check (a request, a metric scrape). */
export async function waitUntilAsync (
  cond: () => Promise<boolean>,
  deadlineMs = 5000,
): Promise<void> {
  const end = Date.now() + deadlineMs
  while (!await cond()) {
    if (Date.now() > end) throw new Error(`condition not met within ${deadlineMs} ms`)
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
}

/** An upstream that answers 200 with the request's headers as JSON, and counts its calls. */
export async function startEchoUpstream (): Promise<
  Upstream & { calls: number, last: http.IncomingHttpHeaders | null }
> {
  const state = { calls: 0, last: null as http.IncomingHttpHeaders | null }
  const up = await startUpstream((req, res) => {
    state.calls++
    state.last = req.headers
    req.resume()
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'application/json' })
      res.end(JSON.stringify({ path: req.url, headers: req.headers }))
    })
  })
  return {
    ...up,
    get calls () {
      return state.calls
    },
    get last () {
      return state.last
    },
  }
}

/**
 * Whether a service answers on 127.0.0.1:port. Tests that need it skip (with the reason shown)
 * when it does not, unless GATEHOUSE_REQUIRE_SERVICES=1 (CI), where its absence fails them.
 */
export async function serviceAvailable (port: number): Promise<boolean> {
  const ok = await new Promise<boolean>((resolve) => {
    const s = net.connect(port, '127.0.0.1')
    s.once('connect', () => {
      s.destroy()
      resolve(true)
    })
    s.once('error', () => resolve(false))
    s.setTimeout(1000, () => {
      s.destroy()
      resolve(false)
    })
  })
  if (!ok && process.env.GATEHOUSE_REQUIRE_SERVICES === '1') {
    throw new Error(
      `a service this test needs is not answering on 127.0.0.1:${port} (GATEHOUSE_REQUIRE_SERVICES=1)`,
    )
  }
  return ok
}

/** GET through a gateway (or any base URL); `problem` is the parsed problem+json body, if any. */
export async function call (
  gw: TestGateway | string,
  path: string,
  headers: Record<string, string | string[]> = {},
) {
  const res = await request(`${typeof gw === 'string' ? gw : gw.url}${path}`, { headers })
  const problem = res.headers['content-type'] === 'application/problem+json'
    ? JSON.parse(res.body)
    : null
  return { ...res, problem }
}

/** Delete JetStream streams a test made (the delivery store makes NAME, NAME_DEAD and NAME_STATE). */
export async function deleteNatsStreams (names: string[]): Promise<void> {
  if (names.length === 0) return
  const { connect } = await import('@nats-io/transport-node')
  const { jetstreamManager } = await import('@nats-io/jetstream')
  const nc = await connect({ servers: '127.0.0.1:4222' })
  try {
    const jsm = await jetstreamManager(nc)
    for (const s of names) {
      for (const name of [s, `${s}_DEAD`, `${s}_STATE`]) {
        await jsm.streams.delete(name).catch(() => {})
      }
    }
  } finally {
    await nc.close()
  }
}
