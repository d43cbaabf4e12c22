import { describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { normalTarget, parseRequests, parseResponses } from './strict-http.js'
import { markerOf } from './request-grammar.js'

/*
 * The fuzz suites' oracle must itself be right: a reading it gets wrong either hides a
 * gateway bug or invents one. One line per RFC 9112 rule it applies.
 */

const req = (s: string) => parseRequests(Buffer.from(s, 'latin1'))
const res = (s: string, methods: string[] = ['GET'], closed = false) =>
  parseResponses(Buffer.from(s, 'latin1'), { methods, closed })

describe('strict HTTP/1.1 parser: requests', () => {
  test('pipelined requests with Content-Length and chunked bodies, trailers and extensions', () => {
    const p = req(
      'POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabcPUT /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3;x=y\r\nabc\r\n1;q="a b"\r\nd\r\n0\r\nX-T: v\r\n\r\n',
    )
    assert.equal(p.rest.kind, 'none')
    assert.deepEqual(p.requests.map((r) => [r.method, r.target, r.body.toString()]), [['POST', '/a',
      'abc'], ['PUT', '/b', 'abcd']])
    assert.deepEqual(p.requests[1]!.trailers, [{ name: 'X-T', value: 'v' }])
  })

  test('empty lines before a request-line are skipped; runs of SP between its parts are read', () => {
    const p = req('\r\n\r\nGET  /a  HTTP/1.1\r\nHost: h\r\n\r\n')
    assert.equal(p.requests[0]?.target, '/a')
  })

  test('cut anywhere: incomplete, never a request', () => {
    const whole =
      'POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n'
    for (let i = 0; i < whole.length; i++) {
      const p = req(whole.slice(0, i))
      assert.equal(p.requests.length, 0, `cut at ${i}`)
      assert.notEqual(p.rest.kind, 'error', `cut at ${i}: ${JSON.stringify(p.rest)}`)
    }
    assert.equal(req(whole).requests.length, 1)
  })

  for (
    const [what, bytes, reason] of [
      ['CL with TE',
        'POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n',
        /Content-Length and Transfer-Encoding/],
      ['two CLs', 'POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc',
        /more than one Content-Length/],
      ['a CL list', 'POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 3\r\n\r\nabc',
        /bad Content-Length/],
      ['a signed CL', 'POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +3\r\n\r\nabc',
        /bad Content-Length/],
      ['chunked not last', 'POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n',
        /not the final/],
      ['chunked twice', 'POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n',
        /twice/],
      ['bare LF', 'GET / HTTP/1.1\nHost: h\r\n\r\n', /bare LF/],
      ['bare CR in a value', 'GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n', /bare CR/],
      ['NUL in a value', 'GET / HTTP/1.1\r\nHost: h\r\nX: a\0b\r\n\r\n', /control character/],
      ['obs-fold', 'GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n', /obs-fold/],
      ['whitespace before the colon', 'GET / HTTP/1.1\r\nHost : h\r\n\r\n', /not a token/],
      ['a chunk size with 0x',
        'POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n',
        /chunk extension/],
      ['a chunk longer than its size',
        'POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n',
        /not followed by CRLF/],
      ['a chunk size that overflows',
        'POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000003\r\n',
        /overflows/],
    ] as const
  ) {
    test(`refused: ${what}`, () => {
      const p = req(bytes)
      assert.equal(p.requests.length, 0)
      assert.equal(p.rest.kind, 'error')
      assert.match((p.rest as { reason: string }).reason, reason)
    })
  }

  test('framed but refused: no Host, two Hosts, HTTP/2.0; the next request is still read', () => {
    const p = req(
      'GET /a HTTP/1.1\r\n\r\nGET /b HTTP/2.0\r\nHost: h\r\n\r\nGET /c HTTP/1.1\r\nHost: h\r\n\r\n',
    )
    assert.deepEqual(p.requests.map((r) => r.invalid === null), [false, false, true])
  })

  test('nothing after Connection: close (or HTTP/1.0 with Transfer-Encoding) is to be processed', () => {
    const p = req(
      'GET /a HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n',
    )
    assert.equal(p.requests[0]!.close, true)
    assert.match(p.requests[1]!.invalid ?? '', /closes the connection/)
  })

  test('markers survive the gateway\'s path normalisation', () => {
    assert.equal(markerOf(normalTarget('//p///%6300001-2/x?q')), 'p/c00001-2')
    assert.equal(markerOf(normalTarget('/a/c00001-s3')), 'a/c00001-s3')
    assert.equal(markerOf(normalTarget('http://h/p/c00001-2')), null)
  })
})

describe('strict HTTP/1.1 parser: responses', () => {
  test('interim responses, HEAD, 204 and 304 have no body; close-delimited bodies end at the close', () => {
    const p = res(
      'HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nHTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\nHTTP/1.1 200 OK\r\n\r\nto the end',
      ['HEAD', 'GET', 'GET'],
      true,
    )
    assert.equal(p.rest.kind, 'none')
    assert.deepEqual(p.responses.map((r) => [r.status, r.body.toString()]), [[103, ''], [200, ''], [
      304,
      '',
    ], [200, 'to the end']])
  })

  test('a close-delimited body on an open connection is incomplete', () => {
    assert.equal(res('HTTP/1.1 200 OK\r\n\r\nabc').rest.kind, 'incomplete')
  })

  test('CL with chunked: refused, with the chunked reading allowed', () => {
    const p = res(
      'HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n',
    )
    assert.equal(p.rest.kind, 'error')
    assert.equal(p.lenient[0]?.response.body.toString(), 'abc')
  })

  test('differing Content-Lengths: refused with no reading; equal ones: one reading', () => {
    assert.equal(
      res('HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab').lenient.length,
      0,
    )
    assert.equal(
      res('HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab').lenient[0]
        ?.response.body.toString(),
      'ab',
    )
  })

  test('a 101 nobody asked for, a status out of range, a bad status-line: refused', () => {
    assert.equal(res('HTTP/1.1 101 Switching Protocols\r\n\r\n').rest.kind, 'error')
    assert.equal(res('HTTP/1.1 600 X\r\nContent-Length: 0\r\n\r\n').rest.kind, 'error')
    assert.equal(res('SMTP ready\r\n\r\n').rest.kind, 'error')
    assert.equal(res('HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n').rest.kind, 'none')
  })
})
