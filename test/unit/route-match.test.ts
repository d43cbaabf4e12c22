import { after, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { compile, pathRegex, type RouteTable } from '../../src/compile/index.js'
import { validateConfig } from '../../src/config/load.js'
import { IdentityRegistry } from '../../src/identity/registry.js'
import { StoreRegistry } from '../../src/stores/registry.js'
import { createLogger } from '../../src/observability/logger.js'
import { Metrics } from '../../src/observability/metrics.js'
import { TargetRegistry } from '../../src/upstream/target.js'

/** An 8 KiB path (the default listen.limits.max_uri) of 16-byte segments. */
const LONG = ('/v1/' + '0123456789abcde/'.repeat(512)).slice(0, 8192)

const PATHS = [
  '/',
  '/a.png',
  '/img/a.png',
  '/img/a.png/x',
  '/v1/models/m1/predict',
  '/v1/models//predict',
  '/x.json',
  '/.json',
  '/json',
  '/a/b/c.jpg',
  '/a;b=c.png',
  '/%2E%2E/a.png',
  LONG,
  LONG + '.png',
]

describe('path_regex', () => {
  test('a pattern starting with .* or .+ matches exactly the paths it matched unanchored', () => {
    for (
      const source of ['.*\\.(png|jpg)$', '.+\\.json$', '.*?/predict', '.+?/models/', '.*', '.+',
        '.*(?<=/)a\\.png', '.*\\b(json|png)\\b', '.*/(m1)/\\1?predict']
    ) {
      const ours = pathRegex(source)
      assert.equal(ours.source.startsWith('^(?:'), true, `${source} is anchored`)
      const plain = new RegExp(source)
      for (const p of PATHS) {
        assert.equal(ours.test(p), plain.test(p), `${source} on ${p.slice(0, 40)}`)
      }
    }
  })

  test('other patterns are compiled as written', () => {
    for (
      const source of ['^/v[0-9]+/models(/.*)?$', 'models', '\\.*json', '.*\\.json$|^/admin',
        '(.*)\\.json$', '[.*]+x', '\\.+']
    ) {
      assert.equal(pathRegex(source).source, new RegExp(source).source, source)
    }
    // A '|' inside a group or a class does not count as top-level.
    assert.equal(pathRegex('.*\\.(png|jpg)$').source, '^(?:.*\\.(png|jpg)$)')
    assert.equal(pathRegex('.*[|]x').source, '^(?:.*[|]x)')
    assert.equal(pathRegex('.*[\\]|]x').source, '^(?:.*[\\]|]x)')
    assert.equal(pathRegex('.*\\|x').source, '^(?:.*\\|x)')
  })

  test('a leading .* costs time linear in the path, not quadratic', () => {
    const r = pathRegex('.*\\.(png|jpg)$')
    r.test(LONG)
    const t0 = performance.now()
    assert.equal(r.test(LONG), false)
    const ms = performance.now() - t0
    // Unanchored, this one test took ~290 ms (8192 starting points, each running to the end);
    // anchored, ~0.1 ms.
    assert.ok(ms < 25, `${ms.toFixed(1)} ms for one 8 KiB path`)
  })
})

describe('RouteTable.match', () => {
  const registry = new TargetRegistry()
  after(() => registry.closeAll(true))

  function table (routes: unknown[]): RouteTable {
    const config = validateConfig({
      upstreams: { up: { targets: [{ url: 'http://127.0.0.1:9' }] } },
      routes,
    })
    const logger = createLogger('silent')
    const metrics = new Metrics(false)
    const identity = new IdentityRegistry({ logger, metrics }).prepare(config.identity)
    const stores = new StoreRegistry(logger).prepare(config)
    return compile(config, {
      targets: registry.prepare(config.upstreams),
      identity,
      stores,
      metrics,
    })
  }

  test('a path regex runs only once method, host and headers hold', () => {
    const t = table([
      { name: 'other-host', match: { host: 'a.example', path_regex: 'png$' }, upstream: 'up' },
      {
        name: 'other-header',
        match: { headers: { 'x-tenant': 'b' }, path_regex: 'png$' },
        upstream: 'up',
      },
      { name: 'post', match: { methods: ['POST'], path_regex: 'png$' }, upstream: 'up' },
      { name: 'images', match: { path_regex: '.*\\.png$' }, upstream: 'up' },
      { name: 'rest', match: {}, upstream: 'up' },
    ])
    let calls = 0
    for (const r of t.routes) {
      const re = r.pathRegex
      if (re === null) continue
      const test = re.test.bind(re)
      re.test = (s: string) => {
        calls++
        return test(s)
      }
    }
    assert.equal(t.match('GET', 'b.example', '/x/a.png', ['X-Tenant', 'c'])!.name, 'images')
    assert.equal(calls, 1)
    assert.equal(t.match('GET', 'a.example', '/x/a.png', ['X-Tenant', 'b'])!.name, 'other-host')
    assert.equal(t.match('GET', 'b.example', '/x/a.txt', ['X-Tenant', 'b'])!.name, 'rest')
    assert.equal(t.match('POST', 'b.example', '/x/a.png', [])!.name, 'post')
  })
})
