import jsonata from 'jsonata'

/**
 * A JSONata expression (https://jsonata.org), parsed once when the config is compiled. JSONata
 * was chosen over an expression language of our own: it is documented, well kept, has no
 * dependencies, and users of Node-RED and AWS Step Functions already know it.
 *
 * Bindings name what the expression may read besides its input: `$headers`, `$query`,
 * `$method`, `$path`, `$identity` (and `$status` on responses); see docs/configuration.md.
 *
 * The input is the client's (or the upstream's) body, so every evaluation is bounded:
 * - a deadline, checked as the expression runs; a long evaluation also lets other requests in
 *   every few milliseconds instead of holding the event loop until it ends;
 * - no sequence (an array built while evaluating) longer than MAX_SEQUENCE items, and no
 *   `$append` or `$pad` result past the same size;
 * - JSONata's `$sort`, `$distinct` and order-by (`^( )`) are quadratic in time and memory (the
 *   merge sort copies the rest of the array at every step, `$distinct` compares every pair):
 *   a 712 KB body ran the process out of heap. They are replaced by O(n log n) and O(n)
 *   versions that give the same results.
 */
export class Expression {
  readonly source: string
  /** Longest one evaluation may run (ms). */
  readonly timeout: number
  /** The bindings the expression reads (`headers`, `query`, …); null: it may read any of them ($eval). */
  readonly reads: ReadonlySet<string> | null
  readonly #expr: jsonata.Expression

  constructor (source: string, timeout: number = DEFAULT_TIMEOUT) {
    this.source = source
    this.timeout = timeout
    this.#expr = bounded(source, timeout)
    this.reads = variablesRead(this.#expr.ast())
  }

  /**
   * JSONata evaluates asynchronously (its functions may be async); the result is plain JSON.
   * Rejects with a TransformLimitError when the evaluation runs past its limits.
   */
  async evaluate (input: unknown, bindings: Record<string, unknown>): Promise<unknown> {
    try {
      return await this.#expr.evaluate(input, bindings)
    } catch (err) {
      throw limitOf(err) ?? err
    }
  }
}

/** Default of `transform.request.timeout` (the schema's; `transform.response.timeout` is 5 s). */
export const DEFAULT_TIMEOUT = 1000

/**
 * Most items one sequence may hold: JSONata's own cap on a range (`[1..n]`). A 10 MiB body
 * holds at most 5 million values, so no mapping of a body reaches it; a cross product does.
 */
export const MAX_SEQUENCE = 10_000_000

/** Widest string `$pad` may build (characters); its width may come from the body. */
export const MAX_PAD = 10_000_000

/** An evaluation ran past its deadline or built something too large: the request fails, the gateway does not. */
export class TransformLimitError extends Error {
  readonly limit: 'time' | 'size'
  constructor (limit: 'time' | 'size', message: string) {
    super(message)
    this.name = 'TransformLimitError'
    this.limit = limit
  }
}

/** Why `source` does not parse (or cannot be bounded), or null: for config validation ("routes[0].transform…: …"). */
export function expressionProblem (source: string): string | null {
  try {
    bounded(source, DEFAULT_TIMEOUT)
    return null
  } catch (err) {
    const e = err as { message?: string, position?: number }
    return `invalid JSONata expression: ${e.message ?? String(err)}${
      e.position === undefined ? '' : ` (at character ${e.position})`
    }`
  }
}

// ---- evaluation state: a deadline, and turns given to the event loop --------------------------

/** Node evaluations between two reads of the clock (a node costs about a microsecond). */
const CHECK_EVERY = 256
/** Longest an evaluation keeps the event loop before other work gets a turn (ms). */
const SLICE = 5

const RUN = Symbol('gatehouse.transform.run')

interface Run {
  readonly deadline: number
  readonly timeout: number
  yieldAt: number
  left: number
}

/** JSONata's environment frames; `base` is the frame of one evaluation. */
interface Frame {
  readonly base: Frame & { [RUN]?: Run, createSequence: (...items: unknown[]) => unknown[] }
  lookup(name: string | symbol): unknown
}

interface Focus {
  readonly environment: Frame
  readonly input: unknown
  createSequence(...items: unknown[]): unknown[] & { sequence?: boolean, keepSingleton?: boolean }
}

/**
 * JSONata calls this before it evaluates each node of the expression (its
 * `__evaluate_entry` hook, awaited). The first call of an evaluation starts its clock.
 */
function entryHook (timeout: number) {
  return function onEvaluate (
    _expr: unknown,
    _input: unknown,
    env: Frame,
  ): Promise<void> | undefined {
    const base = env.base
    const run = base[RUN]
    if (run === undefined) {
      const now = performance.now()
      base[RUN] = { deadline: now + timeout, timeout, yieldAt: now + SLICE, left: CHECK_EVERY }
      base.createSequence = createSequence
      return undefined
    }
    if (--run.left > 0) return undefined
    return checkpoint(run)
  }
}

/** The built-ins below count their own work: `cost` nodes' worth. */
function spend (env: Frame, cost: number): Promise<void> | undefined {
  const run = env.base[RUN]
  if (run === undefined) return undefined
  run.left -= cost
  return run.left > 0 ? undefined : checkpoint(run)
}

/**
 * JSONata's sequences (the arrays a path builds), with a cap on their length. JSONata has a cap
 * of its own (its `sequence` option), but it gives every sequence its own `push` closure, which
 * made a small transform a fifth dearer; a class method costs nothing measurable. Methods that
 * copy (`concat`, `slice`, `map`) make plain arrays, as they do from JSONata's sequences.
 */
class Sequence extends Array<unknown> {
  static override get [Symbol.species] (): ArrayConstructor {
    return Array
  }

