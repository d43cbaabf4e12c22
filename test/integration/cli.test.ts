/* eslint-disable no-template-curly-in-string -- ${env:...} is gatehouse config syntax, not a template */
import { describe, it, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { spawn, type ChildProcessByStdio } from 'node:child_process'
import { once } from 'node:events'
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import net, { type AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import type { Readable } from 'node:stream'
import { BIN, runCli } from '../helpers/cli.js'
import { createGateway } from '../../src/index.js'
import { LogCapture, request, startUpstream, type Upstream } from '../helpers/index.js'

/*
 * The `gatehouse` executable, run as users run it: `node bin/gatehouse.cjs` (which imports dist/,
 * so `npm run build` must have run). Nothing here sleeps: every wait is for a JSON log line on
 * the child's stdout, an HTTP answer, or the child's exit, each with a bounded deadline.
 */

const WAIT_MS = 10_000

type LogLine = Record<string, any>

/** A running `gatehouse start`, with its stdout parsed into JSON log lines. */
class GatehouseProcess {
  readonly child: ChildProcessByStdio<null, Readable, Readable>
  readonly logs: LogLine[] = []
  stderr = ''
  /** Resolves when the process has exited and its output is fully read. */
  readonly exited: Promise<{ code: number | null, signal: NodeJS.Signals | null }>
  #partial = ''
  #done = false
  readonly #listeners = new Set<() => void>()

  constructor (configFile: string, env: NodeJS.ProcessEnv = process.env) {
    this.child = spawn(process.execPath, [BIN, 'start', '--config', configFile], {
      cwd: dirname(configFile),
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    this.child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
      const parts = (this.#partial + chunk).split('\n')
      this.#partial = parts.pop()!
      for (const text of parts) {
        if (text === '') continue
        try {
          this.logs.push(JSON.parse(text))
        } catch {
          this.logs.push({ unparsed: text })
        }
      }
      this.#notify()
    })
    this.child.stderr.setEncoding('utf8').on('data', (c: string) => {
      this.stderr += c
    })
    this.exited = new Promise((resolve) => {
      this.child.once('close', (code, signal) => {
        this.#done = true
        this.#notify()
        resolve({ code, signal })
      })
    })
  }

  /** Number of log lines so far: pass to waitForLog to consider only later lines. */
  mark (): number {
    return this.logs.length
  }

  /** The first log line at index >= `since` matching `pred`; rejects on exit or after `timeoutMs`. */
  waitForLog (pred: (l: LogLine) => boolean, since = 0, timeoutMs = WAIT_MS): Promise<LogLine> {
    return new Promise((resolve, reject) => {
      const check = (): void => {
        const found = this.logs.slice(since).find(pred)
        if (found !== undefined) finish(null, found)
        else if (this.#done) {
          finish(new Error(`gatehouse exited before the expected log line\n${this.#transcript()}`))
        }
      }
      const timer = setTimeout(
        () =>
          finish(new Error(`no matching log line within ${timeoutMs} ms\n${this.#transcript()}`)),
        timeoutMs,
      )
      const finish = (err: Error | null, line?: LogLine): void => {
        clearTimeout(timer)
        this.#listeners.delete(check)
        if (err === null) resolve(line!)
        else reject(err)
      }
      this.#listeners.add(check)
      check()
    })
  }

  /** Exit status, failing if the process has not exited within `timeoutMs`. */
  async waitForExit (
    timeoutMs = WAIT_MS,
  ): Promise<{ code: number | null, signal: NodeJS.Signals | null }> {
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(
        () =>
          reject(new Error(`gatehouse did not exit within ${timeoutMs} ms\n${this.#transcript()}`)),
        timeoutMs,
      )
    })
    try {
      return await Promise.race([this.exited, timeout])
    } finally {
      clearTimeout(timer)
    }
  }

  /** Test cleanup: SIGKILL the child if it is still running. */
  async kill (): Promise<void> {
    if (this.#done) return
    this.child.kill('SIGKILL')
    await this.exited
  }

  #notify (): void {
    for (const l of [...this.#listeners]) l()
  }

  #transcript (): string {
    return `stdout:\n${this.logs.map((l) => JSON.stringify(l)).join('\n')}\nstderr:\n${this.stderr}`
  }
}

interface Ports {
  listen: number
  admin: number
}

/**
 * `listen.port: 0` would not be discoverable from outside the child, so find free ports by
 * binding temporary listeners on port 0 (both at once, so they differ) and releasing them.
 */
async function freePorts (): Promise<Ports> {
  const servers = [net.createServer(), net.createServer()]
  for (const s of servers) {
    s.listen(0, '127.0.0.1')
    await once(s, 'listening')
  }
  const [listen, admin] = servers.map((s) => (s.address() as AddressInfo).port) as [number, number]
  await Promise.all(servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))))
  return { listen, admin }
}

