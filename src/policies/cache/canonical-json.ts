import { isUtf8 } from 'node:buffer'

/**
 * Deeper bodies are keyed by their raw bytes. Real inference payloads nest a handful of levels;
 * the bound keeps the recursion below far from the stack's limit (a 60 KB body of brackets once
 * made the key's sort throw a RangeError, a 500).
 */
export const MAX_DEPTH = 64

/** Thrown (never an Error: no stack is captured) when a body has no lossless canonical form. */
const NOT_CANONICAL = { notCanonical: true }

/** RFC 8259 §6. Sticky (`y`): each matches at lastIndex or not at all. */
const NUMBER = /-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?/y
/** RFC 8259 §7: a string without escapes; and one with valid escapes. Raw control characters
 * are what makes a string invalid, so the expressions must name them. */
// eslint-disable-next-line no-control-regex
const PLAIN_STRING = /"[^"\\\u0000-\u001f]*"/y
// eslint-disable-next-line no-control-regex
const ESCAPED_STRING = /"(?:[^"\\\u0000-\u001f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"/y

/** A parsed value: a leaf's canonical text, an array, or an object. */
type Node = string | Node[] | JsonObject

interface JsonObject {
  /** Member names, decoded (what a parser compares), and as canonical JSON text. */
  names: string[]
  texts: string[]
  values: Node[]
}

/**
 * The canonical text of a JSON body, for a cache key: whitespace dropped, object members sorted
 * by name, string escapes written one way, and the top-level members in `ignore` left out. null
 * when that would lose anything an upstream could tell apart; the key then takes the raw bytes.
 *
 * Lossless means: numbers are kept exactly as written (`1`, `1.0` and `1e0` stay three numbers,
 * and an integer above 2^53 keeps its last digit, which a parse into doubles would round away);
 * a body that is not valid UTF-8 is not decoded (decoding would turn every bad byte into the same
 * U+FFFD); an object with a repeated member name is not canonicalised (parsers disagree on which
 * one wins, and dropping one would make `{"a":1,"a":2}` the same as `{"a":2}`); nor is anything
 * nested deeper than MAX_DEPTH. A string is written as JSON.stringify writes it, which is the
 * same string for every parser ("\u0041" and "A" share an entry).
 */
export function canonicalJson (body: Buffer, ignore: ReadonlySet<string>): string | null {
  if (!isUtf8(body)) return null
  const p = new Parser(body.toString('utf8'))
  try {
    p.ws()
    const root = p.value(0)
    p.ws()
    if (p.i !== p.s.length) return null
    if (typeof root === 'string') return root
    const out: string[] = []
    if (Array.isArray(root)) emitArray(root, out)
    else emitObject(root, out, ignore)
    return out.join('')
  } catch (err) {
    if (err === NOT_CANONICAL) return null
    throw err
  }
}

class Parser {
  readonly s: string
  i = 0

  constructor (s: string) {
    this.s = s
  }

  ws (): void {
    const s = this.s
    let i = this.i
    for (;;) {
      const c = s.charCodeAt(i)
      // Most tokens are followed by none: one comparison, and out.
      if (c > 32 || (c !== 32 && c !== 10 && c !== 13 && c !== 9)) break
      i++
    }
    this.i = i
  }

  value (depth: number): Node {
    const c = this.s.charCodeAt(this.i)
    if (c === 34 /* " */) return this.string(false)
    if (c === 123 /* { */) return this.object(depth + 1)
    if (c === 91 /* [ */) return this.array(depth + 1)
    if (c === 45 /* - */ || (c >= 48 && c <= 57)) return this.number()
    if (c === 116 /* t */) return this.literal('true')
    if (c === 102 /* f */) return this.literal('false')
    if (c === 110 /* n */) return this.literal('null')
    throw NOT_CANONICAL
  }

  literal (word: string): string {
    if (!this.s.startsWith(word, this.i)) throw NOT_CANONICAL
    this.i += word.length
    return word
  }

  /** The number as written, after checking it against RFC 8259's grammar. */
  number (): string {
    const start = this.i
    NUMBER.lastIndex = start
    if (!NUMBER.test(this.s)) throw NOT_CANONICAL
    this.i = NUMBER.lastIndex
    return this.s.slice(start, this.i)
  }

