import { existsSync } from 'node:fs'
import { dirname, resolve } from 'node:path'
import {
  isMap,
  isScalar,
  isSeq,
  LineCounter,
  parseDocument,
  type Document,
  type Node as YamlNode,
} from 'yaml'
import {
  ZodArray,
  ZodDiscriminatedUnion,
  ZodObject,
  ZodPipe,
  ZodRecord,
  ZodTransform,
  type z,
} from 'zod'
import { ConfigError, type ConfigIssue } from '../errors/index.js'
import { crossCheck, partsOf, type CheckIssue, type ConfigCheck } from './checks.js'
import {
  pathToString,
  readRefFile,
  redactUrl,
  resolveRefs,
  type PathKey,
  type RefFills,
} from './refs.js'
import { ConfigSchema, DURATIONS, type Config } from './schema.js'
import { suggest } from './suggest.js'
import { bare, optionFor } from './walk.js'

export { suggest } from './suggest.js'
export type { CheckIssue, ConfigCheck } from './checks.js'

export interface LoadOptions {
  env?: NodeJS.ProcessEnv
  /** Directory for relative `${file:}` references and TLS paths; defaults to the file's own. */
  baseDir?: string
  /**
   * Checks of what later layers compile (compile/checks.ts: JSONata expressions), run beside
   * the cross-checks. Their issues get a line and lose any value a reference supplied, like
   * every other issue here.
   */
  checks?: ConfigCheck
}

/** The largest config file read (a config of thousands of routes and keys is well under it). */
const MAX_CONFIG_FILE = 16 * 1024 * 1024

/** Read, resolve and validate a YAML config file. Throws ConfigError listing every problem. */
export function loadConfigFile (file: string, options: LoadOptions = {}): Config {
  const path = resolve(file)
  // A regular file of bounded size only: a config path swapped for a FIFO would block this
  // (synchronous) read, on a reload the whole gateway, and a device would never end.
  const text = readRefFile(path, MAX_CONFIG_FILE)
  if (typeof text !== 'string') {
    throw new ConfigError([{
      path: '',
      message: text.problem.replace(`cannot read ${path}`, 'cannot read config file'),
    }], file)
  }
  return parseConfig(text, { ...options, baseDir: options.baseDir ?? dirname(path) }, file)
}

/** Parse and validate YAML text. `file` only labels error messages. */
export function parseConfig (
  text: string,
  options: LoadOptions = {},
  file: string | null = null,
): Config {
  const lineCounter = new LineCounter()
  const doc = parseDocument(text, { lineCounter, prettyErrors: false, uniqueKeys: true })
  if (doc.errors.length > 0) {
    throw new ConfigError(
      doc.errors.map((e) => {
        const pos = lineCounter.linePos(e.pos[0])
        return { path: '', message: e.message.split('\n')[0]!, line: pos.line, column: pos.col }
      }),
      file,
    )
  }
  const raw = doc.toJS({ maxAliasCount: 100 }) ?? {}
  const locate = (path: readonly PathKey[]): Pick<ConfigIssue, 'line' | 'column'> =>
    locateNode(doc, lineCounter, path)
  return validateConfig(raw, { ...options, locate }, file)
}

/** Configs this module produced: validating one again must not resolve `${...}` a second time. */
const validated = new WeakSet<object>()
/** Every object and list inside those configs (see withUnits). */
const validatedParts = new WeakSet<object>()

/**
 * Validate an already-parsed config object (the programmatic API takes these). A Config that
 * came out of this module is returned as it is.
 */