function tempDir (t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'gatehouse-cli-test-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

const FIRST_ROUTE = '  - { name: first, match: { path_prefix: /first }, upstream: backend }'
const SECOND_ROUTE = '  - { name: second, match: { path_prefix: /second }, upstream: backend }'

function gatewayYaml (ports: Ports, upstreamUrl: string, ...routes: string[]): string {
  return [
    `listen: { host: 127.0.0.1, port: ${ports.listen} }`,
    `admin: { host: 127.0.0.1, port: ${ports.admin} }`,
    'log: { level: info }',
    'shutdown: { grace: 20s }',
    'upstreams:',
    '  backend:',
    `    targets: [{ url: "${upstreamUrl}" }]`,
    'routes:',
    ...routes,
  ].join('\n') + '\n'
}

/** An upstream that answers with the path it saw. */
async function echoUpstream (t: TestContext): Promise<Upstream> {
  const upstream = await startUpstream((req, res) => {
    res.end(`upstream saw ${req.url}`)
  })
  t.after(() => upstream.close())
  return upstream
}

interface Started {
  gh: GatehouseProcess
  url: string
  ports: Ports
}

/** Spawn `gatehouse start --config <file>` and wait until it logs "listening". */
async function startGatehouse (
  t: TestContext,
  configFile: string,
  ports: Ports,
  env?: NodeJS.ProcessEnv,
): Promise<Started> {
  const gh = new GatehouseProcess(configFile, env)
  t.after(() => gh.kill())
  const listening = await gh.waitForLog((l) => l.msg === 'listening')
  assert.equal(listening.port, ports.listen)
  assert.equal(listening.admin_port, ports.admin)
  return { gh, url: `http://127.0.0.1:${ports.listen}`, ports }
}

/** Resolves with 'connected' or the connection error's code. */
function connectOutcome (port: number): Promise<string> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1')
    socket.once('connect', () => {
      socket.destroy()
      resolve('connected')
    })
    socket.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message))
  })
}

const VALID_CONFIG = `listen: { host: 127.0.0.1, port: 18080 }
admin: { host: 127.0.0.1, port: 19901 }
upstreams:
  ranker:
    targets: [{ url: "http://127.0.0.1:9000" }, { url: "http://127.0.0.1:9001/v2" }]
    balance: round_robin
routes:
  - name: search
    match: { path_prefix: /v1/search, methods: [GET] }
    upstream: ranker
    strip_prefix: /v1
  - name: health
    match: { path: /health }
    upstream: ranker
`

