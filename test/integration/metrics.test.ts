import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn, spawnSync } from 'node:child_process'
import { once } from 'node:events'
import { createHash } from 'node:crypto'
import { createGateway } from '../../src/index.js'
import { call, LogCapture, metricsText, startEchoUpstream } from '../helpers/index.js'

/** Run `promtool check metrics` on the text; its exit status and what it printed. */
async function promtoolCheck (text: string): Promise<{ code: number | null, output: string }> {
  const child = spawn('promtool', ['check', 'metrics'], { stdio: ['pipe', 'pipe', 'pipe'] })
  let output = ''
  child.stdout.setEncoding('utf8').on('data', (c: string) => {
    output += c
  })
  child.stderr.setEncoding('utf8').on('data', (c: string) => {
    output += c
  })
  child.stdin.end(text)
  const [code] = await once(child, 'close') as [number | null]
  return { code, output }
}

const KEY = 'metrics-test-key'

/*
 * The admin /metrics output must be valid Prometheus exposition that Prometheus's own linter
 * accepts, with process metrics on (as `gatehouse start` runs) and with labelled series of every
 * kind present: a scrape that fails the linter is dropped by strict setups, all of it.
 */
test('/metrics passes promtool check metrics, process metrics and labelled series included', async (t) => {
  if (spawnSync('promtool', ['--version']).error !== undefined) {
    t.skip('promtool not installed (apt-get install prometheus)')
    return
  }
  const up = await startEchoUpstream()
  const gateway = createGateway(
    {
      listen: { host: '127.0.0.1', port: 0 },
      admin: { host: '127.0.0.1', port: 0 },
      identity: {
        providers: {
          keys: {
            kind: 'api_key',
            keys: [{ id: 'acme', sha256: createHash('sha256').update(KEY).digest('hex') }],
          },
        },
      },
      upstreams: {
        up: { targets: [{ url: up.url }], max_in_flight: 4 },
        // Nothing listens on port 1: every request there is an upstream error.
        down: { targets: [{ url: 'http://127.0.0.1:1' }] },
      },
      routes: [
        { name: 'proxied', match: { path: '/ok' }, upstream: 'up' },
        { name: 'cached', match: { path: '/cached' }, upstream: 'up', cache: { ttl: '1m' } },
        { name: 'keyed', match: { path: '/keyed' }, upstream: 'up', auth: { any_of: ['keys'] } },
        {
          name: 'limited',
          match: { path: '/limited' },
          upstream: 'up',
          rate_limit: [{ key: 'ip', rate: '1/min' }],
        },
        {
          name: 'denied',
          match: { path: '/denied' },
          upstream: 'up',
          ip: { deny: ['127.0.0.0/8'] },
        },
        { name: 'broken', match: { path: '/broken' }, upstream: 'down' },
      ],
    },
    { logDestination: new LogCapture() },
  )
  const { port, adminPort } = await gateway.listen()
  t.after(async () => {
    await gateway.close()
    await up.close()
  })
  const url = `http://127.0.0.1:${port}`
  const statuses = []
  for (
    const path of ['/ok', '/cached', '/cached', '/limited', '/limited', '/denied', '/broken',
      '/nowhere']
  ) {
    statuses.push((await call(url, path)).status)
  }
  statuses.push((await call(url, '/keyed', { 'x-api-key': KEY })).status)
  statuses.push((await call(url, '/keyed', { 'x-api-key': 'wrong' })).status)
  assert.deepEqual(statuses, [200, 200, 200, 200, 429, 403, 502, 404, 200, 401])

  const text = await metricsText(adminPort!)
  // The series the requests above made, and the process metrics, are all in this scrape.
  for (
    const series of ['gatehouse_requests_total{route="proxied",method="GET",status="200"}',
      'gatehouse_refused_requests_total{code="GH_ROUTE_NOT_FOUND"}',
      'gatehouse_upstream_errors_total{upstream="down"',
      'gatehouse_rate_limited_total{route="limited"',
      'gatehouse_cache_requests_total{route="cached",result="hit"}',
      'gatehouse_auth_total{provider="keys"',
      'gatehouse_request_duration_seconds_bucket{le="0.001",route="proxied"}',
      'gatehouse_nodejs_active_handles{type=', 'gatehouse_process_cpu_seconds_total ']
  ) {
    assert.ok(text.includes(series), `expected ${series} in /metrics`)
  }
  const { code, output } = await promtoolCheck(text)
  assert.equal(output, '')
  assert.equal(code, 0)
})
