import { watch, type FSWatcher } from 'node:fs'
import { basename, dirname, resolve } from 'node:path'
import { createHash } from 'node:crypto'
import { parseArgs } from 'node:util'
import { compile, describeTable, type CompileDeps } from '../compile/index.js'
import { compileChecks } from '../compile/checks.js'
import { loadConfigFile, suggest } from '../config/load.js'
import { readRefFile } from '../config/refs.js'
import type { Config } from '../config/schema.js'
import { configWarnings } from '../config/checks.js'
import { ConfigError } from '../errors/index.js'
import { createGateway, type Gateway } from '../server/gateway.js'
import { pluginOf } from '../plugins/loader.js'
import { createProvider } from '../identity/registry.js'
import { PhantomSigner } from '../identity/phantom.js'
import { createBackend, type StoreSet } from '../stores/registry.js'
import type { StoreBackend } from '../stores/backend.js'
import { createLogger } from '../observability/logger.js'
import { Metrics } from '../observability/metrics.js'
import { VERSION } from '../version.js'
import { settleMallocThresholds } from '../util/malloc.js'

const USAGE = `Usage: gatehouse <command> [--config FILE]

Commands:
  start    run the gateway (reloads on SIGHUP and when FILE changes)
  check    validate FILE; print each problem with its path and line
  routes   print the compiled route table
  deliveries list [--state pending|delivered|dead] [--route R] [--limit N]
  deliveries show ID
  deliveries replay ID | --dead [--route R]
  deliveries purge --state dead|delivered [--route R]
           the async delivery log, through the running gateway's admin API
  help [COMMAND]
           this help, or one command's

Options:
  -c, --config FILE   configuration file (default: ./gatehouse.yaml)
      --admin URL     admin API address (default: from the config's admin block)
  -h, --help          show this help (after a command: that command's)
      --version       print the version

Exit status: 0 ok, 1 failure (invalid config, a port in use, an error from the admin API),
2 usage error (unknown command, option or argument).
`

const CONFIG_OPTION = '  -c, --config FILE   configuration file (default: ./gatehouse.yaml)\n'
const HELP_OPTION = '  -h, --help          show this help\n'

/** What each command accepts: its options (by long name), how many arguments, and its help. */
interface CommandSpec {
  options: readonly string[]
  /** Fewest and most positional arguments after the command (and subcommand) name. */
  args: readonly [number, number]
  help: string
}

const DELIVERIES_HELP = `Usage: gatehouse deliveries <list|show|replay|purge> [options]

The async delivery log, through the running gateway's admin API.

  gatehouse deliveries list   [--state pending|delivered|dead] [--route R] [--limit N]
  gatehouse deliveries show   ID
  gatehouse deliveries replay ID
  gatehouse deliveries replay --dead [--route R]
  gatehouse deliveries purge  --state dead|delivered [--route R]

Options:
  -c, --config FILE   read the admin address from FILE's admin block (default: ./gatehouse.yaml)
      --admin URL     admin API address, instead of --config (e.g. http://127.0.0.1:9901)
      --state STATE   list: only records in STATE; purge: which records to delete
      --route R       only records of route R (list, replay --dead, purge)
      --limit N       list: at most N records (default 100)
      --dead          replay: every dead record (of --route R), instead of one ID
${HELP_OPTION}`

const COMMANDS: Record<string, CommandSpec> = {
  start: {
    options: ['config'],
    args: [0, 0],
    help: `Usage: gatehouse start [--config FILE]

Run the gateway. SIGHUP, or a change to FILE, reloads it (an invalid file is logged and the
running configuration kept); SIGTERM or SIGINT drains in-flight requests and exits 0. A listener
that cannot bind (a port in use) is one line on stderr and exit status 1. Errors no code caught
are logged and counted; an uncaught exception outside a plugin drains and exits 1.

Options:
${CONFIG_OPTION}${HELP_OPTION}`,
  },
  check: {
    options: ['config'],
    args: [0, 0],
    help: `Usage: gatehouse check [--config FILE]

Validate FILE without starting anything. Each problem is one line, FILE:LINE:COL: PATH: MESSAGE;
exit status 0 when FILE is valid, 1 when it is not.

Options:
${CONFIG_OPTION}${HELP_OPTION}`,
  },
  routes: {
    options: ['config'],
    args: [0, 0],
    help: `Usage: gatehouse routes [--config FILE]

Print the compiled route table: each route's match, upstream and policies, in the order they are
tried. Nothing is started and no keys are fetched.

Options:
${CONFIG_OPTION}${HELP_OPTION}`,
  },
  'deliveries list': {
    options: ['config', 'admin', 'state', 'route', 'limit'],
    args: [0, 0],
    help: DELIVERIES_HELP,
  },
  'deliveries show': { options: ['config', 'admin'], args: [1, 1], help: DELIVERIES_HELP },
  'deliveries replay': {
    options: ['config', 'admin', 'dead', 'route'],
    args: [0, 1],
    help: DELIVERIES_HELP,
  },
  'deliveries purge': {
    options: ['config', 'admin', 'state', 'route'],
    args: [0, 0],
    help: DELIVERIES_HELP,
  },
}