export function validateConfig (raw: unknown, options: LoadOptions & {
  locate?: (path: readonly PathKey[]) => Pick<ConfigIssue, 'line' | 'column'>
} = {}, file: string | null = null): Config {
  if (raw !== null && typeof raw === 'object' && validated.has(raw)) return raw as Config
  const locate = options.locate ?? (() => ({}))
  const refIssues: LocatedIssue[] = []
  const filled: RefFills = { paths: new Map(), values: new Set() }
  const resolved = resolveRefs(withUnits(raw, ConfigSchema, false), {
    env: options.env ?? process.env,
    baseDir: options.baseDir ?? process.cwd(),
    filled,
  }, refIssues)
  const parsed = ConfigSchema.safeParse(resolved)
  const schemaIssues = parsed.success
    ? []
    : parsed.error.issues.flatMap((issue) => describeZodIssue(issue, resolved, filled))
  // Cross-references are checked even when the schema failed (in the parts it accepted), so one
  // run lists (nearly) every problem.
  const schemaPaths = new Set(schemaIssues.map((i) => i.path))
  const parts = parsed.success ? parsed.data : partsOf(resolved)
  const crossIssues = [...crossCheck(parts), ...options.checks?.(parts) ?? []].map(located).filter((
    i,
  ) => !schemaPaths.has(i.path))
  // A reference that failed left '' behind; what the schema says about that '' is noise.
  const failedRefs = refIssues.map((i) => i.path)
  const followOn = (i: LocatedIssue): boolean =>
    failedRefs.some((p) => i.path === p || i.path.startsWith(p + '.') || i.path.startsWith(p + '['))
  const fileIssues = parsed.success
    ? resolveFiles(parsed.data, options.baseDir ?? process.cwd())
    : []
  const issues = [...refIssues, ...schemaIssues.filter((i) => !followOn(i)),
    ...crossIssues.filter((i) => !followOn(i)), ...fileIssues]
  if (issues.length > 0) {
    // Locate after the fact: the path names the YAML node, whose position the document kept.
    for (const issue of issues) {
      if (issue.line === undefined && issue.pathKeys !== undefined) {
        Object.assign(issue, locate(issue.pathKeys))
      }
    }
    throw new ConfigError(
      redactIssues(issues, filled).map(({ pathKeys: _, ...rest }) => rest),
      file,
    )
  }
  const config = deepFreeze(parsed.data!)
  validated.add(config)
  return config
}

type LocatedIssue = ConfigIssue & { pathKeys?: PathKey[] }

/** Supplied values shorter than this are not hunted for in messages: "1" or "on" would mangle them. */
const MIN_REDACTED = 4

/**
 * Messages go to `gatehouse check`, the reload error log and whoever collects those, so they
 * never show what a reference supplied (usually a secret, put where it does not belong): at a
 * path a reference filled, the resolved string is shown as written (`${env:TOKEN}`); anywhere,
 * a supplied value of MIN_REDACTED characters or more is `***`. describeZodIssue already
 * describes such paths by their written text.
 */
function redactIssues (issues: LocatedIssue[], filled: RefFills): LocatedIssue[] {
  if (filled.values.size === 0) return issues
  const values = [...filled.values].filter((v) => v.length >= MIN_REDACTED).sort((a, b) =>
    b.length - a.length
  )
  return issues.map((issue) => {
    let message = issue.message
    for (const [path, { written, resolved }] of filled.paths) {
      if (
        resolved !== '' &&
        (issue.path === path || issue.path.startsWith(path + '.') ||
          issue.path.startsWith(path + '['))
      ) message = message.replaceAll(resolved, written)
    }
    for (const v of values) message = message.replaceAll(v, '***')
    return message === issue.message ? issue : { ...issue, message }
  })
}

/**
 * A copy of a validated config (`{ ...config, log: … }`) still holds parts of it, whose
 * durations are numbers of milliseconds, and the schema refuses a duration without a unit. Those
 * numbers get their unit back. Parts are recognised by identity (this module made and froze
 * them), never by shape: a number in any other object is the user's, and must have a unit.
 */
function withUnits (
  value: unknown,
  schema: z.core.$ZodType | undefined,
  inValidatedPart: boolean,
): unknown {
  const s = unwrap(schema, value)
  if (s === undefined) return value
  if (DURATIONS.has(s)) return inValidatedPart && typeof value === 'number' ? `${value}ms` : value
  if (value === null || typeof value !== 'object') return value
  const ours = validatedParts.has(value)
  const from = value as Record<string, unknown>
  let out = from
  const visit = (key: string, child: z.core.$ZodType | undefined): void => {
    const v = withUnits(from[key], child, ours)
    if (v === from[key]) return
    // Copy on write: validated parts are frozen, and the caller's object is not ours to change.
    if (out === from) {
      out = (Array.isArray(from) ? [...from] : { ...from }) as Record<string, unknown>
    }
    out[key] = v
  }
  if (Array.isArray(from)) {
    if (s instanceof ZodArray) { for (let i = 0; i < from.length; i++) visit(String(i), s.element) }
  } else if (s instanceof ZodObject) {
    for (const key of Object.keys(from)) visit(key, s.shape[key])
  } else if (s instanceof ZodRecord) {
    for (const key of Object.keys(from)) visit(key, s.valueType)
  }
  return out
}

