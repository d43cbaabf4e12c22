import { createHmac } from 'node:crypto'
import fc from 'fast-check'

/*
 * HTTP/1.1 request byte streams from a grammar, with mutations. A case is a connection: one
 * or more pipelined requests, the writes they are split into, and where (if anywhere) the
 * client stops and closes. Specs are plain data, so that fast-check prints and shrinks them;
 * `renderCase` turns one into bytes for a given case id (the id goes into every path, so
 * that the upstream can tell which case, and which request of it, it is seeing).
 */

/** The secret of the fuzz gateway's webhook provider (routes under /w/). */
export const WEBHOOK_SECRET = 'fuzz-secret'
/** The one token the fuzz introspection endpoint calls active (routes under /a/). */
export const GOOD_TOKEN = 'good-token'

export type Route = 'p' | 'a' | 'w' | 'x'

export type ClSpell =
  'plain' |
  'lead0' |
  'ows' |
  'list' |
  'twice' |
  'twice-diff' |
  'plus' |
  'neg' |
  'hex' |
  'empty' |
  'huge' |
  'inner-space' |
  'short' |
  'long'
export type TeSpell =
  'chunked' |
  'Chunked' |
  'CHUNKED' |
  'ows' |
  'twice-list' |
  'two-fields' |
  'gzip-chunked' |
  'chunked-gzip' |
  'identity' |
  'xchunked' |
  'empty-elem' |
  'tab' |
  'vtab' |
  'underscore' |
  'name-ws' |
  'http10'
export type SizeSpell =
  'hex' |
  'HEX' |
  'lead0' |
  'plus' |
  '0x' |
  'ws-before' |
  'ws-after' |
  'overflow' |
  'neg' |
  'empty'
export type LineEnd = 'crlf' | 'lf' | 'cr' | 'none' | 'junk'

export interface ChunkSpec {
  size: SizeSpell
  ext: string | null
  /** Added to the real data length in the size line (a lying size). */
  delta: number
  end: LineEnd
}

export interface Chunked {
  te: TeSpell
  /** Where the body is cut into chunks (offsets, sorted and deduplicated when rendered). */
  cuts: number[]
  chunks: ChunkSpec[]
  lastZeros: number
  lastExt: string | null
  trailers: Array<[string, string]>
  end: LineEnd
  /** A Content-Length field as well (a smuggling classic). */
  clToo: ClSpell | null
}

export type Framing =
  { kind: 'none' } |
  { kind: 'cl', spell: ClSpell } |
  { kind: 'chunked', c: Chunked }

export type BodyAtom =
  { t: 'text', s: string } |
  { t: 'crlf' } |
  { t: 'zero-chunk' } |
  { t: 'smuggle', method: string, withBody: boolean } |
  { t: 'bytes', b: number[] } |
  { t: 'big' }

export type PathNoise =
  'none' |
  'slashes' |
  'pct' |
  'query' |
  'tail' |
  'dot' |
  'pct-bad' |
  'space' |
  'obs-text' |
  'long' |
  'absolute' |
  'asterisk' |
  'nul'

export interface HeadMutation {
  op: 'replace-crlf' | 'insert' | 'delete'
  /** Position in the head (taken modulo its length). */
  at: number
  bytes: string
}

export interface RequestSpec {
  method: string
  route: Route
  path: PathNoise
  version: string
  sep: string
  leadingCrlf: number
  host: 'one' | 'none' | 'two' | 'empty'
  cred: 'good' | 'bad' | 'none'
  expect: boolean
  connection: string | null
  extra: Array<[string, string]>
  many: number
  body: BodyAtom[]
  framing: Framing
  mutations: HeadMutation[]
}

export interface CaseSpec {
  requests: RequestSpec[]
  /** Offsets where the byte stream is split into separate writes. */
  writes: number[]
  /** Stop after this many bytes (taken modulo the stream length + 1), or send everything. */
  cut: number | null
  /** How a cut connection ends: destroyed, or half-closed and then read to the end. */
  how: 'close' | 'fin'
}