const OPTIONS = {
  config: { type: 'string', short: 'c' },
  admin: { type: 'string' },
  state: { type: 'string' },
  route: { type: 'string' },
  limit: { type: 'string' },
  dead: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
  version: { type: 'boolean' },
} as const satisfies Record<string, { type: 'string' | 'boolean', short?: string }>

type OptionName = keyof typeof OPTIONS
type Values = {
  [K in OptionName]?: (typeof OPTIONS)[K]['type'] extends 'string' ? string : boolean
}

const DELIVERY_STATES = ['pending', 'delivered', 'dead']

/** The CLI is a thin layer over the programmatic API. Returns the process exit code. */
export async function main (argv: string[]): Promise<number> {
  // A first, lenient pass finds the command; each command then accepts only its own options,
  // because an option another command takes (list --dead) would otherwise be silently ignored.
  let tokens
  try {
    tokens = parseArgs({
      args: argv,
      options: OPTIONS,
      strict: false,
      allowPositionals: true,
      tokens: true,
    }).tokens
  } catch (err) {
    return usage((err as Error).message)
  }
  const positionals = tokens.filter((t) => t.kind === 'positional').map((t) => t.value)
  const asked = new Set(tokens.flatMap((t) => t.kind === 'option' ? [t.name] : []))
  if (asked.has('version')) {
    process.stdout.write(`${VERSION}\n`)
    return 0
  }
  let [command, sub] = positionals
  if (command === 'help') {
    // `gatehouse help deliveries list` as `gatehouse deliveries list --help`.
    if (sub === undefined) {
      process.stdout.write(USAGE)
      return 0
    }
    ;[command, sub] = positionals.slice(1)
    asked.add('help')
  }
  if (command === undefined) {
    process.stdout.write(USAGE)
    return asked.has('help') ? 0 : 2
  }
  const key = command === 'deliveries' ? `deliveries ${sub ?? ''}` : command
  const spec = COMMANDS[key]
  if (spec === undefined) {
    // An option no command knows may be why the command was misread (`--confg x.yaml check`).
    const stray = tokens.find((t) => t.kind === 'option' && !Object.hasOwn(OPTIONS, t.name))
    if (stray?.kind === 'option') {
      return usage(unknownOption(stray.rawName, stray.name, Object.keys(OPTIONS), null))
    }
    if (command === 'deliveries') {
      if (asked.has('help')) return help(DELIVERIES_HELP)
      return usage(`unknown deliveries command "${sub ?? ''}"`, DELIVERIES_HELP)
    }
    return usage(`unknown command "${command}"`)
  }
  if (asked.has('help')) return help(spec.help)
  const allowed = new Set<string>([...spec.options, 'help', 'version'])
  for (const t of tokens) {
    if (t.kind === 'option' && !allowed.has(t.name)) {
      return usage(unknownOption(t.rawName, t.name, spec.options, key), spec.help)
    }
  }
  let values: Values
  try {
    values = parseArgs({ args: argv, options: pick(allowed), strict: true, allowPositionals: true })
      .values as Values
  } catch (err) {
    // A missing value (--config at the end), or a value given to a switch (--dead=yes).
    return usage((err as Error).message, spec.help)
  }
  const args = positionals.slice(key.split(' ').length)
  if (args.length < spec.args[0]) {
    return usage(
      `${key} needs ${spec.args[0] === 1 ? 'an ID' : `${spec.args[0]} arguments`}`,
      spec.help,
    )
  }
  if (args.length > spec.args[1]) {
    return usage(`unexpected argument "${args[spec.args[1]]}" for "${key}"`, spec.help)
  }
  const file = values.config ?? 'gatehouse.yaml'
  switch (command) {
    case 'check':
      return check(file)
    case 'routes':
      return routes(file)
    case 'start':
      return start(file)
    default:
      return deliveries(file, positionals.slice(1), values)
  }
}

/**
 * "unknown option --dead (did you mean --state dead?)": the nearest of the options that apply;
 * without one, an option of another command says so.
 */