/** The schema that reads `value` at a place where `schema` is declared, wrappers removed. */
function unwrap (schema: z.core.$ZodType | undefined, value: unknown): z.core.$ZodType | undefined {
  let s = schema
  for (let guard = 0; s !== undefined && guard < 10 && !DURATIONS.has(s); guard++) {
    const inner: z.core.$ZodType = bare(s)
    if (inner !== s) s = inner
    // preprocess() is a pipe from a transform; .pipe() and .transform() read with their input side.
    else if (s instanceof ZodPipe) s = s.in instanceof ZodTransform ? s.out : s.in
    else if (s instanceof ZodDiscriminatedUnion) s = optionFor(s, value)
    else break
  }
  return s
}

function issueAt (path: PathKey[], message: string): LocatedIssue {
  return { path: pathToString(path), message, pathKeys: path }
}

function located (issue: CheckIssue): LocatedIssue {
  return issueAt([...issue.path], issue.message)
}

function describeZodIssue (
  issue: z.core.$ZodIssue,
  input: unknown,
  filled: RefFills,
): LocatedIssue[] {
  const path = issue.path as PathKey[]
  // A value a reference supplied is described as written in the config, never as resolved.
  const written = filled.paths.get(pathToString(path))?.written
  const describe = (v: unknown): string =>
    written === undefined
      ? describeValue(v)
      : `string ${JSON.stringify(written)} (its value is not shown)`
  if (issue.code === 'unrecognized_keys') {
    const known = knownKeys(ConfigSchema, path, input)
    return issue.keys.map((key) => {
      const hint = suggest(key, known)
      return issueAt(
        [...path, key],
        `unknown key "${key}"${hint === null ? '' : ` (did you mean "${hint}"?)`}`,
      )
    })
  }
  if (issue.code === 'invalid_type') {
    const got = valueAt(input, path)
    if (got === undefined) return [issueAt(path, 'is required')]
    return [issueAt(path, `expected ${issue.expected}, got ${describe(got)}`)]
  }
  if (issue.code === 'invalid_value') {
    return [
      issueAt(path, `must be one of ${issue.values.map((v) => JSON.stringify(v)).join(', ')}`),
    ]
  }
  if (issue.code === 'invalid_key') {
    // A record key that broke its rule: the rule's own message is nested one level down.
    return [issueAt(path, issue.issues[0]?.message ?? issue.message)]
  }
  if (
    issue.code === 'invalid_union' &&
    (issue as { discriminator?: string }).discriminator !== undefined
  ) {
    const options = (issue as { options?: unknown[] }).options ?? []
    const got = valueAt(input, path)
    return [
      issueAt(
        path,
        `${got === undefined ? 'is required' : `unknown ${JSON.stringify(got)}`}: must be one of ${
          options.map((v) => JSON.stringify(v)).join(', ')
        }`,
      ),
    ]
  }
  if (issue.code === 'invalid_union') {
    // Our unions are "string or number" for durations and sizes.
    const got = valueAt(input, path)
    if (got === undefined) return [issueAt(path, 'is required')]
    return [issueAt(path, `expected a string or a number, got ${describe(got)}`)]
  }
  return [issueAt(path, issue.message)]
}

/**
 * TLS material given as paths is resolved against the config file's directory (not the
 * working directory) and read now, so `gatehouse check` catches a missing key file.
 */
