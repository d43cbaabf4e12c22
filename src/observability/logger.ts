import pino, { type DestinationStream, type Logger } from 'pino'

export type { Logger }

/**
 * The gateway's logger. Access lines (msg 'request') are written to the same destination by
 * AccessLog. By default lines are buffered and written asynchronously (sonic-boom) in batches of
 * at least 4 KiB, and at least once a second, like nginx's `access_log buffer= flush=`: a write
 * syscall per request costs about as much as proxying it. The buffer is flushed on shutdown.
 */
export function createLogger (level: string, destination?: DestinationStream): Logger {
  let dest = destination
  if (dest === undefined) {
    const boom = pino.destination({ dest: 1, sync: false, minLength: 4096 })
    setInterval(() => { try { boom.flush() } catch {} }, 1000).unref()
    dest = boom
  }
  return pino({
    level,
    base: null,
    messageKey: 'msg',
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label) => ({ level: label }) },
  }, dest)
}

export function flushLogger (logger: Logger): void {
  try {
    logger.flush()
  } catch {
    // A destination that cannot flush synchronously (a test stream) has nothing buffered.
  }
}
