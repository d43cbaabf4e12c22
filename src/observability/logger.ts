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

/** Characters gathered before they are handed to the file descriptor's writer. */
const BATCH = 64 * 1024
const FLUSH_EVERY = 1000

/**
 * Lines are concatenated here and handed to sonic-boom (pino's fd writer) one batch at a time.
 * Fed line by line, sonic-boom measures the UTF-8 length of its whole pending buffer on every
 * write (flattening the string each time): about 5 µs of CPU per access line, against well
 * under 1 µs when it gets 64 KiB at once. Every line, access or not, goes through the same
 * buffer, so their order in the output is the order they were logged.
 *
 * The writes are synchronous, like nginx's. An asynchronous writer loses lines at exit: a
 * write still running on libuv's thread pool when the process ends is cut off part-way (the
 * lines after it, written synchronously at exit, then land before its tail or without it), and
 * pino's beforeExit hook ends such a writer before our last batch reaches it. A synchronous
 * write of one batch costs tens of microseconds, a few hundred requests' worth of lines; a
 * reader slower than the gateway slows the gateway rather than growing its memory without end.
 */
export class BatchedDestination implements DestinationStream {
  readonly #boom: ReturnType<typeof pino.destination>
  #pending = ''

  constructor (fd: number) {
    // sonic-boom writes whatever it is handed at once (minLength 0), in pieces of up to maxWrite,
    // and on EAGAIN (a non-blocking pipe that is full) waits and writes the rest.
    this.#boom = pino.destination({ dest: fd, sync: true, minLength: 0, maxWrite: BATCH * 2 })
    setInterval(() => this.#handOver(), FLUSH_EVERY).unref()
    // What is still gathered when the process exits (process.exit() included) is written then.
    process.once('exit', () => {
      try {
        this.flushSync()
      } catch {}
    })
  }

  write (line: string): void {
    this.#pending += line
    if (this.#pending.length >= BATCH) this.#handOver()
  }

  #handOver (): void {
    if (this.#pending === '') return
    const s = this.#pending
    this.#pending = ''
    this.#boom.write(s)
  }

  /** pino's logger.flush(): write out what is gathered. */
  flush (cb?: (err?: Error) => void): void {
    this.#handOver()
    this.#boom.flush(cb)
  }

  flushSync (): void {
    this.#handOver()
    this.#boom.flushSync()
  }
}
