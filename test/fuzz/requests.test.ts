import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import fc from 'fast-check'
import { createGateway, type Gateway } from '../../src/index.js'
import type { ConfigInput } from '../../src/config/schema.js'
import { caseSpec, markerOf, renderCase, WEBHOOK_SECRET, type CaseSpec } from './request-grammar.js'
import {
  fieldValue,
  normalTarget,
  parseRequests,
  parseResponses,
  type ParsedRequest,
  type ParsedResponse,
  type RequestParse,
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
  writePieces,
  type Conversation,
  type Failure,
} from './harness.js'
import { echoAnswer, RawUpstream, startIntrospection } from './upstreams.js'
import { KNOWN_REQUEST_FAILURES } from './known.js'

/*
 * Request-side fuzzing: generated HTTP/1.1 request streams (see request-grammar.ts) go to a
 * live gateway in front of a raw upstream that keeps the bytes it receives. For every case:
 *
 *   no-crash            nothing escapes as an uncaught exception or unhandled rejection
 *   no-desync           every request the upstream parses is one the client sent (by the
 *                       strict parser's reading of the client's bytes): same marker, method
 *                       and body, each at most once
 *   unambiguous         the upstream's strict parser accepts everything the gateway forwards
 *   well-formed         the client receives complete HTTP/1.1 responses (a truncated last one
 *                       only if the connection is then closed), never more final responses
 *                       than requests begun, in request order, 4xx/5xx as problem+json
 *   no-hang             answers, or a close, within HANG_MS
 *   settles             the case's exchanges end and the upstream is left between requests
 *   still-serving       a plain request on a new connection afterwards gets its 200
 *
 * docs/fuzzing.md describes the grammar, the properties and how to reproduce a failure.
 */

const DEFAULT_RUNS = 2000
const HANG_MS = 2000
const SETTLE_MS = 500
const RESTART_MS = 1000
const VERBOSE = process.env.GATEHOUSE_FUZZ_VERBOSE === '1'
const settings = fuzzSettings(DEFAULT_RUNS)

class RequestFuzz {
  readonly signal = new Signal()
  readonly watch = new ExchangeWatch(this.signal)
  readonly trap = new CrashTrap()
  readonly ledger = new KnownLedger(KNOWN_REQUEST_FAILURES)
  readonly logs = new LogTail()
  upstream!: RawUpstream
  introspection!: { url: string, close(): Promise<void> }
  gateway!: Gateway
  port = 0
  cases = 0
  lives = 0
  readonly outcomes = new Map<string, number>()
  /** The first failure of the run, before shrinking (shrinking may wander to other failures). */
  firstFailure: string | undefined

  async start (): Promise<void> {
    this.upstream = new RawUpstream(this.signal, echoAnswer)
    await this.upstream.listen()
    this.introspection = await startIntrospection()
    await this.startGateway()
  }

  async startGateway (): Promise<void> {
    const limits = { max_body: '64KiB' }
    const config: ConfigInput = {
      listen: {
        host: '127.0.0.1',
        port: 0,
        timeouts: { headers: '1s', keep_alive: '2s', linger: '200ms' },
      },
      admin: { enabled: false },
      log: { level: 'warn', access: false },
      identity: {
        providers: {
          tok: {
            kind: 'introspection',
            endpoint: `${this.introspection.url}/introspect`,
            client_id: 'fuzz',
            client_secret: 'fuzz',
            timeout: '1s',
            cache: { max_entries: 0 },
          },
          hook: { kind: 'webhook', scheme: 'hmac', secrets: [WEBHOOK_SECRET], header: 'x-sig' },
        },
      },
      upstreams: {
        up: {
          targets: [{ url: this.upstream.url }],
          timeouts: { connect: '1s', first_byte: '2s', idle: '2s' },
        },
      },
      routes: [
        { name: 'plain', match: { path_prefix: '/p/' }, upstream: 'up', limits },
        {
          name: 'token',
          match: { path_prefix: '/a/' },
          upstream: 'up',
          limits,
          auth: { any_of: ['tok'] },
        },
        {
          name: 'webhook',
          match: { path_prefix: '/w/' },
          upstream: 'up',
          limits,
          auth: { any_of: ['hook'] },
        },
      ],
    } as ConfigInput
    this.gateway = createGateway(config, { logDestination: this.logs, processMetrics: false })
    this.port = (await this.gateway.listen()).port
    this.watch.watch(this.port)
  }

