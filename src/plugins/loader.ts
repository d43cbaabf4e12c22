import { statSync } from 'node:fs'
import { extname } from 'node:path'
import { pathToFileURL } from 'node:url'
import semver from 'semver'
import { importModule } from '../util/import.js'
import type { PluginConfig } from '../config/schema.js'
import { gatewayError, type GatewayError } from '../errors/index.js'
import { VERSION } from '../version.js'
import type { PluginDefinition, PluginResponse } from './api.js'

/**
 * A route's `plugin`, compiled. The module itself is loaded (asynchronously) by `load()`
 * before the route table that holds this reference starts serving, so a request never
 * waits for a plugin to load and a plugin that fails to load fails the start or reload.
 */
export class PluginRef {
  /** Absolute path (validateConfig resolved it against the config file). */
  readonly path: string
  readonly options: Readonly<Record<string, unknown>>
  readonly timeout: number
  readonly maxResponseBody: number
  #plugin: PluginDefinition | null = null

  constructor (cfg: PluginConfig) {
    this.path = cfg.path
    this.options = cfg.options
    this.timeout = cfg.timeout
    this.maxResponseBody = cfg.max_response_body
  }

  get plugin (): PluginDefinition {
    if (this.#plugin === null) throw new Error(`plugin ${this.path} used before it was loaded`)
    return this.#plugin
  }

  get loaded (): boolean {
    return this.#plugin !== null
  }

  /** Load and check the module (a reload loads the file again, so edits take effect). */
  async load (): Promise<void> {
    this.#plugin = await loadPlugin(this.path)
  }
}

const TS = new Set(['.ts', '.mts', '.cts', '.tsx'])

export async function loadPlugin (path: string): Promise<PluginDefinition> {
  let version: number
  try {
    version = statSync(path).mtimeMs
  } catch (err) {
    throw new Error(`plugin ${path}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`)
  }
  let mod: { default?: unknown }
  try {
    if (TS.has(extname(path))) {
      // tsx compiles TypeScript (esbuild underneath) and resolves the plugin's own imports as
      // Node would; each call is its own namespace, so a reload sees an edited file.
      const { tsImport } = await importModule<typeof import('tsx/esm/api')>('tsx/esm/api')
      mod = await tsImport(
        pathToFileURL(path).href,
        import.meta.url ?? pathToFileURL(__filenameFallback()).href,
      )
    } else {
      mod = await importModule(`${pathToFileURL(path).href}?v=${version}`)
    }
  } catch (err) {
    throw new Error(`plugin ${path} failed to load: ${(err as Error).message}`)
  }
  const plugin = mod.default as Partial<PluginDefinition> | undefined
  if (plugin === null || typeof plugin !== 'object') {
    throw new Error(
      `plugin ${path}: the default export must be definePlugin({ name, gatehouse, onRequest?, onResponse? })`,
    )
  }
  if (typeof plugin.name !== 'string' || plugin.name === '') {
    throw new Error(`plugin ${path}: "name" must be a non-empty string`)
  }
  if (typeof plugin.gatehouse !== 'string' || semver.validRange(plugin.gatehouse) === null) {
    throw new Error(
      `plugin ${plugin.name} (${path}): "gatehouse" must be a semver range such as "^0.1"`,
    )
  }
  if (!semver.satisfies(VERSION, plugin.gatehouse, { includePrerelease: true })) {
    throw new Error(
      `plugin ${plugin.name} (${path}) wants gatehouse ${plugin.gatehouse}; this is ${VERSION}`,
    )
  }
  for (const hook of ['onRequest', 'onResponse'] as const) {
    if (plugin[hook] !== undefined && typeof plugin[hook] !== 'function') {
      throw new Error(`plugin ${plugin.name} (${path}): ${hook} must be a function`)
    }
  }
  if (plugin.onRequest === undefined && plugin.onResponse === undefined) {
    throw new Error(`plugin ${plugin.name} (${path}) has neither onRequest nor onResponse`)
  }
  loaded.set(path, { name: plugin.name, url: pathToFileURL(path).href })
  return plugin as PluginDefinition
}

/**
 * Every plugin file loaded so far, never forgotten: a plugin dropped by a reload may still have
 * timers and promises of its own running.
 */
const loaded = new Map<string, { name: string, url: string }>()

/**
 * The name of the plugin whose file appears in `err`'s stack, or null (no stack, or no frame
 * in a plugin file). Frames show the file's URL (ES modules, with `?v=` on a reloaded .js) or
 * its path (CommonJS); tsx maps a .ts plugin's frames back to the .ts file.
 */
export function pluginOf (err: unknown): string | null {
  const stack = (err as { stack?: unknown } | null)?.stack
  if (typeof stack !== 'string' || loaded.size === 0) return null
  for (const [path, { name, url }] of loaded) {
    if (mentions(stack, url) || mentions(stack, path)) return name
  }
  return null
}

/** `file` occurs in `stack` as a whole name: followed by `:line`, `?query` or `)`, not `/a.ts` in `/a.tsx`. */
function mentions (stack: string, file: string): boolean {
  for (let i = stack.indexOf(file); i !== -1; i = stack.indexOf(file, i + 1)) {
    const next = stack.charCodeAt(i + file.length)
    if (next === 58 /* : */ || next === 63 /* ? */ || next === 41 /* ) */) return true
  }
  return false
}

/** In the CommonJS CLI bundle import.meta.url is empty; any file URL in the package will do as parent. */
function __filenameFallback (): string {
  return process.argv[1] ?? process.cwd()
}

const TIMEOUT = Symbol('timeout')

/**
 * Run one hook with the plugin's time limit. A throw, a timeout or a result that is neither
 * nothing nor a response becomes a 502 with its own code: a plugin never takes the gateway
 * down. (A hook that blocks the event loop cannot be stopped from inside the process; the time
 * limit covers asynchronous work, which is what plugins that call models do.)
 */
export async function runHook (
  name: string,
  hook: string,
  fn: () => unknown,
  timeout: number,
  abort: AbortController,
): Promise<PluginResponse | null | GatewayError> {
  let timer: NodeJS.Timeout | undefined
  const expired = new Promise<typeof TIMEOUT>((resolve) => {
    timer = setTimeout(resolve, timeout, TIMEOUT)
  })
  let result: unknown
  try {
    result = await Promise.race([Promise.resolve().then(fn), expired])
  } catch (err) {
    return gatewayError('GH_PLUGIN_FAILED', `Plugin "${name}" failed`, {
      reason: `${name}.${hook} threw: ${(err as Error)?.stack ?? String(err)}`,
    })
  } finally {
    clearTimeout(timer)
  }
  if (result === TIMEOUT) {
    abort.abort(new Error(`plugin ${name}.${hook} timed out`))
    return gatewayError('GH_PLUGIN_TIMEOUT', `Plugin "${name}" did not finish in time`, {
      reason: `${name}.${hook} ran past ${timeout} ms`,
    })
  }
  if (result === undefined || result === null) return null
  const r = result as Partial<PluginResponse>
  if (
    typeof r !== 'object' || !Number.isInteger(r.status) || r.status! < 200 || r.status! > 599 ||
    (r.headers !== undefined &&
      (r.headers === null || typeof r.headers !== 'object' ||
        Object.values(r.headers).some((v) => typeof v !== 'string')))
  ) {
    return gatewayError('GH_PLUGIN_INVALID_RESULT', `Plugin "${name}" returned an invalid result`, {
      reason: `${name}.${hook} returned ${
        describe(result)
      }; expected nothing or ctx.respond(status, body, headers)`,
    })
  }
  return r as PluginResponse
}

function describe (v: unknown): string {
  try {
    const s = JSON.stringify(v)
    return s === undefined ? typeof v : s.length > 120 ? s.slice(0, 120) + '…' : s
  } catch {
    return typeof v
  }
}
