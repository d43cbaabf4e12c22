import { resolve } from 'node:path'
/* eslint-disable no-template-curly-in-string -- ${env:...} and ${file:...} are gatehouse config syntax, not templates */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ConfigError, loadConfigFile, parseConfig, validateConfig } from '../../src/index.js'
import { configError, FILE, issueAt } from '../helpers/config.js'

/** A valid upstreams section, to which tests append a routes section (it ends on line 3). */
const UPSTREAMS = `upstreams:
  ranker:
    targets: [{ url: "http://127.0.0.1:9000" }]
`

describe('parseConfig: valid configs', () => {
  it('converts a full config: durations to ms, sizes to bytes, URLs and methods normalised', () => {
    const config = parseConfig(
      `
listen:
  host: 127.0.0.1
  port: 8443
  timeouts: { headers: 5s, request: 10m, idle: 90s, keep_alive: 1500ms }
  max_header_size: 32KiB
  max_headers: 64
admin: { host: 0.0.0.0, port: 9000, enabled: false }
trusted_proxies: [10.0.0.0/8, "::1"]
log: { level: warn, access: false }
shutdown: { grace: 1m }
upstreams:
  ranker:
    targets:
      - url: http://10.0.0.1:8000/
      - { url: "https://ranker.internal/base/", weight: 3 }
    balance: round_robin
    timeouts: { connect: 500ms, first_byte: 30s, idle: 0 }
    max_connections: 16
    keep_alive: 2s
    ejection: { failures: 3, duration: 1h }
routes:
  - name: search
    match:
      path_prefix: /api/search
      methods: [get, Post]
      host: "*.example.com"
      headers: { x-tenant: acme }
    upstream: ranker
    strip_prefix: /api
    preserve_host: false
    websocket: false
    limits: { max_body: 1.5MiB }
`,
      { env: {} },
    )
    assert.deepEqual(config, {
      listen: {
        host: '127.0.0.1',
        port: 8443,
        timeouts: {
          headers: 5_000,
          request: 600_000,
          idle: 90_000,
          keep_alive: 1_500,
          body_idle: 30_000,
          body_min_rate: 1024,
          send_idle: 60_000,
          linger: 5_000,
        },
        max_header_size: 32 * 1024,
        max_headers: 64,
        limits: {
          max_connections: 10_000,
          max_connections_per_ip: 256,
          max_pipelined: 16,
          max_requests_per_connection: 10_000,
          max_uri: 8192,
        },
        underscores_in_headers: false,
      },
      admin: { host: '0.0.0.0', port: 9000, enabled: false },
      identity: { realm: 'gatehouse', providers: {} },
      stores: {},
      trusted_proxies: ['10.0.0.0/8', '::1'],
      log: { level: 'warn', access: false },
      delivery: {
        store: { kind: 'sqlite', path: resolve('data/delivery.db'), max_size: 1024 * 1024 * 1024 },
        retention: 7 * 86_400_000,
        idempotency_window: 86_400_000,
        status_path: '/_gatehouse/deliveries',
      },
      shutdown: { grace: 60_000 },
      upstreams: {
        ranker: {
          targets: [{ url: 'http://10.0.0.1:8000', weight: 1 }, {
            url: 'https://ranker.internal/base',
            weight: 3,
          }],
          balance: 'round_robin',
          timeouts: { connect: 500, first_byte: 30_000, idle: 0 },
          max_connections: 16,
          max_in_flight: 0,
          queue: { size: 100, timeout: 10_000 },
          keep_alive: 2_000,
          ejection: { failures: 3, duration: 3_600_000 },
        },
      },
      routes: [{
        name: 'search',
        match: {
          path_prefix: '/api/search',
          methods: ['GET', 'POST'],
          host: '*.example.com',
          headers: { 'x-tenant': 'acme' },
        },
        upstream: 'ranker',
        strip_prefix: '/api',
        preserve_host: false,
        websocket: false,
        upgrade: ['websocket'],
        limits: { max_body: 1_572_864, max_buffered_body: 1024 * 1024 },
        on_store_error: 'allow',
      }],
    })
  })

  it('fills every default in a minimal config', () => {
    const config = parseConfig(
      UPSTREAMS + `routes:
  - name: all
    upstream: ranker
`,
      { env: {} },
    )
    assert.deepEqual(config, {
      listen: {
        host: '0.0.0.0',
        port: 8080,
        timeouts: {
          headers: 10_000,
          request: 0,
          idle: 0,
          keep_alive: 5_000,
          body_idle: 30_000,
          body_min_rate: 1024,
          send_idle: 60_000,
          linger: 5_000,
        },
        max_header_size: 16 * 1024,
        max_headers: 100,
        limits: {
          max_connections: 10_000,
          max_connections_per_ip: 256,
          max_pipelined: 16,
          max_requests_per_connection: 10_000,
          max_uri: 8192,
        },
        underscores_in_headers: false,
      },
      admin: { host: '127.0.0.1', port: 9901, enabled: true },
      identity: { realm: 'gatehouse', providers: {} },
      stores: {},
      trusted_proxies: [],
      log: { level: 'info', access: true },
      delivery: {
        store: { kind: 'sqlite', path: resolve('data/delivery.db'), max_size: 1024 * 1024 * 1024 },
        retention: 7 * 86_400_000,
        idempotency_window: 86_400_000,
        status_path: '/_gatehouse/deliveries',
      },
      shutdown: { grace: 30_000 },
      upstreams: {
        ranker: {
          targets: [{ url: 'http://127.0.0.1:9000', weight: 1 }],
          balance: 'least_request',
          timeouts: { connect: 2_000, first_byte: 60_000, idle: 300_000 },
          max_connections: 128,
          max_in_flight: 0,
          queue: { size: 100, timeout: 10_000 },
          keep_alive: 4_000,
          ejection: { failures: 1, duration: 10_000 },
        },
      },
      routes: [{
        name: 'all',
        match: {},
        upstream: 'ranker',
        preserve_host: true,
        websocket: true,
        upgrade: ['websocket'],
        limits: { max_body: 0, max_buffered_body: 1024 * 1024 },
        on_store_error: 'allow',
      }],
    })
  })

  it('treats an empty document as an all-defaults config', () => {
    const config = parseConfig('', { env: {} })
    assert.deepEqual(config.routes, [])
    assert.deepEqual(config.upstreams, {})
    assert.equal(config.listen.port, 8080)
  })

  it('returns a deeply frozen config', () => {
    const config = parseConfig(
      UPSTREAMS + `routes:
  - name: all
    match: { methods: [GET] }
    upstream: ranker
`,
      { env: {} },
    )
    for (
      const part of [config, config.listen, config.listen.timeouts, config.routes, config.routes[0],
        config.routes[0]!.match, config.routes[0]!.match.methods, config.upstreams,
        config.upstreams.ranker, config.upstreams.ranker!.targets[0]]
    ) {
      assert.ok(Object.isFrozen(part))
    }
    assert.throws(() => {
      ;(config.listen as { port: number }).port = 1
    }, TypeError)
    assert.throws(() => {
      ;(config.routes as unknown[]).push({})
    }, TypeError)
  })
})

