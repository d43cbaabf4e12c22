import http from 'node:http'
import net, { type AddressInfo } from 'node:net'
import { once } from 'node:events'
import { GOOD_TOKEN, markerOf } from './request-grammar.js'
import { normalTarget, parseRequests, type ParsedRequest } from './strict-http.js'
import type { Signal } from './harness.js'

/*
 * The fuzz suites' upstreams: raw TCP servers that keep every byte the gateway sends them and
 * parse it with the strict parser. A request the strict parser refuses is a failure of the
 * gateway ("it forwarded something ambiguous"); the connection is then dropped.
 */

export interface UpstreamRequest {
  conn: number
  method: string
  target: string
  /** `p/c00001-0` when the target carries a fuzz marker. */
  marker: string | null
  body: Buffer
}

export interface UpstreamError {
  conn: number
  reason: string
  bytes: Buffer
}

interface Conn {
  socket: net.Socket
  pending: Buffer
  closed: boolean
  /** Busy writing an answer (the scripted upstream writes in pieces). */
  writing: boolean
}

/** What an upstream says to one parsed request. */
export type Answer = (
  req: ParsedRequest,
  marker: string | null,
  socket: net.Socket,
) => Promise<void> | void

export class RawUpstream {
  readonly requests: UpstreamRequest[] = []
  readonly errors: UpstreamError[] = []
  readonly conns = new Map<number, Conn>()
  #next = 0
  readonly #server: net.Server
  port = 0

  constructor (readonly signal: Signal, readonly answer: Answer) {
    this.#server = net.createServer((socket) => this.#accept(socket))
  }

  get url (): string {
    return `http://127.0.0.1:${this.port}`
  }

  async listen (): Promise<void> {
    this.#server.listen(0, '127.0.0.1')
    await once(this.#server, 'listening')
    this.port = (this.#server.address() as AddressInfo).port
  }

  /** Every connection is closed or between requests, with no answer being written. */
  atRest (): boolean {
    for (const c of this.conns.values()) {
      if (!c.closed && (c.pending.length > 0 || c.writing)) return false
    }
    return true
  }

  /** Connections holding part of a request, for reports. */
  busy (): string[] {
    const out: string[] = []
    for (const [id, c] of this.conns) {
      if (c.closed || (c.pending.length === 0 && !c.writing)) continue
      const text = c.pending.toString('latin1', 0, 64 * 1024)
      const line = text.slice(0, Math.max(0, text.indexOf('\r\n'))).slice(0, 120)
      const framing = [...text.matchAll(/^(transfer-encoding|content-length): .*$/gim)].map((m) =>
        m[0].trim()
      ).join(', ')
      out.push(
        `conn ${id}: ${
          c.writing ? 'writing an answer; ' : ''
        }${c.pending.length} bytes of a partial request ${JSON.stringify(line)} (${
          framing || 'no framing field yet'
        })`,
      )
    }
    return out
  }

  /** Drop the connections that hold part of a request (the gateway sees them reset). */
  dropBusy (): void {
    for (const c of this.conns.values()) if (c.pending.length > 0 || c.writing) c.socket.destroy()
  }

  async close (): Promise<void> {
    for (const c of this.conns.values()) c.socket.destroy()
    await new Promise<void>((resolve) => this.#server.close(() => resolve()))
  }

  #accept (socket: net.Socket): void {
    const id = ++this.#next
    const conn: Conn = { socket, pending: Buffer.alloc(0), closed: false, writing: false }
    this.conns.set(id, conn)
    socket.setNoDelay(true)
    socket.on('error', () => {})
    socket.on('close', () => {
      conn.closed = true
      this.conns.delete(id)
      this.signal.notify()
    })
    socket.on('data', (d: Buffer) => {
      conn.pending = conn.pending.length === 0 ? d : Buffer.concat([conn.pending, d])
      this.#drain(id, conn)
    })
  }

  #drain (id: number, conn: Conn): void {
    if (conn.writing) return
    const parsed = parseRequests(conn.pending)
    const first = parsed.requests[0]
    if (first !== undefined) {
      const marker = markerOf(normalTarget(first.target))
      this.requests.push({
        conn: id,
        method: first.method,
        target: first.target,
        marker,
        body: Buffer.from(first.body),
      })
      conn.pending = conn.pending.subarray(first.end)
      conn.writing = true
      this.signal.notify()
      Promise.resolve(this.answer(first, marker, conn.socket)).catch(() => conn.socket.destroy())
        .finally(() => {
          conn.writing = false
          if (!conn.closed && conn.pending.length > 0) this.#drain(id, conn)
          this.signal.notify()
        })
      return
    }
    if (parsed.rest.kind === 'error') {
      this.errors.push({ conn: id, reason: parsed.rest.reason, bytes: conn.pending })
      conn.pending = Buffer.alloc(0)
      conn.socket.destroy()
    } else if (parsed.rest.kind === 'none') {
      // Only empty lines so far.
      conn.pending = Buffer.alloc(0)
    }
    this.signal.notify()
  }
}

/** The request suite's answer: 200 naming the request's marker and its body length. */
export function echoAnswer (req: ParsedRequest, marker: string | null, socket: net.Socket): void {
  const id = marker ?? 'none'
  const body = `${id} ${req.body.length}`
  socket.write(
    `HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: ${body.length}\r\nx-marker: ${id}\r\n\r\n${
      req.method === 'HEAD' ? '' : body
    }`,
  )
}

/** An RFC 7662 endpoint: GOOD_TOKEN is active, everything else inactive. */
export async function startIntrospection (): Promise<{ url: string, close(): Promise<void> }> {
  const server = http.createServer((req, res) => {
    let form = ''
    req.setEncoding('utf8')
    req.on('data', (c: string) => {
      form += c
    })
    req.on('end', () => {
      const active = new URLSearchParams(form).get('token') === GOOD_TOKEN
      res.writeHead(200, { 'content-type': 'application/json' })
      res.end(
        JSON.stringify(active ? { active: true, sub: 'fuzz', scope: 'fuzz' } : { active: false }),
      )
    })
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    async close () {
      server.closeAllConnections()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    },
  }
}
