import { test } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { deleteNatsStreams, request, serviceAvailable, startGateway, startUpstream, waitUntil, waitUntilAsync, type TestGateway } from '../helpers/index.js'

/*
 * The delivery store under abuse: whether a full store drains.
 */

const NATS_SKIP = 'NATS is not answering on 127.0.0.1:4222'

type StoreKind = 'sqlite' | 'nats'

async function storeFor (kind: StoreKind, extra: Record<string, unknown> = {}): Promise<{ store: Record<string, unknown>, dir: string | null, stream: string | null } | string> {
  if (kind === 'sqlite') {
    const dir = mkdtempSync(join(tmpdir(), 'gh-hd-'))
    return { store: { kind: 'sqlite', path: join(dir, 'delivery.db'), ...extra }, dir, stream: null }
  }
  if (!await serviceAvailable(4222)) return NATS_SKIP
  const stream = `GHHD_${randomBytes(4).toString('hex')}`
  return { store: { kind: 'nats', url: 'nats://127.0.0.1:4222', stream, ...extra }, dir: null, stream }
}

async function cleanup (s: { dir: string | null, stream: string | null }): Promise<void> {
  if (s.dir !== null) rmSync(s.dir, { recursive: true, force: true })
  if (s.stream !== null) await deleteNatsStreams([s.stream])
}

const post = (gw: TestGateway, path: string, headers: Record<string, string> = {}, body = '{"job":1}') =>
  request(gw.url + path, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body })

const status = async (gw: TestGateway, id: string) => JSON.parse((await request(`${gw.url}/_gatehouse/deliveries/${id}`)).body)

for (const kind of ['sqlite', 'nats'] as const) {
  test(`hardened delivery on ${kind}: a full store takes requests again once what it holds is delivered`, async (t) => {
    // SQLite: the report's 1MiB with ~90 KiB requests. NATS: the queue stream's max_bytes, with
    // requests that fit the server's max_payload.
    const bodySize = kind === 'sqlite' ? 90 * 1024 : 20 * 1024
    const made = await storeFor(kind, kind === 'sqlite' ? { max_size: '1MiB' } : { max_bytes: '200KiB' })
    if (typeof made === 'string') return t.skip(made)
    let open = false
    const delivered = new Set<string>()
    const up = await startUpstream((req, res) => {
      req.resume()
      req.on('end', () => {
        if (open) delivered.add(String(req.headers['x-gatehouse-delivery-id']))
        res.writeHead(open ? 200 : 503)
        res.end()
      })
    })
    const gw = await startGateway({
      delivery: { store: made.store as never },
      upstreams: { work: { targets: [{ url: up.url }] } },
      routes: [{ name: 'jobs', match: {}, upstream: 'work', delivery: { mode: 'async', max_attempts: 1000, backoff: { initial: '50ms', factor: 1, max: '50ms', jitter: '0%' } } }],
    } as never)
    try {
      const fill = async (): Promise<string[]> => {
        const ids: string[] = []
        for (let i = 0; i < 100; i++) {
          const res = await post(gw, '/jobs', {}, JSON.stringify({ pad: 'x'.repeat(bodySize), i }))
          if (res.status !== 202) {
            assert.equal(res.status, 503)
            const problem = JSON.parse(res.body)
            assert.equal(problem.code, 'GH_DELIVERY_STORE_UNAVAILABLE')
            assert.equal(problem.detail, 'The delivery store is full; try again later')
            assert.equal(res.headers['retry-after'], '5')
            return ids
          }
          ids.push(JSON.parse(res.body).delivery_id)
        }
        return assert.fail('the store never filled up')
      }
      const first = await fill()
      assert.ok(first.length >= 5, `accepted ${first.length}`)
      // Leased and retried while the store is full: every one of them is still deliverable.
      open = true
      await waitUntil(() => first.every((id) => delivered.has(id)), 15_000)
      await waitUntilAsync(async () => (await Promise.all(first.map((id) => status(gw, id)))).every((s) => s.state === 'delivered'), 10_000)
      // No purge and no retention sweep: the delivered requests' space is free again.
      open = false
      const second = await fill()
      assert.ok(second.length >= first.length - 1, `accepted ${second.length} after ${first.length} were delivered`)
      open = true
      await waitUntil(() => second.every((id) => delivered.has(id)), 15_000)
      const trouble = gw.logs.lines.filter((l) => l.msg === 'claiming deliveries failed; retrying' || l.msg === 'delivery attempt failed unexpectedly')
      assert.deepEqual(trouble, [])
    } finally {
      await gw.close()
      await up.close()
      await cleanup(made)
    }
  })
}