describe('gatehouse check', () => {
  it('exits 0 and prints a one-line summary for a valid config', async (t) => {
    const dir = tempDir(t)
    writeFileSync(join(dir, 'gatehouse.yaml'), VALID_CONFIG)
    const result = await runCli(['check', '--config', 'gatehouse.yaml'], dir)
    assert.equal(result.code, 0, result.stderr)
    assert.equal(
      result.stdout,
      'gatehouse.yaml: ok: 2 routes, 1 upstream; listen http://127.0.0.1:18080, admin 127.0.0.1:19901\n',
    )
    assert.equal(result.stderr, '')
  })

  it('warns (exit 0) when a route accepts introspected tokens without an audience check', async (t) => {
    const dir = tempDir(t)
    writeFileSync(
      join(dir, 'gatehouse.yaml'),
      VALID_CONFIG.replace(
        'routes:\n',
        `identity:
  providers:
    partner:
      kind: introspection
      endpoint: https://idp.example.com/introspect
      client_id: gatehouse
      client_secret: s3cret
    scoped:
      kind: introspection
      endpoint: https://idp.example.com/introspect
      client_id: gatehouse
      client_secret: s3cret
      audiences: [ml-api]
routes:
`,
      ).replace(
        '    strip_prefix: /v1\n',
        '    strip_prefix: /v1\n    auth: { any_of: [scoped, partner] }\n',
      ),
    )
    const result = await runCli(['check'], dir)
    assert.equal(result.code, 0, result.stderr)
    assert.match(result.stdout, /^gatehouse\.yaml: ok: 2 routes/)
    assert.equal(
      result.stderr,
      'gatehouse.yaml: warning: route "search" accepts tokens from introspection provider ' +
        '"partner", which checks no audience: an active token issued for another API is ' +
        'accepted too (set identity.providers.partner.audiences)\n',
    )
  })

  it('reads ./gatehouse.yaml when no --config is given', async (t) => {
    const dir = tempDir(t)
    writeFileSync(join(dir, 'gatehouse.yaml'), VALID_CONFIG)
    const result = await runCli(['check'], dir)
    assert.equal(result.code, 0, result.stderr)
    assert.match(result.stdout, /^gatehouse\.yaml: ok: 2 routes, 1 upstream;/)
  })

  it('exits 1 and prints each problem with its path and file:line:col', async (t) => {
    const dir = tempDir(t)
    writeFileSync(
      join(dir, 'bad.yaml'),
      `listen: { port: 70000 }
upstreams:
  ranker:
    targets: [{ url: "ftp://127.0.0.1" }]
routes:
  - name: search
    upstream: ranker
    limits: { max_body: lots }
`,
    )
    const result = await runCli(['check', '-c', 'bad.yaml'], dir)
    assert.equal(result.code, 1)
    assert.equal(result.stdout, '')
    assert.deepEqual(result.stderr.trimEnd().split('\n'), [
      'bad.yaml:1:17: listen.port: Too big: expected number to be <=65535',
      'bad.yaml:4:22: upstreams.ranker.targets[0].url: target URL must be http:// or https://, got "ftp:"',
      'bad.yaml:8:25: routes[0].limits.max_body: invalid size "lots" (use e.g. 512KiB, 10MiB, 1GiB)',
      '3 problems in bad.yaml',
    ])
  })

  it('reports a transform expression that does not compile at its path and line, beside other problems', async (t) => {
    const dir = tempDir(t)
    writeFileSync(
      join(dir, 'gatehouse.yaml'),
      VALID_CONFIG.replace(
        '    strip_prefix: /v1\n',
        `    strip_prefix: /v1
    limits: { max_body: lots }
    transform: { response: { body: '{ "a": b ' } }
`,
      ),
    )
    const result = await runCli(['check'], dir)
    assert.equal(result.code, 1)
    assert.deepEqual(result.stderr.trimEnd().split('\n'), [
      'gatehouse.yaml:12:25: routes[0].limits.max_body: invalid size "lots" (use e.g. 512KiB, 10MiB, 1GiB)',
      'gatehouse.yaml:13:36: routes[0].transform.response.body: invalid JSONata expression: Expected "}" before end of expression (at character 9)',
      '2 problems in gatehouse.yaml',
    ])
  })

  it('reports an unknown upstream with its line and a "did you mean"', async (t) => {
    const dir = tempDir(t)
    writeFileSync(
      join(dir, 'gatehouse.yaml'),
      VALID_CONFIG.replace(
        '    upstream: ranker\n    strip_prefix',
        '    upstream: rankr\n    strip_prefix',
      ),
    )
    const result = await runCli(['check'], dir)
    assert.equal(result.code, 1)
    assert.equal(
      result.stderr,
      'gatehouse.yaml:10:15: routes[0].upstream: unknown upstream "rankr" (did you mean "ranker"?)\n1 problem in gatehouse.yaml\n',
    )
  })

  it('exits 1 when the config file does not exist', async (t) => {
    const dir = tempDir(t)
    const result = await runCli(['check', '--config', 'missing.yaml'], dir)
    assert.equal(result.code, 1)
    assert.equal(result.stdout, '')
    assert.equal(
      result.stderr,
      'missing.yaml: (root): cannot read config file: ENOENT\n1 problem in missing.yaml\n',
    )
  })
})

