/* eslint-disable no-template-curly-in-string -- ${env:...} and ${file:...} are gatehouse config syntax, not templates */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync, spawn } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { BIN } from '../helpers/cli.js'
import { request, startGateway, startUpstream, waitUntil, type Upstream } from '../helpers/index.js'
import { loadConfigFile, parseConfig } from '../../src/config/load.js'
import { ConfigError } from '../../src/errors/index.js'

/*
 * Config references under abuse: `${file:}` pointed at things that are not small regular files.
 * Each case is refused as a config error that names the file and the config key.
 */

const WAIT_MS = 10_000

function issuesOf (fn: () => unknown): ConfigError['issues'] {
  try {
    fn()
  } catch (err) {
    if (err instanceof ConfigError) return err.issues
    throw err
  }
  assert.fail('expected a ConfigError')
}

const UPSTREAMS = 'upstreams: { up: { targets: [{ url: "http://127.0.0.1:1" }] } }\n'
const withHeader = (ref: string): string =>
  UPSTREAMS + `routes:
  - name: r
    upstream: up
    match:
      headers:
        x-tenant: "${ref}"
`

describe('${file:} references read only small regular files', () => {
  let dir: string
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'gatehouse-hardened-config-'))
  })
  after(() => rmSync(dir, { recursive: true, force: true }))

  it('refuses /dev/zero at once instead of reading it for ever', () => {
    const issues = issuesOf(() =>
      parseConfig(withHeader('${file:/dev/zero}'), { env: {}, baseDir: dir })
    )
    assert.deepEqual(issues.map((i) => [i.path, i.message]), [
      ['routes[0].match.headers.x-tenant',
        'cannot read /dev/zero: a character device, not a regular file'],
    ])
  })

  it('refuses a FIFO without opening it for reading (which would wait for a writer)', () => {
    const fifo = join(dir, 'secret.fifo')
    execFileSync('mkfifo', [fifo])
    const issues = issuesOf(() =>
      parseConfig(withHeader('${file:secret.fifo}'), { env: {}, baseDir: dir })
    )
    assert.deepEqual(issues.map((i) => [i.path, i.message]), [
      ['routes[0].match.headers.x-tenant', `cannot read ${fifo}: a FIFO, not a regular file`],
    ])
  })

  it('refuses a directory', () => {
    const issues = issuesOf(() =>
      parseConfig(withHeader(`\${file:${dir}}`), { env: {}, baseDir: dir })
    )
    assert.deepEqual(issues.map((i) => i.message), [
      `cannot read ${dir}: a directory, not a regular file`,
    ])
  })

  it('reads a file of exactly 1 MiB and refuses one byte more', () => {
    writeFileSync(join(dir, 'max'), Buffer.alloc(1024 * 1024, 'a'))
    writeFileSync(join(dir, 'over'), Buffer.alloc(1024 * 1024 + 1, 'a'))
    const config = parseConfig(withHeader('${file:max}'), { env: {}, baseDir: dir })
    assert.equal(config.routes[0]!.match.headers!['x-tenant']!.length, 1024 * 1024)
    const issues = issuesOf(() =>
      parseConfig(withHeader('${file:over}'), { env: {}, baseDir: dir })
    )
    assert.deepEqual(issues.map((i) => [i.path, i.message]), [
      ['routes[0].match.headers.x-tenant', `cannot read ${join(dir, 'over')}: larger than 1 MiB`],
    ])
  })
})

