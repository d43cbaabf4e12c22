import pino, { type DestinationStream, type Logger } from 'pino'

export type { Logger }

/**
 * The gateway's logger. Access lines go through the same logger with `msg: 'request'`.
 * By default lines are written asynchronously (sonic-boom): at low load each line goes out at
 * once, under load lines that pile up while a write is in flight go out together, so there is
 * no write syscall per request. The buffer is flushed on shutdown.
 */
export function createLogger (level: string, destination?: DestinationStream): Logger {
  const dest = destination ?? pino.destination({ dest: 1, sync: false })
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
