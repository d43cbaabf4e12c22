'use strict'
// Stands in for the `undici` package entry point in the CLI bundle only (scripts/bundle.js).
// src/ imports undici's public names; the entry point that exports them also loads fetch,
// WebSocket, EventSource, the cache stores and the mock agents, none of which Gatehouse uses:
// ~75 undici modules (and node:http2 and more), bundled and run at every start. This gives the
// same objects from the modules the entry point takes them from, and nothing else.
//
// test/unit/bundle-shims.test.ts checks that every name src/ imports from undici is here and is
// the package's own, so an import this lacks fails there rather than in production.
const Dispatcher = require('undici/lib/dispatcher/dispatcher.js')

// As the entry point does: request(), stream(), pipeline(), upgrade() and connect() on every
// dispatcher (src/identity/http.ts calls agent.request()).
Object.assign(Dispatcher.prototype, require('undici/lib/api/index.js'))

module.exports = {
  Dispatcher,
  Pool: require('undici/lib/dispatcher/pool.js'),
  Agent: require('undici/lib/dispatcher/agent.js'),
  buildConnector: require('undici/lib/core/connect.js'),
  errors: require('undici/lib/core/errors.js'),
}
