// Gatehouse benchmark: one run, everything on 127.0.0.1, one load at a time.
//
//   npm run bench                     (builds, then runs this file)
//   BENCH_DURATION=10                 seconds per wrk run (default 10)
//   BENCH_WARMUP=2                    seconds of wrk warm-up before each measured run (default 2; 0 = none)
//   BENCH_WRK_THREADS=1               wrk threads for the c=50 runs (default 1, see BENCHMARKS.md)
//   BENCH_STREAM_BYTES=1073741824     size of the big streaming runs (default 1 GiB)
//   BENCH_STREAM_REPS=3               repetitions of each big streaming run (median MB/s, highest peak RSS)
//   BENCH_TARGETS=direct,gatehouse,nginx,fastify,bare   subset of targets to run
//   BENCH_SKIP=cold,stream,wrk,auth   skip parts (wrk, stream, auth, intercept, heads, bigtransform, cold)
//   BENCH_ONLY=heads                  run only these parts (same names), e.g. BENCH_ONLY=heads npm run bench
//   BENCH_AUTH_ROUNDS=15, BENCH_AUTH_DURATION=2  rounds (and seconds per wrk run) of the auth
//                                     comparison; the median of the per-round ratios counts
//   BENCH_C50_ROUNDS=9, BENCH_C50_DURATION=3   interleaved rounds of the small GET at c=50 over
//                                     Gatehouse, nginx, fastify and bare (the ratio lines use the
//                                     median of the per-round ratios; 0 rounds = the single runs)
//   BENCH_HEADS_ROUNDS=9, BENCH_HEADS_DURATION=3, BENCH_HEADS_CONNECTIONS=50   interleaved rounds
//                                     of the small GET with long request heads (8 KiB path, 14 KiB
//                                     Accept, 8 KiB of '(') against the plain small GET
//   BENCH_QUIET_PCT=10, BENCH_QUIET_BUDGET=60   wait for other processes to use < 10% of a core
//                                     before each measurement, at most 60 s in total per bench run
//   BENCH_GATEHOUSE_NODE_ARGS='--cpu-prof --cpu-prof-dir=/tmp/prof'   extra node flags for the gateway
//   BENCH_BASELINE=/path/to/other/checkout   A/B mode: a built checkout of another commit (it must
//                                     hold bin/gatehouse.cjs and its dist/). Its gateway, started
//                                     with the same generated YAML (and the same node flags), joins
//                                     as target `baseline`: the wrk phase's rows (not streaming),
//                                     the c=50 rounds (plus c=1 rounds of the two gateways), and in
//                                     the auth and intercept phases its routes (`base:<route>`)
//                                     run in the same rounds, each back to back with the current
//                                     build's. Reported: the median of the per-round ratios
//                                     gatehouse/baseline of req/s and of proxy CPU us/req.
//
// Prints a table and writes the raw results to bench/results/latest.json.
import { spawn, spawnSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import fs from 'node:fs'
import http from 'node:http'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { setTimeout as sleep } from 'node:timers/promises'
import { exportJWK, generateKeyPair, SignJWT } from 'jose'
import { upload } from './transfer.js'

const here = path.dirname(fileURLToPath(import.meta.url))
const root = path.join(here, '..')
/** The other build of the A/B mode (BENCH_BASELINE), or null. */
const BASELINE = process.env.BENCH_BASELINE ? path.resolve(process.env.BENCH_BASELINE) : null
if (BASELINE !== null && !fs.existsSync(path.join(BASELINE, 'bin', 'gatehouse.cjs'))) {
  process.stderr.write(
    `bench: BENCH_BASELINE=${process.env.BENCH_BASELINE}: there is no bin/gatehouse.cjs in ${BASELINE} ` +
      '(it must be a checkout of Gatehouse, built there with npm ci && npm run build)\n',
  )
  process.exit(2)
}
const NGINX = '/usr/sbin/nginx'

const DURATION = Math.max(1, Math.round(Number(process.env.BENCH_DURATION ?? 10)))
const WARMUP = Math.max(0, Math.round(Number(process.env.BENCH_WARMUP ?? 2)))
const WRK_THREADS = Math.max(1, Math.round(Number(process.env.BENCH_WRK_THREADS ?? 1)))
const BIG = Math.round(Number(process.env.BENCH_STREAM_BYTES ?? 1024 ** 3))
const SMALL_STREAM = 16 * 1024 ** 2
const STREAM_WARMUP = 256 * 1024 ** 2
const BIG_REPS = Math.max(1, Math.round(Number(process.env.BENCH_STREAM_REPS ?? 3)))
const SMALL_REPS = 5
const COLD_RUNS = 5
const SKIP = new Set((process.env.BENCH_SKIP ?? '').split(',').filter(Boolean))
const ONLY = new Set((process.env.BENCH_ONLY ?? '').split(',').filter(Boolean))
const skipped = (part) => SKIP.has(part) || (ONLY.size > 0 && !ONLY.has(part))
const GH_NODE_ARGS = (process.env.BENCH_GATEHOUSE_NODE_ARGS ?? '').split(' ').filter(Boolean)
// `baseline` (A/B mode only) comes last, so the positions of the others stay as they were.
const ALL_TARGETS = ['direct', 'gatehouse', 'nginx', 'fastify', 'bare',
  ...(BASELINE === null ? [] : ['baseline'])]
const TARGETS = (process.env.BENCH_TARGETS ?? ALL_TARGETS.join(',')).split(',').filter((t) =>
  ALL_TARGETS.includes(t) && t !== 'baseline'
)
// With BENCH_BASELINE the baseline runs whatever BENCH_TARGETS says, right after Gatehouse (so
// that the two are next to each other in the rotating c=50 rounds).
if (BASELINE !== null) {
  TARGETS.splice(
    TARGETS.includes('gatehouse') ? TARGETS.indexOf('gatehouse') + 1 : TARGETS.length,
    0,
    'baseline',
  )
}
const AUTH_ROUNDS = Math.max(1, Math.round(Number(process.env.BENCH_AUTH_ROUNDS ?? 15)))
const AUTH_DURATION = Math.max(1, Math.round(Number(process.env.BENCH_AUTH_DURATION ?? 2)))
const C50_ROUNDS = Math.max(0, Math.round(Number(process.env.BENCH_C50_ROUNDS ?? 9)))
const C50_DURATION = Math.max(1, Math.round(Number(process.env.BENCH_C50_DURATION ?? 3)))
const HEADS_ROUNDS = Math.max(1, Math.round(Number(process.env.BENCH_HEADS_ROUNDS ?? 9)))
const HEADS_DURATION = Math.max(1, Math.round(Number(process.env.BENCH_HEADS_DURATION ?? 3)))
const HEADS_CONNECTIONS = Math.max(1, Math.round(Number(process.env.BENCH_HEADS_CONNECTIONS ?? 50)))
const TARGET_LABEL = {
  direct: 'direct',
  gatehouse: 'gatehouse',
  nginx: 'nginx',
  fastify: 'fastify-http-proxy',
  bare: 'bare node+undici',
  baseline: 'gatehouse (baseline)',
}
/** Reference rows measured in the wrk phase only (the streaming lines compare Gatehouse with nginx). */
const WRK_ONLY = new Set(['bare', 'baseline'])

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'gatehouse-bench-'))

// --- child processes ---------------------------------------------------------------------------

/** Every process we started: killed on exit, error and SIGINT. */
const children = new Set()

function track (proc, name) {
  proc.benchName = name
  children.add(proc)
  proc.once('exit', () => children.delete(proc))
  return proc
}

function alive (proc) {
  return proc.exitCode === null && proc.signalCode === null
}

/** Direct children of `pid`, from /proc (nginx's workers). */
function childPids (pid) {
  const out = []
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    try {
      const stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8')
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1])
      if (ppid === pid) out.push(Number(entry))
    } catch {
      // gone meanwhile
    }
  }
  return out
}

/** SIGKILL one child (nginx: its workers first, so none is orphaned). Synchronous. */
function killAllOf (proc) {
  if (!alive(proc)) return
  if (proc.benchName === 'nginx') {
    for (const w of childPids(proc.pid)) {
      try {
        process.kill(w, 'SIGKILL')
      } catch {}
    }
  }
  try {
    proc.kill('SIGKILL')
  } catch {}
}

/** Synchronous, so that it also works in process.on('exit'). */
function killAllNow () {
  for (const proc of children) killAllOf(proc)
}

/** SIGTERM, then SIGKILL after timeoutMs. */
async function stop (proc, timeoutMs = 3000) {
  if (!alive(proc)) return
  const exited = new Promise((resolve) => proc.once('exit', resolve))
  proc.kill('SIGTERM')
  const done = await Promise.race([exited.then(() => true), sleep(timeoutMs).then(() => false)])
  if (!done) {
    killAllOf(proc)
    await exited
  }
}

process.on('exit', killAllNow)
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    process.stderr.write(`\n${sig}: stopping every child process\n`)
    killAllNow()
    try {
      fs.rmSync(tmp, { recursive: true, force: true })
    } catch {}
    process.exit(130)
  })
}

async function freePort () {
  const srv = net.createServer()
  await new Promise((resolve, reject) => srv.listen(0, '127.0.0.1', resolve).once('error', reject))
  const { port } = srv.address()
  await new Promise((resolve) => srv.close(resolve))
  return port
}

