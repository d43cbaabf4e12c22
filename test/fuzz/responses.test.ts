import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import type net from 'node:net'
import fc from 'fast-check'
import { createGateway, type Gateway } from '../../src/index.js'
import type { ConfigInput } from '../../src/config/schema.js'
import { renderResponse, responseCase, type ResponseCase } from './response-grammar.js'
import {
  fieldValue,
  parseResponses,
  type ParsedRequest,
  type ParsedResponse,
} from './strict-http.js'
import {
  caseId,
  connect,
  CrashTrap,
  describeFailures,
  ExchangeWatch,
  fuzzSettings,
  inFlight,
  KnownLedger,
  LogTail,
  plainRequest,
  problemError,
  restText,
  settledInFlight,
  show,
  Signal,
  type Failure,
} from './harness.js'
import { RawUpstream } from './upstreams.js'
import { KNOWN_RESPONSE_FAILURES } from './known.js'

/*
 * Response-side fuzzing: the upstream ignores what it is asked and answers each request with
 * a generated response (see response-grammar.ts), often malformed. For every case:
 *
 *   no-crash        nothing escapes as an uncaught exception or unhandled rejection
 *   relayed         a response the strict parser accepts reaches the client with its status
 *                   and body (no body for HEAD, 204, 304)
 *   clean-failure   for one it refuses or that is cut short, the client gets a problem+json
 *                   502/504, a reading RFC 9112 allows (chunked over Content-Length, equal
 *                   Content-Lengths), or an aborted connection: never a complete-looking
 *                   response with another body, never another case's response
 *   well-formed     whatever the client receives parses as HTTP/1.1 responses
 *   no-hang         answers, or a close, within HANG_MS
 *   settles         the case's exchanges end and the gateway's side of the connection closes
 *   still-serving   a plain request on a new connection afterwards gets its own 200
 */

const DEFAULT_RUNS = 600
const HANG_MS = 2500
const SETTLE_MS = 500
const RESTART_MS = 1000
/** Response heads up to this size must be relayed (undici's default maxHeaderSize is 16 KiB). */
const MAX_UPSTREAM_HEAD = 16 * 1024 - 512
const VERBOSE = process.env.GATEHOUSE_FUZZ_VERBOSE === '1'
const settings = fuzzSettings(DEFAULT_RUNS)

interface Script {
  bytes: Buffer
  pieces: number[]
  after: 'keep' | 'end' | 'destroy'
}

/** What the client may receive for one request, from the strict reading of the upstream's bytes. */
interface Expectation {
  /** The upstream's response is valid: the client must get exactly this. */
  valid: ParsedResponse | null
  /** Readings RFC 9112 allows of an invalid response, each acceptable when relayed. */
  lenient: ParsedResponse[]
  why: string
}

class ResponseFuzz {
  readonly signal = new Signal()
  readonly watch = new ExchangeWatch(this.signal)
  readonly trap = new CrashTrap()
  readonly ledger = new KnownLedger(KNOWN_RESPONSE_FAILURES)
  readonly logs = new LogTail()
  readonly scripts = new Map<string, Script>()
  upstream!: RawUpstream
  gateway!: Gateway
  port = 0
  cases = 0
  lives = 0
  restarts = 0
  abandoned = 0
  firstFailure: string | undefined
  readonly outcomes = new Map<string, number>()

  async start (): Promise<void> {
    this.upstream = new RawUpstream(
      this.signal,
      (req, marker, socket) => this.answer(req, marker, socket),
    )
    await this.upstream.listen()
    await this.startGateway()
  }

  async startGateway (): Promise<void> {
    const config: ConfigInput = {
      listen: {
        host: '127.0.0.1',
        port: 0,
        timeouts: { headers: '1s', keep_alive: '2s', linger: '200ms' },
      },
      admin: { enabled: false },
      log: { level: 'warn', access: false },
      upstreams: {
        up: {
          targets: [{ url: this.upstream.url }],
          timeouts: { connect: '1s', first_byte: '1s', idle: '1s' },
        },
      },
      routes: [{ name: 'scripted', match: { path_prefix: '/r/' }, upstream: 'up' }],
    } as ConfigInput
    this.gateway = createGateway(config, { logDestination: this.logs, processMetrics: false })
    this.port = (await this.gateway.listen()).port
    this.watch.watch(this.port)
  }