function resolveFiles (config: Config, baseDir: string): LocatedIssue[] {
  const issues: LocatedIssue[] = []
  // Plugins and the delivery database, like TLS files, are relative to the config file.
  config.routes.forEach((route, i) => {
    if (route.plugin === undefined) return
    const path = resolve(baseDir, route.plugin.path)
    ;(route.plugin as { path: string }).path = path
    if (!existsSync(path)) {
      issues.push(issueAt(['routes', i, 'plugin', 'path'], `cannot read ${path}: no such file`))
    }
  })
  if (config.delivery.store.kind === 'sqlite') {
    ;(config.delivery.store as { path: string }).path = resolve(baseDir, config.delivery.store.path)
  }
  const tls = config.listen.tls as Record<string, string | undefined> | undefined
  if (tls === undefined) return issues
  for (const key of ['cert', 'key', 'ca'] as const) {
    const value = tls[key]
    if (value === undefined || value.includes('-----BEGIN')) continue
    const path = resolve(baseDir, value)
    const text = readRefFile(path)
    if (typeof text !== 'string') {
      issues.push(issueAt(['listen', 'tls', key], text.problem))
      continue
    }
    tls[key] = text
    if (!tls[key]!.includes('-----BEGIN')) {
      issues.push(issueAt(['listen', 'tls', key], `${path} is not a PEM file`))
    }
  }
  // A cipher list OpenSSL cannot use would otherwise fail only when the listener is made.
  // (node:tls is loaded here, not at start-up, which most configs never need.)
  try {
    process.getBuiltinModule('node:tls').createSecureContext({ ciphers: tls.ciphers })
  } catch (err) {
    issues.push(
      issueAt(
        ['listen', 'tls', 'ciphers'],
        `OpenSSL accepts none of these ciphers (${(err as Error).message})`,
      ),
    )
  }
  return issues
}

/** The keys an object schema at `path` accepts, for "did you mean" hints. */
function knownKeys (schema: z.core.$ZodType, path: readonly PathKey[], input: unknown): string[] {
  let s: z.core.$ZodType | undefined = schema
  let here = input
  for (const key of [...path, null]) {
    // A discriminated union (identity providers by `kind`): follow the option the input chose.
    if (s instanceof ZodDiscriminatedUnion) s = optionFor(s, here)
    // Unwrap wrappers until we reach something that has structure.
    for (let guard = 0; s !== undefined && guard < 10; guard++) {
      const inner: z.core.$ZodType = bare(s)
      if (inner !== s) s = inner
      else if (s instanceof ZodPipe) s = s.in
      else break
    }
    if (s === undefined) return []
    if (key === null) return s instanceof ZodObject ? Object.keys(s.shape) : []
    here = valueAt(here, [key])
    if (s instanceof ZodObject) s = s.shape[key]
    else if (s instanceof ZodArray) s = s.element
    else if (s instanceof ZodRecord) s = s.valueType
    else return []
  }
  return []
}

function valueAt (value: unknown, path: readonly PathKey[]): unknown {
  let v = value
  for (const k of path) {
    if (v === null || typeof v !== 'object') return undefined
    v = (v as Record<PathKey, unknown>)[k]
  }
  return v
}

function describeValue (v: unknown): string {
  if (v === null) return 'null'
  if (Array.isArray(v)) return 'a list'
  if (typeof v === 'object') return 'a mapping'
  if (typeof v === 'string') {
    // A URL written in place (redis://:secret@host) where a number was expected.
    const s = v.includes('://') && v.includes('@') ? redactUrl(v) : v
    return `string ${JSON.stringify(s.length > 40 ? s.slice(0, 40) + '…' : s)}`
  }
  return `${typeof v} ${String(v)}`
}

function locateNode (
  doc: Document,
  lineCounter: LineCounter,
  path: readonly PathKey[],
): Pick<ConfigIssue, 'line' | 'column'> {
  // Walk as deep as the document goes: a missing key is reported at its parent.
  let node: unknown = doc.contents
  let keyNode: YamlNode | null = null
  for (const key of path) {
    if (isMap(node)) {
      const pair = node.items.find((p) => isScalar(p.key) && String(p.key.value) === String(key))
      if (pair === undefined) break
      keyNode = pair.key as YamlNode
      node = pair.value
    } else if (isSeq(node) && typeof key === 'number' && key < node.items.length) {
      keyNode = null
      node = node.items[key]
    } else {
      break
    }
  }
  const target = (node as YamlNode | null)?.range ? node as YamlNode : keyNode
  const offset = target?.range?.[0]
  if (offset === undefined) return {}
  const pos = lineCounter.linePos(offset)
  return { line: pos.line, column: pos.col }
}

function deepFreeze<T> (value: T): T {
  if (value !== null && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value)
    validatedParts.add(value)
    for (const v of Object.values(value)) deepFreeze(v)
  }
  return value
}