function unknownOption (
  raw: string,
  name: string,
  options: readonly string[],
  command: string | null,
): string {
  // `list --dead`: a state written as a switch.
  if (options.includes('state') && DELIVERY_STATES.includes(name)) {
    return `unknown option ${raw} (did you mean --state ${name}?)`
  }
  const near = name.length > 1 ? suggest(name, options) : null
  if (near !== null) return `unknown option ${raw} (did you mean --${near}?)`
  if (command !== null && Object.hasOwn(OPTIONS, name)) {
    return `option ${raw} does not apply to "${command}"`
  }
  return `unknown option ${raw}`
}

function pick (names: Set<string>): Partial<typeof OPTIONS> {
  return Object.fromEntries(Object.entries(OPTIONS).filter(([n]) => names.has(n)))
}

function help (text: string): number {
  process.stdout.write(text)
  return 0
}

/** The config file, checked as the gateway would compile it (JSONata expressions included). */
function loadChecked (file: string): Config {
  return loadConfigFile(file, { checks: compileChecks })
}

function load (file: string) {
  try {
    return loadChecked(file)
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(
        `${err.message}\n${err.issues.length} problem${
          err.issues.length === 1 ? '' : 's'
        } in ${file}\n`,
      )
      return null
    }
    throw err
  }
}

function check (file: string): number {
  const config = load(file)
  if (config === null) return 1
  const l = config.listen
  process.stdout.write(
    `${file}: ok: ${config.routes.length} route${config.routes.length === 1 ? '' : 's'}, ` +
      `${Object.keys(config.upstreams).length} upstream${
        Object.keys(config.upstreams).length === 1 ? '' : 's'
      }` +
      `${plural(Object.keys(config.identity.providers).length, 'identity provider')}; ` +
      `listen ${l.tls === undefined ? 'http' : 'https'}://${l.host}:${l.port}` +
      `${config.admin.enabled ? `, admin ${config.admin.host}:${config.admin.port}` : ''}\n`,
  )
  for (const w of configWarnings(config)) process.stderr.write(`${file}: warning: ${w}\n`)
  return 0
}

/**
 * `gatehouse deliveries …`: a thin client of the running gateway's admin API, so replays wake
 * its workers and the same command works for sqlite and NATS stores.
 */
async function deliveries (file: string, args: string[], o: Values): Promise<number> {
  let base = o.admin
  if (base === undefined) {
    const config = load(file)
    if (config === null) return 1
    const host = config.admin.host === '0.0.0.0' || config.admin.host === '::'
      ? '127.0.0.1'
      : config.admin.host
    base = `http://${host.includes(':') ? `[${host}]` : host}:${config.admin.port}`
  }
  const q = new URLSearchParams()
  if (o.state !== undefined) q.set('state', o.state)
  if (o.route !== undefined) q.set('route', o.route)
  if (o.limit !== undefined) q.set('limit', o.limit)
  const qs = q.size === 0 ? '' : '?' + q.toString()
  const [sub, id] = args
  let method = 'GET'
  let path: string
  switch (sub) {
    case 'list':
      path = '/deliveries' + qs
      break
    case 'show':
      if (id === undefined) return usage('deliveries show needs an ID', DELIVERIES_HELP)
      path = `/deliveries/${encodeURIComponent(id)}`
      break
    case 'replay':
      method = 'POST'
      if (o.dead === true) {
        path = '/deliveries/replay' +
          (o.route === undefined ? '' : `?route=${encodeURIComponent(o.route)}`)
      } else if (id !== undefined) path = `/deliveries/${encodeURIComponent(id)}/replay`
      else return usage('deliveries replay needs an ID or --dead', DELIVERIES_HELP)
      break
    case 'purge':
      if (o.state !== 'dead' && o.state !== 'delivered') {
        return usage('deliveries purge needs --state dead or --state delivered', DELIVERIES_HELP)
      }
      method = 'DELETE'
      path = '/deliveries' + qs
      break
    default:
      return usage(`unknown deliveries command "${sub ?? ''}"`, DELIVERIES_HELP)
  }
  let res: Response
  try {
    res = await fetch(base + path, { method })
  } catch (err) {
    process.stderr.write(
      `gatehouse: cannot reach the admin API at ${base}: ${describeFetchError(err)}\n`,
    )
    return 1
  }
  const body = await res.text()
  if (!res.ok) {
    let msg = body
    try {
      msg = JSON.parse(body).error ?? body
    } catch {}
    process.stderr.write(`gatehouse: ${res.status} ${msg}\n`)
    return 1
  }
  const data = JSON.parse(body)
  if (sub === 'list') {
    const rows = data.deliveries as Array<Record<string, unknown>>
    if (rows.length === 0) process.stdout.write('no deliveries\n')
    for (const d of rows) {
      process.stdout.write(
        `${String(d.id)}  ${String(d.route)}  ${String(d.state).padEnd(9)}  attempts=${
          String(d.attempts)
        }  ${String(d.created_at)}${
          d.last_error === null ? '' : `  last_error=${String(d.last_error)}`
        }\n`,
      )
    }
  } else {
    process.stdout.write(JSON.stringify(data, null, 2) + '\n')
  }
  return 0
}

