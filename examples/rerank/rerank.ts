// Search re-ranking for an Elasticsearch-compatible upstream (Elasticsearch, OpenSearch), as a
// Gatehouse plugin: fetch more candidates than the caller asked for, re-score them, return the
// best `size`. See README.md in this folder.
import { definePlugin, type PluginContext } from 'gatehouse'

/** `plugin.options` in gatehouse.yaml. */
export interface RerankOptions {
  /** Candidates fetched per result asked for: the upstream is asked for (from + size) × factor. Default 3. */
  factor?: number
  /** The most candidates fetched, whatever factor says; deeper pages pass through unranked. Default 100. */
  max_window?: number
  /** Numeric `_source` field (dots for nested fields) that boosts a hit, log-scaled. Default "popularity". */
  boost_field?: string
  /** `_source` fields compared word by word with the query text (and sent to the model). Default ["title"]. */
  text_fields?: string[]
  /** How much each signal counts in the built-in scorer. Defaults: score 1, boost 1, terms 0.5. */
  weights?: { score?: number, boost?: number, terms?: number }
  /** An HTTP endpoint that scores instead: POST { query, documents: string[] } → { scores: number[] }. */
  model_url?: string
  /** When the model cannot answer: "fail" (502, the default) or "upstream_order" (the page unranked). */
  on_model_error?: 'fail' | 'upstream_order'
}

interface Settings {
  factor: number
  maxWindow: number
  boostField: string[]
  textFields: string[][]
  weights: { score: number, boost: number, terms: number }
  modelUrl: string | null
  onModelError: 'fail' | 'upstream_order'
}

/** What onRequest decided, for onResponse: the page the caller asked for, and the query text. */
interface Plan {
  from: number
  size: number
  text: string
}

interface Hit {
  _score?: number | null
  _source?: Record<string, unknown>
  [key: string]: unknown
}

type Json = Record<string, unknown>

/**
 * Options checked once per route (the options object is the route's own), so a typo in the
 * config shows up as a 502 with the reason in the log rather than as a silently odd ranking.
 */
const settingsCache = new WeakMap<object, Settings>()

function settings (options: RerankOptions): Settings {
  const cached = settingsCache.get(options)
  if (cached !== undefined) return cached
  const factor = options.factor ?? 3
  const maxWindow = options.max_window ?? 100
  if (!Number.isInteger(factor) || factor < 1) {
    throw new Error(
      `rerank: factor must be a whole number ≥ 1, got ${JSON.stringify(options.factor)}`,
    )
  }
  if (!Number.isInteger(maxWindow) || maxWindow < 1) {
    throw new Error(
      `rerank: max_window must be a whole number ≥ 1, got ${JSON.stringify(options.max_window)}`,
    )
  }
  const textFields = options.text_fields ?? ['title']
  if (!Array.isArray(textFields) || textFields.some((f) => typeof f !== 'string' || f === '')) {
    throw new Error('rerank: text_fields must be a list of field names')
  }
  const w = options.weights ?? {}
  const weights = { score: w.score ?? 1, boost: w.boost ?? 1, terms: w.terms ?? 0.5 }
  if (Object.values(weights).some((v) => typeof v !== 'number' || !Number.isFinite(v))) {
    throw new Error('rerank: weights must be numbers')
  }
  const onModelError = options.on_model_error ?? 'fail'
  if (onModelError !== 'fail' && onModelError !== 'upstream_order') {
    throw new Error(
      `rerank: on_model_error must be "fail" or "upstream_order", got ${
        JSON.stringify(onModelError)
      }`,
    )
  }
  const s: Settings = {
    factor,
    maxWindow,
    boostField: (options.boost_field ?? 'popularity').split('.'),
    textFields: textFields.map((f) => f.split('.')),
    weights,
    modelUrl: options.model_url ?? null,
    onModelError,
  }
  settingsCache.set(options, s)
  return s
}

