import { after, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { readdirSync, readFileSync } from 'node:fs'
import { compile, describeTable, type CompileDeps } from '../../src/compile/index.js'
import { compileChecks } from '../../src/compile/checks.js'
import { validateConfig } from '../../src/config/load.js'
import type { Config } from '../../src/config/schema.js'
import { ConfigError } from '../../src/errors/index.js'
import { IdentityRegistry } from '../../src/identity/registry.js'
import { StoreRegistry } from '../../src/stores/registry.js'
import { createLogger } from '../../src/observability/logger.js'
import { Metrics } from '../../src/observability/metrics.js'
import { TargetRegistry, type Target } from '../../src/upstream/target.js'

const RAW = {
  upstreams: {
    up: {
      targets: [{ url: 'http://127.0.0.1:9/base/' }, { url: 'http://127.0.0.1:10', weight: 2 }],
    },
  },
  routes: [
    {
      name: 'a',
      match: { path_prefix: '/a' },
      upstream: 'up',
      rate_limit: [{ key: 'ip', rate: '10/s' }],
    },
    {
      name: 'b',
      match: { path: '/b' },
      upstream: 'up',
      transform: { response: { body: '{ "x": x }' } },
    },
  ],
}

function deps (config: Config, targets: Map<string, Target[]>): CompileDeps {
  const logger = createLogger('silent')
  const metrics = new Metrics(false)
  return {
    targets,
    identity: new IdentityRegistry({ logger, metrics }).prepare(config.identity),
    stores: new StoreRegistry(logger).prepare(config),
    metrics,
  }
}

describe('compile', () => {
  const registry = new TargetRegistry()
  after(() => registry.closeAll(true))

  test('builds on the targets it is given (the same objects, in config order) and makes none', () => {
    const config = validateConfig(RAW)
    const targets = registry.prepare(config.upstreams)
    const table = compile(config, deps(config, targets))
    const given = targets.get('up')!
    assert.equal(given.length, 2)
    assert.deepEqual(table.upstreams.get('up')!.targets, given)
    assert.ok(table.upstreams.get('up')!.targets.every((t, i) => t === given[i]))
    assert.deepEqual([...table.targetKeys], given.map((t) => t.key))
  })

  test('a table compiled without targets (gatehouse routes) is described as one with them', () => {
    const config = validateConfig(RAW)
    const served = compile(config, deps(config, registry.prepare(config.upstreams)))
    const described = compile(config, deps(config, new Map([['up', []]])))
    assert.equal(described.upstreams.get('up')!.targets.length, 0)
    assert.equal(described.targetKeys.size, 0)
    assert.equal(describeTable(described), describeTable(served))
    assert.match(
      describeTable(described),
      /up \(least_request: http:\/\/127\.0\.0\.1:9\/base http:\/\/127\.0\.0\.1:10\)/,
    )
  })

  test('refuses an upstream whose targets were not prepared', () => {
    const config = validateConfig(RAW)
    assert.throws(
      () => compile(config, deps(config, new Map())),
      /no targets were prepared for upstream "up"/,
    )
  })

  test('a config validated without compileChecks is refused with a ConfigError at the expression\'s path', () => {
    const config = validateConfig({
      ...RAW,
      routes: [{
        name: 'r',
        match: {},
        upstream: 'up',
        transform: { request: { body: '{ "a": b ' } },
      }],
    })
    assert.throws(() => compile(config, deps(config, new Map([['up', []]]))), (err: unknown) => {
      assert.ok(err instanceof ConfigError)
      assert.deepEqual(err.issues, [{
        path: 'routes[0].transform.request.body',
        message:
          'invalid JSONata expression: Expected "}" before end of expression (at character 9)',
      }])
      return true
    })
  })
})

describe('the checks config/ cannot make itself', () => {
  const bad = {
    ...RAW,
    routes: [{ name: 'r', match: {}, upstream: 'up', transform: { response: { events: '(' } } }],
  }

  test('config/ knows nothing of JSONata: validateConfig refuses an expression only with compileChecks', () => {
    assert.doesNotThrow(() => validateConfig(bad))
    assert.throws(
      () => validateConfig(bad, { checks: compileChecks }),
      /routes\[0\]\.transform\.response\.events: invalid JSONata expression/,
    )
  })

  test('src/config imports nothing from a later layer', () => {
    const dir = new URL('../../src/config/', import.meta.url)
    for (const file of readdirSync(dir)) {
      const text = readFileSync(new URL(file, dir), 'utf8')
      for (const [, from] of text.matchAll(/^(?:import|export)\b[^'"]*from '(\.[^']+)'/gm)) {
        assert.match(from!, /^\.\/|^\.\.\/(errors|net)\//, `${file} imports ${from}`)
      }
    }
  })
})
