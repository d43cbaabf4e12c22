import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import jsonata from 'jsonata'
import {
  startGateway,
  startUpstream,
  request,
  type TestGateway,
  type Upstream,
} from '../helpers/index.js'
import { validateConfig } from '../../src/index.js'
import { ConfigError } from '../../src/errors/index.js'
import { Expression } from '../../src/policies/transform/expression.js'

/*
 * A transform's input is the caller's body (or the upstream's), so one request must not be able
 * to stall or crash the gateway through it. Before: `{"texts": $sort(texts)}` on a 224 KB body
 * held the event loop for 36 s (RSS 3.3 GB), and a 712 KB body (under the 1 MiB default cap)
 * ended the process with "heap out of memory": JSONata's merge sort, order-by and $distinct are
 * quadratic in time and memory.
 */

/** About 712 KB of JSON: {"texts": [...]} with words in a scrambled order, some repeated. */
function bigTexts (): string[] {
  const n = 60_000
  return Array.from({ length: n }, (_, i) => `word-${(i * 7919) % (n / 2)}`)
}

const post = (url: string, body: unknown) =>
  request(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  })

describe('hardened transforms: every evaluation is bounded', () => {
  let up: Upstream
  let gw: TestGateway
  const upstreamBodies: string[] = []

  before(async () => {
    up = await startUpstream((req, res) => {
      const chunks: Buffer[] = []
      req.on('data', (c: Buffer) => chunks.push(c))
      req.on('end', () => {
        const body = Buffer.concat(chunks).toString('utf8')
        if (req.url === '/hits') {
          res.writeHead(200, { 'content-type': 'application/json' })
          return res.end(
            JSON.stringify({
              hits: Array.from({ length: 3000 }, (_, i) => ({ id: `h${i}`, score: i % 17 })),
            }),
          )
        }
        upstreamBodies.push(body)
        res.writeHead(200, { 'content-type': 'application/json' })
        res.end(body === '' ? '{}' : body)
      })
    })
    gw = await startGateway({
      upstreams: { up: { targets: [{ url: up.url }] } },
      routes: [
        // Generous deadlines: these show the cost is n log n, not that a loaded CI box is quick.
        {
          name: 'sort',
          match: { path: '/sort' },
          upstream: 'up',
          transform: { request: { body: '{ "texts": $sort(texts) }', timeout: '30s' } },
        },
        {
          name: 'distinct',
          match: { path: '/distinct' },
          upstream: 'up',
          transform: { request: { body: '{ "texts": $distinct(texts) }', timeout: '30s' } },
        },
        {
          name: 'order',
          match: { path: '/order' },
          upstream: 'up',
          transform: { request: { body: '{ "texts": texts^(>$) }', timeout: '30s' } },
        },
        // Quadratic by design (every item looks at every item): the deadline ends it.
        {
          name: 'cross',
          match: { path: '/cross' },
          upstream: 'up',
          transform: { request: { body: '{ "pairs": items.($$.items.id) }', timeout: '1s' } },
        },
        {
          name: 'range',
          match: { path: '/range' },
          upstream: 'up',
          transform: { request: { body: '{ "count": $count([1..n]) }' } },
        },
        {
          name: 'product',
          match: { path: '/product' },
          upstream: 'up',
          transform: {
            request: {
              body: '( $n := n; { "count": $count([1..$n].([1..$n])) } )',
              timeout: '30s',
            },
          },
        },
        {
          name: 'doubling',
          match: { path: '/doubling' },
          upstream: 'up',
          transform: {
            request: {
              body:
                '( $double := function($a, $k) { $k = 0 ? $a : $double($append($a, $a), $k - 1) }; { "count": $count($double([1], k)) } )',
              timeout: '30s',
            },
          },
        },
        {
          name: 'pad',
          match: { path: '/pad' },
          upstream: 'up',
          transform: { request: { body: '{ "padded": $pad("x", width) }' } },
        },
        {
          name: 'hits',
          match: { path: '/hits' },
          upstream: 'up',
          transform: { response: { body: '{ "ids": hits.($$.hits.id) }', timeout: '300ms' } },
        },
        { name: 'plain', match: {}, upstream: 'up' },
      ],
    })
  })
  after(async () => {
    await gw.close()
    await up.close()
  })

  test('$sort, $distinct and order-by over a 712 KB body answer at once, with the right result', async () => {
    const texts = bigTexts()
    assert.ok(JSON.stringify({ texts }).length > 700_000)
    const sorted = [...texts].sort((a, b) => a > b ? 1 : a < b ? -1 : 0)

    // The gateway runs in this process: its CPU time is what the requests cost (wall time on a
    // loaded CI box says little). Before, a third of this body took 36 s for $sort alone.
    const cpu = process.cpuUsage()
    const s = await post(gw.url + '/sort', { texts })
    assert.equal(s.status, 200, s.body)
    assert.deepEqual(JSON.parse(s.body).texts, sorted)

    const d = await post(gw.url + '/distinct', { texts })
    assert.equal(d.status, 200, d.body)
    assert.deepEqual(JSON.parse(d.body).texts, [...new Set(texts)])

    const o = await post(gw.url + '/order', { texts: texts.slice(0, 20_000) })
    assert.equal(o.status, 200, o.body)
    assert.deepEqual(
      JSON.parse(o.body).texts,
      [...texts.slice(0, 20_000)].sort((a, b) => a < b ? 1 : a > b ? -1 : 0),
    )
    const used = process.cpuUsage(cpu)
    const ms = (used.user + used.system) / 1000
    assert.ok(ms < 10_000, `the three requests (and this test's own checks) used ${ms} ms of CPU`)
  })

  test('an evaluation past its deadline is 502 GH_TRANSFORM_LIMIT, and other requests are served meanwhile', async () => {
    upstreamBodies.length = 0
    const items = Array.from({ length: 3000 }, (_, i) => ({ id: i }))
    const started = performance.now()
    const state = { done: false }
    const bad = post(gw.url + '/cross', { items }).finally(() => {
      state.done = true
    })
    // Plain requests on another route, one after another, for as long as the bad one runs.
    const during: number[] = []
    while (!state.done) {
      const t = performance.now()
      const r = await request(gw.url + '/plain', { method: 'POST', body: '{}' })
      assert.equal(r.status, 200)
      if (!state.done) during.push(performance.now() - t)
    }
    const res = await bad
    const elapsed = performance.now() - started
    assert.equal(res.status, 502)
    assert.equal(res.headers['content-type'], 'application/problem+json')
    const p = JSON.parse(res.body)
    assert.equal(p.code, 'GH_TRANSFORM_LIMIT')
    assert.equal(p.title, 'Transform exceeded its limits')
    assert.equal(
      p.detail,
      'The request body transform was stopped: the expression ran past its 1000 ms limit',
    )
    // Cut at its deadline (not after the ~10 s it needs), and nothing went upstream for it.
    assert.ok(elapsed >= 1000 && elapsed < 4000, `answered after ${elapsed} ms`)
    assert.equal(upstreamBodies.filter((b) => b.includes('pairs')).length, 0)
    // The evaluation gave the event loop a turn every few milliseconds: plain requests kept
    // completing while it ran (an evaluation holding the loop to its deadline lets none through
    // before it ends), each in less time than the deadline.
    assert.ok(
      during.length >= 3,
      `only ${during.length} plain requests completed during the evaluation (${
        during.map(Math.round).join(', ')
      } ms)`,
    )
    assert.ok(
      Math.max(...during) < 1000,
      `plain requests took ${during.map(Math.round).join(', ')} ms while the transform ran`,
    )
    const line = await gw.logs.waitFor((l) => l.msg === 'request' && l.route === 'cross')
    assert.equal(line.code, 'GH_TRANSFORM_LIMIT')
  })

  test('a sequence the body makes too long is 502 GH_TRANSFORM_LIMIT, not an allocation', async () => {
    const ok = await post(gw.url + '/range', { n: 1000 })
    assert.equal(ok.status, 200)
    assert.deepEqual(JSON.parse(ok.body), { count: 1000 })
    for (const n of [20_000_000, 1e12]) {
      const res = await post(gw.url + '/range', { n })
      assert.equal(res.status, 502)
      const p = JSON.parse(res.body)
      assert.equal(p.code, 'GH_TRANSFORM_LIMIT')
      assert.equal(
        p.detail,
        'The request body transform was stopped: the expression built a sequence of more than 10000000 items',
      )
    }
  })

  test('a cross product or an $append doubling the body asks for stops at 10,000,000 items', async () => {
    const detail =
      'The request body transform was stopped: the expression built a sequence of more than 10000000 items'
    assert.deepEqual(JSON.parse((await post(gw.url + '/product', { n: 100 })).body), {
      count: 10_000,
    })
    const product = await post(gw.url + '/product', { n: 3300 })
    assert.equal(product.status, 502)
    assert.equal(JSON.parse(product.body).detail, detail)
    assert.deepEqual(JSON.parse((await post(gw.url + '/doubling', { k: 10 })).body), {
      count: 1024,
    })
    const doubling = await post(gw.url + '/doubling', { k: 64 })
    assert.equal(doubling.status, 502)
    assert.equal(JSON.parse(doubling.body).detail, detail)
  })

  test('$pad with a width from the body is capped', async () => {
    const ok = await post(gw.url + '/pad', { width: 5 })
    assert.deepEqual(JSON.parse(ok.body), { padded: 'x    ' })
    const res = await post(gw.url + '/pad', { width: 1e9 })
    assert.equal(res.status, 502)
    const p = JSON.parse(res.body)
    assert.equal(p.code, 'GH_TRANSFORM_LIMIT')
    assert.equal(
      p.detail,
      'The request body transform was stopped: $pad was asked for 1000000000 characters (at most 10000000)',
    )
  })

  test('a response transform past its deadline is 502 GH_TRANSFORM_LIMIT', async () => {
    const res = await request(gw.url + '/hits')
    assert.equal(res.status, 502)
    const p = JSON.parse(res.body)
    assert.equal(p.code, 'GH_TRANSFORM_LIMIT')
    assert.equal(
      p.detail,
      'The response body transform was stopped: the expression ran past its 300 ms limit',
    )
  })

  test('transform timeouts are durations with a unit; order-by over @, # or % bindings is refused', () => {
    const base = { upstreams: { up: { targets: [{ url: 'http://127.0.0.1:1' }] } } }
    const issues = (route: Record<string, unknown>): string[] => {
      try {
        validateConfig({ ...base, routes: [{ name: 'r', match: {}, upstream: 'up', ...route }] })
      } catch (err) {
        if (err instanceof ConfigError) return err.issues.map((i) => `${i.path}: ${i.message}`)
        throw err
      }
      return []
    }
    assert.deepEqual(
      issues({
        transform: {
          request: { body: '$', timeout: '250ms' },
          response: { body: '$', timeout: '2s' },
        },
      }),
      [],
    )
    assert.deepEqual(issues({ transform: { request: { body: '$', timeout: 5 } } }), [
      'routes[0].transform.request.timeout: invalid duration 5: a duration needs a unit (use e.g. 60s or 500ms)',
    ])
    const refused = issues({ transform: { request: { body: 'items#$i^(>score).{ "rank": $i }' } } })
    assert.equal(refused.length, 1)
    assert.match(
      refused[0]!,
      /^routes\[0\]\.transform\.request\.body: invalid JSONata expression: order-by \(\^\) in a path that also binds @, # or % cannot be bounded/,
    )
  })
})

