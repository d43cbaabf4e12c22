import dc from 'node:diagnostics_channel'
import type { IncomingMessage, ServerResponse } from 'node:http'
import net from 'node:net'
import { once } from 'node:events'
import { Writable } from 'node:stream'
import type { Gateway } from '../../src/index.js'
import { parseResponses, type ParsedResponse, type Rest } from './strict-http.js'

/*
 * What both fuzz suites share: run settings from the environment, crash capture, a tracker of
 * the gateway's open exchanges, event-driven bounded waits, a raw client and the list of
 * known gateway failures.
 */

export interface FuzzSettings {
  seed: number
  numRuns: number
  /** fast-check's replay path, printed with a failure. */
  path: string | undefined
  /** Known failures fail the property too (to shrink and reproduce them). */
  strict: boolean
}

/**
 * GATEHOUSE_FUZZ_SEED, GATEHOUSE_FUZZ_RUNS (each suite scales its default by
 * `runs / 2000`), GATEHOUSE_FUZZ_PATH and GATEHOUSE_FUZZ_STRICT=1.
 */
export function fuzzSettings (defaultRuns: number): FuzzSettings {
  const env = process.env
  const seed = env.GATEHOUSE_FUZZ_SEED !== undefined && env.GATEHOUSE_FUZZ_SEED !== ''
    ? Number(env.GATEHOUSE_FUZZ_SEED)
    : (Date.now() ^ (Math.random() * 0x7fffffff)) | 0
  if (!Number.isInteger(seed)) {
    throw new Error(`GATEHOUSE_FUZZ_SEED must be an integer, not ${env.GATEHOUSE_FUZZ_SEED}`)
  }
  const runs = env.GATEHOUSE_FUZZ_RUNS !== undefined && env.GATEHOUSE_FUZZ_RUNS !== ''
    ? Number(env.GATEHOUSE_FUZZ_RUNS)
    : 2000
  if (!(runs > 0)) {
    throw new Error(`GATEHOUSE_FUZZ_RUNS must be a positive number, not ${env.GATEHOUSE_FUZZ_RUNS}`)
  }
  return {
    seed,
    numRuns: Math.max(1, Math.round(defaultRuns * runs / 2000)),
    path: env.GATEHOUSE_FUZZ_PATH === '' ? undefined : env.GATEHOUSE_FUZZ_PATH,
    strict: env.GATEHOUSE_FUZZ_STRICT === '1',
  }
}

// --- failures --------------------------------------------------------------------------------

export interface Failure {
  /** Short stable name of the property that broke (see docs/fuzzing.md). */
  property: string
  detail: string
}

export interface KnownFailure {
  id: string
  /** What is wrong in the gateway. */
  bug: string
  match(f: Failure): boolean
}

/** Known failures seen during a run, by id: how often and the first case's report. */
export class KnownLedger {
  readonly hits = new Map<string, { count: number, first: string }>()

  constructor (readonly known: readonly KnownFailure[]) {}

  /** The failures not explained by a known bug (all of them in strict mode). */
  triage (failures: Failure[], report: () => string, strict: boolean): Failure[] {
    if (strict) return failures
    const unknown: Failure[] = []
    for (const f of failures) {
      const k = this.known.find((kf) => kf.match(f))
      if (k === undefined) {
        unknown.push(f)
        continue
      }
      const hit = this.hits.get(k.id)
      if (hit === undefined) {
        this.hits.set(k.id, { count: 1, first: `${f.property}: ${f.detail}\n${report()}` })
      } else hit.count++
    }
    return unknown
  }
}

export function describeFailures (failures: Failure[], report: string): string {
  return `${failures.map((f) => `[${f.property}] ${f.detail}`).join('\n')}\n${report}`
}

