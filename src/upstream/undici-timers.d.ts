// undici's timer module (see src/upstream/timers.ts), internal to undici like the Pool path in
// src/types/undici-pool.d.ts: package.json pins undici to 7.30.x and test/unit/precise-timers.test.ts
// fails if its shape moves.
declare module 'undici/lib/util/timers.js' {
  /** An entry on undici's 499 ms tick (opaque here). */
  export interface FastTimer {
    refresh (): void
    clear (): void
    /** `[kFastTimer]` is true on every fast timer. */
    readonly [key: symbol]: unknown
  }
  type AnyTimer = FastTimer | NodeJS.Timeout
  interface Timers {
    setTimeout (callback: (arg: any) => void, delay: number, arg?: unknown): AnyTimer
    clearTimeout (timeout: AnyTimer): void
    setFastTimeout (callback: (arg: any) => void, delay: number, arg?: unknown): AnyTimer
    clearFastTimeout (timeout: AnyTimer): void
    now (): number
    readonly kFastTimer: symbol
  }
  const timers: Timers
  export default timers
}
