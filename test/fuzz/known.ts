import type { KnownFailure } from './harness.js'

/*
 * Gateway bugs the fuzz suites have found and that are not fixed yet. A failure that matches
 * one of these does not fail the property (so that the suites stay usable and keep looking
 * for other bugs); each is counted, and its "known:" test is reported as TODO while it is
 * still seen. GATEHOUSE_FUZZ_STRICT=1 makes them fail again, to shrink and reproduce one.
 * When a bug is fixed, delete its entry: its "known:" test will have started passing.
 */

export const KNOWN_REQUEST_FAILURES: readonly KnownFailure[] = [
  {
    id: 'pipelined-upgrade-crash',
    bug: 'a request asking for an Upgrade the gateway does not perform, pipelined behind a request still in flight ("GET /p/1 HTTP/1.1\\r\\nHost: fuzz\\r\\n\\r\\nGET /p/2 HTTP/1.1\\r\\nHost: fuzz\\r\\nConnection: Upgrade\\r\\nUpgrade: fuzzproto\\r\\n\\r\\n"), made serveWithoutUpgrade call res.assignSocket on a socket the first response still holds: ERR_HTTP_SOCKET_ASSIGNED thrown from the \'upgrade\' event, uncaught, so the process exits; with the current working tree the second request is instead never answered (the connection stays open)',
    match: (f) => (f.property === 'no-crash' && /ERR_HTTP_SOCKET_ASSIGNED/.test(f.detail)) || (f.property === 'no-hang' && /first unanswered: [^)]*\[Upgrade\]\)$/.test(f.detail)),
  },
  {
    id: 'bare-400-without-host',
    bug: 'an HTTP/1.1 request without Host (or with an empty Host) is answered by Node itself (http.Server requireHostHeader): a bare 400 with an empty chunked body, not problem+json',
    match: (f) => f.property === 'well-formed' && /: 400 Bad Request with content-type null, not application\/problem\+json \(fields: Connection, Date, Transfer-Encoding\)$/.test(f.detail),
  },
  {
    id: 'bare-417-expect',
    bug: 'a request whose Expect is not 100-continue is answered by Node itself (no checkExpectation listener): a bare 417 with an empty chunked body, not problem+json, sent before the body is read and without closing, so a malformed body then gets a second answer (two responses to one request)',
    match: (f) => f.property === 'well-formed' && (/ 417 Expectation Failed with content-type null, not application\/problem\+json /.test(f.detail) || /final responses \(417, /.test(f.detail)),
  },
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
    id: 'bad-chunk-leaves-upstream-half-sent',
    bug: 'a request body that turns out malformed mid-stream (e.g. "9\\r\\nhHEAD /p/\\r\\n10;a=\\x00\\r\\n": a NUL in a chunk extension) is answered 400 to the client, but the upstream request already under way is not cancelled: its chunked body stays half-sent and the upstream connection stays open (observed for 10 s and more)',
    match: (f) => f.property === 'settles' && /bytes of a partial request "[^"]*" \(transfer-encoding: chunked/.test(f.detail),
  },
  {
    id: 'non-1x-version-accepted',
    bug: 'a request-line with a version other than HTTP/1.0 or HTTP/1.1 (HTTP/0.9 followed by header fields, which 0.9 does not have; HTTP/2.0) is accepted by Node and forwarded as HTTP/1.1; RFC 9112 §2.3 expects 1.x (505 otherwise), and another hop may frame the same bytes differently',
    match: (f) => (f.property === 'no-desync' || f.property === 'well-formed') && /the strict parser refuses (it|request \d+): unsupported version HTTP\/[02]\.\d$/.test(f.detail),
  },
  {
    id: 'continue-inside-response',
    bug: 'a pipelined request with Expect: 100-continue queued behind one the gateway is still handling (e.g. a webhook route reading its body) gets its 100 Continue written after its own response head, inside that response (minimal: a /w/ request with Content-Length: 0, then "GET /p/2 HTTP/1.1\\r\\nHost: fuzz\\r\\nExpect: 100-continue\\r\\n\\r\\n"): the client reads the 100 as body bytes and the rest as garbage',
    match: (f) => f.property === 'well-formed' && /^a 100 Continue was written inside another response/.test(f.detail),
  },
  {
    id: 'connect-jumps-the-queue',
    bug: 'CONNECT is refused (#refuseConnect) by writing the 405 straight onto the socket and ending it, while requests pipelined before it are still in flight: their answers are lost, the 405 arrives in the place of the first of them, and their exchanges never end (gatehouse_in_flight_requests stays up, so shutdown waits its whole grace)',
    match: (f) => f.property === 'settles' && /in flight .*answered: [^)]*405 GH_METHOD_NOT_ALLOWED/.test(f.detail),
  },
  {
    id: 'uri-too-long-keeps-alive',
    bug: 'a 414 GH_URI_TOO_LONG is decided before the header fields are scanned, so Exchange.fail() does not know the request has a body (ex.transferEncoding / ex.contentLength unset) and keeps the connection alive; the unread body is then parsed by Node and a malformed chunk gets a second answer (two responses to one request)',
    match: (f) => f.property === 'well-formed' && /final responses \(414, /.test(f.detail),
  },
  {
    id: 'detached-socket-refusal-leak',
    bug: 'a request Node hands over with its socket (an Upgrade with a body, refused GH_UPGRADE_NOT_ALLOWED in src/server/upgrade.ts writeProblem; CONNECT, refused GH_METHOD_NOT_ALLOWED in #refuseConnect) is answered with socket.end() and the socket is never read again: with more bytes behind it than Node had read (e.g. a 70000-byte body) the client\'s close is never seen, the socket stays open forever and gateway.close() never finishes',
    match: (f) => f.property === 'settles' && /(GH_UPGRADE_NOT_ALLOWED|GH_METHOD_NOT_ALLOWED).*the gateway's socket still open \(destroyed false, readable true, writable false/.test(f.detail),
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
  {
    id: 'status-out-of-range-relayed',
    bug: 'an upstream status outside 100–599 (e.g. "HTTP/1.1 600 OK") is relayed to the client as it is; RFC 9110 §15 calls such codes invalid and a strict client refuses the response (a 502 would be the clean answer)',
    match: (f) => f.property === 'well-formed' && /no HTTP\/1\.1 response: error at \d+: status \d{3} out of range$/.test(f.detail),
  },
  {
    id: 'trailers-forwarded-verbatim',
    bug: 'the upstream\'s trailer fields are passed to the client as they are (Exchange.onComplete → res.addTrailers), framing fields included: a "Transfer-Encoding" or "Content-Length" trailer reaches the client, which RFC 9110 §6.5.1 forbids using and a strict client refuses',
    match: (f) => f.property === 'well-formed' && /no HTTP\/1\.1 response: error at \d+: a framing field in the trailer section$/.test(f.detail),
  },
]