describe('parseConfig: references between sections', () => {
  it('reports an unknown upstream with a "did you mean" and its line', () => {
    const err = configError(
      UPSTREAMS + `routes:
  - name: first
    upstream: ranker
  - name: second
    upstream: ranker
  - name: third
    match: { path_prefix: /x }
    upstream: rankr
`,
    )
    assert.ok(
      err.message.includes('routes[2].upstream: unknown upstream "rankr" (did you mean "ranker"?)'),
      err.message,
    )
    const issue = issueAt(err, 'routes[2].upstream')
    assert.equal(issue.line, 11)
    assert.ok(
      err.message.includes(`${FILE}:11:15: routes[2].upstream: unknown upstream`),
      err.message,
    )
  })

  it('reports an unknown upstream without a hint when nothing is close', () => {
    const err = configError(
      UPSTREAMS + `routes:
  - { name: a, upstream: embeddings }
`,
    )
    assert.equal(issueAt(err, 'routes[0].upstream').message, 'unknown upstream "embeddings"')
  })

  it('reports a duplicate route name at the second use, naming the first', () => {
    const err = configError(
      UPSTREAMS + `routes:
  - { name: search, upstream: ranker }
  - { name: other, upstream: ranker }
  - { name: search, upstream: ranker }
`,
    )
    const issue = issueAt(err, 'routes[2].name')
    assert.equal(issue.message, 'duplicate route name "search" (first used by routes[0])')
    assert.equal(issue.line, 7)
  })

  it('refuses both path and path_prefix on one route', () => {
    const err = configError(
      UPSTREAMS + `routes:
  - name: a
    upstream: ranker
    match: { path: /a, path_prefix: /b }
`,
    )
    const issue = issueAt(err, 'routes[0].match')
    assert.equal(
      issue.message,
      'use only one of path, path_prefix and path_regex (got path, path_prefix)',
    )
    assert.equal(issue.line, 7)
  })

  it('reports an invalid path_regex with the RegExp error', () => {
    const err = configError(
      UPSTREAMS + `routes:
  - name: a
    upstream: ranker
    match:
      path_regex: "^/(v1|v2"
`,
    )
    const issue = issueAt(err, 'routes[0].match.path_regex')
    assert.match(issue.message, /^invalid regular expression: .*Unterminated group/)
    assert.equal(issue.line, 8)
  })

  it('reports each invalid trusted_proxies entry at its index', () => {
    const err = configError(`trusted_proxies:
  - 10.0.0.0/8
  - 10.0.0.0/33
  - not-an-ip
`)
    assert.deepEqual(err.issues.map((i) => [i.path, i.message, i.line]), [
      ['trusted_proxies[1]',
        'invalid CIDR or address "10.0.0.0/33": the prefix length must be a whole number from 0 to 32',
        3],
      ['trusted_proxies[2]', 'invalid CIDR or address "not-an-ip"', 4],
    ])
  })

  it('refuses a strip_prefix that is not a prefix of match.path_prefix', () => {
    const err = configError(
      UPSTREAMS + `routes:
  - name: a
    upstream: ranker
    match: { path_prefix: /api/v1 }
    strip_prefix: /v1
`,
    )
    const issue = issueAt(err, 'routes[0].strip_prefix')
    assert.equal(issue.message, '"/v1" is not a prefix of match.path_prefix "/api/v1"')
    assert.equal(issue.line, 8)
  })

  it('reports an invalid header name in match.headers', () => {
    const err = configError(
      UPSTREAMS + `routes:
  - name: a
    upstream: ranker
    match: { headers: { "x tenant": acme } }
`,
    )
    assert.equal(
      issueAt(err, 'routes[0].match.headers["x tenant"]').message,
      'not a valid header name',
    )
  })
})

