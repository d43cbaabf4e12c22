'use strict'
// Stands in for `node:http2` inside undici's HTTP/2 client (lib/dispatcher/client-h2.js), in the
// CLI bundle only (scripts/bundle.js). undici requires node:http2 when its module loads, and
// loading it (with node:tls and http2's compat layer) was the largest single part of Gatehouse's
// module initialisation: 8-10 ms of a ~300 ms cold start on the 2-vCPU bench VM. Gatehouse's pools
// speak HTTP/1.1 only (no allowH2), so undici never opens an HTTP/2 session; if a later version
// did, connect() loads the real module then.
//
// client-h2 destructures these constants when it loads. They are fixed by the protocol (RFC 9113
// pseudo-headers and error codes); test/unit/bundle-shims.test.ts checks each against node:http2
// and checks that client-h2 uses nothing else, so an undici upgrade that needs more fails there.
const constants = Object.freeze({
  HTTP2_HEADER_AUTHORITY: ':authority',
  HTTP2_HEADER_METHOD: ':method',
  HTTP2_HEADER_PATH: ':path',
  HTTP2_HEADER_SCHEME: ':scheme',
  HTTP2_HEADER_CONTENT_LENGTH: 'content-length',
  HTTP2_HEADER_EXPECT: 'expect',
  HTTP2_HEADER_STATUS: ':status',
  HTTP2_HEADER_PROTOCOL: ':protocol',
  NGHTTP2_REFUSED_STREAM: 7,
  NGHTTP2_CANCEL: 8,
})

module.exports = {
  constants,
  connect (...args) {
    return require('node:http2').connect(...args)
  },
}
