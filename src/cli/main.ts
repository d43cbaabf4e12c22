import { readFileSync, watch, type FSWatcher } from 'node:fs'
import { basename, dirname, resolve } from 'node:path'
import { createHash } from 'node:crypto'
import { parseArgs } from 'node:util'
import { compile, describeTable } from '../compile/index.js'
import { loadConfigFile } from '../config/load.js'
import { ConfigError } from '../errors/index.js'
import { createGateway } from '../server/gateway.js'
import { TargetRegistry } from '../upstream/target.js'
import { IdentityRegistry } from '../identity/registry.js'
import { StoreRegistry } from '../limits/registry.js'
import { createLogger } from '../observability/logger.js'
import { Metrics } from '../observability/metrics.js'

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

Options:
  -c, --config FILE   configuration file (default: ./gatehouse.yaml)
      --admin URL     admin API address (default: from the config's admin block)
  -h, --help          show this help
`

/** The CLI is a thin layer over the programmatic API. Returns the process exit code. */
export async function main (argv: string[]): Promise<number> {
  let parsed
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        config: { type: 'string', short: 'c', default: 'gatehouse.yaml' },
        help: { type: 'boolean', short: 'h', default: false },
        admin: { type: 'string' },
        state: { type: 'string' },
        route: { type: 'string' },
        limit: { type: 'string' },
        dead: { type: 'boolean', default: false },
      },
    })
  } catch (err) {
    process.stderr.write(`gatehouse: ${(err as Error).message}\n\n${USAGE}`)
    return 2
  }
  const [command] = parsed.positionals
  if (parsed.values.help || command === undefined) {
    process.stdout.write(USAGE)
    return command === undefined && !parsed.values.help ? 2 : 0
  }
  const file = parsed.values.config
  switch (command) {
    case 'check': return check(file)
    case 'routes': return routes(file)
    case 'start': return start(file)
    case 'deliveries': return deliveries(file, parsed.positionals.slice(1), parsed.values)
    default:
      process.stderr.write(`gatehouse: unknown command "${command}"\n\n${USAGE}`)
      return 2
  }
}

function load (file: string) {
  try {
    return loadConfigFile(file)
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`${err.message}\n${err.issues.length} problem${err.issues.length === 1 ? '' : 's'} in ${file}\n`)
      return null
    }
    throw err
  }
}

function check (file: string): number {
  const config = load(file)
  if (config === null) return 1
  const l = config.listen
  process.stdout.write(`${file}: ok: ${config.routes.length} route${config.routes.length === 1 ? '' : 's'}, ` +
    `${Object.keys(config.upstreams).length} upstream${Object.keys(config.upstreams).length === 1 ? '' : 's'}` +
    `${plural(Object.keys(config.identity.providers).length, 'identity provider')}; ` +
    `listen ${l.tls === undefined ? 'http' : 'https'}://${l.host}:${l.port}` +
    `${config.admin.enabled ? `, admin ${config.admin.host}:${config.admin.port}` : ''}\n`)
  return 0
}

/**
 * `gatehouse deliveries …`: a thin client of the running gateway's admin API, so replays wake
 * its workers and the same command works for sqlite and NATS stores.
 */
async function deliveries (file: string, args: string[], o: { admin?: string, state?: string, route?: string, limit?: string, dead?: boolean }): Promise<number> {
  let base = o.admin
  if (base === undefined) {
    const config = load(file)
    if (config === null) return 1
    const host = config.admin.host === '0.0.0.0' || config.admin.host === '::' ? '127.0.0.1' : config.admin.host
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
    case 'list': path = '/deliveries' + qs; break
    case 'show':
      if (id === undefined) return usage('deliveries show needs an ID')
      path = `/deliveries/${encodeURIComponent(id)}`
      break
    case 'replay':
      method = 'POST'
      if (o.dead === true) path = '/deliveries/replay' + (o.route === undefined ? '' : `?route=${encodeURIComponent(o.route)}`)
      else if (id !== undefined) path = `/deliveries/${encodeURIComponent(id)}/replay`
      else return usage('deliveries replay needs an ID or --dead')
      break
    case 'purge':
      if (o.state !== 'dead' && o.state !== 'delivered') return usage('deliveries purge needs --state dead or --state delivered')
      method = 'DELETE'
      path = '/deliveries' + qs
      break
    default: return usage(`unknown deliveries command "${sub ?? ''}"`)
  }
  let res: Response
  try {
    res = await fetch(base + path, { method })
  } catch (err) {
    process.stderr.write(`gatehouse: cannot reach the admin API at ${base}: ${describeFetchError(err)}\n`)
    return 1
  }
  const body = await res.text()
  if (!res.ok) {
    let msg = body
    try { msg = JSON.parse(body).error ?? body } catch {}
    process.stderr.write(`gatehouse: ${res.status} ${msg}\n`)
    return 1
  }
  const data = JSON.parse(body)
  if (sub === 'list') {
    const rows = data.deliveries as Array<Record<string, unknown>>
    if (rows.length === 0) process.stdout.write('no deliveries\n')
    for (const d of rows) process.stdout.write(`${String(d.id)}  ${String(d.route)}  ${String(d.state).padEnd(9)}  attempts=${String(d.attempts)}  ${String(d.created_at)}${d.last_error === null ? '' : `  last_error=${String(d.last_error)}`}\n`)
  } else {
    process.stdout.write(JSON.stringify(data, null, 2) + '\n')
  }
  return 0
}

function describeFetchError (err: unknown): string {
  const cause = (err as { cause?: { code?: string, message?: string } }).cause
  return cause?.code ?? cause?.message ?? (err as Error).message
}

function usage (msg: string): number {
  process.stderr.write(`gatehouse: ${msg}\n\n${USAGE}`)
  return 2
}

async function routes (file: string): Promise<number> {
  const config = load(file)
  if (config === null) return 1
  const registry = new TargetRegistry()
  // Providers are built (the table needs them) but never started: no key fetches here.
  const logger = createLogger('silent')
  const metrics = new Metrics(false)
  const identity = new IdentityRegistry({ logger, metrics }).prepare(config.identity)
  const stores = new StoreRegistry(logger).prepare(config)
  process.stdout.write(describeTable(compile(config, registry, identity, { stores, metrics })) + '\n')
  await registry.closeAll(true)
  return 0
}

async function start (file: string): Promise<number> {
  const config = load(file)
  if (config === null) return 1
  const gateway = createGateway(config)
  await gateway.listen()

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
    await gateway.reload(() => loadConfigFile(file)).catch(() => {})
  }
  const watcher = watchFile(file, () => { reload('change').catch(() => {}) })
  process.on('SIGHUP', () => { reload('signal').catch(() => {}) })

  await new Promise<void>((resolve) => {
    const stop = (signal: string): void => {
      gateway.logger.info({ msg: 'signal', signal })
      process.off('SIGTERM', stop)
      process.off('SIGINT', stop)
      watcher?.close()
      gateway.close().then(resolve, resolve)
    }
    process.on('SIGTERM', stop)
    process.on('SIGINT', stop)
  })
  return 0
}

const EMPTY = 'empty'

/** Content hash of the file; EMPTY for a missing, unreadable, blank or comments-only file. */
function hashFile (file: string): string {
  try {
    const data = readFileSync(file)
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