export default definePlugin<RerankOptions>({
  name: 'rerank',
  gatehouse: '^0.1',

  onRequest (ctx) {
    const req = ctx.request
    // The route's path_regex picks <index>/_search; this keeps the plugin safe on a wider route.
    if ((req.method !== 'GET' && req.method !== 'POST') || !req.path.endsWith('/_search')) return
    const s = settings(ctx.options)
    // Search clients send GET with a JSON body too, not always labelled as JSON.
    let body = req.body
    let parsedHere = false
    if (body === undefined && req.rawBody.length > 0) {
      try {
        body = JSON.parse(req.rawBody.toString('utf8'))
        parsedHere = true
      } catch {
        return // Not JSON: the upstream answers that with its own error.
      }
    }
    if (body !== undefined && !isObject(body)) return
    const q = req.query
    // A caller-chosen order (sort, search_after), a scroll and hits-free searches have nothing to re-rank.
    if (body !== undefined && (body.sort !== undefined || body.search_after !== undefined)) return
    if (q.has('sort') || q.has('scroll')) return
    // URL parameters win over the body, as in Elasticsearch.
    const size = count(q.get('size') ?? body?.size, 10)
    const from = count(q.get('from') ?? body?.from, 0)
    if (size === null || from === null || size === 0) return // Malformed: the upstream's error, not ours.
    // Re-ranking a page needs every hit above it: deeper than max_window it passes through as asked.
    if (from + size > s.maxWindow) return
    const window = Math.min((from + size) * s.factor, s.maxWindow)

    // Ask for the window wherever the caller said size and from, so nothing contradicts it.
    if (q.has('size')) q.set('size', String(window))
    if (q.has('from')) q.set('from', '0')
    if (body !== undefined) {
      if (body.size !== undefined || !q.has('size')) body.size = window
      if (body.from !== undefined) body.from = 0
      // A body parsed here is handed back as JSON (the gateway then labels it application/json).
      if (parsedHere) req.body = body
    } else if (!q.has('size')) {
      q.set('size', String(window))
    }
    const plan: Plan = { from, size, text: queryText(body?.query) ?? q.get('q') ?? '' }
    ctx.state.rerank = plan
  },

  async onResponse (ctx) {
    const plan = ctx.state.rerank as Plan | undefined
    if (plan === undefined) return
    const r = ctx.response!
    // Errors (400 for a bad query, 404 for a missing index) are the upstream's to explain.
    if (r.status !== 200) return
    const body = r.body
    if (!isObject(body) || !isObject(body.hits) || !Array.isArray(body.hits.hits)) {
      // We asked for more hits than the caller did: passing this on could hand them the whole window.
      throw new Error(
        `rerank: the upstream's 200 answer to ${ctx.request.path} is not a search response`,
      )
    }
    const hits = body.hits.hits as Hit[]
    const s = settings(ctx.options)
    let scores: number[]
    if (s.modelUrl !== null && hits.length > 0) {
      try {
        scores = await modelScores(ctx, s, s.modelUrl, plan.text, hits)
      } catch (err) {
        if (s.onModelError === 'fail' || ctx.signal.aborted) throw err
        ctx.log.warn(
          { err: (err as Error).message },
          'rerank model unavailable; answering in the upstream order',
        )
        body.hits.hits = hits.slice(plan.from, plan.from + plan.size)
        r.headers['x-gatehouse-reranked'] = 'false'
        return
      }
    } else {
      scores = localScores(s, plan.text, hits)
    }
    // Ties keep the upstream's order, so equal scores never shuffle between requests.
    const ranked = hits.map((hit, i) => ({ hit, score: scores[i]!, i })).sort((a, b) =>
      b.score - a.score || a.i - b.i
    )
    const page = ranked.slice(plan.from, plan.from + plan.size)
    for (const { hit, score } of page) hit._score = score
    body.hits.hits = page.map((p) => p.hit)
    // As in Elasticsearch: the best score of the whole (re-ranked) result, not just of this page.
    body.hits.max_score = ranked.length === 0 ? null : ranked[0]!.score
    r.headers['x-gatehouse-reranked'] = 'true'
  },
})

/**
 * The built-in scorer: the upstream's relevance (scaled to the window's best), a log-scaled
 * boost from a numeric field (scaled to the window's largest), and the share of query words
 * found in the text fields. Each part is in [0, 1] before its weight.
 */