describe('an automatic reload onto a FIFO reference', () => {
  let dir: string
  let upstream: Upstream
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'gatehouse-hardened-reload-'))
    upstream = await startUpstream((_req, res) => res.end('still here'))
  })
  after(async () => {
    await upstream.close()
    rmSync(dir, { recursive: true, force: true })
  })

  it('is refused with the path and key, and the proxy and admin ports keep answering', async () => {
    const file = join(dir, 'gatehouse.yaml')
    const config = (tenant: string): string => `listen: { host: 127.0.0.1, port: 0 }
admin: { host: 127.0.0.1, port: 0 }
upstreams: { up: { targets: [{ url: "${upstream.url}" }] } }
routes:
  - name: r
    upstream: up
    match:
      headers:
        x-tenant: "${tenant}"
`
    writeFileSync(file, config('acme'))
    execFileSync('mkfifo', [join(dir, 'tenant.fifo')])
    const child = spawn(process.execPath, [BIN, 'start', '--config', file], {
      cwd: dir,
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    const logs: Array<Record<string, any>> = []
    let partial = ''
    const waiters = new Set<() => void>()
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
      const parts = (partial + chunk).split('\n')
      partial = parts.pop()!
      for (const text of parts) if (text !== '') logs.push(JSON.parse(text))
      for (const w of waiters) w()
    })
    const waitForLog = (pred: (l: Record<string, any>) => boolean): Promise<Record<string, any>> =>
      new Promise((resolve, reject) => {
        const check = (): void => {
          const found = logs.find(pred)
          if (found === undefined) return
          clearTimeout(timer)
          waiters.delete(check)
          resolve(found)
        }
        const timer = setTimeout(() => {
          waiters.delete(check)
          reject(
            new Error(
              `no such log line within ${WAIT_MS} ms; got ${
                JSON.stringify(logs.map((l) => l.msg))
              }`,
            ),
          )
        }, WAIT_MS)
        waiters.add(check)
        check()
      })
    try {
      const listening = await waitForLog((l) => l.msg === 'listening')
      const proxy = `http://127.0.0.1:${listening.port as number}`
      const admin = `http://127.0.0.1:${listening.admin_port as number}`
      assert.equal(
        (await request(`${proxy}/`, { headers: { 'x-tenant': 'acme' } })).body,
        'still here',
      )
      // The file watcher reloads on its own, as it does when a ConfigMap changes.
      writeFileSync(file, config('${file:tenant.fifo}'))
      const failed = await waitForLog((l) =>
        l.msg === 'config reload failed; keeping the running config'
      )
      assert.match(
        failed.err,
        new RegExp(
          `routes\\[0\\]\\.match\\.headers\\.x-tenant: cannot read ${
            join(dir, 'tenant.fifo').replaceAll('.', '\\.')
          }: a FIFO, not a regular file`,
        ),
      )
      assert.equal(
        (await request(`${proxy}/`, { headers: { 'x-tenant': 'acme' } })).body,
        'still here',
      )
      assert.equal((await request(`${admin}/healthz`)).status, 200)
    } finally {
      // SIGKILL: a gateway stuck in a read never runs its SIGTERM handler.
      child.kill('SIGKILL')
      await new Promise((resolve) => child.once('close', resolve))
    }
  })
})

const SECRET = 'sk-live-4eC39HqLyjWDarjtT1zdp7dc'

