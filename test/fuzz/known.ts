import type { KnownFailure } from './harness.js'

/*
 * Gateway bugs the fuzz suites have found and that are not fixed yet (entries for the ones
 * fixed since are in this file's git history). A failure that matches
 * one of these does not fail the property (so that the suites stay usable and keep looking
 * for other bugs); each is counted, and its "known:" test is reported as TODO while it is
 * still seen. GATEHOUSE_FUZZ_STRICT=1 makes them fail again, to shrink and reproduce one.
 * When a bug is fixed, delete its entry: its "known:" test will have started passing.
 */

export const KNOWN_REQUEST_FAILURES: readonly KnownFailure[] = [
  {
    id: 'problem-body-on-head',
    bug: 'the answer the gateway writes for a parser error (clientError, e.g. llhttp\'s "Data after Connection: close" after a HEAD request) always carries a body, even when it answers a HEAD request: the client reads the body as the start of another response',
    match: (f) => f.property === 'well-formed' && /(left incomplete|no HTTP\/1\.1 response) after 4\d\d to HEAD: /.test(f.detail),
  },
  {
    id: 'queued-request-after-close-leaks',
    bug: 'a request pipelined behind one answered with Connection: close (seen with 431 GH_HEADERS_TOO_LARGE for over 100 fields, then a request with a 196 KB body) has started and waits for its turn; the gateway half-closes after the answer but the queued request keeps the socket paused, so the client\'s close is never read: its exchange and the socket stay open',
    match: (f) => f.property === 'settles' && /\(request incomplete, response not started\)\); the gateway's socket still open \(destroyed false, readable true, writable false/.test(f.detail),
  },
  {
    id: 'http10-te-keeps-alive',
    bug: 'an HTTP/1.0 request with Transfer-Encoding (and Connection: keep-alive) is read as chunked and answered with Connection: keep-alive, and the next request on the connection is processed; RFC 9112 §6.1 says such framing is faulty and the connection must close after the response (a hop that frames it otherwise would see a different next request)',
    match: (f) => f.property === 'well-formed' && /closes the connection \(HTTP\/1\.0 with Transfer-Encoding\)$/.test(f.detail),
  },
  {
    id: 'bad-chunk-leaves-upstream-half-sent',
    bug: 'a request body that turns out malformed mid-stream (e.g. "9\\r\\nhHEAD /p/\\r\\n10;a=\\x00\\r\\n": a NUL in a chunk extension) is answered 400 to the client, but the upstream request already under way is not cancelled: its chunked body stays half-sent and the upstream connection stays open (observed for 10 s and more)',
    match: (f) => f.property === 'settles' && /bytes of a partial request "[^"]*" \(transfer-encoding: chunked/.test(f.detail),
  },
]

export const KNOWN_RESPONSE_FAILURES: readonly KnownFailure[] = [
  {
    id: 'unsolicited-100-continue',
    bug: 'an upstream that sends 100 Continue before its final response (RFC 9110 §15.2: a client must parse 1xx it did not ask for) gets the client a 502 GH_UPSTREAM_RESET: undici 7 destroys the socket on any 100 it did not expect ("bad response", client-h1.js); 102 and 103 pass',
    match: (f) => f.property === 'relayed' && /interim [^;]*\b100\b.*the client got 502 (GH_UPSTREAM_RESET|\(HEAD\))$/.test(f.detail),
  },
  {
    id: 'te-chunked-misread',
    bug: 'an upstream response whose Transfer-Encoding names chunked last but not in the plainest spelling ("chunked \\t" with HTAB in the OWS, ", chunked," with empty list elements) is not read as chunked by undici: the body is read to the close, so the client gets the raw chunk framing as content ("3\\r\\nabc\\r\\n0\\r\\n\\r\\n" instead of "abc"), or on a kept connection a body that never ends; bytes after it (another response) would become body too',
    match: (f) => {
      if (f.property !== 'relayed' && f.property !== 'clean-failure') return false
      const te = /the upstream's framing fields: .*?Transfer-Encoding: ("(?:[^"\\]|\\.)*")/i.exec(f.detail)
      if (te === null) return false
      const value = (JSON.parse(te[1]!) as string).replace(/^ +| +$/g, '')
      return /chunked/i.test(value) && !/^chunked$/i.test(value)
    },
  },
]
