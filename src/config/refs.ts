import { readFileSync } from 'node:fs'
import { isAbsolute, resolve } from 'node:path'
import type { ConfigIssue } from '../errors/index.js'

/**
 * `${env:NAME}`, `${env:NAME:-default}` and `${file:/path}` stand in for any string value, so
 * secrets stay out of the YAML file. They are resolved on the parsed tree, never on the raw
 * text, so a secret containing YAML syntax cannot change the document's structure.
 * `$${...}` is a literal `${...}`.
 */
const REF_RE = /\$?\$\{(env|file):([^}]*)\}/g

export interface RefContext {
  env: NodeJS.ProcessEnv
  /** Directory that relative `${file:}` paths resolve against (the config file's). */
  baseDir: string
}

export type PathKey = string | number

export function resolveRefs (value: unknown, ctx: RefContext, issues: Array<ConfigIssue & { pathKeys?: PathKey[] }>, path: PathKey[] = []): unknown {
  if (typeof value === 'string') return resolveString(value, ctx, issues, path)
  if (Array.isArray(value)) return value.map((v, i) => resolveRefs(v, ctx, issues, [...path, i]))
  if (value !== null && typeof value === 'object') {
    const out: Record<string, unknown> = {}
    for (const [k, v] of Object.entries(value)) out[k] = resolveRefs(v, ctx, issues, [...path, k])
    return out
  }
  return value
}

function resolveString (s: string, ctx: RefContext, issues: Array<ConfigIssue & { pathKeys?: PathKey[] }>, path: PathKey[]): string {
  if (!s.includes('${')) return s
  return s.replace(REF_RE, (whole, kind: string, arg: string) => {
    if (whole.startsWith('$$')) return whole.slice(1)
    if (kind === 'env') {
      const sep = arg.indexOf(':-')
      const name = sep === -1 ? arg : arg.slice(0, sep)
      const fallback = sep === -1 ? undefined : arg.slice(sep + 2)
      const v = ctx.env[name]
      if (v !== undefined && v !== '') return v
      if (fallback !== undefined) return fallback
      issues.push({ path: pathToString(path), pathKeys: path, message: `environment variable ${name} is not set` })
      return ''
    }
    const file = isAbsolute(arg) ? arg : resolve(ctx.baseDir, arg)
    try {
      // Secrets files conventionally end with a newline that is not part of the secret.
      return readFileSync(file, 'utf8').replace(/\r?\n$/, '')
    } catch (err) {
      issues.push({ path: pathToString(path), pathKeys: path, message: `cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}` })
      return ''
    }
  })
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