export const w = <T>(weight: number, arbitrary: fc.Arbitrary<T>): fc.WeightedArbitrary<T> => ({
  weight,
  arbitrary,
})
/** `usual` seven times in eight, else one of `rare`: most requests stay close to valid. */
export const often = <T>(usual: T, ...rare: T[]): fc.Arbitrary<T> =>
  fc.oneof(w(7, fc.constant(usual)), w(1, fc.constantFrom(...rare)))

export const clSpell: fc.Arbitrary<ClSpell> = often<ClSpell>(
  'plain',
  'lead0',
  'ows',
  'list',
  'twice',
  'twice-diff',
  'plus',
  'neg',
  'hex',
  'empty',
  'huge',
  'inner-space',
  'short',
  'long',
)
const teSpell: fc.Arbitrary<TeSpell> = often<TeSpell>(
  'chunked',
  'Chunked',
  'CHUNKED',
  'ows',
  'twice-list',
  'two-fields',
  'gzip-chunked',
  'chunked-gzip',
  'identity',
  'xchunked',
  'empty-elem',
  'tab',
  'vtab',
  'underscore',
  'name-ws',
  'http10',
)
const sizeSpell: fc.Arbitrary<SizeSpell> = often<SizeSpell>(
  'hex',
  'HEX',
  'lead0',
  'plus',
  '0x',
  'ws-before',
  'ws-after',
  'overflow',
  'neg',
  'empty',
)
const lineEnd: fc.Arbitrary<LineEnd> = often<LineEnd>('crlf', 'lf', 'cr', 'none', 'junk')
const chunkExt: fc.Arbitrary<string | null> = fc.oneof(
  w(8, fc.constant(null)),
  w(
    1,
    fc.constantFrom(
      ';a',
      ';a=b',
      ';name="quoted value"',
      ';a=b;c',
      ' ;a=b',
      '; a = b',
      ';a=',
      ';"x"',
      ';a="unterminated',
      ';a=b\nc',
      ';a=\x00',
      ';' + 'e'.repeat(2000),
      ';a=b\rc',
    ),
  ),
)

export const fieldName = fc.oneof(
  w(
    12,
    fc.constantFrom(
      'X-Fuzz',
      'Accept',
      'Content-Type',
      'Cookie',
      'User-Agent',
      'X-Request-Id',
      'Forwarded',
      'X-Forwarded-For',
      'Via',
      'Keep-Alive',
      'TE',
      'Trailer',
      'Upgrade',
      'Proxy-Authorization',
      'X-Gatehouse-Subject',
    ),
  ),
  w(
    2,
    fc.constantFrom(
      'X_Gatehouse_Subject',
      'X-A!#$%&\'*+.^`|~',
      'x-lower',
      'Content-Length',
      'Transfer-Encoding',
      'Host',
      'Expect',
      'Connection',
    ),
  ),
  w(
    1,
    fc.constantFrom(
      'X(A)',
      'X A',
      'X@A',
      'X\x7fA',
      '',
      'X\x00A',
      'X\xe9',
      ' X-Lead',
      'X-Trail ',
      'X\tA',
    ),
  ),
)
export const fieldValue = fc.oneof(
  w(
    12,
    fc.constantFrom(
      'v',
      '*/*',
      'text/plain',
      'a=b; c=d',
      '1.2.3.4',
      '1.0 other',
      'close',
      'chunked',
      '5',
      'websocket',
      'gzip, br',
      '00000000-0000-4000-8000-000000000000',
    ),
  ),
  w(2, fc.string({ unit: 'binary-ascii', maxLength: 20 })),
  w(
    1,
    fc.constantFrom(
      'caf\xe9',
      'a\x00b',
      'a\rb',
      'a\nb',
      'a\tb',
      'a\x7fb',
      '  padded  ',
      '"quoted"',
      '\x80\xff',
      'a\r\n b',
      '',
    ),
  ),
  w(1, fc.integer({ min: 1, max: 20_000 }).map((n) => 'v'.repeat(n))),
)