function describeFetchError (err: unknown): string {
  const cause = (err as { cause?: { code?: string, message?: string } }).cause
  return cause?.code ?? cause?.message ?? (err as Error).message
}

/** A usage error: the message, then the help it concerns, on stderr; exit status 2. */
function usage (msg: string, text = USAGE): number {
  process.stderr.write(`gatehouse: ${msg}\n\n${text}`)
  return 2
}

function routes (file: string): number {
  const config = load(file)
  if (config === null) return 1
  process.stdout.write(describeTable(compile(config, describeOnly(config))) + '\n')
  return 0
}

/**
 * Collaborators for a table that is printed, never served: no targets (describeTable names them
 * from config), so no pool and no connection; providers and stores made from config but never
 * started, so no key fetch and no store connection; and no registries to keep any of them.
 */
function describeOnly (config: Config): CompileDeps {
  const logger = createLogger('silent')
  const metrics = new Metrics(false)
  const identity = config.identity
  const providers = new Map(
    Object.entries(identity.providers).map((
      [name, p],
    ) => [name, createProvider(name, p, { logger, metrics })]),
  )
  // `default` is an in-process memory store unless the config defines its own; its size does
  // not matter in a table that counts nothing.
  const storeConfigs = {
    default: { kind: 'memory' as const, max_keys: 1, max_bytes: 1 },
    ...config.stores,
  }
  return {
    targets: new Map(Object.keys(config.upstreams).map((name) => [name, []])),
    identity: {
      realm: identity.realm,
      providers,
      phantom: identity.phantom_token === undefined
        ? null
        : new PhantomSigner(identity.phantom_token),
      created: [],
    },
    stores: storeSet(
      new Map(Object.entries(storeConfigs).map(([name, s]) => [name, createBackend(s, logger)])),
    ),
    metrics,
  }
}

function storeSet (backends: Map<string, StoreBackend>): StoreSet {
  const counterStores = new Map([...backends].map(([name, b]) => [name, b.counterStore]))
  const cacheStores = new Map([...backends].map(([name, b]) => [name, b.cacheStore]))
  return { counterStores, cacheStores, backends, created: [] }
}

async function start (file: string): Promise<number> {
  const config = load(file)
  if (config === null) return 1
  // Before any traffic: streamed bodies must not make the C heap shrink and regrow.
  settleMallocThresholds()
  const gateway = createGateway(config)
  try {
    await gateway.listen()
  } catch (err) {
    if ((err as { code?: string }).code !== 'GH_LISTEN_FAILED') throw err
    // One line, no stack: a port in use is the operator's to fix, not a bug. listen() has
    // closed what it bound; closing the gateway stops the rest (key refreshes, stores, workers).
    process.stderr.write(`${(err as Error).message}\n`)
    await gateway.close()
    return 1
  }

  let lastHash = hashFile(file)
  const reload = async (why: string): Promise<void> => {
    const hash = hashFile(file)
    if (why === 'change' && hash === lastHash) return
    if (hash === EMPTY) {
      // Seen between the truncate and the write of a file rewritten in place: an empty
      // document is a valid config with no routes, which must never replace a running one.
      gateway.logger.warn({ msg: 'config file is empty; keeping the running config', file })
      return
    }
    lastHash = hash
    // reload() reads the file through the thunk, so a file that fails to load is logged and
    // counted like any invalid config, and the running table stays.
    await gateway.reload(() => loadChecked(file)).catch(() => {})
  }
  const watcher = watchFile(file, () => {
    reload('change').catch(() => {})
  })
  process.on('SIGHUP', () => {
    reload('signal').catch(() => {})
  })

  return await new Promise<number>((resolve) => {
    let stopping = false
    const stop = (code: number): void => {
      if (stopping) return
      stopping = true
      process.off('SIGTERM', onSignal)
      process.off('SIGINT', onSignal)
      watcher?.close()
      gateway.close().then(() => {
        unguard()
        resolve(code)
      }, () => resolve(code))
    }
    const onSignal = (signal: string): void => {
      gateway.logger.info({ msg: 'signal', signal })
      stop(0)
    }
    const unguard = guardProcess(gateway, () => {
      // Draining may itself hang on whatever broke: the grace period, then a little, is all it gets.
      setTimeout(() => process.exit(1), gateway.table.config.shutdown.grace + 5_000).unref()
      stop(1)
    })
    process.on('SIGTERM', onSignal)
    process.on('SIGINT', onSignal)
  })
}

