import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import http2 from 'node:http2'
import { createRequire } from 'node:module'

// scripts/shims/http2.cjs stands in for node:http2 inside undici's HTTP/2 client in the CLI bundle
// (scripts/bundle.js). These checks make an undici upgrade that uses more of node:http2 fail here
// rather than in production.
const require = createRequire(import.meta.url)
const shim = require('../../scripts/shims/http2.cjs') as { constants: Record<string, unknown>, connect: (...args: unknown[]) => unknown }
const clientH2 = readFileSync(require.resolve('undici/lib/dispatcher/client-h2.js'), 'utf8')

describe('the http2 stand-in for undici (CLI bundle)', () => {
  it('has every constant client-h2 destructures, each equal to node:http2\'s', () => {
    const block = /const \{\s*constants: \{([^}]*)\}\s*\} = http2/.exec(clientH2)
    assert.ok(block, 'client-h2.js no longer destructures http2.constants in one statement: review scripts/shims/http2.cjs')
    const names = (block[1] ?? '').split(',').map((s) => s.trim()).filter((s) => s !== '')
    assert.ok(names.length >= 8, `expected the pseudo-header constants, found ${names.join(', ')}`)
    const real = http2.constants as unknown as Record<string, unknown>
    for (const name of names) {
      assert.ok(name in shim.constants, `${name} is missing from the shim`)
      assert.equal(shim.constants[name], real[name], name)
    }
  })

  it('is only used through connect(), which is the real one', () => {
    const members = new Set([...clientH2.matchAll(/\bhttp2\.(\w+)/g)].map((m) => m[1]))
    members.delete('constants')
    assert.deepEqual([...members], ['connect'])
    // connect() forwards to node:http2: a refused connection fails as the real one does.
    const session = shim.connect('http://127.0.0.1:1') as http2.ClientHttp2Session
    return new Promise<void>((resolve) => {
      session.on('error', (err: NodeJS.ErrnoException) => {
        assert.equal(err.code, 'ECONNREFUSED')
        resolve()
      })
    })
  })

  it('is what the bundle resolves undici\'s node:http2 to, and nothing else', () => {
    const bundle = readFileSync(new URL('../../dist/gatehouse.cjs', import.meta.url), 'utf8')
    assert.equal(bundle.match(/require\("(node:)?http2"\)/g)?.length, 1, 'one require of node:http2 left: the one inside the shim\'s connect()')
    assert.match(bundle, /HTTP2_HEADER_AUTHORITY:":authority"/)
  })
})