const bodyAtom: fc.Arbitrary<BodyAtom> = fc.oneof(
  w(6, fc.string({ maxLength: 40 }).map((s) => ({ t: 'text' as const, s }))),
  w(2, fc.constant({ t: 'crlf' as const })),
  w(1, fc.constant({ t: 'zero-chunk' as const })),
  w(
    2,
    fc.record({ method: fc.constantFrom('GET', 'POST', 'HEAD'), withBody: fc.boolean() }).map((
      r,
    ) => ({ t: 'smuggle' as const, ...r })),
  ),
  w(
    1,
    fc.array(fc.integer({ min: 0, max: 255 }), { maxLength: 16 }).map((b) => ({
      t: 'bytes' as const,
      b,
    })),
  ),
  w(1, fc.constant({ t: 'big' as const })),
)

export const chunked: fc.Arbitrary<Chunked> = fc.record({
  te: teSpell,
  cuts: fc.array(fc.nat({ max: 400 }), { maxLength: 4 }),
  chunks: fc.array(
    fc.record({
      size: sizeSpell,
      ext: chunkExt,
      delta: fc.oneof(w(12, fc.constant(0)), w(1, fc.constantFrom(-1, 1, 2))),
      end: lineEnd,
    }),
    { minLength: 5, maxLength: 5 },
  ),
  lastZeros: fc.oneof(w(8, fc.constant(1)), w(1, fc.integer({ min: 2, max: 20 }))),
  lastExt: chunkExt,
  trailers: fc.oneof(
    w(4, fc.constant([] as Array<[string, string]>)),
    w(
      1,
      fc.array(
        fc.tuple(
          fc.constantFrom('X-Trailer', 'Content-Length', 'Transfer-Encoding', 'Host', 'X Bad'),
          fieldValue,
        ),
        { maxLength: 2 },
      ),
    ),
  ),
  end: lineEnd,
  clToo: fc.oneof(w(8, fc.constant(null)), w(1, clSpell)),
})

const framing: fc.Arbitrary<Framing> = fc.oneof(
  w(2, fc.constant({ kind: 'none' as const })),
  w(3, clSpell.map((spell) => ({ kind: 'cl' as const, spell }))),
  w(3, chunked.map((c) => ({ kind: 'chunked' as const, c }))),
)

const headMutation: fc.Arbitrary<HeadMutation> = fc.record({
  op: fc.constantFrom('replace-crlf', 'insert', 'delete'),
  at: fc.nat({ max: 100_000 }),
  bytes: fc.constantFrom(
    '\n',
    '\r',
    '\x00',
    ' ',
    '\t',
    '\x80',
    ':',
    '\r\n',
    '\r\n ',
    '\x7f',
    '\x0b',
    '\r\n\r\n',
  ),
}) as fc.Arbitrary<HeadMutation>

export const requestSpec: fc.Arbitrary<RequestSpec> = fc.record({
  method: fc.oneof(
    w(12, fc.constantFrom('GET', 'POST', 'PUT', 'DELETE', 'HEAD', 'OPTIONS', 'PATCH')),
    w(1, fc.constantFrom('get', 'FOO', 'CONNECT', 'TRACE', 'G\x00T', 'PRI')),
  ),
  route: fc.oneof(
    w(10, fc.constant('p' as const)),
    w(3, fc.constant('a' as const)),
    w(3, fc.constant('w' as const)),
    w(1, fc.constant('x' as const)),
  ),
  path: often<PathNoise>(
    'none',
    'slashes',
    'pct',
    'query',
    'tail',
    'dot',
    'pct-bad',
    'space',
    'obs-text',
    'long',
    'absolute',
    'asterisk',
    'nul',
  ),
  version: often(
    'HTTP/1.1',
    'HTTP/1.0',
    'HTTP/1.2',
    'HTTP/2.0',
    'http/1.1',
    'HTTP/1.1 ',
    'HTTP/1',
    'HTTP/0.9',
    'HTTP/11',
  ),
  sep: often(' ', '  ', '\t', '\x0b'),
  leadingCrlf: fc.oneof(w(8, fc.constant(0)), w(1, fc.integer({ min: 1, max: 3 }))),
  host: often<'one' | 'none' | 'two' | 'empty'>('one', 'none', 'two', 'empty'),
  cred: fc.oneof(
    w(6, fc.constant('good' as const)),
    w(1, fc.constantFrom('bad' as const, 'none' as const)),
  ),
  expect: fc.oneof(w(6, fc.constant(false)), w(1, fc.constant(true))),
  connection: fc.oneof(
    w(6, fc.constant(null)),
    w(
      1,
      fc.constantFrom(
        'close',
        'keep-alive',
        'close, X-Fuzz',
        'X-Fuzz',
        'Upgrade',
        'Keep-Alive, TE',
      ),
    ),
  ),
  extra: fc.array(fc.tuple(fieldName, fieldValue), { maxLength: 3 }),
  many: fc.oneof(w(20, fc.constant(0)), w(1, fc.integer({ min: 90, max: 110 }))),
  body: fc.array(bodyAtom, { maxLength: 6 }),
  framing,
  mutations: fc.oneof(
    w(10, fc.constant([] as HeadMutation[])),
    w(1, fc.array(headMutation, { minLength: 1, maxLength: 2 })),
  ),
})

