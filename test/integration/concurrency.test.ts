import { test } from 'node:test'
import assert from 'node:assert/strict'
import http from 'node:http'
import { metricsText, request, startGateway, startUpstream, waitUntil } from '../helpers/index.js'
import type { ConfigInput } from '../../src/config/schema.js'

/** An upstream that holds every request until the test lets it go, and tracks concurrency. */
async function heldUpstream () {
  const held: http.ServerResponse[] = []
  const state = { active: 0, max: 0, seen: [] as string[] }
  const up = await startUpstream((req, res) => {
    state.active++
    state.max = Math.max(state.max, state.active)
    state.seen.push(req.url!)
    res.on('finish', () => {
      state.active--
    })
    req.resume()
    held.push(res)
  })
  return {
    ...up,
    state,
    held,
    releaseOne () {
      const res = held.shift()!
      res.end('done')
    },
  }
}

function config (url: string, upstream: Record<string, unknown>): ConfigInput {
  return {
    upstreams: { gpu: { targets: [{ url }], ...upstream } },
    routes: [{ name: 'infer', match: {}, upstream: 'gpu' }],
  } as ConfigInput
}

test('max_in_flight: at most N reach the target, the rest queue in order, a full queue is refused at once', async () => {
  const up = await heldUpstream()
  const gw = await startGateway(
    config(up.url, { max_in_flight: 2, queue: { size: 2, timeout: '30s' } }),
  )
  try {
    const r1 = request(`${gw.url}/1`)
    const r2 = request(`${gw.url}/2`)
    await waitUntil(() => up.state.seen.length === 2)
    const r3 = request(`${gw.url}/3`)
    const r4 = request(`${gw.url}/4`)
    const gpu = gw.gateway.table.upstreams.get('gpu')!
    await waitUntil(() => gpu.queueLength === 2)
    const full = await request(`${gw.url}/5`)
    assert.equal(full.status, 503)
    assert.equal(JSON.parse(full.body).code, 'GH_UPSTREAM_BUSY')
    assert.equal(full.headers['retry-after'], '1')
    assert.deepEqual(up.state.seen, ['/1', '/2'])
    up.releaseOne()
    await waitUntil(() => up.state.seen.length === 3)
    assert.equal(up.state.seen[2], '/3')
    up.releaseOne()
    await waitUntil(() => up.state.seen.length === 4)
    assert.equal(up.state.seen[3], '/4')
    up.releaseOne()
    up.releaseOne()
    const all = await Promise.all([r1, r2, r3, r4])
    assert.deepEqual(all.map((r) => r.status), [200, 200, 200, 200])
    assert.equal(up.state.max, 2)
    const m = await metricsText(gw.adminPort!)
    assert.match(m, /gatehouse_upstream_queued_total\{upstream="gpu",result="granted"\} 2/)
    assert.match(m, /gatehouse_upstream_queued_total\{upstream="gpu",result="full"\} 1/)
  } finally {
    while (up.held.length > 0) up.releaseOne()
    await gw.close()
    await up.close()
  }
})

test('a queued request times out with 503; one whose client leaves gives up its place', async () => {
  const up = await heldUpstream()
  const gw = await startGateway(
    config(up.url, { max_in_flight: 1, queue: { size: 10, timeout: '300ms' } }),
  )
  try {
    const first = request(`${gw.url}/first`)
    await waitUntil(() => up.state.seen.length === 1)
    const t0 = Date.now()
    const late = await request(`${gw.url}/late`)
    assert.equal(late.status, 503)
    assert.equal(JSON.parse(late.body).code, 'GH_UPSTREAM_BUSY')
    assert.ok(Date.now() - t0 >= 250)
    const line = await gw.logs.waitFor((l) => l.msg === 'request' && l.code === 'GH_UPSTREAM_BUSY')
    assert.match(line.reason, /queue timeout/)
    // A client that gives up while queued: its place goes to the next one.
    const gpu = gw.gateway.table.upstreams.get('gpu')!
    const gone = http.get(`${gw.url}/gone`, { agent: false })
    gone.on('error', () => {})
    await waitUntil(() => gpu.queueLength === 1)
    const next = request(`${gw.url}/next`)
    await waitUntil(() => gpu.queueLength === 2)
    assert.match(
      await metricsText(gw.adminPort!),
      /gatehouse_upstream_queue_depth\{upstream="gpu"\} 2/,
    )
    gone.destroy()
    await gw.logs.waitFor((l) => l.msg === 'request' && l.path === '/gone' && l.status === 499)
    up.releaseOne()
    await waitUntil(() => up.state.seen.length === 2)
    assert.equal(up.state.seen[1], '/next')
    up.releaseOne()
    assert.equal((await next).status, 200)
    assert.equal((await first).status, 200)
  } finally {
    while (up.held.length > 0) up.releaseOne()
    await gw.close()
    await up.close()
  }
})