  /** A fresh gateway (after a failure), so that the next case does not inherit its state. */
  async restart (): Promise<void> {
    this.restarts++
    // Bounded: a gateway left with a connection it never closes never finishes close() (that
    // is reported by "settles"); the next cases get a new gateway either way.
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
    await this.introspection.close()
    this.watch.close()
  }

  count (outcome: string): void {
    this.outcomes.set(outcome, (this.outcomes.get(outcome) ?? 0) + 1)
  }

  restarts = 0
  /** Gateways whose close() did not finish within RESTART_MS. */
  abandoned = 0

  async run (spec: CaseSpec): Promise<void> {
    try {
      await this.#run(spec)
    } catch (err) {
      this.firstFailure ??= `${
        (err as Error).stack ?? String(err)
      }\n(gateway port ${this.port}, ${this.restarts} restart(s), ${this.abandoned} abandoned)`
      throw err
    }
  }

  async #run (spec: CaseSpec): Promise<void> {
    const id = caseId(++this.cases)
    const rendered = renderCase(spec, id)
    const cut = spec.cut === null ? null : spec.cut % (rendered.bytes.length + 1)
    const sent = cut === null ? rendered.bytes : rendered.bytes.subarray(0, cut)
    const oracle = parseRequests(sent)
    const upFrom = this.upstream.requests.length
    const upErrFrom = this.upstream.errors.length
    const failures: Failure[] = []
    this.logs.take()

    const conv = await connect(this.port, this.signal)
    await writePieces(conv, sent, spec.writes)
    let byGateway: boolean
    // The client hung up while answers may still have been on their way.
    let cutShort = false
    if (cut !== null && spec.how === 'close') {
      cutShort = true
      byGateway = conv.closed || conv.ended
      conv.socket.destroy()
    } else if (cut !== null) {
      conv.socket.end()
      const closed = await this.signal.until(() => conv.closed, HANG_MS)
      if (!closed) {
        failures.push({
          property: 'no-hang',
          detail: `no close within ${HANG_MS} ms of the client's FIN`,
        })
      }
      byGateway = closed
    } else {
      const need = answersDue(oracle, sent)
      const methods = oracle.requests.map((r) => r.method)
      const done = await this.signal.until(
        () => conv.closed || conv.ended || finalCount(conv, methods) >= need,
        HANG_MS,
      )
      byGateway = conv.closed || conv.ended
      if (!done) {
        cutShort = true
        failures.push({
          property: 'no-hang',
          detail: `${
            finalCount(conv, methods)
          } of ${need} answers and no close within ${HANG_MS} ms (${
            oracle.rest.kind === 'error'
              ? 'after a request the strict parser refuses'
              : 'the client sent every byte'
          }; first unanswered: ${describeRequest(oracle.requests[finalCount(conv, methods)])})`,
        })
      }
      conv.socket.destroy()
    }
    this.count(cut === null ? 'sent whole' : `cut, ${spec.how}`)
    if (VERBOSE) console.error(`${id} ${show(sent, 300)} -> ${show(conv.bytes(), 200)}`)

    const answers = this.checkAnswers(conv, sent, oracle, byGateway || cutShort, failures)

    const settled = await this.signal.until(
      () =>
        this.watch.openFor(conv.port) === 0 && this.watch.socketFor(conv.port) === null &&
        this.upstream.atRest(),
      SETTLE_MS,
    )
    if (!settled) {
      const s = this.watch.socketFor(conv.port)
      failures.push({
        property: 'settles',
        detail:
          `${SETTLE_MS} ms after the client closed (answered: ${answers}): ${
            this.watch.openFor(conv.port)
          } exchange(s) of the connection open (${this.watch.describe(conv.port)}); ` +
          `the gateway's socket ${
            s === null
              ? 'closed'
              : `still open (destroyed ${s.destroyed}, readable ${s.readable}, writable ${s.writable}, ${s.writableLength} bytes unsent)`
          }; ` +
          `gateway in flight: ${await inFlight(this.gateway)}; upstream ${
            this.upstream.busy().join(', ') || 'at rest'
          }`,
      })
    }

    const seen = this.checkUpstream(id, sent, oracle, upFrom, upErrFrom, failures)