describe('values from references never appear in messages or logs', () => {
  let dir: string
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'gatehouse-hardened-redact-'))
  })
  after(() => rmSync(dir, { recursive: true, force: true }))

  it('gatehouse check shows a misplaced ${env:} value as written, not as resolved', async () => {
    const file = join(dir, 'misplaced.yaml')
    writeFileSync(file, 'listen:\n  port: ${env:STRIPE_KEY}\n')
    const child = spawn(process.execPath, [BIN, 'check', '--config', file], {
      env: { ...process.env, STRIPE_KEY: SECRET },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let out = ''
    child.stdout.setEncoding('utf8').on('data', (c: string) => {
      out += c
    })
    child.stderr.setEncoding('utf8').on('data', (c: string) => {
      out += c
    })
    const [code] = await new Promise<[number | null]>((resolve) =>
      child.once('close', (c) => resolve([c]))
    )
    assert.equal(code, 1)
    assert.equal(
      out,
      `${file}:2:9: listen.port: expected number, got string "\${env:STRIPE_KEY}" (its value is not shown)\n1 problem in ${file}\n`,
    )
  })

  it('a value quoted in a message about another key is ***', () => {
    const issues = issuesOf(() =>
      parseConfig(
        UPSTREAMS + `routes:
  - { name: r, upstream: up, match: { path_prefix: "/\${env:TENANT_PATH}" }, strip_prefix: /other }
`,
        { env: { TENANT_PATH: SECRET } },
      )
    )
    assert.deepEqual(issues.map((i) => [i.path, i.message]), [
      ['routes[0].strip_prefix', '"/other" is not a prefix of match.path_prefix "/***"'],
    ])
  })

  it('the reload error log names the reference, not its value', async () => {
    const upstream = await startUpstream((_req, res) => res.end('still here'))
    const gw = await startGateway({
      upstreams: { up: { targets: [{ url: upstream.url }] } },
      routes: [{ name: 'r', match: {}, upstream: 'up' }],
    })
    try {
      const yaml = UPSTREAMS +
        'shutdown: { grace: "${env:API_TOKEN}" }\nroutes: [{ name: r, upstream: "${env:API_TOKEN}" }]\n'
      await assert.rejects(
        gw.gateway.reload(() => parseConfig(yaml, { env: { API_TOKEN: SECRET } })),
        ConfigError,
      )
      const line = await gw.logs.waitFor((l) =>
        l.msg === 'config reload failed; keeping the running config'
      )
      assert.equal(
        line.err,
        [
          'config:2:20: shutdown.grace: invalid duration "${env:API_TOKEN}" (use e.g. 500ms, 2s, 5m, 1h)',
          'config:3:31: routes[0].upstream: unknown upstream "${env:API_TOKEN}"',
        ].join('\n'),
      )
      assert.ok(!gw.logs.lines.some((l) => JSON.stringify(l).includes('4eC39HqLyjWDarjtT1zdp7dc')))
    } finally {
      await gw.close()
      await upstream.close()
    }
  })

  it('a Redis password containing @ is masked whole in the unreachable-store log', async () => {
    const closed = await startUpstream(() => {})
    const port = closed.port
    await closed.close()
    const gw = await startGateway({
      stores: {
        shared: { kind: 'redis', url: `redis://:s3cr@t-pa55@127.0.0.1:${port}/0`, timeout: '10ms' },
      },
      upstreams: { up: { targets: [{ url: 'http://127.0.0.1:1' }] } },
      routes: [{
        name: 'r',
        match: {},
        upstream: 'up',
        rate_limit: [{ key: 'ip', rate: '10/s', store: 'shared' }],
      }],
    })
    try {
      await waitUntil(() => gw.logs.lines.some((l) => l.msg === 'limit store unreachable'))
      const line = gw.logs.lines.find((l) => l.msg === 'limit store unreachable')!
      assert.equal(line.store, `redis://***@127.0.0.1:${port}/0`)
      assert.ok(!gw.logs.lines.some((l) => /s3cr|pa55/.test(JSON.stringify(l))))
    } finally {
      await gw.close()
    }
  })
})

describe('the config file and TLS files are read like ${file:} references', () => {
  it('a config path that is a FIFO or a device is a config error, never a blocked read', () => {
    const dir = mkdtempSync(join(tmpdir(), 'gh-configfifo-'))
    try {
      execFileSync('mkfifo', [join(dir, 'gatehouse.yaml')])
      assert.throws(
        () => loadConfigFile(join(dir, 'gatehouse.yaml')),
        /cannot read config file: a FIFO, not a regular file/,
      )
      assert.throws(
        () => loadConfigFile('/dev/zero'),
        /cannot read config file: a character device, not a regular file/,
      )
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })

  it('a TLS key path that is a device is an error at listen.tls.key', () => {
    const issues = issuesOf(() =>
      parseConfig(
        'listen: { tls: { cert: /dev/zero, key: /dev/zero } }\nupstreams: { u: { targets: [{ url: "http://127.0.0.1:1" }] } }\nroutes: [{ name: r, upstream: u }]\n',
      )
    )
    assert.ok(
      issues.some((i) =>
        i.path === 'listen.tls.key' && /a character device, not a regular file/.test(i.message)
      ),
      JSON.stringify(issues),
    )
  })
})