  async restart (): Promise<void> {
    this.restarts++
    let timer: NodeJS.Timeout | undefined
    const closed = await Promise.race([
      this.gateway.close().then(() => true, () => true),
      new Promise<boolean>((resolve) => {
        timer = setTimeout(resolve, RESTART_MS, false)
      }),
    ])
    clearTimeout(timer)
    if (!closed) this.abandoned++
    for (const c of this.upstream.conns.values()) c.socket.destroy()
    await this.startGateway()
  }

  async stop (): Promise<void> {
    // A gateway left with a connection it never closes never finishes close().
    await Promise.race([this.gateway.close(),
      new Promise((resolve) => setTimeout(resolve, RESTART_MS).unref())])
    await this.upstream.close()
    this.watch.close()
  }

  count (outcome: string): void {
    this.outcomes.set(outcome, (this.outcomes.get(outcome) ?? 0) + 1)
  }

  /** The upstream's side: the script this request names, or a plain 200 for a liveness check. */
  async answer (req: ParsedRequest, marker: string | null, socket: net.Socket): Promise<void> {
    const script = marker === null ? undefined : this.scripts.get(marker)
    if (script === undefined) {
      const body = marker ?? 'unknown'
      socket.write(
        `HTTP/1.1 200 OK\r\nx-fuzz-case: ${body}\r\ncontent-length: ${body.length}\r\n\r\n${
          req.method === 'HEAD' ? '' : body
        }`,
      )
      return
    }
    const bounds = [
      ...new Set([0, ...script.pieces.map((p) => p % (script.bytes.length + 1)),
        script.bytes.length]),
    ].sort((a, b) => a - b)
    for (let i = 0; i + 1 < bounds.length; i++) {
      if (socket.destroyed) return
      await new Promise<void>((resolve) =>
        socket.write(script.bytes.subarray(bounds[i], bounds[i + 1]), () => resolve())
      )
    }
    if (script.after === 'end') socket.end()
    else if (script.after === 'destroy') socket.destroy()
  }

  async run (spec: ResponseCase): Promise<void> {
    try {
      await this.#run(spec)
    } catch (err) {
      this.firstFailure ??= `${
        (err as Error).stack ?? String(err)
      }\n(gateway port ${this.port}, ${this.restarts} restart(s), ${this.abandoned} abandoned)`
      throw err
    }
  }

  async #run (spec: ResponseCase): Promise<void> {
    const id = caseId(++this.cases)
    const failures: Failure[] = []
    this.logs.take()
    this.scripts.clear()
    const expected: Expectation[] = []
    const sentUp: Buffer[] = []
    spec.requests.forEach((q, n) => {
      const marker = `r/${id}-${n}`
      const full = renderResponse(q.response, q.method, marker)
      const cut = q.response.cut === null ? null : q.response.cut % (full.length + 1)
      const bytes = cut === null ? full : full.subarray(0, cut)
      let afterWrite = q.response.after
      // A connection kept open after an incomplete response would only wait for a timeout.
      if (
        afterWrite === 'keep' &&
        (cut !== null ||
          parseResponses(bytes, { methods: [q.method], closed: false }).responses.every((r) =>
            r.status < 200
          ))
      ) afterWrite = 'end'
      this.scripts.set(marker, { bytes, pieces: q.response.pieces, after: afterWrite })
      sentUp.push(bytes)
      expected.push(expectation(bytes, q.method, afterWrite !== 'keep'))
    })