function log (msg) {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}\n`)
}

// --- HTTP helpers ------------------------------------------------------------------------------

/** One GET on a fresh connection; resolves { status, body } or rejects. */
function getOnce (url, timeoutMs = 1000) {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { agent: false }, (res) => {
      const parts = []
      res.on('data', (c) => parts.push(c))
      res.on(
        'end',
        () => resolve({ status: res.statusCode, body: Buffer.concat(parts).toString() }),
      )
      res.on('error', reject)
    })
    req.setTimeout(timeoutMs, () => req.destroy(new Error('timeout')))
    req.on('error', reject)
  })
}

/** Poll `url` until it answers 200 (bounded by timeoutMs). */
async function waitReady (url, timeoutMs = 15_000, proc = null) {
  const deadline = performance.now() + timeoutMs
  let lastErr = null
  while (performance.now() < deadline) {
    if (proc !== null && !alive(proc)) {
      throw new Error(
        `${proc.benchName} exited (${proc.exitCode ?? proc.signalCode}) before it was ready`,
      )
    }
    try {
      const r = await getOnce(url)
      if (r.status === 200) return
      lastErr = new Error(`status ${r.status}`)
    } catch (err) {
      lastErr = err
    }
    await sleep(20)
  }
  throw new Error(`${url} not ready after ${timeoutMs} ms: ${lastErr?.message}`)
}

/** GET /download?bytes=N, discarding the body as it arrives. */
function download (base, bytes, timeoutMs) {
  return new Promise((resolve, reject) => {
    const t0 = performance.now()
    let n = 0
    const req = http.get(`${base}/download?bytes=${bytes}`, { agent: false }, (res) => {
      if (res.statusCode !== 200) {
        res.resume()
        reject(new Error(`download: status ${res.statusCode}`))
        return
      }
      res.on('data', (c) => {
        n += c.length
      })
      res.on('end', () => {
        clearTimeout(timer)
        const ms = performance.now() - t0
        if (n !== bytes) reject(new Error(`download: got ${n} of ${bytes} bytes`))
        else resolve({ bytes: n, ms, mbps: bytes / 1e6 / (ms / 1000) })
      })
      res.on('error', reject)
    })
    const timer = setTimeout(
      () => req.destroy(new Error(`download: not done after ${timeoutMs} ms (${n} bytes)`)),
      timeoutMs,
    )
    req.on('error', (err) => {
      clearTimeout(timer)
      reject(err)
    })
  })
}

// --- memory ------------------------------------------------------------------------------------

function resetPeak (pid) {
  try {
    fs.writeFileSync(`/proc/${pid}/clear_refs`, '5')
    return true
  } catch {
    return false
  }
}

/** VmHWM and VmRSS in MB (1e6 bytes). */
function memOf (pid) {
  try {
    const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8')
    const kb = (key) => Number(status.match(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm'))?.[1] ?? NaN)
    return { hwmMB: kb('VmHWM') * 1024 / 1e6, rssMB: kb('VmRSS') * 1024 / 1e6 }
  } catch {
    return { hwmMB: NaN, rssMB: NaN }
  }
}

// --- noise -------------------------------------------------------------------------------------
// The machine is shared: anything else using CPU during a run skews it. Before each measured
// run we wait (bounded) for the other processes to go quiet, and we record how much CPU they
// used during the run ("foreign CPU", % of one core; our own children and kernel threads excluded).

const CLK_TCK = 100
const PF_KTHREAD = 0x00200000
const QUIET_PCT = Number(process.env.BENCH_QUIET_PCT ?? 10)
const QUIET_MAX_WAIT_MS = 20_000
// Total waiting allowed in one bench run, so a busy machine cannot stretch it without bound.
let quietBudgetMs = Number(process.env.BENCH_QUIET_BUDGET ?? 60) * 1000

function cpuSnapshot () {
  const procs = new Map()
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    try {
      const stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8')
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
      procs.set(Number(entry), {
        ppid: Number(f[1]),
        kthread: (Number(f[6]) & PF_KTHREAD) !== 0,
        ticks: Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14]),
      })
    } catch {
      // exited meanwhile
    }
  }
  return { at: performance.now(), procs }
}

function isOurs (pid, procs) {
  for (let p = pid, hops = 0; p > 1 && hops < 64; hops++) {
    if (p === process.pid) return true
    const info = procs.get(p)
    if (info === undefined) return false
    p = info.ppid
  }
  return false
}

/**
 * CPU used by other processes between two snapshots, in % of one core. A process that exited
 * in between shows up in its parent's cutime/cstime with all of its life's CPU, so what it had
 * used before the first snapshot is taken off again.
 */
function foreignCpuPct (a, b) {
  let ticks = 0
  for (const [pid, info] of b.procs) {
    if (info.kthread || pid === 2 || info.ppid === 2 || isOurs(pid, b.procs)) continue
    const before = a.procs.get(pid)
    ticks += info.ticks - (before === undefined ? 0 : before.ticks)
  }
  for (const [pid, info] of a.procs) {
    if (b.procs.has(pid) || info.kthread || pid === 2 || info.ppid === 2 || isOurs(pid, a.procs)) {
      continue
    }
    ticks -= info.ticks
  }
  const seconds = (b.at - a.at) / 1000
  return seconds > 0 ? Math.max(0, ticks / CLK_TCK / seconds * 100) : 0
}

/** Wait until other processes use less than QUIET_PCT of a core (sampled over 500 ms), at most QUIET_MAX_WAIT_MS. */
async function waitQuiet (what) {
  const t0 = performance.now()
  let pct = 0
  while (true) {
    const a = cpuSnapshot()
    await sleep(500)
    pct = foreignCpuPct(a, cpuSnapshot())
    if (pct < QUIET_PCT) break
    const spent = performance.now() - t0
    if (spent > QUIET_MAX_WAIT_MS || spent > quietBudgetMs) {
      log(
        `warning: machine still busy (${
          pct.toFixed(0)
        }% of a core used by other processes) before ${what}; measuring anyway`,
      )
      break
    }
  }
  const waited = performance.now() - t0
  quietBudgetMs = Math.max(0, quietBudgetMs - Math.max(0, waited - 500))
  if (waited > 1000) {
    log(`waited ${(waited / 1000).toFixed(1)} s for other processes to go quiet before ${what}`)
  }
  return pct
}

/** Run `fn` after waiting for quiet; returns its result with `foreignCpuPct` during the run. */
async function measured (what, fn, wait = true) {
  if (wait) await waitQuiet(what)
  const a = cpuSnapshot()
  const result = await fn()
  result.foreignCpuPct = Math.round(foreignCpuPct(a, cpuSnapshot()) * 10) / 10
  if (result.foreignCpuPct >= QUIET_PCT) {
    log(`warning: other processes used ${result.foreignCpuPct}% of a core during ${what}`)
  }
  return result
}

// --- wrk ---------------------------------------------------------------------------------------

function runWrk ({ url, connections, threads, seconds, script }) {
  const args = ['-t', String(threads), '-c', String(connections), '-d', `${seconds}s`, '--timeout',
    '5s', '-s', path.isAbsolute(script) ? script : path.join(here, 'wrk', script), url]
  return new Promise((resolve, reject) => {
    const proc = track(spawn('wrk', args, { stdio: ['ignore', 'pipe', 'pipe'] }), 'wrk')
    proc.on('error', reject)
    let out = ''
    let err = ''
    proc.stdout.on('data', (c) => {
      out += c
    })
    proc.stderr.on('data', (c) => {
      err += c
    })
    // wrk stops by itself after `seconds`; this is a safety net.
    const timer = setTimeout(() => proc.kill('SIGKILL'), (seconds + 15) * 1000)
    proc.on('exit', (code) => {
      clearTimeout(timer)
      const line = out.split('\n').find((l) => l.startsWith('WRKJSON '))
      if (code !== 0 || line === undefined) {
        reject(new Error(`wrk ${args.join(' ')} failed (${code}): ${err || out}`))
        return
      }
      const r = JSON.parse(line.slice(8))
      r.args = args.join(' ')
      r.non2xx = /Non-2xx or 3xx responses: (\d+)/.exec(out)?.[1] ?? '0'
      resolve(r)
    })
  })
}

// --- targets -----------------------------------------------------------------------------------

async function startUpstream () {
  const proc = track(
    spawn(process.execPath, [path.join(here, 'upstream.js'), '0'], {
      stdio: ['ignore', 'pipe', 'inherit'],
    }),
    'upstream',
  )
  const port = await new Promise((resolve, reject) => {
    let buf = ''
    const timer = setTimeout(() => reject(new Error('upstream did not start')), 10_000)
    proc.stdout.on('data', (c) => {
      buf += c
      const m = /READY (\d+)/.exec(buf)
      if (m) {
        clearTimeout(timer)
        resolve(Number(m[1]))
      }
    })
    proc.once('exit', (code) => reject(new Error(`upstream exited ${code}`)))
  })
  proc.stdout.resume()
  return { proc, port, base: `http://127.0.0.1:${port}` }
}

function gatehouseYaml (port, adminPort, upstreamPort) {
  return `# Generated by bench/run.js: one route to the bench upstream, everything else default.
listen: { host: 127.0.0.1, port: ${port} }
admin: { host: 127.0.0.1, port: ${adminPort} }
upstreams:
  bench:
    targets: [{ url: http://127.0.0.1:${upstreamPort} }]
routes:
  - name: bench
    match: { path_prefix: / }
    upstream: bench
`
}

/**
 * Spawns `node bin/gatehouse.cjs start --config <tmp yaml>`; stdout (the access log) goes to a file.
 * `from` is the checkout whose bin/gatehouse.cjs runs: this one, or BASELINE (give it a tag of its own).
 */
async function spawnGatehouse (
  upstreamPort,
  tag,
  extraNodeArgs = [],
  yaml = gatehouseYaml,
  from = root,
) {
  const port = await freePort()
  const adminPort = await freePort()
  // The config gets a directory of its own: Gatehouse watches the config file's directory for
  // changes, and the access log written next to it would wake that watcher on every write.
  const configDir = path.join(tmp, `config-${tag}`)
  fs.mkdirSync(configDir, { recursive: true })
  const config = path.join(configDir, 'gatehouse.yaml')
  fs.writeFileSync(config, yaml(port, adminPort, upstreamPort))
  const logFile = path.join(tmp, `gatehouse-${tag}.log`)
  const fd = fs.openSync(logFile, 'w')
  const t0 = performance.now()
  const name = from === root ? 'gatehouse' : 'gatehouse (baseline)'
  const proc = track(
    spawn(process.execPath, [...extraNodeArgs, path.join(from, 'bin', 'gatehouse.cjs'), 'start',
      '--config', config], {
      cwd: tmp,
      stdio: ['ignore', fd, fd],
    }),
    name,
  )
  fs.closeSync(fd)
  return {
    proc,
    port,
    adminPort,
    t0,
    logFile,
    config,
    name,
    from,
    base: `http://127.0.0.1:${port}`,
  }
}

/**
 * Waits for a spawned gateway to proxy GET /small. If it does not (an older baseline build may
 * refuse a config key the current generators emit), the error names the build and carries the
 * end of its log, where its config error is.
 */
async function gatehouseReady (gh) {
  try {
    await waitReady(`${gh.base}/small`, 15_000, gh.proc)
  } catch (err) {
    let tail = ''
    try {
      tail = fs.readFileSync(gh.logFile, 'utf8').slice(-3000).trim()
    } catch {}
    throw new Error(
      `${gh.name} from ${gh.from} did not start with ${gh.config}: ${err.message}` +
        (tail === '' ? '' : `\n--- end of ${gh.logFile} ---\n${tail}\n---`),
    )
  }
}

function nginxConf (prefix, port, upstreamPort) {
  return `# Generated by bench/run.js
worker_processes 1;
pid ${prefix}/nginx.pid;
error_log ${prefix}/error.log warn;
events { worker_connections 4096; }
http {
  client_body_temp_path ${prefix}/client_body;
  proxy_temp_path ${prefix}/proxy;
  fastcgi_temp_path ${prefix}/fastcgi;
  uwsgi_temp_path ${prefix}/uwsgi;
  scgi_temp_path ${prefix}/scgi;
  # One JSON line per request, the same facts as Gatehouse's access log; buffered like
  # Gatehouse's asynchronous (batched) pino destination.
  log_format gh escape=json '{"time":"$time_iso8601","id":"$request_id","method":"$request_method",'
    '"path":"$uri","status":$status,"target":"$upstream_addr","bytes_in":$request_length,'
    '"bytes_out":$bytes_sent,"ms":$request_time,"upstream_ms":"$upstream_header_time"}';
  access_log ${prefix}/access.log gh buffer=64k flush=1s;
  upstream bench {
    server 127.0.0.1:${upstreamPort};
    keepalive 64;
  }
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://bench;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_request_buffering off;
      client_max_body_size 0;
    }
  }
}
`
}

/** nginx answering every request from proxy_cache after the first (the cache-hit comparison). */
function nginxCacheConf (prefix, port, upstreamPort) {
  return nginxConf(prefix, port, upstreamPort)
    .replace(
      '  upstream bench {',
      `  proxy_cache_path ${prefix}/cache keys_zone=gh:10m max_size=100m inactive=10m use_temp_path=off;\n  upstream bench {`,
    )
    .replace(
      '      proxy_buffering off;',
      '      proxy_buffering on;\n      proxy_cache gh;\n      proxy_cache_valid 200 10m;\n      add_header X-Cache $upstream_cache_status;',
    )
}

async function startTarget (name, upstream) {
  if (name === 'direct') return { name, base: upstream.base, pid: null, proc: null }
  if (name === 'gatehouse' || name === 'baseline') {
    const gh = name === 'gatehouse'
      ? await spawnGatehouse(upstream.port, 'bench', GH_NODE_ARGS)
      : await spawnGatehouse(upstream.port, 'bench-baseline', GH_NODE_ARGS, gatehouseYaml, BASELINE)
    await gatehouseReady(gh)
    return {
      name,
      base: gh.base,
      pid: gh.proc.pid,
      proc: gh.proc,
      logFile: gh.logFile,
      config: fs.readFileSync(gh.config, 'utf8'),
    }
  }
  if (name === 'nginx') {
    const prefix = path.join(tmp, 'nginx')
    fs.mkdirSync(prefix, { recursive: true })
    const port = await freePort()
    const conf = nginxConf(prefix, port, upstream.port)
    const confFile = path.join(prefix, 'nginx.conf')
    fs.writeFileSync(confFile, conf)
    const proc = track(
      spawn(NGINX, ['-p', prefix, '-c', confFile, '-e', path.join(prefix, 'error.log'), '-g',
        'daemon off;'], { stdio: ['ignore', 'inherit', 'inherit'] }),
      'nginx',
    )
    const base = `http://127.0.0.1:${port}`
    await waitReady(`${base}/small`, 15_000, proc)
    const workers = childPids(proc.pid)
    return {
      name,
      base,
      pid: workers[0] ?? proc.pid,
      proc,
      config: conf,
      logFile: path.join(prefix, 'access.log'),
    }
  }
  if (name === 'fastify' || name === 'bare') {
    const port = await freePort()
    const script = name === 'fastify' ? 'fastify-proxy.js' : 'bare-proxy.js'
    const proc = track(
      spawn(process.execPath, [path.join(here, script), String(port), upstream.base], {
        stdio: ['ignore', 'ignore', 'inherit'],
      }),
      name,
    )
    const base = `http://127.0.0.1:${port}`
    await waitReady(`${base}/small`, 15_000, proc)
    return { name, base, pid: proc.pid, proc }
  }
  throw new Error(`unknown target ${name}`)
}

// --- scenarios ---------------------------------------------------------------------------------

const WRK_SCENARIOS = [
  {
    id: 'get_small_c1',
    label: 'GET /small c=1',
    path: '/small',
    connections: 1,
    threads: 1,
    script: 'report.lua',
  },
  {
    id: 'get_small_c50',
    label: 'GET /small c=50',
    path: '/small',
    connections: 50,
    threads: WRK_THREADS,
    script: 'report.lua',
  },
  {
    id: 'post_16k_c50',
    label: 'POST 16 KiB c=50',
    path: '/echo16k',
    connections: 50,
    threads: WRK_THREADS,
    script: 'post16k.lua',
  },
]

