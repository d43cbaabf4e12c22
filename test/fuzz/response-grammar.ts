import fc from 'fast-check'
import {
  chunked,
  chunkedBytes,
  clSpell,
  clValue,
  fieldName,
  fieldValue,
  often,
  teFields,
  w,
  type Chunked,
  type ClSpell,
} from './request-grammar.js'

/*
 * Upstream responses from a grammar, with mutations: status lines good and bad, 1xx floods,
 * Content-Length and Transfer-Encoding variants and conflicts, bodies that do not match their
 * framing, obs-fold and NUL in header fields, bodies on HEAD, 204 and 304 answers, and the
 * upstream closing at any byte. A case is one client connection with one or two requests;
 * each request names, by its path, the script the upstream answers it with.
 */

export type StatusSpell =
  'ok' |
  'no-reason' |
  'no-space' |
  'http10' |
  'http2' |
  'lower' |
  'four-digit' |
  'two-digit' |
  '600' |
  '099' |
  'lf' |
  'obs-reason' |
  'nul-reason' |
  'leading-space' |
  'garbage' |
  'empty'

export type RespFraming =
  { kind: 'cl', spell: ClSpell } |
  { kind: 'chunked', c: Chunked } |
  /** No Content-Length or Transfer-Encoding: the body runs to the close. */
  { kind: 'close' } |
  /** Transfer-Encoding other than chunked last (gzip): also to the close. */
  { kind: 'te-other' }

export interface Interim {
  status: number
  headers: boolean
}

export interface ResponseSpec {
  interim: Interim[]
  /** Added to `interim`: a flood of this many 100/103 answers. */
  flood: number
  status: number
  statusLine: StatusSpell
  headers: Array<[string, string]>
  fold: 'none' | 'obs-fold' | 'nul' | 'bare-cr' | 'space-colon'
  framing: RespFraming
  body: string
  /** A body even where none belongs (HEAD, 204, 304): bytes after the head the client must never see. */
  bodyAnyway: boolean
  /** Bytes after the response on the same connection: nothing, a second response, junk. */
  trailing: 'none' | 'second' | 'junk'
  /** Writes, by offset. */
  pieces: number[]
  /** Stop after this many bytes (modulo the length + 1). */
  cut: number | null
  /** After writing: keep the connection, end it (FIN) or destroy it. */
  after: 'keep' | 'end' | 'destroy'
}

export interface ResponseRequest {
  method: 'GET' | 'HEAD'
  close: boolean
  response: ResponseSpec
}

export interface ResponseCase {
  requests: ResponseRequest[]
}

const framing: fc.Arbitrary<RespFraming> = fc.oneof(
  w(6, clSpell.map((spell) => ({ kind: 'cl' as const, spell }))),
  w(4, chunked.map((c) => ({ kind: 'chunked' as const, c }))),
  w(1, fc.constant({ kind: 'close' as const })),
  w(1, fc.constant({ kind: 'te-other' as const })),
)

export const responseSpec: fc.Arbitrary<ResponseSpec> = fc.record({
  interim: fc.oneof(
    w(6, fc.constant([] as Interim[])),
    w(
      2,
      fc.array(
        fc.record({ status: fc.constantFrom(100, 102, 103, 101, 199), headers: fc.boolean() }),
        { minLength: 1, maxLength: 3 },
      ),
    ),
  ),
  flood: fc.oneof(w(12, fc.constant(0)), w(1, fc.integer({ min: 10, max: 300 }))),
  status: fc.oneof(
    w(10, fc.constant(200)),
    w(3, fc.constantFrom(201, 204, 206, 304, 404, 500, 418, 299, 302)),
  ),
  statusLine: often<StatusSpell>(
    'ok',
    'no-reason',
    'no-space',
    'http10',
    'http2',
    'lower',
    'four-digit',
    'two-digit',
    '600',
    '099',
    'lf',
    'obs-reason',
    'nul-reason',
    'leading-space',
    'garbage',
    'empty',
  ),
  headers: fc.array(fc.tuple(fieldName, fieldValue), { maxLength: 3 }),
  fold: often<ResponseSpec['fold']>('none', 'obs-fold', 'nul', 'bare-cr', 'space-colon'),
  framing,
  body: fc.oneof(
    w(6, fc.string({ maxLength: 60 })),
    w(1, fc.constantFrom('', 'HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale', '0\r\n\r\n')),
    w(1, fc.integer({ min: 1, max: 200_000 }).map((n) => 'r'.repeat(n))),
  ),
  bodyAnyway: fc.oneof(w(5, fc.constant(false)), w(1, fc.constant(true))),
  trailing: often<ResponseSpec['trailing']>('none', 'second', 'junk'),
  pieces: fc.array(fc.nat({ max: 400 }), { maxLength: 3 }),
  cut: fc.oneof(w(4, fc.constant(null)), w(1, fc.nat({ max: 100_000 }))),
  after: fc.oneof(
    w(4, fc.constant('keep' as const)),
    w(1, fc.constantFrom('end' as const, 'destroy' as const)),
  ),
})