  override push (item: unknown): number {
    const n = this.length
    if (n >= MAX_SEQUENCE) throw tooLong()
    this[n] = item
    return n + 1
  }
}

/** What JSONata's createSequence() does: an empty sequence, or one holding its one argument. */
function createSequence (...items: unknown[]): unknown[] {
  const seq = new Sequence() as Sequence & { sequence: boolean }
  seq.sequence = true
  if (items.length === 1) seq.push(items[0])
  return seq
}

function tooLong (): TransformLimitError {
  return new TransformLimitError(
    'size',
    `the expression built a sequence of more than ${MAX_SEQUENCE} items`,
  )
}

function checkpoint (run: Run): Promise<void> | undefined {
  run.left = CHECK_EVERY
  const now = performance.now()
  if (now > run.deadline) {
    throw new TransformLimitError('time', `the expression ran past its ${run.timeout} ms limit`)
  }
  if (now < run.yieldAt) return undefined
  return new Promise((resolve) => {
    setImmediate(() => {
      run.yieldAt = performance.now() + SLICE
      resolve()
    })
  })
}

/** JSONata's own resource errors, and the engine's, as limit errors; null for any other error. */
export function limitOf (err: unknown): TransformLimitError | null {
  for (
    let e = err as { code?: string, message?: string, error?: unknown } | undefined, depth = 0;
    e !== undefined && e !== null && depth < 8;
    e = e.error as typeof e, depth++
  ) {
    if (e instanceof TransformLimitError) return e
    // D2014: a range over 1e7 items.
    if (e.code === 'D2014') return tooLong()
    // "Invalid string length", "Invalid array length", "Maximum call stack size exceeded".
    if (e instanceof RangeError) {
      return new TransformLimitError('size', `the expression ran out of room: ${e.message}`)
    }
  }
  return null
}

// ---- compiling --------------------------------------------------------------------------------

/** Parse `source` and install the bounds; throws (like jsonata()) when it cannot be parsed or bounded. */
function bounded (source: string, timeout: number): jsonata.Expression {
  const expr = jsonata(source)
  expr.assign(Symbol.for('jsonata.__evaluate_entry') as unknown as string, entryHook(timeout))
  register(expr, 'append', append, '<xx:a>')
  register(expr, 'sort', sort, '<af?:a>')
  register(expr, 'distinct', distinct, '<x:x>')
  register(expr, 'pad', pad, '<s-ns?:s>')
  register(expr, 'eval', evalChecked, '<sx?:x>')
  rewriteOrderBy(expr)
  return expr
}

/** Our functions see JSONata's focus (`this`), with the createSequence its typings leave out. */
function register (
  expr: jsonata.Expression,
  name: string,
  fn: (this: Focus, ...args: any[]) => unknown,
  signature?: string,
): void {
  expr.registerFunction(
    name,
    fn as unknown as (this: jsonata.Focus, ...args: any[]) => unknown,
    signature,
  )
}

/** JSONata's AST, as far as this module reads and builds it. */
interface Node {
  type: string
  value?: unknown
  position?: number
  steps?: Node[]
  terms?: Array<{ descending: boolean, expression: Node }>
  stages?: Array<{ type: string, expr?: Node, position?: number }>
  predicate?: Array<{ type: string, expr?: Node, position?: number }>
  procedure?: Node
  arguments?: Node[]
  body?: Node
  group?: unknown
  tuple?: boolean
  consarray?: boolean
  keepArray?: boolean
  keepSingletonArray?: boolean
  [key: string]: unknown
}

/**
 * Order-by (`path^(term, >term)`) is a step JSONata sorts with the quadratic merge sort, and no
 * function stands in for it. Each path with an order-by step is rewritten, in the parsed
 * expression, so that our sort does it:
 *
 *   s0.s1^(t1, >t2)[f].rest  →  $order(s0.s1.$keys(function(){t1}, function(){t2}))[f].rest
 *
 * `$keys` pairs each item (its context) with its terms, evaluated (once, when first compared)
 * with the item as context, as JSONata does; `$order` sorts with JSONata's comparisons and the
 * same splits, so results are identical. The prefix path runs as it did, one step per step;
 * `$order` is evaluated once with the whole input, like a leading array constructor, and where
 * the order-by ended the path it replaces the path. The names cannot be written in an
 * expression (a colon ends a name), so a user's variable never shadows them. Order-by in a
 * path that binds `@`, `#` or `%` sorts a tuple stream, which this cannot reproduce: such an
 * expression is refused (`$sort` does the same job).
 */
function rewriteOrderBy (expr: jsonata.Expression): void {
  let sites = 0
  const fn = (
    name: string,
    impl: (this: Focus, ...args: any[]) => unknown,
    args: Node[],
    position: number | undefined,
  ): Node => {
    register(expr, name, impl)
    return {
      type: 'function',
      value: '(',
      position,
      procedure: { type: 'variable', value: name, position },
      arguments: args,
    }
  }
  const seen = new Set<object>()
  const visit = (node: unknown): void => {
    if (node === null || typeof node !== 'object' || seen.has(node)) return
    seen.add(node)
    for (const child of Object.values(node)) visit(child)
    const n = node as Node
    if (n.type !== 'path' || n.steps === undefined || !n.steps.some((s) => s.type === 'sort')) {
      return
    }
    if (
      n.tuple === true ||
      n.steps.some((s) => s.tuple === true || s.stages?.some((st) => st.type !== 'filter'))
    ) {
      throw Object.assign(
        new Error(
          'order-by (^) in a path that also binds @, # or % cannot be bounded (JSONata sorts it in quadratic time and memory); sort with $sort() instead',
        ),
        { position: n.steps.find((s) => s.type === 'sort')!.position },
      )
    }
    const keepSingletonArray = n.keepSingletonArray === true
    let steps = n.steps
    let last: Node | null = null
    for (
      let k = steps.findIndex((s) => s.type === 'sort');
      k !== -1;
      k = steps.findIndex((s) => s.type === 'sort')
    ) {
      if (k === 0) throw new Error('order-by (^) without a sequence to sort')
      const site = sites++
      const step = steps[k]!
      const pos = step.position
      const terms = step.terms!
      const direct = terms.map((t) => directKey(t.expression))
      const keyStep = fn(
        `gatehouse:keys:${site}`,
        keysOf(direct),
        terms.filter((_t, i) => direct[i] === null).map((t): Node => ({
          type: 'lambda',
          value: 'function',
          position: pos,
          arguments: [],
          body: t.expression,
        })),
        pos,
      )
      const order = fn(`gatehouse:order:${site}`, orderBy(terms.map((t) => t.descending), pos), [{
        type: 'path',
        steps: [...steps.slice(0, k), keyStep],
      }], pos)
      const filters = step.stages?.map((st) => ({
        type: 'filter',
        expr: st.expr,
        position: st.position,
      }))
      if (filters !== undefined && filters.length > 0) order.predicate = filters
      const rest = steps.slice(k + 1)
      if (rest.length === 0) {
        last = order
        break
      }
      // Evaluated once with the whole input sequence, like JSONata's own first-step arrays;
      // a one-item result must stay a sequence, for the next step to iterate.
      order.consarray = true
      order.keepArray = true
      steps = [order, ...rest]
    }
    // The path without its order-by: the steps after the last one, or that last one alone
    // (then with the path's own group and array marking).
    const group = n.group
    const replacement: Node = last ?? { ...n, steps }
    if (last !== null) {
      if (n.keepArray === true) last.keepArray = true
      if (group !== undefined) last.group = group
    }
    if (keepSingletonArray) {
      // `a.b[]^(c)`: JSONata marks the path to keep a one-item result as an array; a function
      // does the same marking, around the path (or sort) run without it.
      delete replacement.keepSingletonArray
      delete replacement.group
      replacement.keepArray = true
      const keep = fn(`gatehouse:keep:${sites++}`, keepSingleton, [replacement], undefined)
      keep.keepArray = true
      if (group !== undefined) keep.group = group
      replace(n, keep)
    } else if (last !== null) {
      replace(n, last)
    } else {
      n.steps = steps
    }
  }
  visit(expr.ast())
}

/** Make `node` (referenced by its parent) into `by`. */
function replace (node: Node, by: Node): void {
  const copy = { ...by }
  for (const key of Object.keys(node)) delete node[key]
  Object.assign(node, copy)
}

/** JSONata's end-of-path marking for `[]` paths, for the wrapper above. */
function keepSingleton (this: Focus, r: unknown): unknown {
  if (!Array.isArray(r)) return r
  const seq = r as unknown[] & { cons?: boolean, sequence?: boolean, keepSingleton?: boolean }
  if (seq.cons === true && seq.sequence !== true) {
    const wrapped = this.createSequence(seq)
    wrapped.keepSingleton = true
    return wrapped
  }
  seq.keepSingleton = true
  return seq
}

/** The names of the variables an expression reads; null when it may read any ($eval). */
function variablesRead (ast: unknown): Set<string> | null {
  const names = new Set<string>()
  const seen = new Set<object>()
  let dynamic = false
  const visit = (node: unknown): void => {
    if (node === null || typeof node !== 'object' || seen.has(node)) return
    seen.add(node)
    const n = node as Node
    if (n.type === 'variable' && typeof n.value === 'string') {
      names.add(n.value)
      if (n.value === 'eval') dynamic = true
    }
    for (const child of Object.values(node)) visit(child)
  }
  visit(ast)
  return dynamic ? null : names
}

// ---- order-by --------------------------------------------------------------------------------

/** One item of a sequence being ordered, with its sort terms (evaluated when first needed). */
class SortEntry {
  readonly item: unknown
  /** Per term: a thunk evaluating it with the item as context, or null for a term read directly. */
  readonly terms: ReadonlyArray<(() => Promise<unknown>) | null>
  readonly keys: unknown[]
  constructor (item: unknown, terms: Array<(() => Promise<unknown>) | null>, keys: unknown[]) {
    this.item = item
    this.terms = terms
    this.keys = keys
  }
}

const NOT_YET = Symbol('not evaluated')

/** Our `$keys` for one order-by step: `direct` per term, null for those JSONata must evaluate (passed as thunks). */
function keysOf (direct: ReadonlyArray<DirectKey | null>) {
  // The item is the call's context, not an argument: JSONata would wrap an argument that looks
  // like a function (an object with `_jsonata_lambda: true`, which any body can send).
  return function keys (this: Focus, ...thunks: Array<() => Promise<unknown>>): SortEntry {
    const item = this.input
    const terms = new Array<(() => Promise<unknown>) | null>(direct.length)
    const values = new Array<unknown>(direct.length)
    for (let t = 0, j = 0; t < direct.length; t++) {
      const d = direct[t]!
      terms[t] = d === null ? thunks[j++]! : null
      values[t] = d === null ? NOT_YET : d(item)
    }
    return new SortEntry(item, terms, values)
  }
}

/** A term's value for an item, read the way JSONata's evaluator would, without it. */
type DirectKey = (item: unknown) => unknown

/**
 * The two terms almost every order-by uses, `^(field)` and `^($)`, are read directly: for a
 * large array, evaluating a term per item through JSONata is most of the cost of the sort.
 * Null for any other term.
 */
function directKey (term: Node): DirectKey | null {
  const plain = (n: Node, keys: string[]): boolean => Object.keys(n).every((k) => keys.includes(k))
  if (term.type === 'variable' && term.value === '' && plain(term, ['type', 'value', 'position'])) {
    return collapse
  }
  const step = term.steps?.[0]
  if (
    term.type === 'path' && term.steps!.length === 1 &&
    plain(term, ['type', 'steps', 'position']) &&
    step!.type === 'name' && typeof step!.value === 'string' &&
    plain(step!, ['type', 'value', 'position'])
  ) {
    const name = step!.value
    return (item) => Array.isArray(item) ? namePathOnArray(item, name) : lookup(item, name)
  }
  return null
}

/** Sequences this module builds, as JSONata's evaluator would have (it marks its own with `sequence`). */
const SEQUENCES = new WeakSet<unknown[]>()

function isSequence (v: unknown): v is unknown[] {
  return Array.isArray(v) && ((v as { sequence?: boolean }).sequence === true || SEQUENCES.has(v))
}

/** What evaluate() returns for a node whose value is `v`: a sequence of one is its item, of none nothing. */
function collapse (v: unknown): unknown {
  if (!isSequence(v)) return v
  return v.length === 0 ? undefined : v.length === 1 ? v[0] : v
}

/** JSONata's lookup of a field: own properties only, nothing from an object that claims to be a function; over arrays, a sequence. */
function lookup (input: unknown, key: string): unknown {
  if (Array.isArray(input)) {
    const out: unknown[] = []
    SEQUENCES.add(out)
    for (const el of input) {
      const res = lookup(el, key)
      if (res === undefined) continue
      if (Array.isArray(res)) out.push(...res)
      else out.push(res)
    }
    return out
  }
  if (input === null || typeof input !== 'object') return undefined
  const o = input as Record<string, unknown>
  if (o._jsonata_function === true || o._jsonata_lambda === true || !Object.hasOwn(o, key)) {
    return undefined
  }
  return o[key]
}

/** The path `name` with an array as context, step by step as JSONata evaluates it (the path's last step). */
function namePathOnArray (arr: unknown[], name: string): unknown {
  const results: unknown[] = []
  for (const el of arr) {
    const res = collapse(lookup(el, name))
    if (res !== undefined) results.push(res)
  }
  // A last step with one result that is an array (not a sequence) yields that array itself.
  if (results.length === 1 && Array.isArray(results[0]) && !isSequence(results[0])) {
    return results[0]
  }
  const out: unknown[] = []
  SEQUENCES.add(out)
  for (const res of results) {
    if (!Array.isArray(res) || (res as { cons?: boolean }).cons === true) out.push(res)
    else out.push(...res)
  }
  return collapse(out)
}

/** Our `$order` for one order-by step: `descending` per term, `position` for errors. */
function orderBy (descending: boolean[], position: number | undefined) {
  return async function order (this: Focus, entries: unknown): Promise<unknown> {
    // An empty sequence, not undefined: filters after the order-by then see nothing, as they
    // would have (JSONata stops a path at its first empty step).
    if (entries === undefined) return this.createSequence()
    const list = (Array.isArray(entries) ? entries : [entries]) as SortEntry[]
    if (list.length <= 1) return this.createSequence(list[0]!.item)
    // Every item is compared at least once, on its first term at least: evaluate those now.
    for (const e of list) {
      if (e.keys[0] === NOT_YET) e.keys[0] = await e.terms[0]!()
    }
    const env = this.environment
    const compare = (a: SortEntry, b: SortEntry): boolean | Promise<boolean> => {
      for (let t = 0; t < descending.length; t++) {
        if (a.keys[t] === NOT_YET || b.keys[t] === NOT_YET) return compareLater(a, b, t)
        const comp = compareTerm(a.keys[t], b.keys[t], descending[t]!, position)
        if (comp !== 0) return comp === 1
      }
      return false
    }
    const compareLater = async (a: SortEntry, b: SortEntry, from: number): Promise<boolean> => {
      for (let t = from; t < descending.length; t++) {
        if (a.keys[t] === NOT_YET) a.keys[t] = await a.terms[t]!()
        if (b.keys[t] === NOT_YET) b.keys[t] = await b.terms[t]!()
        const comp = compareTerm(a.keys[t], b.keys[t], descending[t]!, position)
        if (comp !== 0) return comp === 1
      }
      return false
    }
    // With one term every key is known now, and comparing never waits.
    const sorted = await mergeSort(list, compare, env, descending.length === 1)
    return sorted.map((e) => e.item)
  }
}

/** An error JSONata words itself: it fills in the message from the code and its fields. */
function jsonataError (fields: { code: string, [key: string]: unknown }): Error {
  return Object.assign(new Error(fields.code), fields)
}

/** JSONata's order-by comparison of one term: -1, 0 or 1 (1: b goes first), with its type errors. */
function compareTerm (
  aa: unknown,
  bb: unknown,
  descending: boolean,
  position: number | undefined,
): number {
  const atype = typeof aa
  const btype = typeof bb
  // undefined sorts last, whatever the direction.
  if (atype === 'undefined') return btype === 'undefined' ? 0 : 1
  if (btype === 'undefined') return -1
  if (!(atype === 'string' || atype === 'number') || !(btype === 'string' || btype === 'number')) {
    throw jsonataError({
      code: 'T2008',
      position,
      value: !(atype === 'string' || atype === 'number') ? aa : bb,
    })
  }
  if (atype !== btype) throw jsonataError({ code: 'T2007', position, value: aa, value2: bb })
  if (aa === bb) return 0
  const comp = (aa as number) < (bb as number) ? -1 : 1
  return descending ? -comp : comp
}

// ---- $sort, $distinct, $pad, $eval -------------------------------------------------------------

/**
 * JSONata's merge sort, step for step (the same halves, the same comparisons in the same order,
 * so even a comparator that is not a consistent order gives the same result), without copying
 * the rest of the array at every step. `swap(a, b)` true means b goes first. A synchronous
 * `swap` sorts runs of up to SYNC_RUN items without awaiting; between runs the evaluation's
 * deadline is checked and other work may run.
 */
async function mergeSort<T> (
  items: T[],
  swap: (a: T, b: T) => unknown,
  env: Frame,
  sync: boolean,
): Promise<T[]> {
  if (items.length <= 1) return items
  if (sync && items.length <= SYNC_RUN) {
    const sorted = mergeSortSync(items, swap as (a: T, b: T) => boolean)
    const pause = spend(env, items.length >> 2)
    if (pause !== undefined) await pause
    return sorted
  }
  const middle = Math.floor(items.length / 2)
  const left = await mergeSort(items.slice(0, middle), swap, env, sync)
  const right = await mergeSort(items.slice(middle), swap, env, sync)
  const out = new Array<T>(items.length)
  let i = 0
  let j = 0
  let w = 0
  while (i < left.length && j < right.length) {
    let s = swap(left[i]!, right[j]!)
    if (s instanceof Promise) s = await s
    out[w++] = s ? right[j++]! : left[i++]!
  }
  while (i < left.length) out[w++] = left[i++]!
  while (j < right.length) out[w++] = right[j++]!
  const pause = spend(env, items.length >> 4)
  if (pause !== undefined) await pause
  return out
}

const SYNC_RUN = 4096

function mergeSortSync<T> (items: T[], swap: (a: T, b: T) => boolean): T[] {
  if (items.length <= 1) return items
  const middle = Math.floor(items.length / 2)
  const left = mergeSortSync(items.slice(0, middle), swap)
  const right = mergeSortSync(items.slice(middle), swap)
  const out = new Array<T>(items.length)
  let i = 0
  let j = 0
  let w = 0
  while (i < left.length && j < right.length) {
    out[w++] = swap(left[i]!, right[j]!) ? right[j++]! : left[i++]!
  }
  while (i < left.length) out[w++] = left[i++]!
  while (j < right.length) out[w++] = right[j++]!
  return out
}

async function sort (
  this: Focus,
  arr: unknown[] | undefined,
  comparator?: (a: unknown, b: unknown) => Promise<unknown>,
): Promise<unknown[] | undefined> {
  if (arr === undefined) return undefined
  if (arr.length <= 1) return arr
  if (comparator !== undefined) return mergeSort(arr, comparator, this.environment, false)
  const numbers = arr.every((v) => typeof v === 'number')
  if (!numbers && !arr.every((v) => typeof v === 'string')) {
    throw jsonataError({ code: 'D3070', index: 1 })
  }
  // For numbers or strings, `a > b` is a total order and JSONata's merge sort is stable: any
  // stable sort gives the same array, and V8's is.
  const pause = spend(this.environment, arr.length)
  if (pause !== undefined) await pause
  return (arr as Array<number | string>).slice().sort(ascending)
}

function ascending (a: number | string, b: number | string): number {
  return a > b ? 1 : a < b ? -1 : 0
}

/**
 * JSONata's `$distinct` keeps the first of each deep-equal group, comparing every value with
 * every value kept. Here each value gets a canonical text (object keys sorted) and a set finds
 * repeats. Values with no JSON form (functions) are compared the slow way, among themselves.
 */
function distinct (this: Focus, arr: unknown): unknown {
  if (arr === undefined) return undefined
  if (!Array.isArray(arr) || arr.length <= 1) return arr
  const results: unknown[] = (arr as { sequence?: boolean }).sequence === true
    ? this.createSequence()
    : []
  const seen = new Set<string>()
  let odd: unknown[] | null = null
  for (const value of arr) {
    const key = canonical(value, 0)
    if (key !== null) {
      if (seen.has(key)) continue
      seen.add(key)
    } else {
      odd ??= []
      if (odd.some((o) => deepEqual(o, value))) continue
      odd.push(value)
    }
    results.push(value)
  }
  return results
}

/** One text per deep-equal class of JSON values; null for a value that has no JSON form. */
function canonical (v: unknown, depth: number): string | null {
  switch (typeof v) {
    case 'string':
      return JSON.stringify(v)
    // -0 and 0 are equal (===) and both print "0"; NaN equals nothing, not even itself.
    case 'number':
      return Number.isNaN(v) ? null : String(v)
    case 'boolean':
      return v ? 'true' : 'false'
    case 'object': {
      if (v === null) return 'null'
      if (depth > 1000) return null
      let out: string
      if (Array.isArray(v)) {
        out = '['
        for (let i = 0; i < v.length; i++) {
          const c = canonical(v[i], depth + 1)
          if (c === null) return null
          out += (i === 0 ? '' : ',') + c
        }
        return out + ']'
      }
      if ('_jsonata_lambda' in v || '_jsonata_function' in v) return null
      out = '{'
      const keys = Object.getOwnPropertyNames(v).sort()
      for (let i = 0; i < keys.length; i++) {
        const c = canonical((v as Record<string, unknown>)[keys[i]!], depth + 1)
        if (c === null) return null
        out += (i === 0 ? '' : ',') + JSON.stringify(keys[i]) + ':' + c
      }
      return out + '}'
    }
    default:
      return null
  }
}

/** JSONata's deep equality, for the few values canonical() cannot name. */
function deepEqual (a: unknown, b: unknown): boolean {
  if (a === b) return true
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return false
  if (Array.isArray(a) && Array.isArray(b)) {
    return a.length === b.length && a.every((x, i) => deepEqual(x, b[i]))
  }
  const ak = Object.getOwnPropertyNames(a).sort()
  const bk = Object.getOwnPropertyNames(b).sort()
  return ak.length === bk.length &&
    ak.every((k, i) =>
      k === bk[i] && deepEqual((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k])
    )
}

/** JSONata's `$append`, refusing a result past MAX_SEQUENCE items (doubling in a loop grows fast). */
function append (this: Focus, a: unknown, b: unknown): unknown {
  if (a === undefined) return b
  if (b === undefined) return a
  const left = Array.isArray(a) ? a : this.createSequence(a)
  const right = Array.isArray(b) ? b : [b]
  if (left.length + right.length > MAX_SEQUENCE) throw tooLong()
  return left.concat(right)
}

/** JSONata's `$pad`, refusing a width past MAX_PAD (a width read from the body would allocate it). */
async function pad (
  this: Focus,
  str: string | undefined,
  width: number,
  char?: string,
): Promise<string | undefined> {
  if (str === undefined) return undefined
  const wide = Math.abs(Math.trunc(width)) * Math.max(1, char?.length ?? 1)
  if (wide > MAX_PAD) {
    throw new TransformLimitError(
      'size',
      `$pad was asked for ${Math.abs(Math.trunc(width))} characters (at most ${MAX_PAD})`,
    )
  }
  const original = (await builtins()).pad
  return original.implementation.call(this, str, width, char) as string
}

/** `$eval` parses at run time, past our rewrite: an order-by in what it evaluates is refused. */
async function evalChecked (
  this: Focus,
  source: string | undefined,
  focus?: unknown,
): Promise<unknown> {
  if (typeof source === 'string') {
    let ast: unknown = null
    try {
      ast = jsonata(source).ast()
    } catch {}
    // (One that does not parse is for $eval itself to report.)
    if (ast !== null && hasOrderBy(ast)) {
      throw jsonataError({
        code: 'D3121',
        value:
          'order-by (^) cannot be used in an expression given to $eval here; sort with $sort()',
      })
    }
  }
  const original = (await builtins()).eval
  return original.implementation.call(this, source, focus)
}

function hasOrderBy (node: unknown): boolean {
  if (node === null || typeof node !== 'object') return false
  if ((node as Node).type === 'sort') return true
  return Object.values(node).some(hasOrderBy)
}

interface Builtin {
  implementation: (...args: unknown[]) => unknown
}
let originals: Promise<{ pad: Builtin, eval: Builtin }> | null = null

/** JSONata's own functions we delegate to (an expression that did not replace them hands them out). */
function builtins (): Promise<{ pad: Builtin, eval: Builtin }> {
  originals ??= jsonata('{ "pad": $pad, "eval": $eval }').evaluate(null) as Promise<
    { pad: Builtin, eval: Builtin }
  >
  return originals
}