    const live = `/p/live-${++this.lives}`
    const l = await plainRequest(this.port, live, this.signal, HANG_MS)
    if (
      l.problem !== null || l.response?.status !== 200 ||
      fieldValue(l.response.fields, 'x-marker') !== live.slice(1)
    ) {
      failures.push({
        property: 'still-serving',
        detail: `GET ${live} afterwards: ${l.problem ?? `status ${l.response?.status}`} ${
          show(l.raw, 300)
        }`,
      })
    }

    const busy = await settledInFlight(this.gateway, SETTLE_MS)
    if (busy !== 0) {
      failures.push({
        property: 'settles',
        detail:
          `the gateway still counts ${busy} request(s) in flight ${SETTLE_MS} ms after the case (gatehouse_in_flight_requests; answered: ${answers})`,
      })
    }

    for (const err of this.trap.take()) failures.push({ property: 'no-crash', detail: err })
    for (const line of this.logs.lines) {
      if (line.includes('"msg":"internal error"')) {
        failures.push({ property: 'no-internal-error', detail: line.slice(0, 600) })
      }
    }
    if (failures.length === 0) return

    const report = (): string =>
      [
        `case ${id}: ${spec.requests.length} request(s), ${rendered.bytes.length} bytes, ${
          cut === null ? 'sent whole' : `cut after ${cut} (${spec.how})`
        }, ${conv.written} written`,
        `sent: ${show(sent)}`,
        `strict reading: ${
          oracle.requests.map((r) =>
            `${r.method} ${r.target.slice(0, 60)} (${r.body.length} body bytes${
              r.invalid === null ? '' : `, refused: ${r.invalid}`
            })`
          ).join(', ') || 'no request'
        }; then ${restText(oracle.rest)}`,
        `answered (${byGateway ? 'closed by the gateway' : 'closed by the client'}): ${
          show(conv.bytes())
        }`,
        `upstream parsed: ${seen.join(', ') || 'nothing'}`,
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

  /** Statuses (and GH_ codes) the client received, in order: `400 GH_BAD_REQUEST, 200`. */
  /** `ended`: the connection was over (closed by the gateway, or cut short by the client). */
  checkAnswers (
    conv: Conversation,
    sent: Buffer,
    oracle: RequestParse,
    ended: boolean,
    failures: Failure[],
  ): string {
    const raw = conv.bytes()
    const methods = oracle.requests.map((r) => r.method)
    // The refused request's own answer is framed by its method too (no body for a HEAD).
    if (oracle.rest.kind !== 'none' && oracle.rest.method !== undefined) {
      methods.push(oracle.rest.method)
    }
    const parsed = parseResponses(raw, { methods, closed: ended })
    const finals = parsed.responses.filter((r) => r.status >= 200)
    const last = finals.length === 0
      ? 'before any response'
      : `after ${finals[finals.length - 1]!.status}${problemCode(finals[finals.length - 1]!)} to ${
        methods[finals.length - 1] ?? 'a request the strict parser refuses'
      }`
    const stray = strayContinue(raw, parsed.responses)
    if (stray !== null) {
      failures.push({
        property: 'well-formed',
        detail: `a 100 Continue was written inside another response (at byte ${stray})`,
      })
    } else if (parsed.rest.kind === 'error') {
      failures.push({
        property: 'well-formed',
        detail: `the gateway sent bytes that are no HTTP/1.1 response ${last}: ${
          restText(parsed.rest)
        }`,
      })
    }
    if (parsed.rest.kind === 'incomplete' && !ended) {
      failures.push({
        property: 'well-formed',
        detail: `a response was left incomplete ${last}: ${restText(parsed.rest)}`,
      })
    }
    const close = oracle.requests.findIndex((r) => r.close)
    const begun = close !== -1
      ? close + 1
      : oracle.requests.length + (oracle.rest.kind === 'none' ? 0 : 1)
    let k = 0
    let closedAt = -1
    for (const r of parsed.responses) {
      if (r.status < 200) {
        if (r.status !== 100) {
          failures.push({
            property: 'well-formed',
            detail: `interim response ${r.status} (the upstream sends none)`,
          })
        }
        continue
      }
      if (closedAt !== -1) {
        failures.push({
          property: 'well-formed',
          detail: `response ${k} follows response ${closedAt}, which said Connection: close`,
        })
      }
      const req = oracle.requests[k]
      if (r.status >= 400) {
        const head = req !== undefined ? req.method === 'HEAD' : methods[k] === 'HEAD'
        const bad = problemError(r, head)
        if (bad !== null) {
          failures.push({
            property: 'well-formed',
            detail: `response ${k} (to ${
              req === undefined
                ? `a request the strict parser refuses: ${restText(oracle.rest)}`
                : `${req.method} ${show(req.target, 60)}`
            }): ${bad}`,
          })
        }
        this.count(`answer ${r.status}`)
      } else if (r.status < 300) {
        const marker = fieldValue(r.fields, 'x-marker')
        const want = req === undefined ? null : markerOf(normalTarget(req.target)) ?? 'none'
        if (req?.invalid != null) {
          failures.push({
            property: 'well-formed',
            detail:
              `response ${k} (${r.status}) is an upstream answer, but the strict parser refuses request ${k}: ${req.invalid}`,
          })
        } else if (marker === null || marker !== want) {
          failures.push({
            property: 'well-formed',
            detail: `response ${k} (${r.status}) is the upstream's answer to ${
              marker ?? 'nothing'
            }, but request ${k} is ${want ?? 'not one the client sent'}${
              marker === null ? '' : whereRefused(sent, oracle, marker)
            }`,
          })
        }
        this.count('answer 2xx')
      } else {
        failures.push({
          property: 'well-formed',
          detail: `response ${k} has status ${r.status} (neither the upstream's 200 nor an error)`,
        })
      }
      if (r.close) closedAt = k
      k++
    }
    if (k > begun) {
      const closer = close === -1
        ? ''
        : `; request ${close} closes the connection (${
          oracle.requests[close]!.version === '1.0' &&
            fieldValue(oracle.requests[close]!.fields, 'transfer-encoding') !== null
            ? 'HTTP/1.0 with Transfer-Encoding'
            : 'Connection: close or HTTP/1.0'
        })`
      failures.push({
        property: 'well-formed',
        detail: `${k} final responses (${
          parsed.responses.filter((r) => r.status >= 200).map((r) => r.status).join(', ')
        }) to ${begun} request(s) begun${closer}`,
      })
    }
    return parsed.responses.map((r) => `${r.status}${problemCode(r)}`).join(', ') || 'nothing'
  }

  checkUpstream (
    id: string,
    sent: Buffer,
    oracle: RequestParse,
    from: number,
    errFrom: number,
    failures: Failure[],
  ): string[] {
    const seen: string[] = []
    const used = new Set<number>()
    for (const u of this.upstream.requests.slice(from)) {
      seen.push(`${u.method} ${u.target.slice(0, 60)} (${u.body.length} body bytes)`)
      if (u.marker !== null && u.marker.includes('/live-')) continue
      // A byte mutation may have spoiled a marker: such a request is matched by its path.
      const i = u.marker === null
        ? oracle.requests.findIndex((r, n) =>
          !used.has(n) && markerOf(normalTarget(r.target)) === null &&
          normalTarget(r.target) === normalTarget(u.target)
        )
        : oracle.requests.findIndex((r, n) =>
          !used.has(n) && markerOf(normalTarget(r.target)) === u.marker
        )
      if (i === -1 && (u.marker === null || !u.marker.includes(`/${id}-`))) {
        failures.push({
          property: 'no-desync',
          detail: `the upstream parsed ${u.method} ${
            show(u.target, 80)
          }, which is no request of this case`,
        })
        continue
      }
      if (i === -1) {
        failures.push({
          property: 'no-desync',
          detail: `the upstream parsed ${u.method} ${show(u.target, 80)} with body ${
            show(u.body, 200)
          }: the client never sent that request${
            u.marker === null ? '' : whereRefused(sent, oracle, u.marker)
          }`,
        })
        continue
      }
      used.add(i)
      const r = oracle.requests[i]!
      if (r.invalid !== null) {
        failures.push({
          property: 'no-desync',
          detail: `request ${
            u.marker ?? u.target
          } reached the upstream, but the strict parser refuses it: ${r.invalid}`,
        })
      }
      if (r.method !== u.method || !r.body.equals(u.body)) {
        failures.push({
          property: 'no-desync',
          detail: `request ${u.marker ?? u.target}: the upstream got ${u.method} with body ${
            show(u.body, 300)
          }; the client sent ${r.method} with body ${show(r.body, 300)}`,
        })
      }
      this.count('forwarded')
    }
    for (const e of this.upstream.errors.slice(errFrom)) {
      failures.push({
        property: 'unambiguous',
        detail: `the gateway forwarded something ambiguous: ${e.reason} in ${show(e.bytes, 600)}`,
      })
    }
    return seen
  }
}

/** The offset of a 100 Continue that does not start a response of its own, if any. */
function strayContinue (raw: Buffer, responses: ParsedResponse[]): number | null {
  const starts = new Set(responses.map((r) => r.start))
  const last = responses[responses.length - 1]
  for (let at = raw.indexOf(CONTINUE); at !== -1; at = raw.indexOf(CONTINUE, at + 1)) {
    if (!starts.has(at) && (last === undefined || at < last.end || at > last.end)) return at
  }
  return null
}

const CONTINUE = Buffer.from('HTTP/1.1 100 Continue\r\n\r\n')

/** Where a marker sits in what the strict parser could not read, for a report. */
function whereRefused (sent: Buffer, oracle: RequestParse, marker: string): string {
  const rest = oracle.rest
  if (rest.kind === 'none') return ''
  const at = sent.indexOf(marker.slice(marker.indexOf('/') + 1), rest.at, 'latin1')
  return at === -1
    ? ` (the strict parser stopped before it: ${restText(rest)})`
    : ` (its bytes are in what the strict parser ${
      rest.kind === 'error' ? 'refused' : 'saw cut short'
    }: ${rest.reason})`
}

function problemCode (r: ParsedResponse): string {
  if (fieldValue(r.fields, 'content-type') !== 'application/problem+json') return ''
  const m = /"code":"(GH_[A-Z_]+)"/.exec(r.body.toString('latin1'))
  return m === null ? '' : ` ${m[1]}`
}

/** `GET /p/c00001-1 [Upgrade]`: a request for reports, flagged when it asks for an upgrade. */
function describeRequest (r: ParsedRequest | undefined): string {
  if (r === undefined) return 'the bytes the strict parser refuses'
  return `${r.method} ${r.target.slice(0, 60)}${
    fieldValue(r.fields, 'upgrade') !== null ? ' [Upgrade]' : ''
  }`
}

/** Final responses the gateway owes once every byte is sent (up to a request that closes). */
function answersDue (oracle: RequestParse, sent: Buffer): number {
  const close = oracle.requests.findIndex((r) => r.close)
  if (close !== -1) return close + 1
  // Stray line ends between requests (a bare LF) may be skipped, as llhttp does, rather than
  // answered: only other bytes the strict parser refuses are owed an answer.
  const refused = oracle.rest.kind === 'error' &&
    !/^[\r\n]*$/.test(sent.toString('latin1', oracle.rest.at))
  return oracle.requests.length + (refused ? 1 : 0)
}

function finalCount (conv: Conversation, methods: string[]): number {
  const parsed = parseResponses(conv.bytes(), { methods, closed: false })
  // Garbage ends the wait: nothing after it can be read anyway ("well-formed" reports it).
  return parsed.rest.kind === 'error'
    ? Infinity
    : parsed.responses.filter((r) => r.status >= 200).length
}

describe('fuzz: request streams through the gateway', () => {
  const fuzz = new RequestFuzz()

  before(async () => {
    await fuzz.start()
    fuzz.trap.install()
  })
  after(async () => {
    fuzz.trap.uninstall()
    await fuzz.stop()
  })

  test(
    'no crash, no desync, well-formed answers, still serving',
    { timeout: 30 * 60_000 },
    async (t) => {
      const line = `request fuzz: seed ${settings.seed}, ${settings.numRuns} runs${
        settings.path === undefined ? '' : `, path ${settings.path}`
      } (GATEHOUSE_FUZZ_SEED=${settings.seed} to repeat)`
      console.log(line)
      t.diagnostic(line)
      const started = Date.now()
      try {
        await fc.assert(fc.asyncProperty(caseSpec, (spec) => fuzz.run(spec)), {
          seed: settings.seed,
          numRuns: settings.numRuns,
          ...(settings.path === undefined ? {} : { path: settings.path }),
          timeout: 30_000,
          includeErrorInReport: true,
        })
      } catch (err) {
        if (fuzz.firstFailure !== undefined) {
          ;(err as Error).message +=
            `\n\nThe first failure, before shrinking:\n${fuzz.firstFailure}`
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
    },
  )

  for (const known of KNOWN_REQUEST_FAILURES) {
    test(`known: ${known.id}`, { todo: known.bug }, () => {
      const hit = fuzz.ledger.hits.get(known.id)
      assert.equal(hit?.count ?? 0, 0, hit?.first)
    })
  }
})
