import { after, before, describe, test } from 'node:test'

/** What a contract suite does with its subject: start it once before the tests, close it after. */
export interface ContractSubject {
  start(): Promise<void>
  close(): Promise<void>
}

/** Registers one test of a contract suite; `fn` gets the suite's started subject. */
export type ContractTest<S> = (title: string, fn: (s: S) => Promise<void>) => void

/**
 * A suite of tests that share one subject (a store), for contracts every backend must keep.
 * `make` returns the subject, not started, or a reason to skip: then every test is registered
 * and skipped with that reason, so an absent Redis or NATS shows in the report rather than the
 * suite vanishing. `make` runs in the suite's `before` hook, so if it throws (serviceAvailable
 * under GATEHOUSE_REQUIRE_SERVICES=1) the hook fails and every test with it.
 */
export function contractSuite<S extends ContractSubject> (
  name: string,
  make: () => Promise<S | string>,
  body: (it: ContractTest<S>) => void,
): void {
  describe(name, () => {
    let subject: S | null = null
    let skip: string | null = null
    before(async () => {
      const s = await make()
      if (typeof s === 'string') {
        skip = s
        return
      }
      // Kept before start() so that a start that fails half-way is still closed.
      subject = s
      await subject.start()
    })
    after(async () => {
      await subject?.close()
    })
    body((title, fn) => {
      test(title, async (t) => {
        if (skip !== null) return t.skip(skip)
        await fn(subject!)
      })
    })
  })
}