export const responseCase: fc.Arbitrary<ResponseCase> = fc.record({
  requests: fc.array(
    fc.record({
      method: fc.oneof(w(4, fc.constant('GET' as const)), w(1, fc.constant('HEAD' as const))),
      close: fc.boolean(),
      response: responseSpec,
    }),
    { minLength: 1, maxLength: 2 },
  ),
})

// --- rendering -------------------------------------------------------------------------------

const REASONS: Record<number, string> = {
  100: 'Continue',
  101: 'Switching Protocols',
  102: 'Processing',
  103: 'Early Hints',
  200: 'OK',
  201: 'Created',
  204: 'No Content',
  206: 'Partial Content',
  302: 'Found',
  304: 'Not Modified',
  404: 'Not Found',
  418: 'I\'m a teapot',
  500: 'Internal Server Error',
}

function statusLine (spell: StatusSpell, status: number): string {
  const reason = REASONS[status] ?? 'Whatever'
  switch (spell) {
    case 'ok':
      return `HTTP/1.1 ${status} ${reason}\r\n`
    case 'no-reason':
      return `HTTP/1.1 ${status} \r\n`
    case 'no-space':
      return `HTTP/1.1 ${status}\r\n`
    case 'http10':
      return `HTTP/1.0 ${status} ${reason}\r\n`
    case 'http2':
      return `HTTP/2 ${status} ${reason}\r\n`
    case 'lower':
      return `http/1.1 ${status} ${reason}\r\n`
    case 'four-digit':
      return `HTTP/1.1 ${status}0 ${reason}\r\n`
    case 'two-digit':
      return `HTTP/1.1 ${String(status).slice(0, 2)} ${reason}\r\n`
    case '600':
      return `HTTP/1.1 600 ${reason}\r\n`
    case '099':
      return `HTTP/1.1 099 ${reason}\r\n`
    case 'lf':
      return `HTTP/1.1 ${status} ${reason}\n`
    case 'obs-reason':
      return `HTTP/1.1 ${status} R\xe9ussi\r\n`
    case 'nul-reason':
      return `HTTP/1.1 ${status} O\x00K\r\n`
    case 'leading-space':
      return ` HTTP/1.1 ${status} ${reason}\r\n`
    case 'garbage':
      return 'SMTP ready\r\n'
    case 'empty':
      return '\r\n'
  }
}

/** The bytes the upstream writes for a request (before `cut`). */
export function renderResponse (r: ResponseSpec, method: string, marker: string): Buffer {
  const parts: string[] = []
  const interim = [...r.interim,
    ...Array.from({ length: r.flood }, (_, i) => ({
      status: i % 2 === 0 ? 100 : 103,
      headers: i % 2 === 1,
    }))]
  for (const i of interim) {
    parts.push(
      `HTTP/1.1 ${i.status} ${REASONS[i.status] ?? 'Info'}\r\n${
        i.headers ? 'Link: </style.css>; rel=preload\r\n' : ''
      }\r\n`,
    )
  }
  const body = Buffer.from(r.body, 'latin1')
  const fields: Array<[string, string]> = [['x-fuzz-case', marker], ['content-type', 'text/plain'],
    ...r.headers]
  let payload: Buffer = body
  const f = r.framing
  if (f.kind === 'cl') fields.push(...clValue(f.spell, body.length))
  else if (f.kind === 'chunked') {
    fields.push(...teFields(f.c.te).map(([k, v]): [string, string] => [k, v]))
    if (f.c.clToo !== null) fields.push(...clValue(f.c.clToo, body.length))
    payload = chunkedBytes(f.c, body)
  } else if (f.kind === 'te-other') fields.push(['Transfer-Encoding', 'gzip'])
  const noBody = method === 'HEAD' || r.status === 204 || r.status === 304
  if (noBody && !r.bodyAnyway) payload = Buffer.alloc(0)
  let head = statusLine(r.statusLine, r.status) + fields.map(([k, v]) => `${k}: ${v}\r\n`).join('')
  switch (r.fold) {
    case 'obs-fold':
      head += 'X-Folded: first\r\n  second\r\n'
      break
    case 'nul':
      head += 'X-Nul: a\x00b\r\n'
      break
    case 'bare-cr':
      head += 'X-Cr: a\rb\r\n'
      break
    case 'space-colon':
      head += 'X-Space : v\r\n'
      break
    case 'none':
      break
  }
  parts.push(head + '\r\n')
  const trailing = r.trailing === 'second'
    ? 'HTTP/1.1 200 OK\r\nx-fuzz-case: stale\r\nContent-Length: 5\r\n\r\nstale'
    : r.trailing === 'junk'
    ? 'GARBAGE\r\n\r\n'
    : ''
  return Buffer.concat([Buffer.from(parts.join(''), 'latin1'), payload,
    Buffer.from(trailing, 'latin1')])
}
