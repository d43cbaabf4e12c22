import { describe, it, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { spawn, type ChildProcessByStdio } from 'node:child_process'
import { once } from 'node:events'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import net, { type AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Readable } from 'node:stream'
import { fileURLToPath } from 'node:url'
import { request, startUpstream, type Upstream } from '../helpers/index.js'
import { BIN } from '../helpers/cli.js'

/*
 * A plugin's fire-and-forget `Promise.reject()`, or a throw inside its `setTimeout` callback,
 * escapes every try/catch of the gateway, and Node's default for both is to end the process:
 * one careless plugin would take every route down. An uncaught exception inside the test
 * runner would end the runner too, so the gateway runs as users run it: `gatehouse start`, in
 * a child process.
 */

const PLUGINS = fileURLToPath(new URL('../fixtures/plugins/', import.meta.url))

type LogLine = Record<string, any>

/** `gatehouse start` in a child process, its stdout parsed into log lines. */
class Gatehouse {
  readonly child: ChildProcessByStdio<null, Readable, Readable>
  readonly logs: LogLine[] = []
  stderr = ''
  readonly exited: Promise<number | null>
  #partial = ''
  #waiters: Array<() => void> = []

  constructor (configFile: string) {
    this.child = spawn(process.execPath, [BIN, 'start', '--config', configFile], {
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    this.child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
      const parts = (this.#partial + chunk).split('\n')
      this.#partial = parts.pop()!
      for (const text of parts) if (text !== '') this.logs.push(JSON.parse(text))
      this.#notify()
    })
    this.child.stderr.setEncoding('utf8').on('data', (c: string) => {
      this.stderr += c
    })
    this.exited = once(this.child, 'close').then(([code]) => {
      this.#notify()
      return code as number | null
    })
  }

  /** The first log line matching `pred`; fails (with the transcript) after 10 s or on exit. */
  async waitForLog (pred: (l: LogLine) => boolean): Promise<LogLine> {
    const end = Date.now() + 10_000
    for (;;) {
      const found = this.logs.find(pred)
      if (found !== undefined) return found
      if (this.child.exitCode !== null || Date.now() > end) {
        assert.fail(
          `no such log line\nstdout: ${
            this.logs.map((l) => JSON.stringify(l)).join('\n')
          }\nstderr: ${this.stderr}`,
        )
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 200)
        this.#waiters.push(() => {
          clearTimeout(timer)
          resolve()
        })
      })
    }
  }

  #notify (): void {
    const w = this.#waiters
    this.#waiters = []
    for (const f of w) f()
  }
}

async function freePorts (): Promise<[number, number]> {
  const servers = [net.createServer(), net.createServer()]
  for (const s of servers) {
    s.listen(0, '127.0.0.1')
    await once(s, 'listening')
  }
  const ports = servers.map((s) => (s.address() as AddressInfo).port) as [number, number]
  await Promise.all(servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))))
  return ports
}