describe('parseConfig: keys and shapes', () => {
  it('reports an unknown key with a "did you mean" at its path and line', () => {
    const err = configError(
      UPSTREAMS + `routes:
  - name: a
    upstrem: ranker
`,
    )
    const issue = issueAt(err, 'routes[0].upstrem')
    assert.equal(issue.message, 'unknown key "upstrem" (did you mean "upstream"?)')
    assert.equal(issue.line, 6)
    assert.ok(err.message.includes(`${FILE}:6:`), err.message)
  })

  it('reports an unknown top-level key with a hint', () => {
    const err = configError('upstream: {}\n')
    assert.equal(
      issueAt(err, 'upstream').message,
      'unknown key "upstream" (did you mean "upstreams"?)',
    )
  })

  it('reports missing required fields as "is required"', () => {
    const err = configError(`upstreams:
  ranker: {}
routes:
  - match: { path: /a }
`)
    assert.deepEqual(err.issues.map((i) => [i.path, i.message]), [
      ['upstreams.ranker.targets', 'is required'],
      ['routes[0].name', 'is required'],
      ['routes[0].upstream', 'is required'],
    ])
    // A missing key is located at its parent mapping.
    assert.equal(issueAt(err, 'routes[0].name').line, 4)
  })

  it('refuses an upstream with no targets', () => {
    const err = configError('upstreams: { ranker: { targets: [] } }\n')
    assert.equal(
      issueAt(err, 'upstreams.ranker.targets').message,
      'an upstream needs at least one target',
    )
  })

  it('reports wrong scalar types as "expected …, got …"', () => {
    const err = configError(`admin: { enabled: "yes" }
listen: { port: "http" }
log: { access: 1 }
`)
    assert.deepEqual(err.issues.map((i) => [i.path, i.message, i.line]), [
      ['listen.port', 'expected number, got string "http"', 2],
      ['admin.enabled', 'expected boolean, got string "yes"', 1],
      ['log.access', 'expected boolean, got number 1', 3],
    ])
  })

  it('accepts numbers and booleans spelled as strings, as ${env:} references produce them', () => {
    const config = parseConfig(
      `listen: { port: "\${env:GH_PORT}", max_headers: "50" }
admin: { enabled: "\${env:GH_ADMIN}" }
`,
      { env: { GH_PORT: '9090', GH_ADMIN: 'false' } },
    )
    assert.equal(config.listen.port, 9090)
    assert.equal(config.listen.max_headers, 50)
    assert.equal(config.admin.enabled, false)
  })

  it('reports a mapping where a list belongs, and a scalar where a mapping belongs', () => {
    const err = configError(`listen: 8080
routes: { name: a }
`)
    assert.equal(issueAt(err, 'listen').message, 'expected object, got number 8080')
    assert.equal(issueAt(err, 'routes').message, 'expected array, got a mapping')
  })

  it('reports a document that is not a mapping at the root', () => {
    const err = configError('- listen\n')
    assert.equal(issueAt(err, '').message, 'expected object, got a list')
    assert.ok(err.message.includes(`${FILE}:1:1: (root): expected object, got a list`), err.message)
  })

  it('reports a duration of the wrong type', () => {
    const err = configError('shutdown: { grace: [1s] }\n')
    assert.equal(
      issueAt(err, 'shutdown.grace').message,
      'expected a string or a number, got a list',
    )
  })

  it('refuses a route name with characters outside the allowed set', () => {
    const err = configError(
      UPSTREAMS + `routes:
  - { name: "search api", upstream: ranker }
`,
    )
    assert.equal(
      issueAt(err, 'routes[0].name').message,
      'use letters, digits, "_", "-" and "." only',
    )
  })

  it('explains the naming rule for an invalid upstream name', () => {
    const err = configError(
      'upstreams: { "ranker v2": { targets: [{ url: "http://127.0.0.1:9000" }] } }\n',
    )
    assert.equal(
      issueAt(err, 'upstreams["ranker v2"]').message,
      'upstream names use letters, digits, "_", "-" and "."',
    )
  })
})