export const caseSpec: fc.Arbitrary<CaseSpec> = fc.record({
  requests: fc.array(requestSpec, { minLength: 1, maxLength: 4 }),
  writes: fc.array(fc.nat({ max: 2000 }), { maxLength: 4 }),
  cut: fc.oneof(w(3, fc.constant(null)), w(2, fc.nat({ max: 100_000 }))),
  how: fc.constantFrom('close' as const, 'fin' as const),
})

// --- rendering -------------------------------------------------------------------------------

export interface Rendered {
  bytes: Buffer
  /** Where each request of the spec starts in `bytes`. */
  starts: number[]
}

const BIG = 64 * 1024 + 1

function bodyBytes (
  atoms: BodyAtom[],
  route: Route,
  caseId: string,
  smuggled: { n: number },
): Buffer {
  const parts: Buffer[] = []
  for (const a of atoms) {
    switch (a.t) {
      case 'text':
        parts.push(Buffer.from(a.s, 'utf8'))
        break
      case 'crlf':
        parts.push(Buffer.from('\r\n'))
        break
      case 'zero-chunk':
        parts.push(Buffer.from('0\r\n\r\n'))
        break
      case 'bytes':
        parts.push(Buffer.from(a.b))
        break
      case 'big':
        parts.push(Buffer.alloc(BIG, 'b'))
        break
      case 'smuggle': {
        // A whole request inside a body, with a marker no request of the case carries: the
        // upstream must never see it unless the client's bytes really are that request.
        const path = `/${route}/${caseId}-s${smuggled.n++}`
        const inner = a.withBody ? 'Content-Length: 3\r\n\r\nabc' : '\r\n'
        parts.push(Buffer.from(`${a.method} ${path} HTTP/1.1\r\nHost: fuzz\r\n${inner}`))
        break
      }
    }
  }
  return Buffer.concat(parts)
}

export function clValue (spell: ClSpell, n: number): Array<[string, string]> {
  switch (spell) {
    case 'plain':
      return [['Content-Length', String(n)]]
    case 'lead0':
      return [['Content-Length', `00${n}`]]
    case 'ows':
      return [['Content-Length', ` \t${n} `]]
    case 'list':
      return [['Content-Length', `${n}, ${n}`]]
    case 'twice':
      return [['Content-Length', String(n)], ['content-length', String(n)]]
    case 'twice-diff':
      return [['Content-Length', String(n)], ['Content-Length', String(n + 1)]]
    case 'plus':
      return [['Content-Length', `+${n}`]]
    case 'neg':
      return [['Content-Length', `-${n}`]]
    case 'hex':
      return [['Content-Length', `0x${n.toString(16)}`]]
    case 'empty':
      return [['Content-Length', '']]
    case 'huge':
      return [['Content-Length', '18446744073709551617']]
    case 'inner-space':
      return [['Content-Length', `${n} 0`]]
    case 'short':
      return [['Content-Length', String(Math.max(0, n - 3))]]
    case 'long':
      return [['Content-Length', String(n + 3)]]
  }
}