const STREAM_SCENARIOS = [
  {
    id: 'download_16MiB',
    label: 'download 16 MiB',
    kind: 'download',
    bytes: SMALL_STREAM,
    reps: SMALL_REPS,
  },
  {
    id: 'download_big',
    label: `download ${fmtBytes(BIG)}`,
    kind: 'download',
    bytes: BIG,
    reps: BIG_REPS,
  },
  {
    id: 'upload_16MiB',
    label: 'upload 16 MiB',
    kind: 'upload',
    bytes: SMALL_STREAM,
    reps: SMALL_REPS,
  },
  {
    id: 'upload_big',
    label: `upload ${fmtBytes(BIG)}`,
    kind: 'upload',
    bytes: BIG,
    reps: BIG_REPS,
  },
]

function fmtBytes (n) {
  if (n >= 1024 ** 3 && n % 1024 ** 3 === 0) return `${n / 1024 ** 3} GiB`
  if (n >= 1024 ** 2 && n % 1024 ** 2 === 0) return `${n / 1024 ** 2} MiB`
  return `${n} B`
}

/** utime + stime of one process, in ms. */
function cpuMsOf (pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return (Number(f[11]) + Number(f[12])) * 1000 / CLK_TCK
  } catch {
    return NaN
  }
}

function selfCpuMs () {
  const u = process.cpuUsage()
  return (u.user + u.system) / 1000
}

/** One wrk scenario against one target. */
async function wrkScenario (t, s, r, upstream) {
  const url = t.base + s.path
  if (WARMUP > 0) {
    await runWrk({
      url,
      connections: s.connections,
      threads: s.threads,
      seconds: WARMUP,
      script: s.script,
    })
  }
  let cpu0 = null
  const w = await measured(`${t.name} ${s.label}`, () => {
    if (t.pid !== null) resetPeak(t.pid)
    cpu0 = { proxy: t.pid === null ? 0 : cpuMsOf(t.pid), upstream: cpuMsOf(upstream.proc.pid) }
    return runWrk({
      url,
      connections: s.connections,
      threads: s.threads,
      seconds: DURATION,
      script: s.script,
    })
  })
  if (t.pid !== null) w.peakRssMB = memOf(t.pid).hwmMB
  // CPU time each process spent on the run, per request (wrk's own share is not counted).
  const proxyMs = t.pid === null ? 0 : cpuMsOf(t.pid) - cpu0.proxy
  const upstreamMs = cpuMsOf(upstream.proc.pid) - cpu0.upstream
  w.cpu = {
    proxyPctOfCore: Math.round(proxyMs / (w.duration_us / 1000) * 1000) / 10,
    upstreamPctOfCore: Math.round(upstreamMs / (w.duration_us / 1000) * 1000) / 10,
    proxyUsPerReq: Math.round(proxyMs * 1000 / w.requests * 10) / 10,
    upstreamUsPerReq: Math.round(upstreamMs * 1000 / w.requests * 10) / 10,
  }
  r.scenarios[s.id] = w
  const errs = Object.values(w.errors).reduce((a, b) => a + b, 0)
  log(
    `${t.name.padEnd(9)} ${s.label.padEnd(18)} ${w.rps.toFixed(0).padStart(7)} req/s  p50 ${
      (w.lat_p50_us / 1000).toFixed(3)
    } ms  p99 ${(w.lat_p99_us / 1000).toFixed(3)} ms` +
      (errs > 0 || w.non2xx !== '0'
        ? `  errors ${JSON.stringify(w.errors)} non-2xx ${w.non2xx}`
        : '') +
      (w.peakRssMB === undefined ? '' : `  peak RSS ${w.peakRssMB.toFixed(1)} MB`) +
      `  CPU proxy ${w.cpu.proxyPctOfCore}% (${w.cpu.proxyUsPerReq} us/req) upstream ${w.cpu.upstreamPctOfCore}% (${w.cpu.upstreamUsPerReq} us/req)`,
  )
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)]
const spread = (xs) => ({ median: median(xs), min: Math.min(...xs), max: Math.max(...xs) })

/**
 * A/B: runs `a` and `b` of the same rounds (keys of each round's object), compared round by
 * round. Values are medians over the rounds; the ratios (a/b) are the median, min and max of the
 * per-round ratios, of req/s (higher is better) and of proxy CPU us/req (lower is better).
 */
function abStats (rounds, a, b) {
  const rr = rounds.filter((r) => r[a] !== undefined && r[b] !== undefined)
  if (rr.length === 0) return null
  const side = (k) => ({
    rps: median(rr.map((r) => r[k].rps)),
    proxyUsPerReq: median(rr.map((r) => r[k].proxyUsPerReq)),
  })
  return {
    rounds: rr.length,
    gatehouse: side(a),
    baseline: side(b),
    rpsRatio: spread(rr.map((r) => r[a].rps / r[b].rps)),
    usRatio: spread(rr.map((r) => r[a].proxyUsPerReq / r[b].proxyUsPerReq)),
  }
}

/**
 * The order of one round's runs: the groups rotate by one each round, so no group is always
 * first (or last); the runs of a group (a route on the current build and on the baseline) run
 * back to back, which of the two goes first alternating round by round. Without a baseline every
 * group is one run and this is the plain rotation.
 */
function roundOrder (groups, round) {
  const out = []
  for (let k = 0; k < groups.length; k++) {
    const g = groups[(round + k) % groups.length]
    out.push(...(round % 2 === 0 ? g : [...g].reverse()))
  }
  return out
}

/**
 * The small GET at c=50 again, in short rounds over every proxy, the order rotating each round.
 * This machine's speed drifts by up to 2x within tens of seconds (BENCHMARKS.md), and a single
 * 10 s run per proxy lets one proxy's run fall in a fast stretch and another's in a slow one.
 * A ratio of two runs measured seconds apart, taken in every round, and the median of those,
 * is what the c=50 ratio lines use. With a baseline, each round also runs the small GET at c=1
 * through the two gateways (back to back, alternating which goes first).
 */
async function c50Rounds (running, upstream) {
  const ts = running.filter((t) => t.pid !== null)
  if (C50_ROUNDS === 0 || ts.length < 2) return null
  const ab = ts.some((t) => t.name === 'gatehouse') && ts.some((t) => t.name === 'baseline')
  const one = async (t, connections, threads, what) => {
    const cpu0 = cpuMsOf(t.pid)
    const up0 = cpuMsOf(upstream.proc.pid)
    const w = await measured(
      `${t.name} ${what}`,
      () =>
        runWrk({
          url: t.base + '/small',
          connections,
          threads,
          seconds: C50_DURATION,
          script: 'report.lua',
        }),
    )
    return {
      rps: w.rps,
      p50Ms: w.lat_p50_us / 1000,
      p99Ms: w.lat_p99_us / 1000,
      proxyUsPerReq: Math.round((cpuMsOf(t.pid) - cpu0) * 1000 / w.requests * 10) / 10,
      upstreamUsPerReq: Math.round((cpuMsOf(upstream.proc.pid) - up0) * 1000 / w.requests * 10) /
        10,
      foreignCpuPct: w.foreignCpuPct,
    }
  }
  const rounds = []
  const c1Rounds = []
  for (let round = 0; round < C50_ROUNDS; round++) {
    const r = {}
    for (let k = 0; k < ts.length; k++) {
      const t = ts[(round + k) % ts.length]
      r[t.name] = await one(t, 50, WRK_THREADS, `c=50 round ${round + 1}`)
      log(
        `c=50 round ${round + 1} ${t.name.padEnd(9)} ${
          r[t.name].rps.toFixed(0).padStart(7)
        } req/s  proxy ${r[t.name].proxyUsPerReq} us/req`,
      )
    }
    rounds.push(r)
    if (ab) {
      log(
        `c=50 round ${round + 1} gatehouse/baseline: ${
          (r.gatehouse.rps / r.baseline.rps).toFixed(3)
        }x req/s, ${(r.gatehouse.proxyUsPerReq / r.baseline.proxyUsPerReq).toFixed(3)}x us/req`,
      )
      const c1 = {}
      for (const t of roundOrder([
        ts.filter((t) => t.name === 'gatehouse' || t.name === 'baseline'),
      ], round)) {
        c1[t.name] = await one(t, 1, 1, `c=1 round ${round + 1}`)
        log(
          `c=1 round ${round + 1} ${t.name.padEnd(9)} ${
            c1[t.name].rps.toFixed(0).padStart(7)
          } req/s  p50 ${c1[t.name].p50Ms.toFixed(3)} ms  proxy ${c1[t.name].proxyUsPerReq} us/req`,
        )
      }
      c1Rounds.push(c1)
    }
  }
  const out = { rounds, durationS: C50_DURATION, targets: {}, ratios: {}, cpuRatios: {} }
  for (const t of ts) {
    out.targets[t.name] = {
      rps: median(rounds.map((r) => r[t.name].rps)),
      proxyUsPerReq: median(rounds.map((r) => r[t.name].proxyUsPerReq)),
    }
  }
  const pairs = [['gatehouse', 'nginx'], ['gatehouse', 'fastify'], ['gatehouse', 'bare'], ['bare',
    'fastify'], ['bare', 'nginx'], ['fastify', 'nginx'], ['gatehouse', 'baseline']]
  for (const [a, b] of pairs) {
    if (out.targets[a] === undefined || out.targets[b] === undefined) continue
    out.ratios[`${a}/${b}`] = spread(rounds.map((r) => r[a].rps / r[b].rps))
    out.cpuRatios[`${a}/${b}`] = spread(rounds.map((r) => r[a].proxyUsPerReq / r[b].proxyUsPerReq))
  }
  if (ab) {
    out.ab = abStats(rounds, 'gatehouse', 'baseline')
    out.c1Rounds = c1Rounds
    out.c1Ab = abStats(c1Rounds, 'gatehouse', 'baseline')
    for (const [label, x] of [['c=50', out.ab], ['c=1', out.c1Ab]]) {
      log(
        `A/B small GET ${label}: gatehouse/baseline ${x.rpsRatio.median.toFixed(3)}x req/s (${
          x.rpsRatio.min.toFixed(2)
        }-${x.rpsRatio.max.toFixed(2)}), ` +
          `${x.usRatio.median.toFixed(3)}x us/req (${x.usRatio.min.toFixed(2)}-${
            x.usRatio.max.toFixed(2)
          }); ${x.gatehouse.proxyUsPerReq} vs ${x.baseline.proxyUsPerReq} us/req`,
      )
    }
  }
  return out
}

async function streamWarmup (t, r) {
  // Warm the path (connections, JIT, V8 heap sizing) before anything is timed or measured:
  // the first transfers of a fresh Node process run at a fraction of its steady speed.
  for (const fn of [download, upload]) await fn(t.base, STREAM_WARMUP, 60_000)
  r.streamRssAfterWarmupMB = t.pid === null ? null : memOf(t.pid).rssMB
}

/**
 * One streaming scenario against every target: a short untimed transfer each, then `reps`
 * rounds of one measured transfer per target, so that every target's runs are spread over the
 * same stretch of time (this machine's speed drifts by more than the differences measured).
 */