/** Start `gatehouse start` with these routes in front of `up`; cleaned up after the test. */
async function start (
  t: TestContext,
  up: Upstream,
  routes: string[],
): Promise<{ gh: Gatehouse, url: string, admin: string }> {
  const dir = mkdtempSync(join(tmpdir(), 'gatehouse-plugins-test-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const [port, adminPort] = await freePorts()
  const file = join(dir, 'gatehouse.yaml')
  writeFileSync(
    file,
    [
      `listen: { host: 127.0.0.1, port: ${port} }`,
      `admin: { host: 127.0.0.1, port: ${adminPort} }`,
      'log: { level: info }',
      'shutdown: { grace: 20s }',
      'upstreams:',
      `  up: { targets: [{ url: "${up.url}" }] }`,
      'routes:',
      ...routes,
    ].join('\n') + '\n',
  )
  const gh = new Gatehouse(file)
  t.after(async () => {
    if (gh.child.exitCode === null) gh.child.kill('SIGKILL')
    await gh.exited
  })
  await gh.waitForLog((l) => l.msg === 'listening')
  return { gh, url: `http://127.0.0.1:${port}`, admin: `http://127.0.0.1:${adminPort}` }
}

function metric (text: string, series: string): number | null {
  const line = text.split('\n').find((l) => l.startsWith(series + ' '))
  return line === undefined ? null : Number(line.slice(series.length + 1))
}

describe('hardened plugins: errors nobody caught', { timeout: 60_000 }, () => {
  it('a plugin\'s unhandled rejection and timer throw are logged and counted; the gateway keeps serving', async (t) => {
    const up = await startUpstream((req, res) => {
      req.resume()
      req.on('end', () => res.end(`upstream saw ${req.url}`))
    })
    t.after(() => up.close())
    const { gh, url, admin } = await start(t, up, [
      `  - { name: leaky, match: { path: /leaky }, upstream: up, plugin: { path: "${
        join(PLUGINS, 'leaky.ts')
      }" } }`,
      '  - { name: plain, match: {}, upstream: up }',
    ])
    const before = await request(`${admin}/metrics`)
    assert.equal(metric(before.body, 'gatehouse_uncaught_errors_total{kind="rejection"}'), 0)
    assert.equal(metric(before.body, 'gatehouse_uncaught_errors_total{kind="exception"}'), 0)

    const res = await request(`${url}/leaky`, {
      method: 'POST',
      body: '{}',
      headers: { 'content-type': 'application/json' },
    })
    assert.equal(res.status, 200)
    assert.equal(res.body, 'upstream saw /leaky')

    const rejection = await gh.waitForLog((l) => l.kind === 'rejection')
    assert.equal(rejection.msg, 'unhandled promise rejection; still serving')
    assert.equal(rejection.level, 'error')
    assert.equal(rejection.plugin, 'leaky')
    assert.match(rejection.err, /^Error: leaky: background work failed\n/)
    const exception = await gh.waitForLog((l) => l.kind === 'exception')
    assert.equal(exception.msg, 'uncaught exception in a plugin; still serving')
    assert.equal(exception.plugin, 'leaky')
    assert.match(exception.err, /^Error: leaky: thrown from a timer\n/)
    assert.match(exception.err, /leaky\.ts:\d+/)

    // Counted: one of each, two in all.
    const after = await request(`${admin}/metrics`)
    assert.equal(metric(after.body, 'gatehouse_uncaught_errors_total{kind="rejection"}'), 1)
    assert.equal(metric(after.body, 'gatehouse_uncaught_errors_total{kind="exception"}'), 1)

    // Still up, on every route, the plugin's included.
    assert.equal((await request(`${url}/other`)).body, 'upstream saw /other')
    assert.equal(
      (await request(`${url}/leaky`, {
        method: 'POST',
        body: '{}',
        headers: { 'content-type': 'application/json' },
      })).status,
      200,
    )
    assert.equal(gh.child.exitCode, null)
    assert.equal(gh.stderr, '')
  })

  it('an uncaught exception outside any plugin file drains in-flight requests and exits 1', async (t) => {
    let release: () => void = () => {}
    const released = new Promise<void>((resolve) => {
      release = resolve
    })
    let slowArrived: () => void = () => {}
    const arrived = new Promise<void>((resolve) => {
      slowArrived = resolve
    })
    const up = await startUpstream((req, res) => {
      req.resume()
      if (req.url === '/slow') {
        slowArrived()
        released.then(() => res.end('slow done'))
        return
      }
      req.on('end', () => res.end(`upstream saw ${req.url}`))
    })
    t.after(() => up.close())
    const { gh, url } = await start(t, up, [
      `  - { name: crashes, match: { path: /crash }, upstream: up, plugin: { path: "${
        join(PLUGINS, 'crashes.ts')
      }" } }`,
      '  - { name: plain, match: {}, upstream: up }',
    ])
    // A request in flight when the exception comes.
    const slow = request(`${url}/slow`)
    await arrived
    await request(`${url}/crash`, {
      method: 'POST',
      body: '{}',
      headers: { 'content-type': 'application/json' },
    })
    const fatal = await gh.waitForLog((l) => l.kind === 'exception')
    assert.equal(fatal.msg, 'uncaught exception; draining and exiting')
    assert.equal(fatal.level, 'fatal')
    assert.equal(fatal.plugin, undefined)
    assert.match(fatal.err, /^Error: crash-later: not a plugin frame\n/)
    await gh.waitForLog((l) => l.msg === 'shutting down')
    release()
    const res = await slow
    assert.equal(res.status, 200)
    assert.equal(res.body, 'slow done')
    assert.equal(await gh.exited, 1)
  })
})