describe('the bounded built-ins give JSONata\'s results', () => {
  // Small inputs, where JSONata's own quadratic versions are quick: the answers must match.
  const expressions = [
    'a^(b)',
    'a^(>b, c)',
    'a.c^($)',
    'a^(b).c',
    'a^(b)[0]',
    'a^(b)[c = "a"].b',
    'a[]^(b)',
    'a^(b)[]',
    'nope[]^(b)',
    'a^(b){"k": c}',
    '$^(b)',
    '[3, 1, 2]^($)',
    'a.[b, c]^($[0])',
    'a^(b).d^(>$)',
    '($x := 1; a^(b).$x)',
    'a.(d^($))',
    'a^(b)[-1]',
    'a^(constructor)',
    '$sort(a.c)',
    '$sort(a, function($l, $r){ $l.b > $r.b })',
    '$distinct(a)',
    '$distinct(a.d)',
    'a^(c)[-1].d',
    '$distinct([1, "1", 1, {"a": 1, "b": [2]}, {"b": [2], "a": 1}, [1], [1, 2], null, null, true, 0])',
  ]
  const inputs: unknown[] = [
    {},
    { a: [] },
    { a: { b: 1, c: 'x', d: [3, 1] } },
    {
      a: [{ b: 2, c: 'b' }, { b: 2, c: 'a' }, { b: 1, c: 'c' }, { c: 'z' }, {
        b: 0,
        c: 'q',
        d: [5, 4],
      }],
    },
    { a: [{ b: 'x' }, { b: 1 }] },
    { a: [{ b: [1, 2] }, { b: 1 }] },
    [{ a: [{ b: 2 }, { b: 1 }] }, { a: [{ b: 0 }] }],
    { a: [{ b: 1, d: [[1, 2], [0]] }, { b: 0, d: [[5]] }] },
    { a: [[{ b: 2 }, { b: 1 }], { b: 0 }] },
    { a: [null] },
    { a: [{ b: 1 }, null, { b: 0 }] },
    { a: [{ b: 1 }, { b: 2, _jsonata_lambda: true }, { b: 0 }] },
    { a: [[{ b: [1] }], { b: 0 }] },
    { a: [[{ b: 2 }], [{ b: [3, 4] }]] },
    { a: [[[{ b: 7 }]], [{ b: 'z' }]] },
    { a: [{ constructor: 1 }, {}] },
  ]
  const outcome = async (f: () => Promise<unknown>): Promise<string> => {
    try {
      return `ok ${JSON.stringify(await f())}`
    } catch (err) {
      return `error ${(err as { code?: string }).code}`
    }
  }
  for (const source of expressions) {
    test(source, async () => {
      const ours = new Expression(source)
      const theirs = jsonata(source)
      for (const input of inputs) {
        assert.equal(
          await outcome(() => ours.evaluate(structuredClone(input), {})),
          await outcome(() => theirs.evaluate(structuredClone(input))),
          JSON.stringify(input),
        )
      }
    })
  }
})