/**
 * Errors no code handled. By default Node ends the process on either, so one plugin's
 * fire-and-forget `Promise.reject()`, or a throw in its `setTimeout` callback, would take every
 * request down with it. Here:
 * - a promise rejected with no handler is logged and counted, and the gateway keeps serving:
 *   nothing was unwound, no state is half-changed;
 * - an exception thrown from a callback is logged and counted; Node's documentation warns that
 *   the process is in an undefined state after one, so the gateway keeps serving only when the
 *   stack shows the exception came from a plugin's file (what unwound was the plugin's own
 *   callback). Any other (a gateway bug, a library's) drains in-flight requests, as on SIGTERM,
 *   and exits 1 for the supervisor to restart it.
 * Installed by `gatehouse start` only: a process that embeds the gateway owns its own handlers.
 */
function guardProcess (gateway: Gateway, fatal: () => void): () => void {
  const count = gateway.metrics.uncaughtErrors
  // Both series exist from the start, at 0, for rate() and alerts.
  count.inc({ kind: 'rejection' }, 0)
  count.inc({ kind: 'exception' }, 0)
  const onRejection = (reason: unknown): void => {
    count.inc({ kind: 'rejection' })
    try {
      const plugin = pluginOf(reason)
      gateway.logger.error({
        msg: 'unhandled promise rejection; still serving',
        kind: 'rejection',
        ...(plugin === null ? {} : { plugin }),
        err: describeError(reason),
      })
    } catch {}
  }
  const onException = (err: unknown): void => {
    count.inc({ kind: 'exception' })
    const plugin = pluginOf(err)
    try {
      if (plugin !== null) {
        gateway.logger.error({
          msg: 'uncaught exception in a plugin; still serving',
          kind: 'exception',
          plugin,
          err: describeError(err),
        })
      } else {
        gateway.logger.fatal({
          msg: 'uncaught exception; draining and exiting',
          kind: 'exception',
          err: describeError(err),
        })
      }
    } catch {}
    if (plugin === null) fatal()
  }
  process.on('unhandledRejection', onRejection)
  process.on('uncaughtException', onException)
  return () => {
    process.off('unhandledRejection', onRejection)
    process.off('uncaughtException', onException)
  }
}

function describeError (err: unknown): string {
  if (err instanceof Error) return err.stack ?? `${err.name}: ${err.message}`
  try {
    return `non-error value: ${JSON.stringify(err) ?? String(err)}`
  } catch {
    return `non-error value: ${String(err)}`
  }
}

const EMPTY = 'empty'

/** Content hash of the file; EMPTY for a missing, unreadable, blank or comments-only file. */
function hashFile (file: string): string {
  try {
    // Regular files only (readRefFile): the watcher must not block on a path swapped for a FIFO.
    const text = readRefFile(file, 16 * 1024 * 1024)
    if (typeof text !== 'string') return EMPTY
    const data = Buffer.from(text)
    // Comments alone count as empty too: a half-written file may end after its header comment.
    if (data.toString('utf8').replace(/^\s*#.*$/gm, '').trim() === '') return EMPTY
    return createHash('sha256').update(data).digest('hex')
  } catch {
    return EMPTY
  }
}

/**
 * Watch the config file's directory, not the file: editors and Kubernetes ConfigMaps replace
 * the file (rename), which silently ends a watch on the file itself. Bursts are debounced.
 */
function watchFile (file: string, onChange: () => void): FSWatcher | null {
  const dir = dirname(resolve(file))
  const name = basename(file)
  let timer: NodeJS.Timeout | null = null
  try {
    const w = watch(dir, { persistent: false }, (_event, changed) => {
      if (changed !== null && changed !== name && changed !== '..data') return
      if (timer !== null) clearTimeout(timer)
      timer = setTimeout(() => {
        timer = null
        onChange()
      }, 100)
    })
    w.on('error', () => {})
    return w
  } catch {
    return null
  }
}

function plural (n: number, what: string): string {
  return n === 0 ? '' : `, ${n} ${what}${n === 1 ? '' : 's'}`
}
