#!/usr/bin/env node
import v8 from 'node:v8'

// A small young generation (Node's default grows to 16 MiB) is collected often enough that the
// 64 KiB buffers of a long stream are freed as they pass: peak memory for a 1 GiB transfer
// stays where a 16 MiB one leaves it, and streaming gets faster (BENCHMARKS.md). It must be set
// before the heap grows, so it is set here, before the gateway loads. An operator's own
// --max-semi-space-size (flag or NODE_OPTIONS) wins.
const own = [...process.execArgv, ...(process.env.NODE_OPTIONS ?? '').split(/\s+/)]
if (!own.some((a) => a.startsWith('--max-semi-space-size'))) {
  v8.setFlagsFromString('--max-semi-space-size=1')
}

const { main } = await import('../dist/gatehouse.mjs')

main(process.argv.slice(2)).then((code) => {
  if (typeof code === 'number') process.exitCode = code
}, (err) => {
  console.error(err && err.stack ? err.stack : err)
  process.exitCode = 1
})
