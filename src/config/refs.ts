import { closeSync, constants, fstatSync, openSync, readSync, statSync, type Stats } from 'node:fs'
import { isAbsolute, resolve } from 'node:path'
import type { ConfigIssue } from '../errors/index.js'

/**
 * `${env:NAME}`, `${env:NAME:-default}` and `${file:/path}` stand in for any string value, so
 * secrets stay out of the YAML file. They are resolved on the parsed tree, never on the raw
 * text, so a secret containing YAML syntax cannot change the document's structure.
 * `$${...}` is a literal `${...}`.
 */
const REF_RE = /\$?\$\{(env|file):([^}]*)\}/g

/**
 * The most a `${file:}` reference reads. Secrets, keys and certificate chains are a few KiB;
 * the cap bounds what a reload (which runs on the event loop) can be made to read, e.g. from a
 * path that points at a huge or endless file.
 */
export const MAX_REF_FILE = 1024 * 1024
const TOO_LARGE = (file: string, cap: number): string =>
  `cannot read ${file}: larger than ${
    cap >= 1024 * 1024 ? `${cap / 1024 / 1024} MiB` : `${cap} bytes`
  }`

export interface RefContext {
  env: NodeJS.ProcessEnv
  /** Directory that relative `${file:}` paths resolve against (the config file's). */
  baseDir: string
  /** Filled in as references resolve, so that issue messages never show what they supplied. */
  filled?: RefFills
}

/** What references put into a config (see redactIssues in load.ts). */
export interface RefFills {
  /** By config path: the string as written (`Bearer ${env:TOKEN}`) and as resolved. */
  readonly paths: Map<string, { written: string, resolved: string }>
  /** Every value an environment variable or a file supplied (a `:-default` is in the config already). */
  readonly values: Set<string>
}

export type PathKey = string | number

export function resolveRefs (
  value: unknown,
  ctx: RefContext,
  issues: Array<ConfigIssue & { pathKeys?: PathKey[] }>,
  path: PathKey[] = [],
): unknown {
  if (typeof value === 'string') return resolveString(value, ctx, issues, path)
  if (Array.isArray(value)) return value.map((v, i) => resolveRefs(v, ctx, issues, [...path, i]))
  if (value !== null && typeof value === 'object') {
    const out: Record<string, unknown> = {}
    for (const [k, v] of Object.entries(value)) out[k] = resolveRefs(v, ctx, issues, [...path, k])
    return out
  }
  return value
}

function resolveString (
  s: string,
  ctx: RefContext,
  issues: Array<ConfigIssue & { pathKeys?: PathKey[] }>,
  path: PathKey[],
): string {
  if (!s.includes('${')) return s
  let supplied = false
  const out = s.replace(REF_RE, (whole, kind: string, arg: string) => {
    if (whole.startsWith('$$')) return whole.slice(1)
    if (kind === 'env') {
      const sep = arg.indexOf(':-')
      const name = sep === -1 ? arg : arg.slice(0, sep)
      const fallback = sep === -1 ? undefined : arg.slice(sep + 2)
      const v = ctx.env[name]
      if (v !== undefined && v !== '') {
        supplied = true
        ctx.filled?.values.add(v)
        return v
      }
      if (fallback !== undefined) return fallback
      issues.push({
        path: pathToString(path),
        pathKeys: path,
        message: `environment variable ${name} is not set`,
      })
      return ''
    }
    const file = isAbsolute(arg) ? arg : resolve(ctx.baseDir, arg)
    const read = readRefFile(file)
    if (typeof read !== 'string') {
      issues.push({ path: pathToString(path), pathKeys: path, message: read.problem })
      return ''
    }
    // Secrets files conventionally end with a newline that is not part of the secret.
    const v = read.replace(/\r?\n$/, '')
    supplied = true
    ctx.filled?.values.add(v)
    return v
  })
  if (supplied) ctx.filled?.paths.set(pathToString(path), { written: s, resolved: out })
  return out
}

/**
 * A `${file:}` reference's text, or why it cannot be used. Only regular files, and at most
 * MAX_REF_FILE bytes: a FIFO would block the (synchronous) load until a writer came, on a
 * reload that means the whole gateway, and a device such as /dev/zero never ends. The type is
 * checked before opening, and again on the open descriptor, which O_NONBLOCK keeps from waiting
 * for a writer should the path have been swapped for a FIFO in between.
 */
export function readRefFile (file: string, cap = MAX_REF_FILE): string | { problem: string } {
  let st: Stats
  try {
    st = statSync(file)
  } catch (err) {
    return { problem: `cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}` }
  }
  const kind = notRegular(st)
  if (kind !== null) return { problem: `cannot read ${file}: ${kind}, not a regular file` }
  if (st.size > cap) return { problem: TOO_LARGE(file, cap) }
  let fd: number
  try {
    fd = openSync(file, constants.O_RDONLY | (constants.O_NONBLOCK ?? 0))
  } catch (err) {
    return { problem: `cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}` }
  }
  try {
    const again = notRegular(fstatSync(fd))
    if (again !== null) return { problem: `cannot read ${file}: ${again}, not a regular file` }
    // The size may have changed since stat (or be 0, as for files in /proc): read up to the cap
    // plus one byte, which tells "exactly at the cap" from "over it".
    let buf = Buffer.allocUnsafe(Math.min(cap + 1, Math.max(st.size + 1, 4096)))
    let length = 0
    for (;;) {
      if (length === buf.length) {
        if (length > cap) return { problem: TOO_LARGE(file, cap) }
        const bigger = Buffer.allocUnsafe(Math.min(cap + 1, length * 2))
        buf.copy(bigger, 0, 0, length)
        buf = bigger
      }
      const n = readSync(fd, buf, length, buf.length - length, null)
      if (n === 0) break
      length += n
    }
    return buf.toString('utf8', 0, length)
  } catch (err) {
    return { problem: `cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}` }
  } finally {
    closeSync(fd)
  }
}

function notRegular (st: Stats): string | null {
  if (st.isFile()) return null
  if (st.isFIFO()) return 'a FIFO'
  if (st.isDirectory()) return 'a directory'
  if (st.isCharacterDevice()) return 'a character device'
  if (st.isBlockDevice()) return 'a block device'
  if (st.isSocket()) return 'a socket'
  return 'an unusual file'
}

export function pathToString (path: readonly PathKey[]): string {
  let out = ''
  for (const p of path) {
    if (typeof p === 'number') out += `[${p}]`
    else if (/^[A-Za-z_][\w-]*$/.test(p)) out += out === '' ? p : `.${p}`
    else out += `[${JSON.stringify(p)}]`
  }
  return out
}

/**
 * A URL fit for a log line or a message: user and password shown as `***`, query and fragment
 * dropped (clients read credentials from those too). Parsed, not pattern-matched: a password may
 * contain `@`, `:` or `/`, which a pattern cuts in the wrong place.
 */
export function redactUrl (url: string): string {
  let u: URL
  try {
    u = new URL(url)
  } catch {
    const scheme = /^[A-Za-z][A-Za-z0-9+.-]*:/.exec(url)
    return `${scheme?.[0] ?? ''}//*** (not a valid URL)`
  }
  if (u.username !== '' || u.password !== '') {
    u.username = '***'
    u.password = ''
  }
  if (u.search !== '') u.search = '?***'
  u.hash = ''
  return u.href
}