    const conv = await connect(this.port, this.signal)
    const methods = spec.requests.map((q) => q.method)
    conv.socket.write(
      spec.requests.map((q, n) =>
        `${q.method} /r/${id}-${n} HTTP/1.1\r\nHost: fuzz\r\n${
          q.close ? 'Connection: close\r\n' : ''
        }\r\n`
      ).join(''),
    )
    const due = Math.min(
      spec.requests.length,
      spec.requests.findIndex((q) => q.close) + 1 || spec.requests.length,
    )
    const finals = (): number => {
      const p = parseResponses(conv.bytes(), { methods, closed: false })
      // Garbage ends the wait: nothing after it can be read anyway ("well-formed" reports it).
      return p.rest.kind === 'error' ? Infinity : p.responses.filter((r) => r.status >= 200).length
    }
    const done = await this.signal.until(
      () => conv.closed || conv.ended || finals() >= due,
      HANG_MS,
    )
    const byGateway = conv.closed || conv.ended
    if (!done) {
      failures.push({
        property: 'no-hang',
        detail: `${finals()} of ${due} answers and no close within ${HANG_MS} ms`,
      })
    }
    conv.socket.destroy()
    if (VERBOSE) {
      console.error(
        `${id} ${sentUp.map((b) => show(b, 200)).join(' | ')} -> ${show(conv.bytes(), 200)}`,
      )
    }

    const raw = conv.bytes()
    const parsed = parseResponses(raw, { methods, closed: byGateway })
    if (parsed.rest.kind === 'error') {
      failures.push({
        property: 'well-formed',
        detail: `the gateway sent bytes that are no HTTP/1.1 response: ${restText(parsed.rest)}`,
      })
    }
    const got = parsed.responses.filter((r) => r.status >= 200)
    for (let k = 0; k < spec.requests.length; k++) {
      const e = expected[k]!
      const r = got[k]
      const q = spec.requests[k]!
      const marker = `r/${id}-${k}`
      if (r === undefined) {
        // Not answered: acceptable only once the connection is gone for a reason.
        if (k > 0 && got.length < k) break
        if (k >= due) break
        if (e.valid !== null && done) {
          failures.push({
            property: 'relayed',
            detail:
              `request ${k} (${q.method}): the upstream's response is ${e.why}; the client got ${
                parsed.rest.kind === 'incomplete' ? 'a response cut short' : 'nothing'
              } before the connection closed; the upstream's framing fields: ${
                framingFields(sentUp[k]!)
              }`,
          })
        }
        this.count(
          e.valid === null
            ? 'aborted (invalid upstream answer)'
            : 'aborted (valid upstream answer)',
        )
        break
      }
      const problem = fieldValue(r.fields, 'content-type') === 'application/problem+json'
      if (problem) {
        const bad = problemError(r, q.method === 'HEAD')
        if (bad !== null) {
          failures.push({ property: 'well-formed', detail: `response ${k}: ${bad}` })
        }
        const code = /"code":"(GH_[A-Z_]+)"/.exec(r.body.toString('latin1'))?.[1] ?? '(HEAD)'
        if (e.valid !== null) {
          failures.push({
            property: 'relayed',
            detail:
              `request ${k} (${q.method}): the upstream's response is ${e.why}; the client got ${r.status} ${code}`,
          })
        } else if (r.status !== 502 && r.status !== 504) {
          failures.push({
            property: 'clean-failure',
            detail:
              `request ${k}: ${r.status} ${code} for an upstream response that is ${e.why}; expected 502 or 504`,
          })
        }
        this.count(`gateway ${r.status}`)
        continue
      }
      const caseOf = fieldValue(r.fields, 'x-fuzz-case')
      if (caseOf !== null && caseOf !== marker) {
        failures.push({
          property: 'clean-failure',
          detail: `request ${k} got the response to ${caseOf} (response desync)`,
        })
      }
      const readings = e.valid !== null ? [e.valid] : e.lenient
      const match = readings.find((m) => m.status === r.status && m.body.equals(r.body))
      if (match === undefined) {
        const want = readings.map((m) => `${m.status} with ${show(m.body, 120)}`).join(' or ') ||
          `a 502 or an aborted connection (the upstream's response is ${e.why})`
        failures.push({
          property: e.valid !== null ? 'relayed' : 'clean-failure',
          detail: `request ${k} (${q.method}): the client got ${r.status} with body ${
            show(r.body, 120)
          }; expected ${want}; the upstream's framing fields: ${framingFields(sentUp[k]!)}`,
        })
      }
      this.count(e.valid !== null ? 'relayed' : 'relayed a lenient reading')
    }