  /**
   * A string token: its canonical text, or (`decoded`) the string itself. A token without a
   * backslash is already written the way JSON.stringify would write it: valid JSON has no raw
   * control characters or quotes inside a string, and well-formed UTF-8 no lone surrogates.
   * Sticky regular expressions scan it (the engine compiles them to native code; a loop over
   * charCodeAt made a 60 KB body of strings half again as slow to key).
   */
  string (decoded: boolean): string {
    const s = this.s
    const start = this.i
    PLAIN_STRING.lastIndex = start
    if (PLAIN_STRING.test(s)) {
      this.i = PLAIN_STRING.lastIndex
      return decoded ? s.slice(start + 1, this.i - 1) : s.slice(start, this.i)
    }
    ESCAPED_STRING.lastIndex = start
    if (!ESCAPED_STRING.test(s)) throw NOT_CANONICAL
    this.i = ESCAPED_STRING.lastIndex
    // The engine's own parser reads the escapes, which the expression has checked.
    const text = JSON.parse(s.slice(start, this.i)) as string
    return decoded ? text : JSON.stringify(text)
  }

  array (depth: number): Node[] {
    if (depth > MAX_DEPTH) throw NOT_CANONICAL
    const items: Node[] = []
    this.i++
    this.ws()
    if (this.s.charCodeAt(this.i) === 93 /* ] */) {
      this.i++
      return items
    }
    for (;;) {
      items.push(this.value(depth))
      this.ws()
      const c = this.s.charCodeAt(this.i++)
      if (c === 93) return items
      if (c !== 44 /* , */) throw NOT_CANONICAL
      this.ws()
    }
  }

  object (depth: number): JsonObject {
    if (depth > MAX_DEPTH) throw NOT_CANONICAL
    const o: JsonObject = { names: [], texts: [], values: [] }
    this.i++
    this.ws()
    if (this.s.charCodeAt(this.i) === 125 /* } */) {
      this.i++
      return o
    }
    for (;;) {
      if (this.s.charCodeAt(this.i) !== 34) throw NOT_CANONICAL
      const start = this.i
      const name = this.string(true)
      o.names.push(name)
      // Unescaped, the name's token is its canonical text; escaped, it is written afresh.
      o.texts.push(
        this.i - start === name.length + 2 ? this.s.slice(start, this.i) : JSON.stringify(name),
      )
      this.ws()
      if (this.s.charCodeAt(this.i++) !== 58 /* : */) throw NOT_CANONICAL
      this.ws()
      o.values.push(this.value(depth))
      this.ws()
      const c = this.s.charCodeAt(this.i++)
      if (c === 125) break
      if (c !== 44) throw NOT_CANONICAL
      this.ws()
    }
    return o
  }
}

function emit (v: Node, out: string[]): void {
  if (typeof v === 'string') out.push(v)
  else if (Array.isArray(v)) emitArray(v, out)
  else emitObject(v, out, null)
}

function emitArray (a: Node[], out: string[]): void {
  let leaves = true
  for (let i = 0; i < a.length && leaves; i++) leaves = typeof a[i] === 'string'
  // A list of numbers or strings (an embedding, a batch of inputs) is one native join.
  if (leaves) {
    out.push('[' + (a as string[]).join(',') + ']')
    return
  }
  out.push('[')
  for (let i = 0; i < a.length; i++) {
    if (i > 0) out.push(',')
    emit(a[i]!, out)
  }
  out.push(']')
}

/** Members in name order (UTF-16 code units, as Array.prototype.sort compares strings). */
function emitObject (o: JsonObject, out: string[], ignore: ReadonlySet<string> | null): void {
  const names = o.names
  const order = names.map((_, i) => i)
  if (order.length > 1) {
    order.sort((a, b) => (names[a]! < names[b]! ? -1 : names[a]! > names[b]! ? 1 : 0))
  }
  for (let k = 1; k < order.length; k++) {
    if (names[order[k]!] === names[order[k - 1]!]) throw NOT_CANONICAL
  }
  out.push('{')
  let first = true
  for (const i of order) {
    if (ignore !== null && ignore.has(names[i]!)) continue
    if (!first) out.push(',')
    first = false
    out.push(o.texts[i]!, ':')
    emit(o.values[i]!, out)
  }
  out.push('}')
}