function localScores (s: Settings, text: string, hits: Hit[]): number[] {
  const relevance = hits.map((h) => finite(h._score))
  const best = Math.max(0, ...relevance)
  const boosts = hits.map((h) => Math.log1p(Math.max(0, finite(at(h._source, s.boostField)))))
  const top = Math.max(0, ...boosts)
  const terms = new Set(words(text))
  return hits.map((h, i) => {
    let overlap = 0
    if (terms.size > 0) {
      const seen = new Set(words(documentText(s, h)))
      for (const t of terms) if (seen.has(t)) overlap++
    }
    return s.weights.score * (best > 0 ? relevance[i]! / best : 0) +
      s.weights.boost * (top > 0 ? boosts[i]! / top : 0) +
      s.weights.terms * (terms.size > 0 ? overlap / terms.size : 0)
  })
}

/** Ask the scoring model; its answer must be one finite number per document. */
async function modelScores (
  ctx: PluginContext<RerankOptions>,
  s: Settings,
  url: string,
  text: string,
  hits: Hit[],
): Promise<number[]> {
  const documents = hits.map((h) => documentText(s, h))
  // ctx.signal ends the call when the plugin's timeout passes or the client goes away.
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json' },
    body: JSON.stringify({ query: text, documents }),
    signal: ctx.signal,
  })
  if (!res.ok) {
    await res.body?.cancel()
    throw new Error(`rerank model ${url} answered ${res.status}`)
  }
  const answer = await res.json() as { scores?: unknown }
  const scores = answer?.scores
  if (
    !Array.isArray(scores) || scores.length !== documents.length ||
    scores.some((v) => typeof v !== 'number' || !Number.isFinite(v))
  ) {
    throw new Error(`rerank model ${url} did not answer { scores: [${documents.length} numbers] }`)
  }
  return scores as number[]
}

/** The query's text: match / match_phrase / multi_match / query_string / simple_query_string, anywhere in it. */
function queryText (query: unknown): string | null {
  const found: string[] = []
  const walk = (node: unknown, depth: number): void => {
    if (depth > 32 || node === null || typeof node !== 'object') return
    if (Array.isArray(node)) {
      for (const item of node) walk(item, depth + 1)
      return
    }
    for (const [key, value] of Object.entries(node)) {
      if (
        (key === 'match' || key === 'match_phrase' || key === 'match_bool_prefix') &&
        isObject(value)
      ) {
        // { match: { field: "text" } } or { match: { field: { query: "text" } } }
        for (const v of Object.values(value)) {
          if (typeof v === 'string') found.push(v)
          else if (isObject(v) && typeof v.query === 'string') found.push(v.query)
        }
      } else if (
        (key === 'multi_match' || key === 'query_string' || key === 'simple_query_string') &&
        isObject(value) && typeof value.query === 'string'
      ) {
        found.push(value.query)
      } else {
        walk(value, depth + 1)
      }
    }
  }
  walk(query, 0)
  return found.length === 0 ? null : found.join(' ')
}

function documentText (s: Settings, hit: Hit): string {
  const parts: string[] = []
  for (const path of s.textFields) {
    const v = at(hit._source, path)
    if (typeof v === 'string') parts.push(v)
    else if (Array.isArray(v)) parts.push(...v.filter((x): x is string => typeof x === 'string'))
  }
  return parts.join('\n')
}

/** Lower-case words: letters and digits of any script. */
function words (text: string): string[] {
  return text.toLowerCase().match(/[\p{L}\p{N}]+/gu) ?? []
}

function at (source: unknown, path: readonly string[]): unknown {
  let v = source
  for (const key of path) {
    if (!isObject(v)) return undefined
    v = v[key]
  }
  return v
}

/** A whole number ≥ 0 from a query parameter (text) or a body field; the default when absent; null when malformed. */
function count (v: unknown, fallback: number): number | null {
  if (v === undefined || v === null) return fallback
  const n = typeof v === 'string' && /^\s*\d+\s*$/.test(v) ? Number(v) : v
  return typeof n === 'number' && Number.isSafeInteger(n) && n >= 0 ? n : null
}

function finite (v: unknown): number {
  return typeof v === 'number' && Number.isFinite(v) ? v : 0
}

function isObject (v: unknown): v is Json {
  return v !== null && typeof v === 'object' && !Array.isArray(v)
}