export function teFields (spell: TeSpell): Array<[string, string]> {
  switch (spell) {
    case 'chunked':
    case 'http10':
      return [['Transfer-Encoding', 'chunked']]
    case 'Chunked':
      return [['Transfer-Encoding', 'Chunked']]
    case 'CHUNKED':
      return [['TRANSFER-ENCODING', 'CHUNKED']]
    case 'ows':
      return [['Transfer-Encoding', ' \tchunked \t']]
    case 'twice-list':
      return [['Transfer-Encoding', 'chunked, chunked']]
    case 'two-fields':
      return [['Transfer-Encoding', 'gzip'], ['Transfer-Encoding', 'chunked']]
    case 'gzip-chunked':
      return [['Transfer-Encoding', 'gzip, chunked']]
    case 'chunked-gzip':
      return [['Transfer-Encoding', 'chunked, gzip']]
    case 'identity':
      return [['Transfer-Encoding', 'identity']]
    case 'xchunked':
      return [['Transfer-Encoding', 'xchunked']]
    case 'empty-elem':
      return [['Transfer-Encoding', ', chunked,']]
    case 'tab':
      return [['Transfer-Encoding', '\tchunked']]
    case 'vtab':
      return [['Transfer-Encoding', '\x0bchunked']]
    case 'underscore':
      return [['Transfer_Encoding', 'chunked']]
    case 'name-ws':
      return [['Transfer-Encoding ', 'chunked']]
  }
}

function sizeText (spell: SizeSpell, n: number): string {
  const hex = n.toString(16)
  switch (spell) {
    case 'hex':
      return hex
    case 'HEX':
      return hex.toUpperCase()
    case 'lead0':
      return '000' + hex
    case 'plus':
      return '+' + hex
    case '0x':
      return '0x' + hex
    case 'ws-before':
      return ' ' + hex
    case 'ws-after':
      return hex + ' '
    case 'overflow':
      return '1000000000000000' + hex.padStart(4, '0')
    case 'neg':
      return '-' + hex
    case 'empty':
      return ''
  }
}

function endText (end: LineEnd): string {
  switch (end) {
    case 'crlf':
      return '\r\n'
    case 'lf':
      return '\n'
    case 'cr':
      return '\r'
    case 'none':
      return ''
    case 'junk':
      return 'xx\r\n'
  }
}

export function chunkedBytes (c: Chunked, body: Buffer): Buffer {
  const cuts = [...new Set(c.cuts.map((x) => x % (body.length + 1)))].filter((x) =>
    x > 0 && x < body.length
  ).sort((a, b) => a - b)
  const bounds = [0, ...cuts, body.length]
  const parts: Buffer[] = []
  for (let i = 0; i + 1 < bounds.length; i++) {
    const data = body.subarray(bounds[i], bounds[i + 1])
    if (data.length === 0) continue
    const spec = c.chunks[i % c.chunks.length]!
    parts.push(
      Buffer.from(
        `${sizeText(spec.size, Math.max(0, data.length + spec.delta))}${spec.ext ?? ''}\r\n`,
        'latin1',
      ),
      data,
      Buffer.from(endText(spec.end), 'latin1'),
    )
  }
  const trailers = c.trailers.map(([n, v]) => `${n}: ${v}\r\n`).join('')
  parts.push(
    Buffer.from(
      `${'0'.repeat(c.lastZeros)}${c.lastExt ?? ''}\r\n${trailers}${endText(c.end)}`,
      'latin1',
    ),
  )
  return Buffer.concat(parts)
}

function target (r: RequestSpec, marker: string): string {
  switch (r.path) {
    case 'none':
      return marker
    case 'slashes':
      return marker.replace('/', '//').replace(/\/(?=[^/]*$)/, '///')
    case 'pct':
      return marker.replace(/c/, '%63')
    case 'query':
      return `${marker}?q=1&x=%20y`
    case 'tail':
      return `${marker}/more/seg.json`
    case 'dot':
      return `${marker}/../x`
    case 'pct-bad':
      return `${marker}/%zz`
    case 'space':
      return `${marker}/a b`
    case 'obs-text':
      return `${marker}/caf\xe9`
    case 'long':
      return `${marker}/${'l'.repeat(9000)}`
    case 'absolute':
      return `http://fuzz${marker}`
    case 'asterisk':
      return '*'
    case 'nul':
      return `${marker}\x00`
  }
}