async function streamScenario (running, s, results, upstream) {
  // Bounded: a transfer slower than ~10 MB/s is a failure, not a result.
  const timeoutMs = Math.max(30_000, Math.round(s.bytes / 10e6 * 1000))
  const fn = s.kind === 'download' ? download : upload
  const runs = new Map(running.map((t) => [t, []]))
  const failed = new Map()
  for (const t of running) await fn(t.base, 64 * 1024 * 1024, 30_000)
  for (let i = 0; i < s.reps; i++) {
    for (const [k, t] of running.entries()) {
      if (failed.has(t)) continue
      const before = t.pid === null ? null : memOf(t.pid)
      let reset = false
      let cpu0 = null
      try {
        const x = await measured(`${s.label} round ${i + 1}`, () => {
          reset = t.pid === null ? false : resetPeak(t.pid)
          cpu0 = {
            proxy: t.pid === null ? 0 : cpuMsOf(t.pid),
            upstream: cpuMsOf(upstream.proc.pid),
            self: selfCpuMs(),
          }
          return fn(t.base, s.bytes, timeoutMs)
        }, k === 0)
        if (t.pid !== null) {
          Object.assign(x, {
            rssBeforeMB: before.rssMB,
            peakRssMB: memOf(t.pid).hwmMB,
            peakReset: reset,
          })
        }
        x.cpuPctOfCore = {
          proxy: t.pid === null ? 0 : Math.round((cpuMsOf(t.pid) - cpu0.proxy) / x.ms * 1000) / 10,
          upstream: Math.round((cpuMsOf(upstream.proc.pid) - cpu0.upstream) / x.ms * 1000) / 10,
          client: Math.round((selfCpuMs() - cpu0.self) / x.ms * 1000) / 10,
        }
        runs.get(t).push(x)
      } catch (err) {
        failed.set(t, err)
        log(`${t.name.padEnd(9)} ${s.label.padEnd(18)} FAILED: ${err.message}`)
      }
    }
  }
  for (const t of running) {
    const r = results.targets[t.name]
    const tr = runs.get(t)
    if (failed.has(t) || tr.length === 0) {
      r.scenarios[s.id] = { error: failed.get(t)?.message ?? 'no runs', runs: tr }
      continue
    }
    const x = {
      bytes: s.bytes,
      reps: tr.length,
      mbps: median(tr.map((x) => x.mbps)),
      mbpsRuns: tr.map((x) => Math.round(x.mbps)),
      foreignCpuPct: Math.max(...tr.map((x) => x.foreignCpuPct)),
      // The worst (highest) peak of the repetitions; each repetition starts from a reset VmHWM.
      peakRssMB: t.pid === null ? undefined : Math.max(...tr.map((x) => x.peakRssMB)),
      runs: tr,
    }
    r.scenarios[s.id] = x
    const c = tr.find((run) => run.mbps === x.mbps).cpuPctOfCore
    log(
      `${t.name.padEnd(9)} ${s.label.padEnd(18)} ${x.mbps.toFixed(0).padStart(7)} MB/s (median of ${
        x.mbpsRuns.join(', ')
      })` +
        (x.peakRssMB === undefined ? '' : `  peak RSS ${x.peakRssMB.toFixed(1)} MB`) +
        `  CPU proxy ${c.proxy}% upstream ${c.upstream}% client ${c.client}%`,
    )
  }
}

async function coldStart (upstream) {
  // bin/gatehouse.cjs writes V8's code cache 1.5 s after a start whose cache was missing or
  // stale (a new build); every later start uses it. Prime it once, as the first start after an
  // install or upgrade would, so the measured runs are the starts operators see every day.
  const prime = await spawnGatehouse(upstream.port, 'cold-prime')
  await waitReady(`${prime.base}/small`, 15_000, prime.proc)
  await sleep(2000)
  await stop(prime.proc)
  const runs = []
  for (let i = 0; i < COLD_RUNS; i++) {
    await waitQuiet('cold start')
    const noise = cpuSnapshot()
    const gh = await spawnGatehouse(upstream.port, `cold${i}`)
    const url = `${gh.base}/small`
    const deadline = gh.t0 + 10_000
    let ms = null
    let attempts = 0
    while (performance.now() < deadline && alive(gh.proc)) {
      const tryAt = performance.now()
      attempts++
      try {
        const r = await getOnce(url, 2000)
        if (r.status === 200) {
          ms = performance.now() - gh.t0
          break
        }
      } catch {
        // not listening yet
      }
      const wait = 5 - (performance.now() - tryAt)
      if (wait > 0) await sleep(wait)
    }
    const foreign = Math.round(foreignCpuPct(noise, cpuSnapshot()) * 10) / 10
    await stop(gh.proc)
    runs.push({ ms, attempts, foreignCpuPct: foreign })
    log(
      `cold start ${i + 1}/${COLD_RUNS}: ${
        ms === null ? 'FAILED' : `${ms.toFixed(1)} ms`
      } (${attempts} polls)`,
    )
  }
  const ok = runs.map((r) => r.ms).filter((v) => v !== null).sort((a, b) => a - b)
  return { runs, medianMs: ok.length === COLD_RUNS ? ok[Math.floor(ok.length / 2)] : null }
}

// --- report ------------------------------------------------------------------------------------

/** Which code was measured: the tree may change between runs, so hash src/ and the built files. */
function fingerprint (root) {
  const hash = (dir) => {
    const h = createHash('sha256')
    const walk = (d) => {
      if (!fs.existsSync(d)) return
      for (
        const e of fs.readdirSync(d, { withFileTypes: true }).sort((a, b) =>
          a.name.localeCompare(b.name)
        )
      ) {
        const f = path.join(d, e.name)
        if (e.isDirectory()) walk(f)
        else if (/\.(ts|js|mjs)$/.test(e.name)) {
          h.update(path.relative(root, f)).update(fs.readFileSync(f))
        }
      }
    }
    walk(dir)
    return h.digest('hex').slice(0, 12)
  }
  return { src: hash(path.join(root, 'src')), dist: hash(path.join(root, 'dist')) }
}

function machine () {
  const cpuinfo = fs.readFileSync('/proc/cpuinfo', 'utf8')
  const model = /^model name\s*:\s*(.*)$/m.exec(cpuinfo)?.[1] ?? 'unknown'
  const version = (cmd, args) => {
    // nginx -v prints to stderr, wrk -v exits 1.
    const r = spawnSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
    return `${r.stdout ?? ''}${r.stderr ?? ''}`.trim() || 'n/a'
  }
  return {
    nproc: os.availableParallelism(),
    cpu: model,
    ramGB: Math.round(os.totalmem() / 1e9 * 10) / 10,
    kernel: os.release(),
    node: process.version,
    nginx: fs.existsSync(NGINX) ? version(NGINX, ['-v']) : 'not installed',
    wrk: version('wrk', ['-v']).split('\n')[0],
  }
}

const num = (v, digits) => (typeof v === 'number' && Number.isFinite(v) ? v.toFixed(digits) : '-')
const ratio = (
  a,
  b,
) => (typeof a === 'number' && typeof b === 'number' && b > 0 ? (a / b).toFixed(2) + 'x' : '-')

function table (results) {
  const T = results.targets
  const pairs = [['gatehouse', 'direct'], ['gatehouse', 'nginx'], ['gatehouse', 'fastify'], [
    'gatehouse',
    'bare',
  ], ['bare', 'fastify'], ...(BASELINE === null ? [] : [['gatehouse', 'baseline']])]
  const short = { gatehouse: 'GH', baseline: 'base' }
  const rows = [['scenario', 'metric', ...ALL_TARGETS.map((t) => TARGET_LABEL[t]),
    ...pairs.map(([a, b]) => `${short[a] ?? a}/${short[b] ?? b}`)]]
  // '*' marks a value measured while other processes used >= QUIET_PCT % of a core.
  const add = (scenario, id, metric, pick, digits) => {
    const vals = ALL_TARGETS.map((t) => pick(T[t]?.scenarios?.[id]))
    const noisy = ALL_TARGETS.map((t) => (T[t]?.scenarios?.[id]?.foreignCpuPct ?? 0) >= QUIET_PCT)
    const v = (t) => vals[ALL_TARGETS.indexOf(t)]
    rows.push([scenario, metric,
      ...vals.map((v, i) => num(v, digits) + (noisy[i] && typeof v === 'number' ? '*' : '')),
      ...pairs.map(([a, b]) => ratio(v(a), v(b)))])
  }
  for (const s of WRK_SCENARIOS) {
    add(s.label, s.id, 'req/s', (x) => x?.rps, 0)
    add('', s.id, 'p50 ms', (x) => x?.lat_p50_us / 1000, 3)
    add('', s.id, 'p99 ms', (x) => x?.lat_p99_us / 1000, 3)
    add('', s.id, 'proxy CPU us/req', (x) => x?.cpu?.proxyUsPerReq || undefined, 0)
  }
  for (const s of STREAM_SCENARIOS) {
    add(s.label, s.id, 'MB/s', (x) => x?.mbps, 0)
    add('', s.id, 'peak RSS MB', (x) => x?.peakRssMB, 1)
    // CPU time comes in 10 ms ticks: only meaningful for the runs that last seconds.
    if (s.bytes >= 256 * 1024 ** 2) {
      add(
        '',
        s.id,
        'proxy CPU % core',
        (x) => x?.runs?.find((run) => run.mbps === x.mbps)?.cpuPctOfCore?.proxy || undefined,
        0,
      )
    }
  }
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)))
  const line = (r) =>
    '| ' +
    r.map((cell, c) => (c < 2 ? cell.padEnd(widths[c]) : cell.padStart(widths[c]))).join(' | ') +
    ' |'
  const sep = '|' +
    widths.map((w, c) => (c < 2 ? '-'.repeat(w + 2) : '-'.repeat(w + 1) + ':')).join('|') + '|'
  return [line(rows[0]), sep, ...rows.slice(1).map(line)].join('\n')
}

