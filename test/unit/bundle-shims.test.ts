import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { readdirSync, readFileSync } from 'node:fs'
import http2 from 'node:http2'
import { createRequire } from 'node:module'

// scripts/shims/http2.cjs stands in for node:http2 inside undici's HTTP/2 client in the CLI bundle
// (scripts/bundle.js). These checks make an undici upgrade that uses more of node:http2 fail here
// rather than in production.
const require = createRequire(import.meta.url)
const shim = require('../../scripts/shims/http2.cjs') as {
  constants: Record<string, unknown>
  connect: (...args: unknown[]) => unknown
}
const clientH2 = readFileSync(require.resolve('undici/lib/dispatcher/client-h2.js'), 'utf8')

describe('the http2 stand-in for undici (CLI bundle)', () => {
  it('has every constant client-h2 destructures, each equal to node:http2\'s', () => {
    const block = /const \{\s*constants: \{([^}]*)\}\s*\} = http2/.exec(clientH2)
    assert.ok(
      block,
      'client-h2.js no longer destructures http2.constants in one statement: review scripts/shims/http2.cjs',
    )
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
    assert.equal(
      bundle.match(/require\("(node:)?http2"\)/g)?.length,
      1,
      'one require of node:http2 left: the one inside the shim\'s connect()',
    )
    assert.match(bundle, /HTTP2_HEADER_AUTHORITY:":authority"/)
  })
})

// scripts/shims/undici.cjs stands in for undici's entry point in the CLI bundle: the names src/
// imports, without fetch, WebSocket and the rest. An import it lacks must fail here.
describe('the undici stand-in (CLI bundle)', () => {
  const stand = require('../../scripts/shims/undici.cjs') as Record<string, unknown>
  const undici = require('undici') as Record<string, unknown>

  /** Every name a module in src/ imports from 'undici' as a value (type-only imports aside). */
  function importedNames (): Set<string> {
    const names = new Set<string>()
    const walk = (dir: URL): void => {
      for (const e of readdirSync(dir, { withFileTypes: true })) {
        if (e.isDirectory()) walk(new URL(`${e.name}/`, dir))
        else if (e.name.endsWith('.ts')) {
          const text = readFileSync(new URL(e.name, dir), 'utf8')
          for (
            const m of text.matchAll(/^import (?!type )(?:\w+\s*,\s*)?\{([^}]*)\} from 'undici'$/gm)
          ) {
            for (const part of m[1]!.split(',')) {
              const name = part.trim().split(/\s+as\s+/)[0]!
              if (name !== '' && !name.startsWith('type ')) names.add(name)
            }
          }
          assert.doesNotMatch(
            text,
            /^import (?!type )\w+ from 'undici'|^import \* as \w+ from 'undici'/m,
            `${e.name}: a default or namespace import of undici; the stand-in has named exports only`,
          )
        }
      }
    }
    walk(new URL('../../src/', import.meta.url))
    return names
  }

  it('has every name src/ imports from undici, each the package\'s own', () => {
    const names = importedNames()
    assert.ok(names.has('Pool') && names.has('buildConnector'), `found ${[...names].join(', ')}`)
    for (const name of names) {
      assert.ok(name in stand, `${name} is missing from scripts/shims/undici.cjs`)
      assert.equal(stand[name], undici[name], name)
    }
  })

  it('gives every dispatcher the request API, as the entry point does', () => {
    // In a process of its own: this one has loaded the entry point, which does the same.
    const shimPath = require.resolve('../../scripts/shims/undici.cjs')
    const out = spawnSync(process.execPath, ['-e',
      `const u = require(${
        JSON.stringify(shimPath)
      }); const a = new u.Agent(); process.stdout.write(typeof a.request); a.close()`], {
      encoding: 'utf8',
    })
    assert.equal(out.stdout, 'function', out.stderr)
  })

  it('is what the bundle resolves undici to: its entry point is not in the bundle', () => {
    const map = JSON.parse(
      readFileSync(new URL('../../dist/gatehouse.cjs.map', import.meta.url), 'utf8'),
    ) as { sources: string[] }
    assert.ok(map.sources.some((s) => s.endsWith('scripts/shims/undici.cjs')))
    assert.equal(map.sources.filter((s) => /node_modules\/undici\/index\.js$/.test(s)).length, 0)
    assert.equal(
      map.sources.filter((s) =>
        /node_modules\/undici\/lib\/web\/(websocket|eventsource|fetch\/index)/.test(s)
      ).length,
      0,
    )
  })
})