function renderRequest (
  r: RequestSpec,
  caseId: string,
  n: number,
  smuggled: { n: number },
): Buffer {
  const marker = `/${r.route}/${caseId}-${n}`
  const body = bodyBytes(r.body, r.route, caseId, smuggled)
  const fields: Array<[string, string]> = []
  if (r.host === 'one') fields.push(['Host', 'fuzz'])
  if (r.host === 'two') fields.push(['Host', 'fuzz'], ['Host', 'other'])
  if (r.host === 'empty') fields.push(['Host', ''])
  if (r.route === 'a' && r.cred !== 'none') {
    fields.push(['Authorization', `Bearer ${r.cred === 'good' ? GOOD_TOKEN : 'bad-token'}`])
  }
  if (r.route === 'w' && r.cred !== 'none') {
    const sig = createHmac('sha256', WEBHOOK_SECRET).update(
      r.cred === 'good' ? body : Buffer.from('other'),
    ).digest('hex')
    fields.push(['X-Sig', sig])
  }
  if (r.expect) fields.push(['Expect', '100-continue'])
  if (r.connection !== null) fields.push(['Connection', r.connection])
  if (r.connection === 'Upgrade') fields.push(['Upgrade', 'fuzzproto'])
  fields.push(...r.extra)
  for (let i = 0; i < r.many; i++) fields.push([`X-Many-${i}`, 'm'])
  let payload: Buffer = body
  let version = r.version
  const f = r.framing
  if (f.kind === 'cl') {
    fields.push(...clValue(f.spell, body.length))
  } else if (f.kind === 'chunked') {
    fields.push(...teFields(f.c.te))
    if (f.c.clToo !== null) fields.push(...clValue(f.c.clToo, body.length))
    if (f.c.te === 'http10') version = 'HTTP/1.0'
    payload = chunkedBytes(f.c, body)
  }
  let head: Buffer = Buffer.from(
    `${'\r\n'.repeat(r.leadingCrlf)}${r.method}${r.sep}${target(r, marker)}${r.sep}${version}\r\n${
      fields.map(([k, v]) => `${k}: ${v}\r\n`).join('')
    }\r\n`,
    'latin1',
  )
  for (const m of r.mutations) head = mutate(head, m)
  return Buffer.concat([head, payload])
}

function mutate (head: Buffer, m: HeadMutation): Buffer {
  const bytes = Buffer.from(m.bytes, 'latin1')
  if (m.op === 'replace-crlf') {
    const ends: number[] = []
    for (let i = head.indexOf('\r\n'); i !== -1; i = head.indexOf('\r\n', i + 2)) ends.push(i)
    if (ends.length === 0) return head
    const at = ends[m.at % ends.length]!
    return Buffer.concat([head.subarray(0, at), bytes, head.subarray(at + 2)])
  }
  const at = m.at % (head.length + 1)
  if (m.op === 'insert') return Buffer.concat([head.subarray(0, at), bytes, head.subarray(at)])
  return Buffer.concat([head.subarray(0, at), head.subarray(at + 1)])
}

export function renderCase (c: CaseSpec, caseId: string): Rendered {
  const smuggled = { n: 0 }
  const parts: Buffer[] = []
  const starts: number[] = []
  let at = 0
  c.requests.forEach((r, n) => {
    const b = renderRequest(r, caseId, n, smuggled)
    starts.push(at)
    parts.push(b)
    at += b.length
  })
  return { bytes: Buffer.concat(parts), starts }
}

/** The marker of a request-target, `p/c00001-0`, if it carries one. */
export function markerOf (normalTarget: string): string | null {
  const m = /^\/([pawxr])\/((?:c[0-9a-z]{5}-s?|live-)[0-9]+)(?:[/?]|$)/.exec(normalTarget)
  return m === null ? null : `${m[1]}/${m[2]}`
}