function checklist (results) {
  const T = results.targets
  const get = (t, id) => T[t]?.scenarios?.[id]
  const items = []
  // ok: true/false against a target, null when not measured, 'info' for a measured line without one.
  const check = (name, ok, measured) =>
    items.push({
      name,
      status: ok === null ? 'N/A' : ok === 'info' ? 'INFO' : ok ? 'PASS' : 'FAIL',
      measured,
    })
  const gh50 = get('gatehouse', 'get_small_c50')?.rps
  const ng50 = get('nginx', 'get_small_c50')?.rps
  const fa50 = get('fastify', 'get_small_c50')?.rps
  const ba50 = get('bare', 'get_small_c50')?.rps
  const have = (...v) => v.every((x) => typeof x === 'number' && Number.isFinite(x))
  // With interleaved rounds, a c=50 line is the median of the per-round ratios (the single 10 s
  // runs are shown beside it); without them, the single runs decide.
  const c50 = results.c50
  const c50Line = (a, b, min, label) => {
    const single = {
      gatehouse: gh50,
      nginx: ng50,
      fastify: fa50,
      bare: ba50,
      baseline: get('baseline', 'get_small_c50')?.rps,
    }
    const sa = single[a]
    const sb = single[b]
    const singleText = have(sa, sb)
      ? `single 10 s runs ${(sa / sb).toFixed(2)}x (${sa.toFixed(0)} vs ${sb.toFixed(0)} req/s)`
      : null
    const r = c50?.ratios?.[`${a}/${b}`]
    if (r !== undefined) {
      return check(
        label,
        min === null ? 'info' : r.median >= min,
        `${r.median.toFixed(2)}x, median of ${c50.rounds.length} interleaved rounds (range ${
          r.min.toFixed(2)
        }-${r.max.toFixed(2)}x; median req/s ${c50.targets[a].rps.toFixed(0)} vs ${
          c50.targets[b].rps.toFixed(0)
        }, proxy CPU ${c50.targets[a].proxyUsPerReq} vs ${c50.targets[b].proxyUsPerReq} us/req)` +
          (singleText === null ? '' : `; ${singleText}`),
      )
    }
    if (singleText === null) return min === null ? undefined : check(label, null, 'n/a')
    check(label, min === null ? 'info' : sa / sb >= min, singleText)
  }
  c50Line('gatehouse', 'nginx', 0.35, 'small GET c=50: Gatehouse >= 0.35x nginx')
  c50Line('gatehouse', 'fastify', 1.8, 'small GET c=50: Gatehouse >= 1.8x @fastify/http-proxy')
  // Not a target: the ceiling for the line above. A node:http + undici proxy with no features
  // (bench/bare-proxy.js) measured against fastify in the same run.
  c50Line(
    'bare',
    'fastify',
    null,
    'reference, no target: bare node:http + undici proxy vs @fastify/http-proxy (small GET c=50)',
  )
  c50Line(
    'gatehouse',
    'bare',
    null,
    'reference, no target: Gatehouse vs the bare node:http + undici proxy (small GET c=50)',
  )
  if (BASELINE !== null) {
    c50Line(
      'gatehouse',
      'baseline',
      null,
      'A/B, no target: Gatehouse vs the baseline build (small GET c=50)',
    )
  }
  const ghp50 = get('gatehouse', 'get_small_c1')?.lat_p50_us
  const dp50 = get('direct', 'get_small_c1')?.lat_p50_us
  const added = have(ghp50, dp50) ? (ghp50 - dp50) / 1000 : null
  results.addedP50AtC1Ms = added
  check(
    'added p50 at c=1 <= 0.2 ms',
    added === null ? null : added <= 0.2,
    added === null
      ? 'n/a'
      : `${added.toFixed(3)} ms (${(ghp50 / 1000).toFixed(3)} - ${(dp50 / 1000).toFixed(3)} ms)`,
  )
  for (const kind of ['download', 'upload']) {
    const big = get('gatehouse', `${kind}_big`)?.peakRssMB
    const small = get('gatehouse', `${kind}_16MiB`)?.peakRssMB
    check(
      `${kind} ${fmtBytes(BIG)}: gateway peak RSS <= 150 MB`,
      have(big) ? big <= 150 : null,
      have(big) ? `${big.toFixed(1)} MB` : 'n/a',
    )
    check(
      `${kind} ${fmtBytes(BIG)}: peak within 16 MB of the 16 MiB peak`,
      have(big, small) ? big - small <= 16 : null,
      have(big, small)
        ? `${big.toFixed(1)} - ${small.toFixed(1)} = ${(big - small).toFixed(1)} MB`
        : 'n/a',
    )
  }
  for (const [kind, min] of [['download', 0.35], ['upload', 0.6]]) {
    const gh = get('gatehouse', `${kind}_big`)?.mbps
    const ng = get('nginx', `${kind}_big`)?.mbps
    check(
      `${kind} ${fmtBytes(BIG)}: Gatehouse >= ${min}x nginx`,
      have(gh, ng) ? gh / ng >= min : null,
      have(gh, ng) ? `${(gh / ng).toFixed(2)}x (${gh.toFixed(0)} vs ${ng.toFixed(0)} MB/s)` : 'n/a',
    )
  }
  const a = results.auth
  for (const [name, label, min] of [['jwt', 'JWT auth', 0.9], ['introspection',
    'introspection (cached) auth', 0.9], ['limit_memory', 'a rate limit (memory store)', 0.95], [
    'limit_redis',
    'a rate limit (Redis store)',
    0.8,
  ]]) {
    const ok = have(a?.[name]?.ratioToNone) && a[name].non2xx === 0
    check(
      `small GET c=50 with ${label} >= ${min}x the same route without`,
      ok ? a[name].ratioToNone >= min : null,
      ok
        ? `${
          a[name].ratioToNone.toFixed(2)
        }x (median of ${a.rounds.length} per-round ratios; median req/s ${
          a[name].rps.toFixed(0)
        } vs ${a.none.rps.toFixed(0)})`
        : 'n/a',
    )
  }
  const jb = a?.jwtLimitVsBare
  check(
    'JWT + rate limit + metrics on one route >= 0.85x the bare node:http + undici proxy (small GET c=50, same rounds)',
    have(jb?.rpsRatio) && a.jwt_limit.non2xx === 0 ? jb.rpsRatio >= 0.85 : null,
    have(jb?.rpsRatio)
      ? `${jb.rpsRatio.toFixed(2)}x req/s (median of ${a.rounds.length} per-round ratios; ${
        a.jwt_limit.rps.toFixed(0)
      } vs ${a.bare.rps.toFixed(0)} req/s), CPU ${
        jb.usRatio.toFixed(2)
      }x (${a.jwt_limit.proxyUsPerReq} vs ${a.bare.proxyUsPerReq} us/req)`
      : 'n/a',
  )
  const ic = results.intercept
  check(
    'small JSON request transform >= 0.7x the same route untransformed (POST 1 KiB c=50)',
    have(ic?.transform?.ratioToPlain) ? ic.transform.ratioToPlain >= 0.7 : null,
    have(ic?.transform?.ratioToPlain)
      ? `${ic.transform.ratioToPlain.toFixed(2)}x (${ic.transform.rps.toFixed(0)} vs ${
        ic.plain.rps.toFixed(0)
      } req/s)`
      : 'n/a',
  )
  const as = ic?.async_sqlite
  check(
    'async sqlite acks >= 0.5x the plain proxied route\'s req/s and ack p99 <= 1.5x its p99 (same POST, c=50, same rounds)',
    have(as?.ratioToPlain, as?.p99RatioToPlain)
      ? as.ratioToPlain >= 0.5 && as.p99RatioToPlain <= 1.5
      : null,
    have(as?.ratioToPlain)
      ? `${as.ratioToPlain.toFixed(2)}x req/s (${as.rps.toFixed(0)} vs ${
        ic.plain.rps.toFixed(0)
      }), p99 ${as.p99RatioToPlain.toFixed(2)}x (${as.p99Ms.toFixed(2)} vs ${
        ic.plain.p99Ms.toFixed(2)
      } ms); medians of ${ic.rounds.length} per-round ratios`
      : 'n/a',
  )
  check(
    'async sqlite, absolute (earlier target: >= 5000 acked req/s, p99 <= 10 ms)',
    'info',
    have(as?.rps)
      ? `${as.rps.toFixed(0)} req/s, p50 ${as.p50Ms.toFixed(2)} ms, p99 ${as.p99Ms.toFixed(2)} ms`
      : 'n/a',
  )
  const nb = ic?.neighbour
  if (have(nb?.underP50Ms)) {
    check(
      'async sqlite: a plain GET c=1 on the same gateway while the async route takes c=50 (no target)',
      'info',
      `p50 ${nb.underP50Ms.toFixed(3)} ms, p99 ${nb.underP99Ms.toFixed(3)} ms (alone: p50 ${
        nb.aloneP50Ms.toFixed(3)
      } ms, p99 ${nb.aloneP99Ms.toFixed(3)} ms)`,
    )
  }
  if (have(ic?.async_nats?.rps)) {
    check(
      'async NATS (measured, no target)',
      'info',
      `${ic.async_nats.rps.toFixed(0)} req/s, p50 ${ic.async_nats.p50Ms.toFixed(2)} ms, p99 ${
        ic.async_nats.p99Ms.toFixed(2)
      } ms`,
    )
  }
  const ghCached = a?.cached?.ratioToNone
  check(
    'cache hits >= 1.5x the uncached route (small GET c=50)',
    have(ghCached) ? ghCached >= 1.5 : null,
    have(ghCached)
      ? `${ghCached.toFixed(2)}x (median of per-round ratios; ${a.cached.rps.toFixed(0)} vs ${
        a.none.rps.toFixed(0)
      } req/s)`
      : 'n/a',
  )
  const ngCached = a?.rounds?.[0]?.nginx_cached === undefined
    ? null
    : median(a.rounds.map((r) => r.cached.rps / r.nginx_cached.rps))
  check(
    'cache hits >= 0.4x nginx proxy_cache hits',
    have(ngCached) ? ngCached >= 0.4 : null,
    have(ngCached)
      ? `${ngCached.toFixed(2)}x (median of per-round ratios; ${a.cached.rps.toFixed(0)} vs ${
        a.nginx_cached.rps.toFixed(0)
      } req/s)`
      : 'n/a',
  )
  const hd = results.heads
  for (const [name, , label] of HEADS_VARIANTS.slice(1)) {
    const x = hd?.[name]
    check(
      `GET with ${label}: gateway CPU per request <= 2x the plain small GET's`,
      have(x?.cpuRatioToPlain) && x.non2xx === 0 ? x.cpuRatioToPlain <= 2 : null,
      have(x?.cpuRatioToPlain)
        ? `${
          x.cpuRatioToPlain.toFixed(2)
        }x (median of ${hd.rounds.length} per-round ratios; ${x.proxyUsPerReq} vs ${hd.plain.proxyUsPerReq} us/req at c=${hd.connections})` +
          (x.non2xx > 0 ? `, ${x.non2xx} non-2xx` : '')
        : 'n/a',
    )
  }
  const cold = results.coldStart?.medianMs
  check(
    'cold start (median of 5) <= 300 ms',
    have(cold) ? cold <= 300 : null,
    have(cold) ? `${cold.toFixed(1)} ms` : 'n/a',
  )
  return items
}

/** `git rev-parse --short HEAD` of a checkout (null when it is not a git checkout). */
function commitOf (dir) {
  const r = spawnSync('git', ['-C', dir, 'rev-parse', '--short', 'HEAD'], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'ignore'],
  })
  return r.status === 0 ? r.stdout.trim() : null
}

/**
 * The A/B rows: every line measured on both builds, the current one first. Interleaved rows
 * carry the median over the rounds of each side and the median (min, max) of the per-round
 * ratios; a single-run row (the wrk phase's 10 s runs) has one ratio.
 */
function abRows (results) {
  const rows = []
  const add = (row, x) => {
    if (x !== null && x !== undefined) rows.push({ row, ...x })
  }
  add('GET /small c=50, interleaved rounds', results.c50?.ab)
  add('GET /small c=1, interleaved rounds', results.c50?.c1Ab)
  for (const s of WRK_SCENARIOS) {
    const g = results.targets.gatehouse?.scenarios?.[s.id]
    const b = results.targets.baseline?.scenarios?.[s.id]
    if (g === undefined || b === undefined) continue
    const one = (v) => ({ median: v, min: v, max: v })
    add(`${s.label}, single ${DURATION} s run`, {
      rounds: 1,
      gatehouse: { rps: g.rps, proxyUsPerReq: g.cpu.proxyUsPerReq },
      baseline: { rps: b.rps, proxyUsPerReq: b.cpu.proxyUsPerReq },
      rpsRatio: one(g.rps / b.rps),
      usRatio: one(g.cpu.proxyUsPerReq / b.cpu.proxyUsPerReq),
    })
  }
  for (const [name, x] of Object.entries(results.auth?.ab ?? {})) {
    add(`auth ${name} (GET /small c=50)`, x)
  }
  for (const [name, x] of Object.entries(results.intercept?.ab ?? {})) {
    add(`intercept ${name} (POST 1 KiB JSON c=50)`, x)
  }
  return rows
}

function abTable (rows) {
  const r = (x) =>
    `${x.median.toFixed(3)}x` +
    (x.min === x.max ? '' : ` (${x.min.toFixed(2)}-${x.max.toFixed(2)})`)
  const cells = [['row', 'rounds', 'GH req/s', 'base req/s', 'req/s GH/base', 'GH us/req',
    'base us/req', 'us/req GH/base'],
    ...rows.map((
      x,
    ) => [x.row, String(x.rounds), num(x.gatehouse.rps, 0), num(x.baseline.rps, 0), r(x.rpsRatio),
      num(x.gatehouse.proxyUsPerReq, 1), num(x.baseline.proxyUsPerReq, 1), r(x.usRatio)]
    )]
  const widths = cells[0].map((_, c) => Math.max(...cells.map((row) => row[c].length)))
  const line = (row) =>
    '| ' +
    row.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]) : cell.padStart(widths[c]))).join(
      ' | ',
    ) + ' |'
  const sep = '|' +
    widths.map((w, c) => (c === 0 ? '-'.repeat(w + 2) : '-'.repeat(w + 1) + ':')).join('|') + '|'
  return [line(cells[0]), sep, ...cells.slice(1).map(line)].join('\n')
}

// --- auth: the same small GET through routes with and without credential checks --------------

/**
 * An IdP in this process: discovery, JWKS and an RFC 7662 endpoint that says every token is
 * active. With a warm cache the gateway asks it nothing during the measured runs.
 */
async function startBenchIdp () {
  const { privateKey, publicKey } = await generateKeyPair('RS256')
  const jwk = { ...(await exportJWK(publicKey)), kid: 'bench-1', alg: 'RS256', use: 'sig' }
  const port = await freePort()
  const issuer = `http://127.0.0.1:${port}`
  const calls = { jwks: 0, introspect: 0 }
  const server = http.createServer((req, res) => {
    const send = (v) => {
      res.writeHead(200, { 'content-type': 'application/json' })
      res.end(JSON.stringify(v))
    }
    if (req.url === '/.well-known/openid-configuration') {
      return send({ issuer, jwks_uri: `${issuer}/jwks` })
    }
    if (req.url === '/jwks') {
      calls.jwks++
      return send({ keys: [jwk] })
    }
    if (req.url === '/introspect') {
      calls.introspect++
      req.resume()
      return req.on(
        'end',
        () =>
          send({
            active: true,
            sub: 'bench-client',
            client_id: 'bench-client',
            scope: 'predict',
            exp: Math.floor(Date.now() / 1000) + 3600,
          }),
      )
    }
    res.writeHead(404).end()
  })
  await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve))
  const now = Math.floor(Date.now() / 1000)
  const token = await new SignJWT({
    sub: 'bench-client',
    client_id: 'bench-client',
    scope: 'predict',
  })
    .setProtectedHeader({ alg: 'RS256', kid: 'bench-1', typ: 'at+jwt' })
    .setIssuer(issuer).setAudience('ml-api').setIssuedAt(now).setExpirationTime(now + 3600)
    .sign(privateKey)
  return { issuer, token, calls, close: () => new Promise((resolve) => server.close(resolve)) }
}