describe('parseConfig: values', () => {
  it('reports an invalid duration with an example of the syntax', () => {
    const err = configError(`listen:
  timeouts:
    headers: 10 sec
`)
    const issue = issueAt(err, 'listen.timeouts.headers')
    assert.equal(issue.message, 'invalid duration "10 sec" (use e.g. 500ms, 2s, 5m, 1h)')
    assert.equal(issue.line, 3)
  })

  it('refuses a duration without a unit, naming its path and line', () => {
    const err = configError(
      UPSTREAMS.replace('    targets:', '    timeouts: { first_byte: 60 }\n    targets:'),
    )
    const issue = issueAt(err, 'upstreams.ranker.timeouts.first_byte')
    assert.equal(
      issue.message,
      'invalid duration 60: a duration needs a unit (use e.g. 60s or 500ms)',
    )
    assert.equal(issue.line, 3)
    assert.equal(
      issueAt(configError('shutdown: { grace: "30" }\n'), 'shutdown.grace').message,
      'invalid duration "30": a duration needs a unit (use e.g. 60s or 500ms)',
    )
  })

  it('takes 0 without a unit', () => {
    const config = parseConfig('shutdown: { grace: 0 }\nlisten: { timeouts: { request: "0" } }\n', {
      env: {},
    })
    assert.equal(config.shutdown.grace, 0)
    assert.equal(config.listen.timeouts.request, 0)
  })

  it('reports a negative duration', () => {
    const err = configError('shutdown: { grace: -5 }\n')
    assert.equal(
      issueAt(err, 'shutdown.grace').message,
      'invalid duration -5 (use e.g. 500ms, 2s, 5m, 1h)',
    )
  })

  it('reports an invalid size with an example of the syntax', () => {
    const err = configError(
      UPSTREAMS + `routes:
  - name: a
    upstream: ranker
    limits: { max_body: 10 MB/s }
`,
    )
    const issue = issueAt(err, 'routes[0].limits.max_body')
    assert.equal(issue.message, 'invalid size "10 MB/s" (use e.g. 512KiB, 10MiB, 1GiB)')
    assert.equal(issue.line, 7)
  })

  it('refuses a port above 65535', () => {
    const err = configError('listen: { port: 70000 }\n')
    const issue = issueAt(err, 'listen.port')
    assert.match(issue.message, /65535/)
    assert.equal(issue.line, 1)
    assert.equal(issue.column, 17)
  })

  it('refuses a negative or fractional port', () => {
    const err = configError('listen: { port: -1 }\nadmin: { port: 80.5 }\n')
    assert.match(issueAt(err, 'listen.port').message, />=0/)
    assert.equal(issueAt(err, 'admin.port').message, 'expected int, got number 80.5')
  })

  it('refuses an unknown HTTP method, naming the allowed ones', () => {
    const err = configError(
      UPSTREAMS + `routes:
  - name: a
    upstream: ranker
    match: { methods: [get, FETCH] }
`,
    )
    const issue = issueAt(err, 'routes[0].match.methods[1]')
    assert.equal(
      issue.message,
      'must be one of "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"',
    )
    assert.equal(issue.line, 7)
  })

  it('refuses an invalid log level, naming the allowed ones', () => {
    const err = configError('log: { level: verbose }\n')
    assert.match(issueAt(err, 'log.level').message, /^must be one of "trace", "debug", "info"/)
  })

  it('refuses a target URL with a non-http scheme', () => {
    const err = configError(
      'upstreams: { ranker: { targets: [{ url: "ftp://10.0.0.1/models" }] } }\n',
    )
    assert.equal(
      issueAt(err, 'upstreams.ranker.targets[0].url').message,
      'target URL must be http:// or https://, got "ftp:"',
    )
  })

  it('refuses a target URL with a query string', () => {
    const err = configError(
      'upstreams: { ranker: { targets: [{ url: "http://10.0.0.1/base?key=1" }] } }\n',
    )
    assert.equal(
      issueAt(err, 'upstreams.ranker.targets[0].url').message,
      'target URL must not carry a query, fragment or credentials',
    )
  })

  it('refuses a target URL with credentials', () => {
    const err = configError(
      'upstreams: { ranker: { targets: [{ url: "http://user:pw@10.0.0.1/" }] } }\n',
    )
    assert.equal(
      issueAt(err, 'upstreams.ranker.targets[0].url').message,
      'target URL must not carry a query, fragment or credentials',
    )
  })

  it('refuses a target URL that does not parse', () => {
    const err = configError('upstreams: { ranker: { targets: [{ url: "10.0.0.1:8000" }] } }\n')
    assert.equal(
      issueAt(err, 'upstreams.ranker.targets[0].url').message,
      'invalid URL "10.0.0.1:8000"',
    )
  })

  it('refuses a match path that does not start with "/"', () => {
    const err = configError(
      UPSTREAMS + `routes:
  - { name: a, upstream: ranker, match: { path: api } }
`,
    )
    assert.equal(issueAt(err, 'routes[0].match.path').message, 'must start with "/"')
  })
})

