import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import http from 'node:http'
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { gzipSync } from 'node:zlib'
import { parseDocument, type Document } from 'yaml'
import { createGateway, parseConfig } from '../../src/index.js'
import {
  LogCapture,
  request,
  startUpstream,
  type TestGateway,
  type Upstream,
} from '../helpers/index.js'

/*
 * examples/rerank, tested as shipped: its own gatehouse.yaml (upstream URL and ports swapped
 * for the test's), its own plugin, in front of a small Elasticsearch-compatible server.
 */

const EXAMPLE_DIR = fileURLToPath(new URL('../../examples/rerank/', import.meta.url))
const EXAMPLE_UPSTREAM = 'http://127.0.0.1:9200'

/** What the fake cluster received and what it answered, per request (raw bytes both ways). */
interface Seen {
  method: string
  url: string
  headers: http.IncomingHttpHeaders
  body: Buffer
  sent: Buffer
  answer: any
}

interface Product {
  title: string
  description: string
  popularity: number
}

/**
 * For "running shoes" the upstream ranks 1, then 2 and 3, then 4..7 (ties by id). 4 is by far
 * the most popular: the re-ranking should lift it out of 4th place.
 */
const PRODUCTS: Record<string, Product> = {
  1: {
    title: 'Running shoes',
    description: 'Lightweight running shoes for road running',
    popularity: 3,
  },
  2: {
    title: 'Trail running shoes',
    description: 'Grippy shoes for trail running',
    popularity: 40,
  },
  3: { title: 'Kids running shoes', description: 'Running shoes for kids', popularity: 15 },
  4: { title: 'Shoe rack', description: 'A rack for running shoes', popularity: 9000 },
  5: { title: 'Running socks', description: 'Socks for running', popularity: 200 },
  6: { title: 'Running belt', description: 'Carry keys while running', popularity: 20 },
  7: { title: 'Shoes cleaner', description: 'Cleans shoes', popularity: 500 },
  8: { title: 'Yoga mat', description: 'Non-slip mat', popularity: 700 },
  9: { title: 'Water bottle', description: 'Keeps water cold while running', popularity: 100 },
}

const words = (s: string): string[] => s.toLowerCase().match(/[\p{L}\p{N}]+/gu) ?? []

/** The query text of the few query shapes the tests send. */
function fakeQueryText (query: any): string {
  if (query?.match !== undefined) {
    const v = Object.values(query.match)[0] as any
    return typeof v === 'string' ? v : v.query
  }
  return query?.multi_match?.query ?? query?.query_string?.query ?? ''
}

/** Naive term-frequency search over PRODUCTS, answering in Elasticsearch's shape. */
function fakeSearch (index: string, body: any, params: URLSearchParams): object {
  const size = Number(params.get('size') ?? body?.size ?? 10)
  const from = Number(params.get('from') ?? body?.from ?? 0)
  const terms = words(params.get('q') ?? fakeQueryText(body?.query))
  const scored = Object.entries(PRODUCTS)
    .map(([id, p]) => {
      const text = words(`${p.title} ${p.description}`)
      const score = terms.length === 0
        ? 1
        : terms.reduce((n, t) => n + text.filter((w) => w === t).length, 0)
      return { id, p, score }
    })
    .filter((h) => h.score > 0)
    .sort((a, b) => b.score - a.score || a.id.localeCompare(b.id))
  return {
    took: 7,
    timed_out: false,
    _shards: { total: 1, successful: 1, skipped: 0, failed: 0 },
    hits: {
      total: { value: scored.length, relation: 'eq' },
      max_score: scored[0]?.score ?? null,
      hits: scored.slice(from, from + size).map((h) => ({
        _index: index,
        _id: h.id,
        _score: h.score,
        _source: h.p,
      })),
    },
  }
}

const DOC_1 = gzipSync(
  JSON.stringify({ _index: 'products', _id: '1', _version: 1, found: true, _source: PRODUCTS[1] }),
)
const CAT = Buffer.from(
  'health status index    uuid                   pri rep docs.count\ngreen  open   products 9a8S0hLqQ3yQ1y9wX8Kk0w   1   0          9\n',
)
const ROOT = Buffer.from(
  JSON.stringify(
    {
      name: 'fake-es',
      cluster_name: 'test',
      version: { number: '8.15.0' },
      tagline: 'You Know, for Search',
    },
    null,
    2,
  ) + '\n',
)