/** Bytes for a report: latin1, JSON-escaped, cut in the middle when long. */
export function show (bytes: Buffer | string, max = 1500): string {
  const s = typeof bytes === 'string' ? bytes : bytes.toString('latin1')
  const cut = s.length > max
    ? `${s.slice(0, max / 2)}…(${s.length - max} more)…${s.slice(-max / 2)}`
    : s
  return JSON.stringify(cut)
}

// --- crashes ---------------------------------------------------------------------------------

/**
 * While installed, uncaught exceptions and unhandled rejections are recorded instead of
 * ending the process (or being pinned on a test by node:test), so that the case that caused
 * one fails as a property and fast-check can shrink it. What would have killed a real
 * gateway process is a failure of "the process never exits".
 */
export class CrashTrap {
  readonly errors: string[] = []
  #saved: Array<[string, Array<(...args: any[]) => void>]> = []
  readonly #onError = (err: unknown): void => {
    this.errors.push(err instanceof Error ? (err.stack ?? err.message) : String(err))
  }

  install (): void {
    for (const event of ['uncaughtException', 'unhandledRejection'] as const) {
      this.#saved.push([event, process.rawListeners(event) as Array<(...args: any[]) => void>])
      process.removeAllListeners(event)
      process.on(event, this.#onError)
    }
  }

  uninstall (): void {
    for (const [event, listeners] of this.#saved) {
      process.removeListener(event, this.#onError)
      for (const l of listeners) process.on(event, l)
    }
    this.#saved = []
  }

  take (): string[] {
    return this.errors.splice(0)
  }
}

// --- waiting ---------------------------------------------------------------------------------

/**
 * A wake-up for event-driven waits: whatever changes state (a socket event, an upstream
 * record, an exchange ending) calls notify(); until() re-checks its condition then.
 */
export class Signal {
  #waiters = new Set<() => void>()

  notify (): void {
    for (const w of [...this.#waiters]) w()
  }

  /** Resolves true once `cond` holds, false if it still does not after `ms`. */
  until (cond: () => boolean, ms: number): Promise<boolean> {
    if (cond()) return Promise.resolve(true)
    return new Promise((resolve) => {
      const check = (): void => {
        if (!cond()) return
        finish(true)
      }
      const finish = (v: boolean): void => {
        clearTimeout(timer)
        this.#waiters.delete(check)
        resolve(v)
      }
      const timer = setTimeout(() => finish(cond()), ms)
      this.#waiters.add(check)
    })
  }
}

// --- the gateway's exchanges -----------------------------------------------------------------

/**
 * Counts the gateway's open exchanges per client connection, from Node's
 * `http.server.request.start` diagnostics channel (the gateway's server is private): a
 * request is open from its start until its response closes.
 */
export class ExchangeWatch {
  readonly open = new Map<number, number>()
  readonly live = new Set<{ peer: number, request: IncomingMessage, response: ServerResponse }>()
  started = 0
  #port = 0
  readonly #onStart = (message: unknown): void => {
    const { request, response } = message as { request: IncomingMessage, response: ServerResponse }
    const socket = request.socket
    if (socket.localPort !== this.#port) return
    const peer = socket.remotePort ?? 0
    this.started++
    this.open.set(peer, (this.open.get(peer) ?? 0) + 1)
    const entry = { peer, request, response }
    this.live.add(entry)
    // Node emits no 'close' for a pipelined response still queued behind another when the
    // connection dies; the connection's end is the end of those exchanges too.
    const done = (): void => {
      if (!this.live.delete(entry)) return
      const n = (this.open.get(peer) ?? 1) - 1
      if (n === 0) this.open.delete(peer)
      else this.open.set(peer, n)
      this.signal.notify()
    }
    response.once('close', done)
    socket.once('close', done)
    this.signal.notify()
  }

  /** The gateway's side of each client connection (by the client's port), until it closes. */
  readonly sockets = new Map<number, net.Socket>()
  readonly #onSocket = (message: unknown): void => {
    const { socket } = message as { socket: net.Socket }
    if (socket.localPort !== this.#port) return
    const peer = socket.remotePort ?? 0
    this.sockets.set(peer, socket)
    socket.once('close', () => {
      if (this.sockets.get(peer) === socket) this.sockets.delete(peer)
      this.signal.notify()
    })
  }

  constructor (readonly signal: Signal) {
    dc.subscribe('http.server.request.start', this.#onStart)
    dc.subscribe('net.server.socket', this.#onSocket)
  }

  watch (gatewayPort: number): void {
    this.#port = gatewayPort
    this.open.clear()
    this.sockets.clear()
  }

  /** The gateway's side of a client connection, if it has not closed yet. */
  socketFor (clientPort: number): net.Socket | null {
    return this.sockets.get(clientPort) ?? null
  }

  /** The open exchanges of a connection, for reports. */
  describe (clientPort: number): string {
    const out: string[] = []
    for (const e of this.live) {
      if (e.peer !== clientPort) continue
      const { request: q, response: r } = e
      out.push(
        `${q.method} ${q.url} (request ${
          q.complete ? 'complete' : q.destroyed ? 'destroyed' : 'incomplete'
        }, response ${r.headersSent ? 'started' : 'not started'}${
          r.writableEnded ? ', ended' : ''
        }${r.socket === null ? ', no socket' : ''})`,
      )
    }
    return out.join('; ')
  }

  openFor (clientPort: number): number {
    return this.open.get(clientPort) ?? 0
  }

  get total (): number {
    let n = 0
    for (const v of this.open.values()) n += v
    return n
  }

  close (): void {
    dc.unsubscribe('http.server.request.start', this.#onStart)
    dc.unsubscribe('net.server.socket', this.#onSocket)
  }
}

// --- a raw client ----------------------------------------------------------------------------

export interface Conversation {
  socket: net.Socket
  /** Local port (the gateway sees it as the peer port). */
  port: number
  received: Buffer[]
  /** The gateway ended or reset the connection (or we destroyed it). */
  closed: boolean
  /** The gateway half-closed (FIN) its side. */
  ended: boolean
  /** How many bytes of the request stream went out before the gateway closed. */
  written: number
  error: string | null
  bytes(): Buffer
}

/** Connect and start recording what comes back; every event notifies `signal`. */
export async function connect (port: number, signal: Signal): Promise<Conversation> {
  const socket = net.connect({ port, host: '127.0.0.1', noDelay: true })
  const conv: Conversation = {
    socket,
    port: 0,
    received: [],
    closed: false,
    ended: false,
    written: 0,
    error: null,
    bytes () {
      return Buffer.concat(this.received)
    },
  }
  socket.on('data', (d: Buffer) => {
    conv.received.push(d)
    signal.notify()
  })
  socket.on('end', () => {
    conv.ended = true
    signal.notify()
  })
  socket.on('close', () => {
    conv.closed = true
    signal.notify()
  })
  socket.on('error', (err: Error & { code?: string }) => {
    conv.error = err.code ?? err.message
    signal.notify()
  })
  try {
    await once(socket, 'connect')
  } catch (err) {
    throw new Error(`cannot connect to the gateway on port ${port}: ${(err as Error).message}`)
  }
  conv.port = socket.localPort ?? 0
  return conv
}

/**
 * Write `bytes` in the pieces `cuts` makes, each flushed before the next, and stop early
 * (without an error) if the gateway closes the connection meanwhile.
 */
export async function writePieces (
  conv: Conversation,
  bytes: Buffer,
  cuts: number[],
): Promise<void> {
  const bounds = [...new Set([0, ...cuts.map((c) => c % (bytes.length + 1)), bytes.length])].sort((
    a,
    b,
  ) => a - b)
  for (let i = 0; i + 1 < bounds.length; i++) {
    if (conv.closed || conv.ended || conv.error !== null || conv.socket.destroyed) return
    const piece = bytes.subarray(bounds[i], bounds[i + 1])
    await new Promise<void>((resolve) => conv.socket.write(piece, () => resolve()))
    conv.written = bounds[i + 1]!
  }
}

/** A plain request on a new connection, read to the close; null when it fails or hangs. */
export async function plainRequest (
  port: number,
  path: string,
  signal: Signal,
  ms: number,
): Promise<{ response: ParsedResponse | null, raw: Buffer, problem: string | null }> {
  const conv = await connect(port, signal)
  conv.socket.write(`GET ${path} HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n\r\n`)
  const done = await signal.until(() => conv.closed || conv.ended, ms)
  conv.socket.destroy()
  const raw = conv.bytes()
  if (!done) return { response: null, raw, problem: `no close within ${ms} ms` }
  const parsed = parseResponses(raw, { methods: ['GET'], closed: true })
  const final = parsed.responses.find((r) => r.status >= 200) ?? null
  if (parsed.rest.kind !== 'none' || final === null) {
    return { response: final, raw, problem: `bad response: ${restText(parsed.rest)}` }
  }
  return { response: final, raw, problem: null }
}

export function restText (rest: Rest): string {
  return rest.kind === 'none' ? 'complete' : `${rest.kind} at ${rest.at}: ${rest.reason}`
}

/**
 * A gateway answer of its own: problem+json whose body names the same status and a GH_ code.
 * Returns what is wrong, or null.
 */
export function problemError (r: ParsedResponse, head: boolean): string | null {
  const type = r.fields.find((f) => f.name.toLowerCase() === 'content-type')?.value
  if (type !== 'application/problem+json') {
    return `${r.status} ${r.reason} with content-type ${
      JSON.stringify(type ?? null)
    }, not application/problem+json (fields: ${r.fields.map((f) => f.name).join(', ')})`
  }
  if (head) return null
  try {
    const p = JSON.parse(r.body.toString('utf8')) as { status?: unknown, code?: unknown }
    if (p.status !== r.status) return `problem body status ${String(p.status)} on a ${r.status}`
    if (typeof p.code !== 'string' || !p.code.startsWith('GH_')) {
      return `problem body without a GH_ code: ${show(r.body, 200)}`
    }
  } catch {
    return `problem body is not JSON: ${show(r.body, 200)}`
  }
  return null
}

/** The gateway's own count of requests in progress (gatehouse_in_flight_requests). */
export async function inFlight (gateway: Gateway): Promise<number> {
  const text = await gateway.metrics.registry.getSingleMetricAsString(
    'gatehouse_in_flight_requests',
  )
  return Number(/^gatehouse_in_flight_requests (\d+)$/m.exec(text)?.[1] ?? NaN)
}

/**
 * The in-flight count once it is back to 0, or what it still is after `ms`. The gateway ends
 * exchanges on events a client cannot observe, so this one wait polls (every 10 ms, only
 * while the count is not 0).
 */
export async function settledInFlight (gateway: Gateway, ms: number): Promise<number> {
  const end = Date.now() + ms
  for (;;) {
    const n = await inFlight(gateway)
    if (n === 0 || Date.now() > end) return n
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
}

/** Keeps the gateway's log lines at warn and above (the last 200), for failure reports. */
export class LogTail extends Writable {
  readonly lines: string[] = []

  override _write (chunk: Buffer, _enc: BufferEncoding, cb: () => void): void {
    for (const line of chunk.toString('utf8').split('\n')) {
      if (line === '') continue
      this.lines.push(line)
      if (this.lines.length > 200) this.lines.shift()
    }
    cb()
  }

  take (): string[] {
    return this.lines.splice(0)
  }
}

/** Base-36 case ids of fixed width, so that a stream's length does not depend on the id. */
export function caseId (n: number): string {
  return 'c' + n.toString(36).padStart(5, '0').slice(-5)
}