describe('parseConfig: YAML syntax', () => {
  const BAD_INDENT = `listen:
  port: 8080
 host: 127.0.0.1
`
  const DUPLICATE_KEY = `listen:
  port: 8080
  port: 8081
`

  it('reports a YAML syntax error as a ConfigError', () => {
    const err = configError(BAD_INDENT)
    assert.equal(err.issues.length, 1)
    assert.equal(err.issues[0]!.message, 'All mapping items must start at the same column')
  })

  it('reports the line of a YAML syntax error', () => {
    const err = configError(BAD_INDENT)
    assert.equal(err.issues[0]!.line, 3)
    assert.ok(err.message.startsWith(`${FILE}:3:`), err.message)
  })

  it('reports a duplicate key', () => {
    const err = configError(DUPLICATE_KEY)
    assert.equal(err.issues.length, 1)
    assert.equal(err.issues[0]!.message, 'Map keys must be unique')
  })

  it('reports the line of a duplicate key', () => {
    const err = configError(DUPLICATE_KEY)
    assert.equal(err.issues[0]!.line, 3)
  })
})

describe('parseConfig: ${env:} and ${file:} references', () => {
  let dir: string
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'gatehouse-config-test-'))
  })
  after(() => {
    rmSync(dir, { recursive: true, force: true })
  })

  it('resolves ${env:NAME} from the given environment', () => {
    const config = parseConfig('listen: { host: "${env:GH_HOST}" }\n', {
      env: { GH_HOST: '10.1.2.3' },
    })
    assert.equal(config.listen.host, '10.1.2.3')
  })

  it('resolves a reference embedded in a longer string', () => {
    const config = parseConfig(
      'upstreams: { ranker: { targets: [{ url: "http://${env:GH_UP_HOST}:8000/v1" }] } }\n',
      { env: { GH_UP_HOST: '10.0.0.7' } },
    )
    assert.equal(config.upstreams.ranker!.targets[0]!.url, 'http://10.0.0.7:8000/v1')
  })

  it('reports a missing environment variable at the path and line that use it', () => {
    const err = configError(
      `listen:
  port: 8080
  host: "\${env:GH_MISSING_HOST}"
`,
      { env: {} },
    )
    const issue = issueAt(err, 'listen.host')
    assert.equal(issue.message, 'environment variable GH_MISSING_HOST is not set')
    assert.equal(issue.line, 3)
  })

  it('uses the ${env:NAME:-default} fallback when the variable is unset', () => {
    const config = parseConfig('listen: { host: "${env:GH_HOST:-127.0.0.1}" }\n', { env: {} })
    assert.equal(config.listen.host, '127.0.0.1')
  })

  it('prefers the variable over the fallback when it is set', () => {
    const config = parseConfig('listen: { host: "${env:GH_HOST:-127.0.0.1}" }\n', {
      env: { GH_HOST: '10.9.9.9' },
    })
    assert.equal(config.listen.host, '10.9.9.9')
  })

  it('keeps $${env:NAME} as the literal text ${env:NAME}', () => {
    const config = parseConfig('listen: { host: "$${env:GH_HOST}" }\n', {
      env: { GH_HOST: 'should-not-appear' },
    })
    assert.equal(config.listen.host, '${env:GH_HOST}')
  })

  it('does not resolve references inside a resolved value', () => {
    const config = parseConfig('listen: { host: "${env:GH_OUTER}" }\n', {
      env: { GH_OUTER: '${env:GH_INNER}', GH_INNER: 'nested' },
    })
    assert.equal(config.listen.host, '${env:GH_INNER}')
  })

  it('resolves secrets inside a flow list', () => {
    const config = parseConfig('trusted_proxies: ["${env:GH_PROXY_A}", "${env:GH_PROXY_B}"]\n', {
      env: { GH_PROXY_A: '10.0.0.0/8', GH_PROXY_B: '192.168.1.1' },
    })
    assert.deepEqual(config.trusted_proxies, ['10.0.0.0/8', '192.168.1.1'])
  })

  it('reports a missing variable inside a flow list at its index', () => {
    const err = configError('trusted_proxies: ["10.0.0.0/8", "${env:GH_PROXY_B}"]\n', { env: {} })
    const issue = err.issues.find((i) => i.message === 'environment variable GH_PROXY_B is not set')
    assert.ok(issue !== undefined, err.message)
    assert.equal(issue.path, 'trusted_proxies[1]')
    assert.equal(issue.line, 1)
  })

  it('reports a missing variable once, without a follow-on error about the empty value', () => {
    const err = configError('trusted_proxies: ["10.0.0.0/8", "${env:GH_PROXY_B}"]\n', { env: {} })
    assert.deepEqual(err.issues.map((i) => i.message), [
      'environment variable GH_PROXY_B is not set',
    ])
  })

  it('resolves ${file:relative} against the config file\'s directory, stripping the trailing newline', () => {
    const confDir = join(dir, 'conf')
    mkdirSync(join(confDir, 'secrets'), { recursive: true })
    writeFileSync(join(confDir, 'secrets', 'upstream-host'), '10.4.4.4\n')
    writeFileSync(
      join(confDir, FILE),
      'upstreams: { ranker: { targets: [{ url: "http://${file:secrets/upstream-host}:8000" }] } }\n',
    )
    // The process's cwd is the repository, not confDir: the path must resolve against confDir.
    assert.notEqual(process.cwd(), confDir)
    const config = loadConfigFile(join(confDir, FILE), { env: {} })
    assert.equal(config.upstreams.ranker!.targets[0]!.url, 'http://10.4.4.4:8000')
  })

  it('resolves ${file:relative} against the baseDir given to parseConfig', () => {
    writeFileSync(join(dir, 'host.txt'), '10.5.5.5\r\n')
    const config = parseConfig('listen: { host: "${file:host.txt}" }\n', { env: {}, baseDir: dir })
    assert.equal(config.listen.host, '10.5.5.5')
  })

  it('strips only one trailing newline from a file reference', () => {
    writeFileSync(join(dir, 'tenant.txt'), 'acme\n\n')
    const config = parseConfig(
      UPSTREAMS + `routes:
  - { name: a, upstream: ranker, match: { headers: { x-tenant: "\${file:tenant.txt}" } } }
`,
      { env: {}, baseDir: dir },
    )
    assert.equal(config.routes[0]!.match.headers!['x-tenant'], 'acme\n')
  })

  it('reports a missing file reference with its resolved path and the error code', () => {
    const err = configError(
      `listen:
  host: "\${file:no-such-secret}"
`,
      { baseDir: dir },
    )
    const issue = issueAt(err, 'listen.host')
    assert.equal(issue.message, `cannot read ${join(dir, 'no-such-secret')}: ENOENT`)
    assert.equal(issue.line, 2)
  })
})