describe('examples/rerank', () => {
  let es: Upstream
  const seen: Seen[] = []
  let model: Upstream
  const modelCalls: Array<{ headers: http.IncomingHttpHeaders, body: any }> = []
  const gateways: TestGateway[] = []
  let gw: TestGateway

  /** The example's gatehouse.yaml, pointed at the fake cluster, on port 0; `edit` changes it further. */
  async function startExample (edit: (doc: Document) => void = () => {}): Promise<TestGateway> {
    const original = readFileSync(`${EXAMPLE_DIR}gatehouse.yaml`, 'utf8')
    assert.ok(original.includes(EXAMPLE_UPSTREAM))
    const doc = parseDocument(original.replaceAll(EXAMPLE_UPSTREAM, es.url))
    doc.setIn(['listen', 'port'], 0)
    doc.setIn(['admin', 'port'], 0)
    edit(doc)
    const config = parseConfig(String(doc), { baseDir: EXAMPLE_DIR, env: {} })
    const logs = new LogCapture()
    const gateway = createGateway(config, { logDestination: logs, processMetrics: false })
    const info = await gateway.listen()
    const started = {
      gateway,
      port: info.port,
      adminPort: info.adminPort,
      url: `http://127.0.0.1:${info.port}`,
      logs,
      close: () => gateway.close(),
    }
    gateways.push(started)
    return started
  }

  before(async () => {
    es = await startUpstream((req, res) => {
      const chunks: Buffer[] = []
      req.on('data', (c: Buffer) => chunks.push(c))
      req.on('end', () => {
        const body = Buffer.concat(chunks)
        const url = new URL(req.url!, 'http://x')
        const entry: Seen = {
          method: req.method!,
          url: req.url!,
          headers: req.headers,
          body,
          sent: Buffer.alloc(0),
          answer: null,
        }
        seen.push(entry)
        const send = (status: number, headers: http.OutgoingHttpHeaders, bytes: Buffer): void => {
          entry.sent = bytes
          res.writeHead(status, {
            'x-elastic-product': 'Elasticsearch',
            ...headers,
            'content-length': bytes.length,
          })
          res.end(bytes)
        }
        const json = (value: object): void => {
          entry.answer = value
          send(200, { 'content-type': 'application/json' }, Buffer.from(JSON.stringify(value)))
        }
        const search = /^\/([^/]+)\/_search$/.exec(url.pathname) ??
          (url.pathname === '/_search' ? [url.pathname, '*'] : null)
        if (search !== null) {
          let parsed: any
          try {
            parsed = body.length === 0 ? undefined : JSON.parse(body.toString('utf8'))
          } catch {
            return send(
              400,
              { 'content-type': 'application/json' },
              Buffer.from('{"error":{"type":"parse_exception"},"status":400}'),
            )
          }
          return json(fakeSearch(search[1]!, parsed, url.searchParams))
        }
        if (req.method === 'GET' && url.pathname === '/') {
          return send(200, { 'content-type': 'application/json' }, ROOT)
        }
        if (req.method === 'GET' && url.pathname === '/products/_doc/1') {
          // Compressed when the client accepts it: the passthrough route must not touch it.
          if (/gzip/.test(req.headers['accept-encoding'] ?? '')) {
            return send(200, {
              'content-type': 'application/json',
              'content-encoding': 'gzip',
              vary: 'accept-encoding',
            }, DOC_1)
          }
          return send(406, {}, Buffer.from('test expects gzip'))
        }
        if (req.method === 'POST' && url.pathname === '/products/_bulk') {
          const lines = body.toString('utf8').split('\n').filter((l) => l !== '')
          const items = lines.filter((_, i) => i % 2 === 0).map((l) => {
            const action = JSON.parse(l).index
            return {
              index: { _index: 'products', _id: action._id, result: 'created', status: 201 },
            }
          })
          return send(
            200,
            { 'content-type': 'application/json' },
            Buffer.from(JSON.stringify({ took: 3, errors: false, items })),
          )
        }
        if (req.method === 'GET' && url.pathname === '/_cat/indices') {
          return send(200, { 'content-type': 'text/plain; charset=UTF-8' }, CAT)
        }
        send(
          404,
          { 'content-type': 'application/json' },
          Buffer.from('{"error":"no handler","status":404}'),
        )
      })
    })
    model = await startUpstream((req, res) => {
      const chunks: Buffer[] = []
      req.on('data', (c: Buffer) => chunks.push(c))
      req.on('end', () => {
        const body = JSON.parse(Buffer.concat(chunks).toString('utf8'))
        modelCalls.push({ headers: req.headers, body })
        // The "model" likes kids' products; the rest keep their order.
        const scores = (body.documents as string[]).map((d, i) =>
          /kids/i.test(d) ? 0.99 : 0.5 - i * 0.01
        )
        res.writeHead(200, { 'content-type': 'application/json' })
        res.end(JSON.stringify({ scores }))
      })
    })
    gw = await startExample()
  })
  after(async () => {
    for (const g of gateways) await g.close()
    await es.close()
    await model.close()
  })

  const post = (
    g: TestGateway,
    path: string,
    body: object | string,
    headers: Record<string, string> = {},
  ) =>
    request(g.url + path, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...headers },
      body: typeof body === 'string' ? body : JSON.stringify(body),
    })
  const ids = (res: { body: string }): string[] =>
    JSON.parse(res.body).hits.hits.map((h: any) => h._id)
  const SHOES = { match: { title: 'running shoes' } }

  test('a search asks the upstream for size × factor and returns size hits, re-ranked, in the same shape', async () => {
    seen.length = 0
    const res = await post(
      gw,
      '/products/_search',
      { query: SHOES, size: 2 },
      { 'accept-encoding': 'gzip' },
    )
    assert.equal(res.status, 200, res.body)
    assert.equal(res.headers['x-gatehouse-reranked'], 'true')
    assert.equal(res.headers['x-elastic-product'], 'Elasticsearch')
    // The plugin reads the answer, so the gateway asked for it uncompressed.
    assert.equal(seen[0]!.headers['accept-encoding'], 'identity')
    assert.equal(res.headers['content-encoding'], undefined)
    assert.equal(res.headers['content-length'], String(Buffer.byteLength(res.body)))
    assert.equal(seen.length, 1)
    const asked = JSON.parse(seen[0]!.body.toString('utf8'))
    assert.deepEqual(asked, { query: SHOES, size: 6 })
    const upstream = seen[0]!.answer
    assert.deepEqual(upstream.hits.hits.map((h: any) => h._id), ['1', '2', '3', '4', '5', '6'])

    const got = JSON.parse(res.body)
    // Only hits.hits and hits.max_score change; everything else is the upstream's.
    assert.deepEqual(Object.keys(got), Object.keys(upstream))
    assert.deepEqual(Object.keys(got.hits), Object.keys(upstream.hits))
    for (const k of ['took', 'timed_out', '_shards']) assert.deepEqual(got[k], upstream[k])
    assert.deepEqual(got.hits.total, upstream.hits.total)
    assert.equal(got.hits.hits.length, 2)
    // The most popular candidate, 4th by relevance alone, is now on the first page.
    assert.ok(ids(res).includes('4'), `re-ranked page: ${ids(res).join(',')}`)
    assert.deepEqual(ids(res), ['4', '2'])
    for (const h of got.hits.hits) {
      const before = upstream.hits.hits.find((u: any) => u._id === h._id)
      assert.deepEqual({ ...h, _score: 0 }, { ...before, _score: 0 })
      assert.equal(typeof h._score, 'number')
    }
    assert.ok(got.hits.hits[0]._score >= got.hits.hits[1]._score)
    assert.equal(got.hits.max_score, got.hits.hits[0]._score)
  })

  test('size and from: a later page is the same ranking further down; size from the URL; GET with a body', async () => {
    seen.length = 0
    const full = await post(gw, '/products/_search', { query: SHOES, size: 4 })
    const page2 = await post(gw, '/products/_search', { query: SHOES, size: 2, from: 2 })
    assert.deepEqual(ids(page2), ids(full).slice(2, 4))
    // Every hit above the page is needed to rank it: from 0, (from + size) × factor.
    assert.deepEqual(JSON.parse(seen[1]!.body.toString('utf8')), {
      query: SHOES,
      size: 12,
      from: 0,
    })
    assert.equal(JSON.parse(page2.body).hits.max_score, JSON.parse(full.body).hits.max_score)

    seen.length = 0
    const url = await request(gw.url + '/products/_search?q=running+shoes&size=2')
    assert.equal(url.status, 200, url.body)
    assert.equal(url.headers['x-gatehouse-reranked'], 'true')
    assert.equal(ids(url).length, 2)
    const asked = new URL(seen[0]!.url, 'http://x').searchParams
    assert.equal(asked.get('size'), '6')
    assert.equal(asked.get('q'), 'running shoes')

    seen.length = 0
    const search = Buffer.from(
      JSON.stringify({
        query: { multi_match: { query: 'running shoes', fields: ['title'] } },
        size: 3,
      }),
    )
    // Node frames a GET body only when told its length.
    const get = await request(gw.url + '/products/_search', {
      method: 'GET',
      headers: { 'content-type': 'application/json', 'content-length': String(search.length) },
      body: search,
    })
    assert.equal(get.status, 200, get.body)
    assert.equal(seen[0]!.method, 'GET')
    assert.equal(JSON.parse(seen[0]!.body.toString('utf8')).size, 9)
    assert.equal(ids(get).length, 3)

    // curl -XGET -d '{...}' labels the JSON as a form: the plugin reads it anyway and sends JSON on.
    seen.length = 0
    const curl = await request(gw.url + '/products/_search', {
      method: 'GET',
      headers: {
        'content-type': 'application/x-www-form-urlencoded',
        'content-length': String(search.length),
      },
      body: search,
    })
    assert.equal(curl.status, 200, curl.body)
    assert.equal(curl.headers['x-gatehouse-reranked'], 'true')
    assert.equal(seen[0]!.headers['content-type'], 'application/json')
    assert.equal(JSON.parse(seen[0]!.body.toString('utf8')).size, 9)

    seen.length = 0
    const dflt = await post(gw, '/products/_search', {
      query: { query_string: { query: 'running' } },
    })
    assert.equal(JSON.parse(seen[0]!.body.toString('utf8')).size, 30)
    // Fewer matches than the default size of 10: all of them, re-ranked.
    assert.equal(ids(dflt).length, JSON.parse(dflt.body).hits.total.value)
  })

  test('a search with its own sort, or deeper than max_window, passes through as asked', async () => {
    seen.length = 0
    const sorted = await post(gw, '/products/_search', {
      query: SHOES,
      size: 2,
      sort: [{ popularity: 'desc' }],
    })
    assert.equal(sorted.status, 200)
    assert.equal(sorted.headers['x-gatehouse-reranked'], undefined)
    assert.equal(JSON.parse(seen[0]!.body.toString('utf8')).size, 2)
    const deep = await post(gw, '/products/_search', { query: SHOES, size: 10, from: 95 })
    assert.equal(deep.headers['x-gatehouse-reranked'], undefined)
    assert.equal(JSON.parse(seen[1]!.body.toString('utf8')).from, 95)
  })

  test('with model_url, the model scores the candidates and decides the order', async () => {
    const withModel = await startExample((doc) =>
      doc.setIn(['routes', 0, 'plugin', 'options', 'model_url'], model.url + '/rerank')
    )
    modelCalls.length = 0
    const res = await post(withModel, '/products/_search', { query: SHOES, size: 2 })
    assert.equal(res.status, 200, res.body)
    assert.equal(res.headers['x-gatehouse-reranked'], 'true')
    assert.equal(modelCalls.length, 1)
    assert.equal(modelCalls[0]!.headers['content-type'], 'application/json')
    assert.equal(modelCalls[0]!.body.query, 'running shoes')
    assert.deepEqual(
      modelCalls[0]!.body.documents,
      ['1', '2', '3', '4', '5', '6'].map((id) =>
        `${PRODUCTS[id]!.title}\n${PRODUCTS[id]!.description}`
      ),
    )
    const got = JSON.parse(res.body)
    assert.deepEqual(ids(res), ['3', '1'])
    assert.deepEqual(got.hits.hits.map((h: any) => h._score), [0.99, 0.5])
    assert.equal(got.hits.max_score, 0.99)
  })

  test('the model down: 502 GH_PLUGIN_FAILED by default; upstream order with on_model_error: upstream_order', async () => {
    const gone = await startUpstream((_req, res) => res.end())
    const deadUrl = gone.url + '/rerank'
    await gone.close()
    const failing = await startExample((doc) =>
      doc.setIn(['routes', 0, 'plugin', 'options', 'model_url'], deadUrl)
    )
    const res = await post(failing, '/products/_search', { query: SHOES, size: 2 })
    assert.equal(res.status, 502)
    assert.equal(res.headers['content-type'], 'application/problem+json')
    assert.equal(JSON.parse(res.body).code, 'GH_PLUGIN_FAILED')
    const line = await failing.logs.waitFor((l) =>
      l.msg === 'request' && l.id === res.headers['x-request-id']
    )
    assert.match(line.reason, /rerank\.onResponse threw/)
    // Other routes do not depend on the model.
    assert.equal((await request(failing.url + '/_cat/indices')).status, 200)

    const lenient = await startExample((doc) => {
      doc.setIn(['routes', 0, 'plugin', 'options', 'model_url'], deadUrl)
      doc.setIn(['routes', 0, 'plugin', 'options', 'on_model_error'], 'upstream_order')
    })
    seen.length = 0
    const fallback = await post(lenient, '/products/_search', { query: SHOES, size: 2, from: 1 })
    assert.equal(fallback.status, 200, fallback.body)
    assert.equal(fallback.headers['x-gatehouse-reranked'], 'false')
    // The caller's page of the upstream's order, not the whole window.
    assert.deepEqual(ids(fallback), ['2', '3'])
    assert.equal(JSON.parse(fallback.body).hits.max_score, seen[0]!.answer.hits.max_score)
    assert.ok(
      lenient.logs.lines.some((l) => l.plugin === 'rerank' && /model unavailable/.test(l.msg)),
    )
  })

  test('everything but <index>/_search passes byte for byte, both ways', async () => {
    const bulk = Buffer.from(
      '{"index":{"_index":"products","_id":"10"}}\n' +
        '{"title":"Caf\u00e9 racer boots","description":"Leather, \u2713 waterproof","popularity":12}\n' +
        '{ "index" : { "_index" : "products", "_id" : "11" } }\n' +
        '{"title":"Ultra \ud83c\udfc3 shoes",   "popularity": 1.50}\n',
    )
    const cases: Array<
      { method: string, path: string, headers?: Record<string, string>, body?: Buffer }
    > = [
      { method: 'GET', path: '/' },
      { method: 'GET', path: '/products/_doc/1', headers: { 'accept-encoding': 'gzip' } },
      {
        method: 'POST',
        path: '/products/_bulk?refresh=wait_for',
        headers: { 'content-type': 'application/x-ndjson' },
        body: bulk,
      },
      { method: 'GET', path: '/_cat/indices?v&s=index&h=health,index%2Cuuid' },
      // Not an index search: no re-ranking, the body as sent (odd spacing and all).
      {
        method: 'POST',
        path: '/_search?size=2',
        headers: { 'content-type': 'application/json' },
        body: Buffer.from('{ "query" : {"match":{"title":"running shoes"}},\n "size":2 }'),
      },
      {
        method: 'POST',
        path: '/products/_search/template',
        headers: { 'content-type': 'application/json' },
        body: Buffer.from('{"id":"t1"}'),
      },
    ]
    for (const c of cases) {
      seen.length = 0
      const res = await rawExchange(gw.url + c.path, c.method, c.headers ?? {}, c.body)
      const what = `${c.method} ${c.path}`
      assert.equal(seen.length, 1, what)
      const s = seen[0]!
      assert.equal(s.method, c.method, what)
      assert.equal(s.url, c.path, what)
      assert.deepEqual(s.body, c.body ?? Buffer.alloc(0), what)
      for (const [k, v] of Object.entries(c.headers ?? {})) {
        assert.equal(s.headers[k], v, `${what}: ${k}`)
      }
      assert.deepEqual(res.body, s.sent, what)
      assert.equal(res.headers['x-gatehouse-reranked'], undefined, what)
      assert.equal(res.headers['x-elastic-product'], 'Elasticsearch', what)
    }
    const gz = await rawExchange(gw.url + '/products/_doc/1', 'GET', { 'accept-encoding': 'gzip' })
    assert.equal(gz.headers['content-encoding'], 'gzip')
    assert.deepEqual(gz.body, DOC_1)
    const cat = await rawExchange(gw.url + '/_cat/indices', 'GET', {})
    assert.equal(cat.headers['content-type'], 'text/plain; charset=UTF-8')
    assert.deepEqual(cat.body, CAT)
  })
})

/** A request whose response body is kept as bytes (no decoding of any kind). */
function rawExchange (
  url: string,
  method: string,
  headers: Record<string, string>,
  body?: Buffer,
): Promise<{ status: number, headers: http.IncomingHttpHeaders, body: Buffer }> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers, agent: false }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on(
        'end',
        () =>
          resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks) }),
      )
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end(body)
  })
}
