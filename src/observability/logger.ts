import { writeSync } from 'node:fs'
import pino, { type DestinationStream, type Logger } from 'pino'

export type { Logger }

/**
 * The gateway's logger. Access lines (msg 'request') are written to the same destination by
 * AccessLog. By default lines are gathered and written in batches of about 64 KiB, and at
 * least once a second, like nginx's `access_log buffer= flush=`: a write syscall per request
 * costs about as much as proxying it. The buffer is flushed on shutdown and when the process
 * exits.
 */
export function createLogger (level: string, destination?: DestinationStream): Logger {
  return pino({
    level,
    base: null,
    messageKey: 'msg',
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label) => ({ level: label }) },
  }, destination ?? new BatchedDestination(1))
}

export function flushLogger (logger: Logger): void {
  try {
    logger.flush()
  } catch {
    // A destination that cannot flush synchronously (a test stream) has nothing buffered.
  }
}

/** Characters gathered before they are written. */
const BATCH = 64 * 1024
const FLUSH_EVERY = 1000
/** Bytes kept for a non-blocking output that is full (EAGAIN); past this, batches are dropped. */
const MAX_BACKLOG = 4 * 1024 * 1024
/** At exit, how long a full non-blocking output is waited for before what is left is dropped. */
const EXIT_WAIT_MS = 1000

/**
 * Where the gateway's log lines go: gathered into one string and written to a file descriptor
 * one batch at a time. Written line by line, a write syscall per request costs about as much
 * as proxying it. Every line, access or not, goes through the same buffer, so their order in
 * the output is the order they were logged.
 *
 * Writes are synchronous, like nginx's: a blocking output (a file, a pipe as Node leaves it)
 * that is slower than the gateway slows the gateway instead of growing its memory. Node makes
 * fd 1 non-blocking once anything touches `process.stdout` (a plugin's console.log), and then a
 * full pipe answers EAGAIN: what was not written is kept, up to 4 MiB, and tried again with the
 * next batch or within a second. Any other failure (ENOSPC, EPIPE, EBADF) drops the batch: a
 * log that cannot be written must not stop the gateway or its exit. The first failure and the
 * recovery are reported on stderr, with the number of bytes dropped.
 *
 * This replaces sonic-boom (pino's writer) here for three reasons found in testing: in
 * asynchronous mode pino ends it from a beforeExit hook before the last batch arrives, and a
 * write still on the thread pool at process.exit() is cut off; its flushSync() retries an
 * ENOSPC forever, so a full disk hung the process at exit; and after a failed write it retries
 * the failed buffer while new ones pile up behind it without a bound.
 */
export class BatchedDestination implements DestinationStream {
  readonly #fd: number
  #pending = ''
  /**
   * Batches a non-blocking output has not taken yet (EAGAIN), oldest first; the first may be
   * partly written. A queue, so that a stall costs one copy per batch, not one of the backlog.
   */
  readonly #backlog: Buffer[] = []
  #backlogBytes = 0
  #dropped = 0
  #failure: string | null = null

  constructor (fd: number) {
    this.#fd = fd
    setInterval(() => this.#handOver(), FLUSH_EVERY).unref()
    // What is still gathered when the process exits (process.exit() included) is written then.
    process.once('exit', () => this.flushSync())
  }

  write (line: string): void {
    this.#pending += line
    if (this.#pending.length >= BATCH) this.#handOver()
  }

  /** pino's logger.flush(): write out what is gathered. */
  flush (cb?: (err?: Error) => void): void {
    this.#handOver()
    cb?.()
  }

  /** Write out everything, waiting up to a second for a full non-blocking output. */
  flushSync (): void {
    this.#handOver()
    const until = Date.now() + EXIT_WAIT_MS
    while (this.#backlogBytes > 0 && Date.now() < until) {
      Atomics.wait(SLEEP, 0, 0, 10)
      this.#drain()
    }
    if (this.#backlogBytes > 0) this.#dropBacklog('EAGAIN')
    if (this.#failure !== null) {
      report(`gatehouse: ${this.#dropped} bytes of log lines were dropped (${this.#failure})\n`)
    }
  }

  #handOver (): void {
    // Whatever waits goes first, so the new batch finds the room it frees.
    if (this.#backlogBytes > 0) this.#drain()
    if (this.#pending === '') return
    const batch = Buffer.from(this.#pending, 'utf8')
    this.#pending = ''
    if (this.#backlogBytes + batch.length > MAX_BACKLOG) return this.#drop(batch.length, 'EAGAIN')
    this.#backlog.push(batch)
    this.#backlogBytes += batch.length
    // Behind a backlog the output was full a moment ago: the next hand-over tries again.
    if (this.#backlog.length === 1) this.#drain()
  }

  /** Write the backlog until it is gone, the output is full (kept) or broken (all dropped). */
  #drain (): void {
    const q = this.#backlog
    while (q.length > 0) {
      const buf = q[0]!
      let off = 0
      try {
        while (off < buf.length) off += writeSync(this.#fd, buf, off, buf.length - off)
      } catch (err) {
        this.#backlogBytes -= off
        const code = (err as NodeJS.ErrnoException).code ?? 'EIO'
        if (code !== 'EAGAIN') return this.#dropBacklog(code)
        q[0] = buf.subarray(off)
        return
      }
      q.shift()
      this.#backlogBytes -= buf.length
    }
    if (this.#failure !== null) {
      report(
        `gatehouse: log output recovered; ${this.#dropped} bytes of log lines were dropped while it failed (${this.#failure})\n`,
      )
      this.#failure = null
      this.#dropped = 0
    }
  }

  #dropBacklog (code: string): void {
    this.#drop(this.#backlogBytes, code)
    this.#backlog.length = 0
    this.#backlogBytes = 0
  }

  #drop (bytes: number, code: string): void {
    this.#dropped += bytes
    if (this.#failure === null) {
      this.#failure = code
      report(
        `gatehouse: log output to fd ${this.#fd} failed (${code}); log lines are dropped until it recovers\n`,
      )
    }
  }
}

const SLEEP = new Int32Array(new SharedArrayBuffer(4))

function report (text: string): void {
  try {
    writeSync(2, text)
  } catch {
    // stderr is gone too: nothing left to tell.
  }
}