describe('parseConfig: several problems', () => {
  it('reports every schema problem at once, each with its own path and line', () => {
    const err = configError(`listen: { port: 70000, hots: 127.0.0.1 }
shutdown: { grace: forever }
upstreams:
  ranker:
    targets: [{ url: "ftp://x" }]
`)
    assert.deepEqual(err.issues.map((i) => [i.path, i.line]), [
      ['listen.port', 1],
      ['listen.hots', 1],
      ['shutdown.grace', 2],
      ['upstreams.ranker.targets[0].url', 5],
    ])
    assert.equal(err.message.split('\n').length, 4)
  })

  it('reports every cross-reference problem at once', () => {
    const err = configError(
      UPSTREAMS + `routes:
  - { name: a, upstream: rankr }
  - { name: a, upstream: ranker, match: { path_regex: "(" } }
trusted_proxies: [bogus]
`,
    )
    assert.deepEqual(err.issues.map((i) => i.path), ['routes[0].upstream', 'routes[1].name',
      'routes[1].match.path_regex', 'trusted_proxies[0]'])
  })

  it('reports a cross-reference problem alongside a schema problem', () => {
    const err = configError(
      UPSTREAMS + `listen: { port: 70000 }
routes:
  - { name: a, upstream: rankr }
`,
    )
    assert.deepEqual(err.issues.map((i) => i.path).sort(), ['listen.port', 'routes[0].upstream'])
  })

  it('checks the cross-references of a route the schema refused part of', () => {
    const err = configError(
      UPSTREAMS + `routes:
  - name: a
    upstream: rankr
    limits: { max_body: lots }
    rate_limit: [{ key: subject, rate: 1/s }]
`,
    )
    assert.deepEqual(err.issues.map((i) => [i.path, i.line]), [
      ['routes[0].limits.max_body', 7],
      ['routes[0].upstream', 6],
      ['routes[0].rate_limit[0].key', 8],
    ])
  })

  it('counts a value the schema refused as given: an invalid rate is not also "give either rate or quota"', () => {
    const err = configError(
      UPSTREAMS + `routes:
  - { name: a, upstream: ranker, rate_limit: [{ key: ip, rate: 10/fortnight, burst: 5 }] }
`,
    )
    assert.deepEqual(err.issues.map((i) => i.path), ['routes[0].rate_limit[0].rate'])
  })

  it('reports a transform expression that does not compile beside a schema problem', () => {
    const err = configError(
      UPSTREAMS + `listen: { port: 70000 }
routes:
  - { name: a, upstream: ranker, transform: { request: { body: "(" } } }
`,
    )
    assert.deepEqual(err.issues.map((i) => [i.path, i.line]), [['listen.port', 4], [
      'routes[0].transform.request.body',
      6,
    ]])
    assert.match(
      issueAt(err, 'routes[0].transform.request.body').message,
      /^invalid JSONata expression: /,
    )
  })
})

