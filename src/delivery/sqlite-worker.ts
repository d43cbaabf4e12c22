import { parentPort, workerData } from 'node:worker_threads'
import { isGatewayError } from '../errors/index.js'
import { SqliteDeliveryStore, type SqliteConfig } from './sqlite.js'
import type { NewDelivery } from './store.js'
import type { Call, Reply, SerializedError, ToMain, ToWorker } from './sqlite-thread.js'

/*
 * The worker thread that owns the SQLite connection (see sqlite-thread.ts). It runs the same
 * SqliteDeliveryStore the contract suite tests, so group commit works as before, but here a
 * commit's fsync blocks only this thread: the gateway's event loop goes on parsing requests and
 * answering while the next batch gathers.
 */

const port = parentPort!
const cfg = (workerData as { cfg: SqliteConfig }).cfg
const store = new SqliteDeliveryStore(cfg, {
  error: (obj) => post({ log: obj }),
  info: (obj) => post({ log: obj, level: 'info' }),
})

let replies: Reply[] = []
let flushing = false
let lastStatus = ''
/** Claims waiting in the store, by call id: the main thread cancels them when its signal aborts. */
const claims = new Map<number, AbortController>()

function post (msg: ToMain): void {
  port.postMessage(msg)
}

/** Replies of one turn go in one message; the status is sent along when it changed. */
function reply (r: Reply): void {
  replies.push(r)
  if (flushing) return
  flushing = true
  setImmediate(() => {
    flushing = false
    const batch = replies
    replies = []
    const status = JSON.stringify(store.status())
    const changed = status !== lastStatus
    lastStatus = status
    try {
      post(changed ? { replies: batch, status: store.status() } : { replies: batch })
    } catch {
      // A value structured cloning refuses: answer each call alone, the unsendable ones with an
      // error, rather than let the thread die with every caller's reply.
      for (const r of batch) {
        try {
          post({ replies: [r] })
        } catch (err) {
          post({
            replies: [{
              id: r.id,
              ok: false,
              error: {
                message: `the reply could not be sent: ${(err as Error).message}`,
                code: null,
              },
            }],
          })
        }
      }
      if (changed) post({ replies: [], status: store.status() })
    }
  })
}

function serialize (err: unknown): SerializedError {
  if (isGatewayError(err)) {
    return {
      gateway: { code: err.code, detail: err.detail, reason: err.reason, headers: err.headers },
    }
  }
  const e = err as { message?: unknown, code?: unknown }
  return {
    message: typeof e?.message === 'string' ? e.message : String(err),
    code: typeof e?.code === 'string' ? e.code : null,
  }
}

/** A Buffer over the bytes structured cloning delivered as a plain Uint8Array (no copy). */
function buffer (u8: Uint8Array): Buffer {
  return Buffer.from(u8.buffer, u8.byteOffset, u8.byteLength)
}

function run (call: Call): Promise<unknown> {
  switch (call.op) {
    case 'start':
      return store.start()
    case 'enqueue': {
      const msg = call.args[0] as NewDelivery
      return store.enqueue({ ...msg, body: buffer(msg.body) }, call.args[1] as number)
    }
    case 'settle':
      return store.settle(
        call.args[0] as string,
        call.args[1] as Parameters<SqliteDeliveryStore['settle']>[1],
      )
    case 'openRoute':
      return store.openRoute(
        call.args[0] as string,
        call.args[1] as Parameters<SqliteDeliveryStore['openRoute']>[1],
      )
    case 'claim': {
      const ac = new AbortController()
      claims.set(call.id, ac)
      return store.claim(
        call.args[0] as string,
        call.args[1] as number,
        call.args[2] as number,
        ac.signal,
      )
        .finally(() => claims.delete(call.id))
    }
    case 'get':
      return store.get(call.args[0] as string)
    case 'list':
      return store.list(call.args[0] as Parameters<SqliteDeliveryStore['list']>[0])
    case 'replay':
      return store.replay(
        call.args[0] as Parameters<SqliteDeliveryStore['replay']>[0],
        call.args[1] as number,
      )
    case 'purge':
      return store.purge(call.args[0] as 'dead' | 'delivered', call.args[1] as string | undefined)
    case 'expire':
      return store.expire(call.args[0] as number)
    case 'stats':
      return store.stats(call.args[0] as number)
    case 'close':
      return store.close()
  }
}

port.on('message', (msg: ToWorker) => {
  for (const call of msg.calls) {
    let p: Promise<unknown>
    try {
      p = run(call)
    } catch (err) {
      p = Promise.reject(err)
    }
    p.then(
      (value) => reply({ id: call.id, ok: true, value }),
      (err: unknown) => reply({ id: call.id, ok: false, error: serialize(err) }),
    )
  }
  for (const id of msg.cancels) claims.get(id)?.abort()
})