    const settled = await this.signal.until(
      () => this.watch.openFor(conv.port) === 0 && this.watch.socketFor(conv.port) === null,
      SETTLE_MS,
    )
    if (!settled) {
      const s = this.watch.socketFor(conv.port)
      failures.push({
        property: 'settles',
        detail: `${SETTLE_MS} ms after the client closed: ${
          this.watch.openFor(conv.port)
        } exchange(s) open (${this.watch.describe(conv.port)}); the gateway's socket ${
          s === null
            ? 'closed'
            : `still open (destroyed ${s.destroyed}, readable ${s.readable}, writable ${s.writable})`
        }; in flight ${await inFlight(this.gateway)}`,
      })
    }

    const live = `/r/live-${++this.lives}`
    const l = await plainRequest(this.port, live, this.signal, HANG_MS)
    const liveCase = l.response === null ? null : fieldValue(l.response.fields, 'x-fuzz-case')
    if (l.problem !== null || l.response?.status !== 200 || liveCase !== live.slice(1)) {
      failures.push({
        property: 'still-serving',
        detail: `GET ${live} afterwards: ${
          l.problem ??
            `status ${l.response?.status}${
              liveCase !== live.slice(1) ? `, the response to ${liveCase}` : ''
            }`
        } ${show(l.raw, 300)}`,
      })
    }
    const busy = await settledInFlight(this.gateway, SETTLE_MS)
    if (busy !== 0) {
      failures.push({
        property: 'settles',
        detail:
          `the gateway still counts ${busy} request(s) in flight ${SETTLE_MS} ms after the case`,
      })
    }
    for (const err of this.trap.take()) failures.push({ property: 'no-crash', detail: err })
    for (const line of this.logs.lines) {
      if (line.includes('"msg":"internal error"')) {
        failures.push({ property: 'no-internal-error', detail: line.slice(0, 600) })
      }
    }
    for (const e of this.upstream.errors.splice(0)) {
      failures.push({
        property: 'unambiguous',
        detail: `the gateway sent the upstream something it cannot parse: ${e.reason} in ${
          show(e.bytes, 400)
        }`,
      })
    }
    if (failures.length === 0) return

    const report = (): string =>
      [
        `case ${id}: ${
          spec.requests.map((q, n) =>
            `${q.method}${q.close ? ' (close)' : ''} answered with ${show(sentUp[n]!, 700)} then ${
              this.scripts.get(`r/${id}-${n}`)?.after
            }; strict reading: ${expected[n]!.why}`
          ).join('\n  ')
        }`,
        `client got (${byGateway ? 'closed by the gateway' : 'closed by the client'}): ${
          show(raw, 1200)
        }`,
        `gateway log: ${this.logs.lines.slice(-5).join('\n  ') || '(nothing at warn or above)'}`,
      ].join('\n')
    const unknown = this.ledger.triage(failures, report, settings.strict)
    const message = unknown.length > 0 ? describeFailures(unknown, report()) : null
    if (message !== null) this.firstFailure ??= message
    // A known bug that leaves an upstream request hanging costs only those connections; any
    // other failure gets the next case a new gateway.
    if (message === null && !failures.some((f) => f.property === 'no-crash')) {
      this.upstream.dropBusy()
    } else await this.restart()
    if (message !== null) throw new Error(message)
  }
}

/** Transfer-Encoding and Content-Length as the upstream wrote them, for reports. */
function framingFields (bytes: Buffer): string {
  const text = bytes.toString('latin1')
  const found = [...text.matchAll(/^(transfer-encoding|content-length)[ \t]*:(.*?)\r?$/gim)].map((
    m,
  ) => `${m[1]}: ${JSON.stringify(m[2])}`)
  return found.join(', ') || 'none'
}