describe('validateConfig', () => {
  it('reports problems without line numbers when there is no YAML source', () => {
    assert.throws(() => validateConfig({ listen: { port: 'x' } }), (err: unknown) => {
      assert.ok(err instanceof ConfigError)
      assert.deepEqual(err.issues, [{
        path: 'listen.port',
        message: 'expected number, got string "x"',
      }])
      assert.equal(err.message, 'config: listen.port: expected number, got string "x"')
      return true
    })
  })

  it('accepts an already-validated config unchanged, leaving a literal ${...} alone', () => {
    const config = parseConfig('listen: { host: "$${env:GH_LITERAL}" }\n', { env: {} })
    assert.equal(config.listen.host, '${env:GH_LITERAL}')
    const again = validateConfig(config, { env: {} })
    assert.equal(again.listen.host, '${env:GH_LITERAL}')
  })

  it('accepts a spread copy of a validated config, whose durations are milliseconds', () => {
    const config = parseConfig(
      UPSTREAMS + 'routes: [{ name: all, upstream: ranker }]\nshutdown: { grace: 1m }\n',
      { env: {} },
    )
    const copy = validateConfig({ ...config, log: { level: 'warn' } }, { env: {} })
    assert.equal(copy.log.level, 'warn')
    assert.equal(copy.shutdown.grace, 60_000)
    assert.deepEqual(copy.upstreams, config.upstreams)
    // Numbers in objects the caller made are the caller's: they still need a unit.
    assert.throws(
      () => validateConfig({ ...config, shutdown: { grace: 60_000 } }, { env: {} }),
      /shutdown\.grace: invalid duration 60000: a duration needs a unit \(use e\.g\. 60s or 500ms\)/,
    )
  })
})