describe('gatehouse command line', () => {
  it('exits 2 on an unknown command, printing the usage to stderr', async (t) => {
    const result = await runCli(['deploy'], tempDir(t))
    assert.equal(result.code, 2)
    assert.match(
      result.stderr,
      /^gatehouse: unknown command "deploy"\n\nUsage: gatehouse <command>/,
    )
    assert.equal(result.stdout, '')
  })

  it('exits 2 when no command is given, printing the usage', async (t) => {
    const result = await runCli([], tempDir(t))
    assert.equal(result.code, 2)
    assert.match(result.stdout, /^Usage: gatehouse <command> \[--config FILE\]/)
  })

  it('exits 2 on an unknown option, suggesting the nearest one', async (t) => {
    const result = await runCli(['check', '--confg', 'x.yaml'], tempDir(t))
    assert.equal(result.code, 2)
    assert.match(
      result.stderr,
      /^gatehouse: unknown option --confg \(did you mean --config\?\)\n\nUsage: gatehouse check /,
    )
    assert.equal(result.stdout, '')
  })

  it('refuses an option of another command instead of ignoring it (list --dead would hide dead letters)', async (t) => {
    // No config and no admin API: the command must fail before it asks for anything.
    const list = await runCli(['deliveries', 'list', '--dead'], tempDir(t))
    assert.equal(list.code, 2)
    assert.equal(
      list.stderr.split('\n')[0],
      'gatehouse: unknown option --dead (did you mean --state dead?)',
    )
    assert.equal(list.stdout, '')
    const replay = await runCli(['deliveries', 'replay', '--limit', '5'], tempDir(t))
    assert.equal(replay.code, 2)
    assert.equal(
      replay.stderr.split('\n')[0],
      'gatehouse: option --limit does not apply to "deliveries replay"',
    )
  })

  it('exits 2 on an argument a command does not take', async (t) => {
    const result = await runCli(['check', 'gatehouse.yaml'], tempDir(t))
    assert.equal(result.code, 2)
    assert.equal(
      result.stderr.split('\n')[0],
      'gatehouse: unexpected argument "gatehouse.yaml" for "check"',
    )
  })

  it('exits 0 and prints the usage for --help', async (t) => {
    const result = await runCli(['--help'], tempDir(t))
    assert.equal(result.code, 0)
    assert.match(result.stdout, /^Usage: gatehouse <command>/)
  })

  it('prints one command\'s help for `<command> --help` and `help <command>`', async (t) => {
    const dir = tempDir(t)
    const check = await runCli(['check', '--help'], dir)
    assert.equal(check.code, 0)
    assert.match(check.stdout, /^Usage: gatehouse check \[--config FILE\]\n\nValidate FILE/)
    const viaHelp = await runCli(['help', 'check'], dir)
    assert.equal(viaHelp.code, 0)
    assert.equal(viaHelp.stdout, check.stdout)
    const deliveries = await runCli(['deliveries', 'list', '-h'], dir)
    assert.equal(deliveries.code, 0)
    assert.match(
      deliveries.stdout,
      /^Usage: gatehouse deliveries <list\|show\|replay\|purge> \[options\]\n/,
    )
    assert.match(deliveries.stdout, /--dead {10}replay: every dead record/)
  })

  it('prints the package version for --version', async (t) => {
    const { version } = JSON.parse(
      readFileSync(new URL('../../package.json', import.meta.url), 'utf8'),
    )
    const result = await runCli(['--version'], tempDir(t))
    assert.equal(result.code, 0)
    assert.equal(result.stdout, `${version}\n`)
    assert.equal(result.stderr, '')
  })
})