/** The strict reading of what the upstream wrote for one request. */
function expectation (bytes: Buffer, method: string, closed: boolean): Expectation {
  const parsed = parseResponses(bytes, { methods: [method], closed })
  const finalAt = parsed.responses.findIndex((r) => r.status >= 200)
  if (finalAt !== -1) {
    const r = parsed.responses[finalAt]!
    // undici refuses a head over its maxHeaderSize (16 KiB): a 502 is then a fair answer too.
    if (parsed.responses.slice(0, finalAt + 1).some((x) => x.head > MAX_UPSTREAM_HEAD)) {
      return { valid: null, lenient: [r], why: `a head over ${MAX_UPSTREAM_HEAD} bytes` }
    }
    // undici applies the same 16 KiB limit to a trailer section: over it the response fails
    // after its head, and an aborted connection is a fair answer.
    const trailerBytes = r.trailers.reduce((n, f) => n + f.name.length + f.value.length + 4, 0)
    if (trailerBytes > MAX_UPSTREAM_HEAD) {
      return { valid: null, lenient: [], why: `a trailer section over ${MAX_UPSTREAM_HEAD} bytes` }
    }
    // A transfer coding other than chunked (gzip, read to the close) is valid HTTP, but the
    // gateway decodes none and will not relay coded bytes unlabelled: a 502 is its answer.
    const te = fieldValue(r.fields, 'transfer-encoding')
    if (te !== null && te.trim().toLowerCase() !== 'chunked') {
      return {
        valid: null,
        lenient: [r],
        why: `Transfer-Encoding "${te}" (the gateway decodes no coding but chunked)`,
      }
    }
    const interim = parsed.responses.slice(0, finalAt).map((i) => i.status)
    return {
      valid: r,
      lenient: [],
      why: `valid: ${
        interim.length === 0
          ? 'no interim'
          : `interim ${[...new Set(interim)].join('/')} (${interim.length})`
      }, ${r.status} ${r.framing} with ${r.body.length} body bytes${
        parsed.responses.length > finalAt + 1 || parsed.rest.kind !== 'none'
          ? ', followed by more bytes'
          : ''
      }`,
    }
  }
  const interim = parsed.responses.length
  return {
    valid: null,
    lenient: parsed.lenient.map((l) => l.response),
    why: `${
      parsed.rest.kind === 'none' ? 'only interim responses' : restText(parsed.rest)
    } after ${interim} interim${
      parsed.lenient.length > 0
        ? ` (allowed reading: ${parsed.lenient.map((l) => l.why).join(', ')})`
        : ''
    }`,
  }
}

describe('fuzz: upstream responses through the gateway', () => {
  const fuzz = new ResponseFuzz()

  before(async () => {
    await fuzz.start()
    fuzz.trap.install()
  })
  after(async () => {
    fuzz.trap.uninstall()
    await fuzz.stop()
  })

  test('a clean 502 or an aborted connection, never garbage; still serving', {
    timeout: 30 * 60_000,
  }, async (t) => {
    const line = `response fuzz: seed ${settings.seed}, ${settings.numRuns} runs${
      settings.path === undefined ? '' : `, path ${settings.path}`
    } (GATEHOUSE_FUZZ_SEED=${settings.seed} to repeat)`
    console.log(line)
    t.diagnostic(line)
    const started = Date.now()
    try {
      await fc.assert(fc.asyncProperty(responseCase, (spec) => fuzz.run(spec)), {
        seed: settings.seed,
        numRuns: settings.numRuns,
        ...(settings.path === undefined ? {} : { path: settings.path }),
        timeout: 30_000,
        includeErrorInReport: true,
      })
    } catch (err) {
      if (fuzz.firstFailure !== undefined) {
        ;(err as Error).message += `\n\nThe first failure, before shrinking:\n${fuzz.firstFailure}`
      }
      throw err
    }
    t.diagnostic(
      `${fuzz.cases} cases in ${Date.now() - started} ms; ${
        [...fuzz.outcomes].map(([k, v]) => `${k}: ${v}`).join(', ')
      }`,
    )
    for (const [id, hit] of fuzz.ledger.hits) {
      t.diagnostic(`known failure ${id} seen ${hit.count} time(s); first:\n${hit.first}`)
    }
  })

  for (const known of KNOWN_RESPONSE_FAILURES) {
    test(`known: ${known.id}`, { todo: known.bug }, () => {
      const hit = fuzz.ledger.hits.get(known.id)
      assert.equal(hit?.count ?? 0, 0, hit?.first)
    })
  }
})