function authYaml (issuer, redis) {
  return (
    port,
    adminPort,
    upstreamPort,
  ) => `# Generated by bench/run.js: one upstream, routes that differ only in auth or rate limits.
listen: { host: 127.0.0.1, port: ${port} }
admin: { host: 127.0.0.1, port: ${adminPort} }
stores:
  shared: { kind: redis, url: "redis://127.0.0.1:6379", prefix: "gh-bench:" }
identity:
  providers:
    sso: { kind: jwt, issuer: "${issuer}", audiences: [ml-api] }
    partner: { kind: introspection, endpoint: "${issuer}/introspect", client_id: gatehouse, client_secret: bench }
upstreams:
  bench:
    targets: [{ url: http://127.0.0.1:${upstreamPort} }]
routes:
  - { name: jwt, match: { path_prefix: /jwt }, strip_prefix: /jwt, upstream: bench, auth: { any_of: [sso], scopes: { all: [predict] } } }
  - { name: introspection, match: { path_prefix: /intro }, strip_prefix: /intro, upstream: bench, auth: { any_of: [partner], scopes: { all: [predict] } } }
  # Limits high enough never to refuse: the cost of the check, not of refusing.
  - { name: limit_memory, match: { path_prefix: /rlmem }, strip_prefix: /rlmem, upstream: bench, rate_limit: [{ key: ip, rate: 10000000/s }] }
  - { name: cached, match: { path_prefix: /cache }, strip_prefix: /cache, upstream: bench, cache: { ttl: 10m } }
  # What a production model route carries: a JWT, a per-subject limit, and (as every route) metrics.
  - { name: jwt_limit, match: { path_prefix: /jwtrl }, strip_prefix: /jwtrl, upstream: bench, auth: { any_of: [sso], scopes: { all: [predict] } }, rate_limit: [{ key: subject, rate: 10000000/s }] }
${
  redis
    ? '  - { name: limit_redis, match: { path_prefix: /rlredis }, strip_prefix: /rlredis, upstream: bench, rate_limit: [{ key: ip, rate: 10000000/s, store: shared }] }\n'
    : ''
}  - { name: none, match: { path_prefix: / }, upstream: bench }
`
}

/**
 * GET /small at c=50 through one gateway, route by route, in rounds (none, jwt, introspection,
 * then again), so that the three are measured close together; the median of the rounds counts.
 * Every request carries the same Authorization header, so only the checking differs.
 */
async function authPhase (upstream) {
  const idp = await startBenchIdp()
  const redis = await new Promise((resolve) => {
    const s = net.connect(6379, '127.0.0.1')
    s.once('connect', () => {
      s.destroy()
      resolve(true)
    })
    s.once('error', () => resolve(false))
  })
  if (!redis) {
    log(
      'auth phase: Redis is not answering on 127.0.0.1:6379; the Redis rate-limit route is skipped',
    )
  }
  const gh = await spawnGatehouse(upstream.port, 'auth', GH_NODE_ARGS, authYaml(idp.issuer, redis))
  // A/B: the baseline build with the same YAML (the same Redis prefix: the limits never refuse,
  // and the two never run at the same time).
  const base = BASELINE === null
    ? null
    : await spawnGatehouse(
      upstream.port,
      'auth-baseline',
      GH_NODE_ARGS,
      authYaml(idp.issuer, redis),
      BASELINE,
    )
  let nginx = null
  if (fs.existsSync(NGINX)) {
    const prefix = path.join(tmp, 'nginx-cache')
    fs.mkdirSync(path.join(prefix, 'cache'), { recursive: true })
    // nginx's workers drop root: they must reach and write the cache directory.
    fs.chmodSync(tmp, 0o755)
    fs.chmodSync(prefix, 0o755)
    fs.chmodSync(path.join(prefix, 'cache'), 0o777)
    const port = await freePort()
    const confFile = path.join(prefix, 'nginx.conf')
    fs.writeFileSync(confFile, nginxCacheConf(prefix, port, upstream.port))
    const proc = track(
      spawn(NGINX, ['-p', prefix, '-c', confFile, '-e', path.join(prefix, 'error.log'), '-g',
        'daemon off;'], { stdio: ['ignore', 'inherit', 'inherit'] }),
      'nginx',
    )
    nginx = { proc, base: `http://127.0.0.1:${port}` }
    await waitReady(`${nginx.base}/small`, 15_000, proc)
  }
  // The bare node:http + undici proxy in the same rounds: the JWT + limit route is measured
  // against it (the Authorization header goes through it unchecked).
  const barePort = await freePort()
  const bareProc = track(
    spawn(process.execPath, [path.join(here, 'bare-proxy.js'), String(barePort), upstream.base], {
      stdio: ['ignore', 'ignore', 'inherit'],
    }),
    'bare',
  )
  const bare = { proc: bareProc, base: `http://127.0.0.1:${barePort}` }
  await waitReady(`${bare.base}/small`, 15_000, bareProc)
  const script = path.join(tmp, 'auth.lua')
  fs.writeFileSync(
    script,
    `wrk.headers["Authorization"] = "Bearer ${idp.token}"\ndofile("${
      path.join(here, 'wrk', 'report.lua')
    }")\n`,
  )
  // The cached route has no auth: a request carrying Authorization there is (rightly) never
  // served from the cache (RFC 9111 §3.5), so cache hits are measured without one.
  const anonymous = path.join(here, 'wrk', 'report.lua')
  const scriptFor = (name) => name === 'cached' || name === 'nginx_cached' ? anonymous : script
  const out = { rounds: [], idpCalls: null }
  try {
    await gatehouseReady(gh)
    if (base !== null) await gatehouseReady(base)
    const ghRoutes = [['none', '/small'], ['jwt', '/jwt/small'], ['introspection', '/intro/small'],
      ['limit_memory', '/rlmem/small'], ...(redis ? [['limit_redis', '/rlredis/small']] : []), [
      'cached',
      '/cache/small',
    ], ['jwt_limit', '/jwtrl/small']]
    // { name, url, pid (whose CPU counts; null for nginx), none (the route its ratioToNone is against) }
    const route = (g, prefix, name, p) => ({
      name: prefix + name,
      url: g.base + p,
      pid: g.proc.pid,
      none: prefix + 'none',
    })
    const groups = ghRoutes.map((
      [name, p],
    ) => [route(gh, '', name, p), ...(base === null ? [] : [route(base, 'base:', name, p)])])
    if (nginx) {
      groups.push([{ name: 'nginx_cached', url: nginx.base + '/small', pid: null, none: 'none' }])
    }
    groups.push([{ name: 'bare', url: bare.base + '/small', pid: bare.proc.pid, none: 'none' }])
    const routes = groups.flat()
    const scriptOf = (rt) => scriptFor(rt.name.replace(/^base:/, ''))
    for (const { name, url } of routes) {
      const res = await fetch(url, { headers: { authorization: `Bearer ${idp.token}` } })
      if (res.status !== 200) {
        throw new Error(`auth bench: ${name} (${url}) answered ${res.status}: ${await res.text()}`)
      }
      await res.arrayBuffer()
      log(`auth: route ${name} answers 200`)
    }
    // One warm-up per route; then short runs, route after route, so that each round's three
    // runs fall within seconds of each other (this machine's speed drifts over tens of seconds).
    if (WARMUP > 0) {
      for (const rt of routes) {
        await runWrk({
          url: rt.url,
          connections: 50,
          threads: WRK_THREADS,
          seconds: WARMUP,
          script: scriptOf(rt),
        })
      }
    }
    const callsBefore = { ...idp.calls }
    for (let round = 0; round < AUTH_ROUNDS; round++) {
      const r = {}
      // The order rotates, so no route is always first (or last) in a round; a route's baseline
      // twin runs right before or after it.
      for (const rt of roundOrder(groups, round)) {
        const name = rt.name
        const cpu0 = rt.pid === null ? 0 : cpuMsOf(rt.pid)
        const w = await measured(
          `auth ${name} round ${round + 1}`,
          () =>
            runWrk({
              url: rt.url,
              connections: 50,
              threads: WRK_THREADS,
              seconds: AUTH_DURATION,
              script: scriptOf(rt),
            }),
        )
        w.proxyUsPerReq = rt.pid === null
          ? null
          : Math.round((cpuMsOf(rt.pid) - cpu0) * 1000 / w.requests * 10) / 10
        r[name] = w
        log(
          `auth round ${round + 1} ${name.padEnd(18)} ${w.rps.toFixed(0).padStart(7)} req/s  p50 ${
            (w.lat_p50_us / 1000).toFixed(3)
          } ms  p99 ${
            (w.lat_p99_us / 1000).toFixed(3)
          } ms  proxy ${w.proxyUsPerReq} us/req  non-2xx ${w.non2xx}`,
        )
      }
      out.rounds.push(r)
    }
    out.idpCalls = {
      jwks: idp.calls.jwks - callsBefore.jwks,
      introspect: idp.calls.introspect - callsBefore.introspect,
    }
    out.jwtLimitVsBare = {
      rpsRatio: median(out.rounds.map((r) => r.jwt_limit.rps / r.bare.rps)),
      usRatio: median(out.rounds.map((r) => r.jwt_limit.proxyUsPerReq / r.bare.proxyUsPerReq)),
    }
    for (const rt of routes) {
      const name = rt.name
      out[name] = {
        rps: median(out.rounds.map((r) => r[name].rps)),
        // Each round measures the three routes seconds apart, so its ratio is less exposed to
        // the machine's drift than a ratio of medians.
        ratioToNone: median(out.rounds.map((r) => r[name].rps / r[rt.none].rps)),
        p50Ms: median(out.rounds.map((r) => r[name].lat_p50_us / 1000)),
        proxyUsPerReq: rt.pid === null
          ? null
          : median(out.rounds.map((r) => r[name].proxyUsPerReq)),
        non2xx: out.rounds.reduce((a, r) => a + Number(r[name].non2xx), 0),
      }
    }
    if (base !== null) {
      out.ab = {}
      for (const [name] of ghRoutes) {
        out.ab[name] = abStats(out.rounds, name, `base:${name}`)
        const x = out.ab[name]
        log(
          `A/B auth ${name.padEnd(13)} gatehouse/baseline ${x.rpsRatio.median.toFixed(3)}x req/s, ${
            x.usRatio.median.toFixed(3)
          }x us/req (${x.gatehouse.proxyUsPerReq} vs ${x.baseline.proxyUsPerReq})`,
        )
      }
    }
  } finally {
    await stop(gh.proc)
    if (base !== null) await stop(base.proc)
    if (nginx !== null) await stop(nginx.proc)
    await stop(bare.proc)
    await idp.close()
  }
  return out
}

function interceptYaml (store) {
  return (
    port,
    adminPort,
    upstreamPort,
  ) => `# Generated by bench/run.js: the same POST through a plain route, a JSON transform and an async route.
listen: { host: 127.0.0.1, port: ${port} }
admin: { host: 127.0.0.1, port: ${adminPort} }
delivery: { store: ${store} }
upstreams:
  bench:
    targets: [{ url: http://127.0.0.1:${upstreamPort} }]
routes:
  - { name: transform, match: { path_prefix: /t }, strip_prefix: /t, upstream: bench, transform: { request: { body: '{ "query": q, "size": n, "user": user }' } } }
  - { name: async, match: { path_prefix: /a }, strip_prefix: /a, upstream: bench, delivery: { mode: async, concurrency: 16 } }
  - { name: plain, match: { path_prefix: / }, upstream: bench }
`
}

/**
 * POST 1 KiB of JSON at c=50, in rounds like the auth phase: the plain route, the same route
 * with a JSONata request transform, and async routes (202 once persisted) on sqlite and NATS.
 * The async lines' latencies are acknowledgement latencies.
 */