describe('gatehouse routes', () => {
  it('prints the route table in config order with each route\'s match and upstream', async (t) => {
    const dir = tempDir(t)
    writeFileSync(join(dir, 'gatehouse.yaml'), VALID_CONFIG)
    const result = await runCli(['routes'], dir)
    assert.equal(result.code, 0, result.stderr)
    const rows = result.stdout.trimEnd().split('\n').map((line) => line.split(/ {2,}/))
    assert.deepEqual(rows, [
      ['#', 'route', 'match', 'upstream', 'policies'],
      ['0', 'search', 'GET * /v1/search*',
        'ranker (round_robin: http://127.0.0.1:9000 http://127.0.0.1:9001/v2)', 'strip_prefix=/v1'],
      ['1', 'health', '* * = /health',
        'ranker (round_robin: http://127.0.0.1:9000 http://127.0.0.1:9001/v2)', '-'],
    ])
  })

  it('shows transforms, plugins and async delivery among the policies', async (t) => {
    const dir = tempDir(t)
    writeFileSync(
      join(dir, 'rerank.ts'),
      'export default { name: \'r\', gatehouse: \'^0.1\', onRequest () {} }\n',
    )
    writeFileSync(
      join(dir, 'gatehouse.yaml'),
      `upstreams: { up: { targets: [{ url: http://127.0.0.1:9000 }] } }
routes:
  - { name: t, match: { path: /t }, upstream: up, transform: { request: { form_to_json: true }, response: { events: '{ "x": x }' } } }
  - { name: p, match: { path: /p }, upstream: up, plugin: { path: ./rerank.ts } }
  - { name: a, match: { path: /a }, upstream: up, delivery: { mode: async, max_attempts: 5, concurrency: 4 } }
`,
    )
    const result = await runCli(['routes'], dir)
    assert.equal(result.code, 0, result.stderr)
    const policies = result.stdout.trimEnd().split('\n').slice(1).map((line) =>
      line.split(/ {2,}/).at(-1)
    )
    assert.deepEqual(policies, ['transform(request,response+events)', 'plugin(rerank.ts)',
      'async(5 attempts, 4 workers)'])
  })

  it('connects to nothing: not the targets, nor an identity provider, nor a store', async (t) => {
    // One listener stands in for all three; routes must print without a single connection to it.
    let connections = 0
    const server = net.createServer((socket) => {
      connections++
      socket.destroy()
    })
    server.listen(0, '127.0.0.1')
    await once(server, 'listening')
    t.after(() => new Promise<void>((resolve) => server.close(() => resolve())))
    const at = `127.0.0.1:${(server.address() as AddressInfo).port}`
    const dir = tempDir(t)
    writeFileSync(
      join(dir, 'gatehouse.yaml'),
      `identity:
  providers:
    sso: { kind: jwt, issuer: "http://${at}", audiences: [models] }
stores:
  shared: { kind: redis, url: "redis://${at}" }
upstreams: { up: { targets: [{ url: "http://${at}" }] } }
routes:
  - { name: r, upstream: up, auth: { any_of: [sso] }, rate_limit: [{ key: subject, rate: 10/s, store: shared }] }
`,
    )
    const result = await runCli(['routes'], dir)
    assert.equal(result.code, 0, result.stderr)
    assert.match(
      result.stdout.split('\n')[1]!,
      /^0 +r +\* \* \* +up \(least_request: http:\/\/127\.0\.0\.1:\d+\) +auth=sso rate_limit\(r\.subject@shared\)$/,
    )
    assert.equal(connections, 0)
  })

  it('exits 1 and prints the problems for an invalid config', async (t) => {
    const dir = tempDir(t)
    writeFileSync(join(dir, 'gatehouse.yaml'), 'routes: [{ name: a, upstream: nowhere }]\n')
    const result = await runCli(['routes'], dir)
    assert.equal(result.code, 1)
    assert.equal(result.stdout, '')
    assert.match(
      result.stderr,
      /^gatehouse\.yaml:1:\d+: routes\[0\]\.upstream: unknown upstream "nowhere"\n/,
    )
  })
})

describe('a port in use', { timeout: 60_000 }, () => {
  /** Hold `port` on 127.0.0.1 for the rest of the test. */
  async function occupy (t: TestContext, port: number): Promise<void> {
    const server = net.createServer()
    server.listen(port, '127.0.0.1')
    await once(server, 'listening')
    t.after(() => new Promise<void>((resolve) => server.close(() => resolve())))
  }

  for (const which of ['listen', 'admin'] as const) {
    const other = which === 'listen' ? 'admin' : 'listen'

    it(`gatehouse start exits 1 with one line on stderr when the ${which} port is taken`, async (t) => {
      const upstream = await echoUpstream(t)
      const ports = await freePorts()
      await occupy(t, ports[which])
      const file = join(tempDir(t), 'gatehouse.yaml')
      writeFileSync(file, gatewayYaml(ports, upstream.url, FIRST_ROUTE))
      const gh = new GatehouseProcess(file)
      t.after(() => gh.kill())
      const { code, signal } = await gh.waitForExit()
      assert.equal(signal, null)
      assert.equal(code, 1)
      assert.equal(gh.stderr, `${which} 127.0.0.1:${ports[which]}: address already in use\n`)
      assert.equal(gh.logs.some((l) => l.msg === 'listening'), false)
    })

    it(`listen() with the ${which} port taken rejects with GH_LISTEN_FAILED and leaves the ${other} port unbound`, async (t) => {
      const ports = await freePorts()
      await occupy(t, ports[which])
      const gateway = createGateway(
        {
          listen: { host: '127.0.0.1', port: ports.listen },
          admin: { host: '127.0.0.1', port: ports.admin },
          upstreams: { backend: { targets: [{ url: 'http://127.0.0.1:9' }] } },
          routes: [{ name: 'all', match: {}, upstream: 'backend' }],
        },
        { logDestination: new LogCapture(), processMetrics: false },
      )
      t.after(() => gateway.close())
      await assert.rejects(
        gateway.listen(),
        (err: Error & { code?: string, cause?: { code?: string } }) => {
          assert.equal(err.message, `${which} 127.0.0.1:${ports[which]}: address already in use`)
          assert.equal(err.code, 'GH_LISTEN_FAILED')
          assert.equal(err.cause?.code, 'EADDRINUSE')
          return true
        },
      )
      // Not half up: no proxy without /metrics, no /healthz answering for a proxy that is not there.
      assert.equal(await connectOutcome(ports[other]), 'ECONNREFUSED')
    })
  }
})

