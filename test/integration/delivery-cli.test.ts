import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { runCli } from '../helpers/cli.js'
import {
  request,
  startGateway,
  startUpstream,
  waitUntilAsync,
  type TestGateway,
  type Upstream,
} from '../helpers/index.js'

describe('gatehouse deliveries (CLI over the admin API)', () => {
  let dir: string
  let up: Upstream
  let gw: TestGateway
  let failing = true
  let admin: string

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'gh-dlcli-'))
    up = await startUpstream((req, res) => {
      req.resume()
      req.on('end', () => {
        res.writeHead(failing ? 400 : 200)
        res.end()
      })
    })
    gw = await startGateway({
      delivery: { store: { kind: 'sqlite', path: join(dir, 'd.db') } },
      upstreams: { work: { targets: [{ url: up.url }] } },
      routes: [{ name: 'jobs', match: {}, upstream: 'work', delivery: { mode: 'async' } }],
    })
    admin = `http://127.0.0.1:${gw.adminPort}`
  })
  after(async () => {
    await gw.close()
    await up.close()
    rmSync(dir, { recursive: true, force: true })
  })

  test('list, show, replay and purge a dead letter', async () => {
    const id =
      JSON.parse((await request(gw.url + '/x', { method: 'POST', body: 'job' })).body).delivery_id
    await waitUntilAsync(async () =>
      JSON.parse((await request(`${admin}/deliveries/${id}`)).body).state === 'dead'
    )
    const list = await runCli(['deliveries', 'list', '--state', 'dead', '--admin', admin])
    assert.equal(list.code, 0, list.stderr)
    assert.match(
      list.stdout,
      new RegExp(`${id}\\s+jobs\\s+dead\\s+attempts=1 .*last_error=status 400 \\(not retried\\)`),
    )
    const show = await runCli(['deliveries', 'show', id, '--admin', admin])
    assert.equal(show.code, 0)
    assert.equal(JSON.parse(show.stdout).state, 'dead')
    failing = false
    const replay = await runCli(['deliveries', 'replay', '--dead', '--route', 'jobs', '--admin',
      admin])
    assert.equal(replay.code, 0, replay.stderr)
    assert.equal(JSON.parse(replay.stdout).replayed, 1)
    await waitUntilAsync(async () =>
      JSON.parse((await request(`${admin}/deliveries/${id}`)).body).state === 'delivered'
    )
    const purge = await runCli(['deliveries', 'purge', '--state', 'delivered', '--admin', admin])
    assert.equal(purge.code, 0)
    assert.equal(JSON.parse(purge.stdout).purged, 1)
    const gone = await runCli(['deliveries', 'show', id, '--admin', admin])
    assert.equal(gone.code, 1)
    assert.match(gone.stderr, /404 no delivery/)
  })

  test('bad usage and an unreachable admin API are clear errors', async () => {
    const purge = await runCli(['deliveries', 'purge', '--admin', admin])
    assert.equal(purge.code, 2)
    assert.match(purge.stderr, /purge needs --state dead or --state delivered/)
    const closed = await startUpstream((_req, res) => res.end())
    await closed.close()
    const down = await runCli(['deliveries', 'list', '--admin', closed.url])
    assert.equal(down.code, 1)
    assert.equal(
      down.stderr,
      `gatehouse: cannot reach the admin API at ${closed.url}: ECONNREFUSED\n`,
    )
  })
})