async function interceptPhase (upstream) {
  const nats = await new Promise((resolve) => {
    const s = net.connect(4222, '127.0.0.1')
    s.once('connect', () => {
      s.destroy()
      resolve(true)
    })
    s.once('error', () => resolve(false))
  })
  const stream = `GHBENCH_${process.pid}`
  const baseStream = `GHBENCHBASE_${process.pid}`
  const sqliteYaml = (db) => interceptYaml(`{ kind: sqlite, path: ${path.join(tmp, db)} }`)
  const natsYaml = (name) =>
    interceptYaml(`{ kind: nats, url: "nats://127.0.0.1:4222", stream: ${name} }`)
  const a = await spawnGatehouse(
    upstream.port,
    'intercept-sqlite',
    GH_NODE_ARGS,
    sqliteYaml('delivery.db'),
  )
  const b = nats
    ? await spawnGatehouse(upstream.port, 'intercept-nats', GH_NODE_ARGS, natsYaml(stream))
    : null
  // A/B: the baseline build with the same YAML, but a database file and a NATS stream of its own.
  const baseA = BASELINE === null
    ? null
    : await spawnGatehouse(
      upstream.port,
      'intercept-sqlite-baseline',
      GH_NODE_ARGS,
      sqliteYaml('delivery-baseline.db'),
      BASELINE,
    )
  const baseB = BASELINE === null || !nats
    ? null
    : await spawnGatehouse(
      upstream.port,
      'intercept-nats-baseline',
      GH_NODE_ARGS,
      natsYaml(baseStream),
      BASELINE,
    )
  if (!nats) {
    log('intercept phase: NATS is not answering on 127.0.0.1:4222; the NATS async route is skipped')
  }
  const out = { rounds: [] }
  try {
    for (const g of [a, b, baseA, baseB]) if (g !== null) await gatehouseReady(g)
    const icRoutes = [['plain', '/echo16k', 'sqlite'], ['transform', '/t/echo16k', 'sqlite'], [
      'async_sqlite',
      '/a/echo16k',
      'sqlite',
    ], ...(nats ? [['async_nats', '/a/echo16k', 'nats']] : [])]
    // { name, url, pid (the gateway whose CPU counts), plain (the route its ratioToPlain is against) }
    const route = (prefix, name, p, g) => ({
      name: prefix + name,
      url: g.base + p,
      pid: g.proc.pid,
      plain: prefix + 'plain',
    })
    const groups = icRoutes.map((
      [name, p, store],
    ) => [route('', name, p, store === 'nats' ? b : a),
      ...(baseA === null ? [] : [route('base:', name, p, store === 'nats' ? baseB : baseA)])]
    )
    const routes = groups.flat()
    for (const { name, url } of routes) {
      const res = await fetch(url, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: '{"q":"x","n":1}',
      })
      if (res.status !== 200 && res.status !== 202) {
        throw new Error(
          `intercept bench: ${name} (${url}) answered ${res.status}: ${await res.text()}`,
        )
      }
      await res.arrayBuffer()
    }
    if (WARMUP > 0) {
      for (const { url } of routes) {
        await runWrk({
          url,
          connections: 50,
          threads: WRK_THREADS,
          seconds: WARMUP,
          script: 'post1k-json.lua',
        })
      }
    }
    for (let round = 0; round < AUTH_ROUNDS; round++) {
      const r = {}
      for (const rt of roundOrder(groups, round)) {
        const name = rt.name
        // The gateway's CPU over the run: for an async route, whatever delivery it did meanwhile too.
        const cpu0 = cpuMsOf(rt.pid)
        const w = await measured(
          `intercept ${name} round ${round + 1}`,
          () =>
            runWrk({
              url: rt.url,
              connections: 50,
              threads: WRK_THREADS,
              seconds: AUTH_DURATION,
              script: 'post1k-json.lua',
            }),
        )
        w.proxyUsPerReq = Math.round((cpuMsOf(rt.pid) - cpu0) * 1000 / w.requests * 10) / 10
        r[name] = w
        log(
          `intercept round ${round + 1} ${name.padEnd(18)} ${
            w.rps.toFixed(0).padStart(7)
          } req/s  p50 ${(w.lat_p50_us / 1000).toFixed(3)} ms  p99 ${
            (w.lat_p99_us / 1000).toFixed(3)
          } ms  proxy ${w.proxyUsPerReq} us/req  non-2xx ${w.non2xx}`,
        )
      }
      out.rounds.push(r)
    }
    for (const rt of routes) {
      const name = rt.name
      out[name] = {
        rps: median(out.rounds.map((r) => r[name].rps)),
        ratioToPlain: median(out.rounds.map((r) => r[name].rps / r[rt.plain].rps)),
        p50Ms: median(out.rounds.map((r) => r[name].lat_p50_us / 1000)),
        p99Ms: median(out.rounds.map((r) => r[name].lat_p99_us / 1000)),
        // Per round, against the plain route measured seconds apart (the machine drifts).
        p99RatioToPlain: median(out.rounds.map((r) => r[name].lat_p99_us / r[rt.plain].lat_p99_us)),
        proxyUsPerReq: median(out.rounds.map((r) => r[name].proxyUsPerReq)),
        non2xx: out.rounds.reduce((acc, r) => acc + Number(r[name].non2xx), 0),
      }
      log(
        `intercept ${name}: ${out[name].rps.toFixed(0)} req/s (${
          out[name].ratioToPlain.toFixed(2)
        }x plain), p50 ${out[name].p50Ms.toFixed(2)} ms, p99 ${
          out[name].p99Ms.toFixed(2)
        } ms, proxy ${out[name].proxyUsPerReq} us/req`,
      )
    }
    if (baseA !== null) {
      out.ab = {}
      for (const [name] of icRoutes) {
        out.ab[name] = abStats(out.rounds, name, `base:${name}`)
        const x = out.ab[name]
        log(
          `A/B intercept ${name.padEnd(12)} gatehouse/baseline ${
            x.rpsRatio.median.toFixed(3)
          }x req/s, ${
            x.usRatio.median.toFixed(3)
          }x us/req (${x.gatehouse.proxyUsPerReq} vs ${x.baseline.proxyUsPerReq})`,
        )
      }
    }
    // The neighbour rounds are the current build's alone, as without a baseline.
    for (const g of [baseA, baseB]) if (g !== null) await stop(g.proc)
    out.neighbour = await neighbourRounds(a)
  } finally {
    for (const g of [a, baseA]) if (g !== null) await stop(g.proc)
    if (b !== null || baseB !== null) {
      for (const g of [b, baseB]) if (g !== null) await stop(g.proc)
      // The NATS store's streams are the bench's own: delete them.
      const { connect } = await import('@nats-io/transport-node')
      const { jetstreamManager } = await import('@nats-io/jetstream')
      const nc = await connect({ servers: '127.0.0.1:4222' })
      const jsm = await jetstreamManager(nc)
      for (const s of [stream, ...(baseB === null ? [] : [baseStream])]) {
        for (const n of [s, `${s}_DEAD`, `${s}_STATE`]) await jsm.streams.delete(n).catch(() => {})
      }
      await nc.close()
    }
  }
  return out
}

function bigTransformYaml (port, adminPort, upstreamPort) {
  return `# Generated by bench/run.js: a JSONata $sort over a 512 KiB array (once quadratic).
listen: { host: 127.0.0.1, port: ${port} }
admin: { host: 127.0.0.1, port: ${adminPort} }
upstreams:
  bench:
    targets: [{ url: http://127.0.0.1:${upstreamPort} }]
routes:
  - name: sort
    match: { path_prefix: /sort }
    strip_prefix: /sort
    upstream: bench
    limits: { max_buffered_body: 1MiB }
    transform: { request: { body: '{"texts": $sort(texts)}', timeout: 30s } }
  - { name: plain, match: { path_prefix: / }, upstream: bench }
`
}

/**
 * A transform over a 512 KiB JSON array: `$sort` over 42,128 strings, one request at a time.
 * JSONata's own $sort is quadratic (a 224 KB body held the event loop 36 s and 3.3 GB, 712 KB
 * ran out of heap); the line shows the time per request and that RSS stays flat.
 */
async function bigTransformPhase (upstream) {
  const BODY_ITEMS = 42_128
  const texts = []
  for (let i = 0; i < BODY_ITEMS; i++) texts.push(`word-${(i * 7919) % 20011}`)
  const body = JSON.stringify({ texts })
  const gh = await spawnGatehouse(upstream.port, 'bigtransform', GH_NODE_ARGS, bigTransformYaml)
  const out = { bodyBytes: Buffer.byteLength(body), requests: 0, msPerRequest: [], rssMB: [] }
  try {
    await waitReady(`${gh.base}/small`, 15_000, gh.proc)
    const REQUESTS = 200
    for (let i = 0; i < REQUESTS; i++) {
      const t0 = performance.now()
      const res = await fetch(`${gh.base}/sort/echo16k`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body,
      })
      await res.arrayBuffer()
      if (res.status !== 200) throw new Error(`bigtransform: answered ${res.status}`)
      out.msPerRequest.push(performance.now() - t0)
      if ((i + 1) % 25 === 0) out.rssMB.push(Math.round(memOf(gh.proc.pid).rssMB))
    }
    out.requests = REQUESTS
    const sorted = [...out.msPerRequest].sort((x, y) => x - y)
    out.medianMs = Math.round(sorted[Math.floor(sorted.length / 2)] * 10) / 10
    out.p99Ms = Math.round(sorted[Math.floor(sorted.length * 0.99)] * 10) / 10
    delete out.msPerRequest
    log(
      `bigtransform: ${out.bodyBytes} bytes, ${out.requests} requests at c=1: median ${out.medianMs} ms, p99 ${out.p99Ms} ms; RSS every 25 requests ${
        out.rssMB.join(', ')
      } MB`,
    )
  } finally {
    await stop(gh.proc)
  }
  return out
}

/** Until the async route's backlog is delivered (the gauge reads 0), or 120 s. */
async function drained (gh) {
  const deadline = Date.now() + 120_000
  while (Date.now() < deadline) {
    const text = await (await fetch(`http://127.0.0.1:${gh.adminPort}/metrics`)).text()
    const pending = text.split('\n').filter((l) => l.startsWith('gatehouse_delivery_pending{'))
      .reduce((acc, l) => acc + Number(l.split(' ').at(-1)), 0)
    if (pending === 0) return
    await new Promise((resolve) => setTimeout(resolve, 250))
  }
  throw new Error('intercept bench: the async backlog was not delivered within 120 s')
}

/**
 * What an async route's load does to the same gateway's other routes: a small GET at c=1 on the
 * plain route, alone (backlog delivered) and while the async route takes POSTs at c=50. Before
 * the sqlite store ran in its own thread, each group commit stopped every route of the process.
 */
async function neighbourRounds (gh) {
  const rounds = []
  for (let round = 0; round < Math.min(3, AUTH_ROUNDS); round++) {
    await drained(gh)
    const alone = await measured(
      'intercept neighbour alone',
      () =>
        runWrk({
          url: gh.base + '/small',
          connections: 1,
          threads: 1,
          seconds: AUTH_DURATION,
          script: 'report.lua',
        }),
    )
    const load = runWrk({
      url: gh.base + '/a/echo16k',
      connections: 50,
      threads: WRK_THREADS,
      seconds: AUTH_DURATION + 1,
      script: 'post1k-json.lua',
    })
    // The measurement starts once the load is under way and ends before it does.
    await new Promise((resolve) => setTimeout(resolve, 500))
    const under = await runWrk({
      url: gh.base + '/small',
      connections: 1,
      threads: 1,
      seconds: AUTH_DURATION,
      script: 'report.lua',
    })
    const asyncLoad = await load
    rounds.push({ alone, under, asyncLoad })
    log(
      `intercept neighbour round ${round + 1}: GET c=1 alone p50 ${
        (alone.lat_p50_us / 1000).toFixed(3)
      } ms p99 ${(alone.lat_p99_us / 1000).toFixed(3)} ms; ` +
        `with async c=50 (${asyncLoad.rps.toFixed(0)} acks/s) p50 ${
          (under.lat_p50_us / 1000).toFixed(3)
        } ms p99 ${(under.lat_p99_us / 1000).toFixed(3)} ms`,
    )
  }
  const pick = (k, f) => median(rounds.map((r) => r[k][f] / 1000))
  return {
    rounds,
    aloneP50Ms: pick('alone', 'lat_p50_us'),
    aloneP99Ms: pick('alone', 'lat_p99_us'),
    underP50Ms: pick('under', 'lat_p50_us'),
    underP99Ms: pick('under', 'lat_p99_us'),
  }
}

// --- long request heads ------------------------------------------------------------------------

/** The plain small GET and the same GET with a long head, each a wrk script in bench/wrk/. */
const HEADS_VARIANTS = [
  ['plain', 'report.lua', 'GET /small'],
  ['long_path', 'long-path.lua', 'an 8 KiB path'],
  ['long_accept', 'long-accept.lua', 'a 14 KiB Accept'],
  ['parens', 'parens-header.lua', 'an 8 KiB header value of \'(\''],
]

/** One request shaped like a variant's wrk script (the scripts hold the exact bytes). */
function headsRequest (base, name) {
  const headers = {}
  let p = '/small'
  if (name === 'long_path') {
    p = '/small/' + '0123456789abcde/'.repeat(511)
    p += 'x'.repeat(8192 - p.length)
  }
  if (name === 'long_accept') {
    headers.accept = Array.from(
      { length: 600 },
      (_, i) => `application/vnd.example.v${i + 1}+json;q=0.${(i + 1) % 10}`,
    ).join(', ').slice(0, 14336)
  }
  if (name === 'parens') headers['x-comment'] = '('.repeat(8192)
  return new Promise((resolve, reject) => {
    http.get(base + p, { agent: false, headers }, (res) => {
      res.resume()
      res.on('end', () => resolve(res.statusCode))
    }).on('error', reject)
  })
}

/**
 * CPU per request of the gateway process for the small GET with a long request head (an 8 KiB
 * path, a 14 KiB Accept list, an 8 KiB run of '(' in a header value) against the plain small GET,
 * through the same gateway, in interleaved rounds whose order rotates. Each variant's number is
 * the median of its per-round µs/req; its ratio is the median of the per-round ratios to plain.
 */