describe('gatehouse start', { timeout: 60_000 }, () => {
  it('proxies requests to the upstream on the configured port', async (t) => {
    const upstream = await echoUpstream(t)
    const ports = await freePorts()
    const file = join(tempDir(t), 'gatehouse.yaml')
    writeFileSync(file, gatewayYaml(ports, upstream.url, FIRST_ROUTE))
    const { url } = await startGatehouse(t, file, ports)
    const res = await request(`${url}/first/items?q=1`)
    assert.equal(res.status, 200)
    assert.equal(res.body, 'upstream saw /first/items?q=1')
  })

  it('reloads the config file on SIGHUP, and the added route answers', async (t) => {
    const upstream = await echoUpstream(t)
    const ports = await freePorts()
    // The config path is a symlink into another directory. The file watcher watches the
    // symlink's directory, so it cannot see the edit: only the signal can cause the reload.
    const dir = tempDir(t)
    mkdirSync(join(dir, 'real'))
    mkdirSync(join(dir, 'link'))
    const real = join(dir, 'real', 'gatehouse.yaml')
    const link = join(dir, 'link', 'gatehouse.yaml')
    writeFileSync(real, gatewayYaml(ports, upstream.url, FIRST_ROUTE))
    symlinkSync(real, link)
    const { gh, url } = await startGatehouse(t, link, ports)
    assert.equal((await request(`${url}/second/a`)).status, 404)

    const mark = gh.mark()
    writeFileSync(real, gatewayYaml(ports, upstream.url, FIRST_ROUTE, SECOND_ROUTE))
    gh.child.kill('SIGHUP')
    const reloaded = await gh.waitForLog((l) => l.msg === 'config reloaded', mark)
    assert.equal(reloaded.routes, 2)
    const res = await request(`${url}/second/a`)
    assert.equal(res.status, 200)
    assert.equal(res.body, 'upstream saw /second/a')
  })

  it('picks up a rewritten config file without a signal', async (t) => {
    const upstream = await echoUpstream(t)
    const ports = await freePorts()
    const file = join(tempDir(t), 'gatehouse.yaml')
    writeFileSync(file, gatewayYaml(ports, upstream.url, FIRST_ROUTE))
    const { gh, url } = await startGatehouse(t, file, ports)
    assert.equal((await request(`${url}/second/b`)).status, 404)

    const mark = gh.mark()
    writeFileSync(file, gatewayYaml(ports, upstream.url, FIRST_ROUTE, SECOND_ROUTE))
    const reloaded = await gh.waitForLog((l) => l.msg === 'config reloaded', mark)
    assert.equal(reloaded.routes, 2)
    const res = await request(`${url}/second/b`)
    assert.equal(res.status, 200)
    assert.equal(res.body, 'upstream saw /second/b')
  })

  it('logs an error for an invalid config written to disk and keeps serving the old routes', async (t) => {
    const upstream = await echoUpstream(t)
    const ports = await freePorts()
    const file = join(tempDir(t), 'gatehouse.yaml')
    writeFileSync(file, gatewayYaml(ports, upstream.url, FIRST_ROUTE))
    const { gh, url } = await startGatehouse(t, file, ports)

    const mark = gh.mark()
    writeFileSync(
      file,
      gatewayYaml(ports, upstream.url, FIRST_ROUTE, '  - { name: broken, upstream: backnd }'),
    )
    const failed = await gh.waitForLog((l) => l.level === 'error', mark, 5_000)
    assert.match(String(failed.msg), /reload/)
    assert.match(JSON.stringify(failed), /unknown upstream \\"backnd\\"/)
    assert.equal(gh.logs.slice(mark).some((l) => l.msg === 'config reloaded'), false)
    const res = await request(`${url}/first/c`)
    assert.equal(res.status, 200)
    assert.equal(res.body, 'upstream saw /first/c')
  })

  it('keeps a $${env:...} literal literal when serving', async (t) => {
    const upstream = await echoUpstream(t)
    const ports = await freePorts()
    const file = join(tempDir(t), 'gatehouse.yaml')
    const route =
      '  - { name: literal, match: { path: /literal, headers: { x-tag: "$${env:GH_TEST_LITERAL}" } }, upstream: backend }'
    writeFileSync(file, gatewayYaml(ports, upstream.url, route))
    const { url } = await startGatehouse(t, file, ports, {
      ...process.env,
      GH_TEST_LITERAL: 'expanded',
    })
    const res = await request(`${url}/literal`, { headers: { 'x-tag': '${env:GH_TEST_LITERAL}' } })
    assert.equal(res.status, 200)
  })

  describe('SIGTERM with a request in flight', () => {
    /**
     * Start gatehouse in front of an upstream that holds GET /slow until released, send that
     * request, SIGTERM the gateway once the upstream has it, and wait for "shutting down".
     */
    async function shutDownWhileBusy (t: TestContext) {
      let release!: () => void
      const released = new Promise<void>((resolve) => {
        release = resolve
      })
      let arrived!: () => void
      const upstreamHasIt = new Promise<void>((resolve) => {
        arrived = resolve
      })
      const upstream = await startUpstream((req, res) => {
        if (req.url !== '/first/slow') return res.end('fast')
        arrived()
        released.then(() => res.end('slow done'), () => {})
      })
      t.after(() => upstream.close())
      t.after(() => release())
      const ports = await freePorts()
      const file = join(tempDir(t), 'gatehouse.yaml')
      writeFileSync(file, gatewayYaml(ports, upstream.url, FIRST_ROUTE))
      const { gh, url } = await startGatehouse(t, file, ports)

      const slow = request(`${url}/first/slow`)
      await upstreamHasIt
      const mark = gh.mark()
      gh.child.kill('SIGTERM')
      const shuttingDown = await gh.waitForLog((l) => l.msg === 'shutting down', mark)
      assert.equal(shuttingDown.in_flight, 1)
      return { gh, ports, slow, release }
    }

    it('lets the in-flight request complete with 200', async (t) => {
      const { slow, release } = await shutDownWhileBusy(t)
      release()
      const res = await slow
      assert.equal(res.status, 200)
      assert.equal(res.body, 'slow done')
    })

    it('refuses new connections while draining', async (t) => {
      const { ports, slow, release } = await shutDownWhileBusy(t)
      assert.equal(await connectOutcome(ports.listen), 'ECONNREFUSED')
      release()
      await slow
    })

    it('exits with code 0 and logs "stopped" once the request is done', async (t) => {
      const { gh, slow, release } = await shutDownWhileBusy(t)
      release()
      await slow
      const { code, signal } = await gh.waitForExit()
      assert.equal(signal, null)
      assert.equal(code, 0, gh.stderr)
      assert.ok(gh.logs.some((l) => l.msg === 'stopped'), 'expected a "stopped" log line')
      assert.equal(gh.stderr, '')
    })
  })

  it('exits with code 0 on SIGINT', async (t) => {
    const upstream = await echoUpstream(t)
    const ports = await freePorts()
    const file = join(tempDir(t), 'gatehouse.yaml')
    writeFileSync(file, gatewayYaml(ports, upstream.url, FIRST_ROUTE))
    const { gh, url } = await startGatehouse(t, file, ports)
    assert.equal((await request(`${url}/first/d`)).status, 200)
    gh.child.kill('SIGINT')
    const { code, signal } = await gh.waitForExit()
    assert.equal(signal, null)
    assert.equal(code, 0, gh.stderr)
    assert.ok(gh.logs.some((l) => l.msg === 'signal' && l.signal === 'SIGINT'))
  })
})