async function headsPhase (upstream) {
  const gh = await spawnGatehouse(upstream.port, 'heads', GH_NODE_ARGS)
  const out = { connections: HEADS_CONNECTIONS, durationS: HEADS_DURATION, rounds: [] }
  try {
    await waitReady(`${gh.base}/small`, 15_000, gh.proc)
    for (const [name] of HEADS_VARIANTS) {
      const status = await headsRequest(gh.base, name)
      if (status !== 200) throw new Error(`heads bench: ${name} answered ${status}`)
    }
    const run = (script, seconds) =>
      runWrk({
        url: gh.base + '/small',
        connections: HEADS_CONNECTIONS,
        threads: WRK_THREADS,
        seconds,
        script,
      })
    if (WARMUP > 0) { for (const [, script] of HEADS_VARIANTS) await run(script, WARMUP) }
    for (let round = 0; round < HEADS_ROUNDS; round++) {
      const r = {}
      for (let k = 0; k < HEADS_VARIANTS.length; k++) {
        const [name, script] = HEADS_VARIANTS[(round + k) % HEADS_VARIANTS.length]
        let cpu0 = null
        const w = await measured(`heads ${name} round ${round + 1}`, () => {
          cpu0 = { proxy: cpuMsOf(gh.proc.pid), upstream: cpuMsOf(upstream.proc.pid) }
          return run(script, HEADS_DURATION)
        })
        r[name] = {
          rps: w.rps,
          p50Ms: w.lat_p50_us / 1000,
          proxyUsPerReq: Math.round((cpuMsOf(gh.proc.pid) - cpu0.proxy) * 1000 / w.requests * 10) /
            10,
          upstreamUsPerReq:
            Math.round((cpuMsOf(upstream.proc.pid) - cpu0.upstream) * 1000 / w.requests * 10) / 10,
          non2xx: Number(w.non2xx),
          foreignCpuPct: w.foreignCpuPct,
        }
        log(
          `heads round ${round + 1} ${name.padEnd(11)} ${
            w.rps.toFixed(0).padStart(7)
          } req/s  proxy ${r[name].proxyUsPerReq} us/req  upstream ${
            r[name].upstreamUsPerReq
          } us/req  non-2xx ${w.non2xx}`,
        )
      }
      out.rounds.push(r)
    }
    for (const [name, , label] of HEADS_VARIANTS) {
      out[name] = {
        label,
        rps: median(out.rounds.map((r) => r[name].rps)),
        proxyUsPerReq: median(out.rounds.map((r) => r[name].proxyUsPerReq)),
        upstreamUsPerReq: median(out.rounds.map((r) => r[name].upstreamUsPerReq)),
        cpuRatioToPlain: median(
          out.rounds.map((r) => r[name].proxyUsPerReq / r.plain.proxyUsPerReq),
        ),
        non2xx: out.rounds.reduce((acc, r) => acc + r[name].non2xx, 0),
      }
      log(
        `heads ${name}: proxy ${out[name].proxyUsPerReq} us/req (${
          out[name].cpuRatioToPlain.toFixed(2)
        }x plain), upstream ${out[name].upstreamUsPerReq} us/req, ${
          out[name].rps.toFixed(0)
        } req/s`,
      )
    }
  } finally {
    await stop(gh.proc)
  }
  return out
}

// --- main --------------------------------------------------------------------------------------

async function main () {
  const started = Date.now()
  const results = {
    date: new Date().toISOString(),
    machine: machine(),
    code: fingerprint(root),
    settings: {
      durationS: DURATION,
      warmupS: WARMUP,
      wrkThreadsC50: WRK_THREADS,
      bigStreamBytes: BIG,
      bigStreamReps: BIG_REPS,
      smallStreamBytes: SMALL_STREAM,
      smallStreamReps: SMALL_REPS,
      streamWarmupBytes: STREAM_WARMUP,
      coldRuns: COLD_RUNS,
      gatehouseNodeArgs: GH_NODE_ARGS,
    },
    targets: {},
    configs: {},
  }
  if (BASELINE !== null) {
    results.code.commit = commitOf(root)
    results.baseline = { root: BASELINE, commit: commitOf(BASELINE), code: fingerprint(BASELINE) }
    log(
      `A/B mode: baseline ${BASELINE} (commit ${
        results.baseline.commit ?? 'unknown'
      }, dist ${results.baseline.code.dist}) against this checkout (commit ${
        results.code.commit ?? 'unknown'
      }, dist ${results.code.dist})`,
    )
  }
  log(
    `tmp dir ${tmp}; ${DURATION}s per wrk run (+${WARMUP}s warm-up), c=50 with ${WRK_THREADS} wrk thread(s)`,
  )
  const upstream = await startUpstream()
  log(`upstream on ${upstream.base} (pid ${upstream.proc.pid})`)

  const names = TARGETS.filter((name) => {
    if (name === 'nginx' && !fs.existsSync(NGINX)) {
      log(`${NGINX} not found: skipping nginx`)
      return false
    }
    return true
  })
  for (const name of names) results.targets[name] = { scenarios: {} }
  // Two phases, each with freshly started proxies, so that the streaming runs' peak RSS is not
  // the heap left behind by 50 connections of request/response load. Within a phase every
  // proxy is up, but only one is under load at a time: scenario by scenario, target after
  // target, so that the numbers compared in a ratio are measured close together in time.
  for (const phase of ['wrk', 'stream']) {
    if (skipped(phase)) continue
    const running = []
    try {
      for (const name of names) {
        if (phase !== 'wrk' && WRK_ONLY.has(name)) continue
        const t = await startTarget(name, upstream)
        running.push(t)
        const r = results.targets[name]
        log(
          `${name}: ${phase} phase on ${t.base}${
            t.pid === null
              ? ''
              : ` (measured pid ${t.pid}, RSS ${memOf(t.pid).rssMB.toFixed(1)} MB)`
          }`,
        )
        r.base = t.base
        if (t.pid !== null) r[`${phase}StartRssMB`] = memOf(t.pid).rssMB
        if (t.config !== undefined) results.configs[name] = t.config
      }
      if (phase === 'wrk') {
        for (const s of WRK_SCENARIOS) {
          for (const t of running) await wrkScenario(t, s, results.targets[t.name], upstream)
        }
        results.c50 = await c50Rounds(running, upstream)
      } else {
        for (const t of running) await streamWarmup(t, results.targets[t.name])
        for (const s of STREAM_SCENARIOS) await streamScenario(running, s, results, upstream)
      }
    } finally {
      for (const t of running) if (t.proc !== null) await stop(t.proc)
    }
    // Proof that the access logs were on: one line per request of the wrk runs (warm-ups included).
    for (const t of running) {
      if (phase !== 'wrk' || t.logFile === undefined) continue
      const lines = fs.readFileSync(t.logFile, 'utf8').split('\n')
      results.targets[t.name].accessLogLines = t.name === 'gatehouse' || t.name === 'baseline'
        ? lines.filter((l) => l.includes('"msg":"request"')).length
        : lines.filter(Boolean).length
    }
  }

  if (!skipped('auth') && TARGETS.includes('gatehouse')) {
    results.auth = await authPhase(upstream)
    const cost = spawnSync(process.execPath, [path.join(here, 'auth-cost.js')], {
      encoding: 'utf8',
    })
    const line = cost.stdout.split('\n').find((l) => l.startsWith('AUTHCOST '))
    if (line !== undefined) results.auth.cost = JSON.parse(line.slice(9))
  }
  if (!skipped('intercept') && TARGETS.includes('gatehouse')) {
    results.intercept = await interceptPhase(upstream)
  }
  if (!skipped('heads') && TARGETS.includes('gatehouse')) results.heads = await headsPhase(upstream)
  if (!skipped('bigtransform') && TARGETS.includes('gatehouse')) {
    results.bigTransform = await bigTransformPhase(upstream)
  }
  if (!skipped('cold')) results.coldStart = await coldStart(upstream)
  await stop(upstream.proc)

  results.checklist = checklist(results)
  if (BASELINE !== null) results.ab = abRows(results)
  results.elapsedS = Math.round((Date.now() - started) / 100) / 10

  const out = path.join(here, 'results', 'latest.json')
  fs.mkdirSync(path.dirname(out), { recursive: true })
  fs.writeFileSync(out, JSON.stringify(results, null, 2) + '\n')

  const m = results.machine
  process.stdout.write(
    `\nGatehouse benchmark ${results.date} (src ${results.code.src}, dist ${results.code.dist})\n${m.nproc} x ${m.cpu}, ${m.ramGB} GB RAM, node ${m.node}, ${m.nginx}, ${m.wrk}\n`,
  )
  process.stdout.write(
    `wrk: ${DURATION}s runs after ${WARMUP}s warm-up; c=1 with 1 thread, c=50 with ${WRK_THREADS} thread(s). MB = 10^6 bytes. Ratios are Gatehouse / other (req/s, MB/s: higher is better; latency, RSS: lower is better).\n\n`,
  )
  process.stdout.write(table(results) + '\n')
  process.stdout.write(
    `* = other processes used >= ${QUIET_PCT}% of a core during that run (shared machine): treat with care.\n\n`,
  )
  const added = results.addedP50AtC1Ms
  process.stdout.write(
    `added p50 at c=1 (Gatehouse - direct): ${
      added === null || added === undefined ? '-' : added.toFixed(3) + ' ms'
    }\n`,
  )
  if (results.auth) {
    const a = results.auth
    process.stdout.write(
      `auth, GET /small c=50 (median of ${a.rounds.length} rounds): none ${
        a.none.rps.toFixed(0)
      } req/s (${a.none.proxyUsPerReq} us/req), ` +
        `JWT ${a.jwt.rps.toFixed(0)} (${a.jwt.proxyUsPerReq} us/req), introspection ${
          a.introspection.rps.toFixed(0)
        } (${a.introspection.proxyUsPerReq} us/req), ` +
        `rate limit memory ${
          a.limit_memory.rps.toFixed(0)
        } (${a.limit_memory.proxyUsPerReq} us/req)` +
        (a.limit_redis
          ? `, rate limit Redis ${
            a.limit_redis.rps.toFixed(0)
          } (${a.limit_redis.proxyUsPerReq} us/req)`
          : '') +
        `, cache hits ${a.cached.rps.toFixed(0)} (${a.cached.proxyUsPerReq} us/req), JWT + limit ${
          a.jwt_limit.rps.toFixed(0)
        } (${a.jwt_limit.proxyUsPerReq} us/req), bare proxy ${
          a.bare.rps.toFixed(0)
        } (${a.bare.proxyUsPerReq} us/req)` +
        (a.nginx_cached ? `, nginx proxy_cache hits ${a.nginx_cached.rps.toFixed(0)}` : '') + '; ' +
        `IdP calls during the runs: ${a.idpCalls.jwks} JWKS, ${a.idpCalls.introspect} introspection\n`,
    )
    if (a.cost) {
      process.stdout.write(
        `auth, in-process CPU of the cached JWT check plus identity headers: ${a.cost.jwtCachedNsPerRequest} ns per request (median of ${a.cost.reps.length})\n`,
      )
    }
  }
  if (results.bigTransform) {
    const b = results.bigTransform
    process.stdout.write(
      `transform $sort over a ${b.bodyBytes}-byte JSON array, c=1: median ${b.medianMs} ms, p99 ${b.p99Ms} ms per request; gateway RSS every 25 requests: ${
        b.rssMB.join(', ')
      } MB\n`,
    )
  }
  if (results.coldStart) {
    process.stdout.write(
      `cold start, spawn to first proxied 200 (median of ${COLD_RUNS}): ${
        num(results.coldStart.medianMs, 1)
      } ms  [${results.coldStart.runs.map((r) => num(r.ms, 1)).join(', ')}]\n`,
    )
  }
  if (results.ab) {
    const bl = results.baseline
    process.stdout.write(
      `\nA/B against baseline ${bl.root} (commit ${
        bl.commit ?? '?'
      }, dist ${bl.code.dist}); this build: commit ${
        results.code.commit ?? '?'
      }, dist ${results.code.dist}.\n` +
        'Same YAML, same rounds; ratios GH/base = median of the per-round ratios (min-max over the rounds). req/s: higher is better; us/req (gateway process CPU per request): lower is better.\n',
    )
    process.stdout.write(
      results.ab.length === 0
        ? '(no row was measured on both builds)\n'
        : abTable(results.ab) + '\n',
    )
  }
  process.stdout.write('\nTargets:\n')
  for (const c of results.checklist) {
    process.stdout.write(`  [${c.status}] ${c.name}: ${c.measured}\n`)
  }
  process.stdout.write(
    `\nraw results: ${path.relative(process.cwd(), out)} (${results.elapsedS} s)\n`,
  )
  fs.rmSync(tmp, { recursive: true, force: true })
}

main().catch((err) => {
  process.stderr.write(`bench failed: ${err.stack ?? err}\n(logs and configs kept in ${tmp})\n`)
  process.exitCode = 1
  killAllNow()
})
